"""The posterior-kind registry: fits, saved posteriors and predictions go through the kind."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from popsdask import Posterior, fit
from popsdask.core.kinds import KINDS, Hypercube, kind_names, posterior_kind, register_kind
from popsdask.core.parameters import POPS_SETTINGS, add_arguments, check_settings
from popsdask.core.validation import InputError
from popsdask.engine.design import design_from
from popsdask.engine.fit import fit_pops_with_evidence
from popsdask.engine.predictions import predict_ensemble
from popsdask.engine.regressor import POPSRegressor
from popsdask.engine.state import PopsSettings
from tests.conftest import misspecified


class Box(Hypercube):
    """A kind registered at run time (the hypercube under another name)."""

    name = "box"
    help = "the hypercube again"


@pytest.fixture
def box_kind():
    register_kind(Box())
    yield KINDS["box"]
    del KINDS["box"]


def test_the_settings_table_lists_the_registered_kinds() -> None:
    assert kind_names() == ("hypercube", "ensemble") == POPS_SETTINGS["posterior"].allowed()
    assert posterior_kind("ensemble").streams_corrections and not posterior_kind("ensemble").bounds
    assert posterior_kind("hypercube").bounds and not posterior_kind("hypercube").streams_corrections
    with pytest.raises(InputError, match="posterior='nope': must be one of hypercube, ensemble"):
        posterior_kind("nope")


def test_a_kind_registered_after_import_is_offered_by_the_settings_table(box_kind) -> None:
    assert POPS_SETTINGS["posterior"].allowed() == ("hypercube", "ensemble", "box")
    check_settings(posterior="box")
    POPSRegressor(posterior="box")._validate_params()  # scikit-learn's constraint asks the registry too
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--posterior", "box"]).posterior == "box"
    assert "box (the hypercube again)" in " ".join(parser.format_help().split())


def test_a_registered_kind_drives_the_passes_save_load_and_predictions(tmp_path, box_kind) -> None:
    X, y, w = misspecified(2000, 5, seed=3)
    design = design_from(X, y, w, chunk_rows=500)
    box, _ = fit_pops_with_evidence(design, settings=PopsSettings(posterior="box"))
    cube = fit(X, y, weight=w, chunk_rows=500)
    assert box.kind == "box" and box.kind_ is box_kind
    for name in ("coef_", "basis_", "lower_", "upper_", "misspecification_sigma_"):
        np.testing.assert_array_equal(getattr(box, name), getattr(cube, name))
    back = Posterior.load(box.save(tmp_path / "box.zarr"))
    assert back.kind == "box"
    np.testing.assert_array_equal(back.perturbations(7, "sobol", 1), cube.perturbations(7, "sobol", 1))
    a, b = predict_ensemble(back, X[:300]), predict_ensemble(cube, X[:300])
    for name in ("mean", "std", "min", "max", "box_min", "box_max"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_a_posterior_of_an_unknown_kind_is_refused(tmp_path) -> None:
    import zarr

    X, y, _ = misspecified(600, 4, seed=4)
    path = fit(X, y).save(tmp_path / "p.zarr")
    zarr.open_group(str(path), mode="r+").attrs["posterior"] = "nope"
    with pytest.raises(InputError, match="p.zarr: posterior='nope': must be one of"):
        Posterior.load(path)
