"""Parts of popsdask.foundation that need no torch: structure reading, counts, imports."""

from __future__ import annotations

import bz2
import gzip
import lzma
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic or foundation extra (ase) not installed")

from popsdask import InputError  # noqa: E402
from popsdask.foundation import element_counts, elements_of, read_structures, reference_energy


def structures():
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    for i, (sym, kind, a) in enumerate([("W", "bcc", 3.17), ("Be", "hcp", 2.29), ("W", "fcc", 4.0)]):
        atoms = bulk(sym, kind, a=a).repeat((i + 1, 1, 1))
        atoms.numbers[0] = 4 if sym == "W" and i == 2 else atoms.numbers[0]
        atoms.calc = SinglePointCalculator(atoms, energy=-1.5 * (i + 1))
        atoms.info["group"] = f"g{i}"
        out.append(atoms)
    return out


@pytest.mark.parametrize("suffix,compress", [(".xz", lzma.compress), (".gz", gzip.compress), (".bz2", bz2.compress)])
def test_compressed_extxyz_reads_like_plain(tmp_path, suffix, compress):
    import ase.io

    plain = tmp_path / "s.extxyz"
    ase.io.write(plain, structures(), format="extxyz")
    packed = tmp_path / f"s.extxyz{suffix}"
    packed.write_bytes(compress(plain.read_bytes()))
    a, b = read_structures(plain), read_structures(packed)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert reference_energy(x) == reference_energy(y)
        assert x.info["group"] == y.info["group"]
    assert len(read_structures(packed, index="1:")) == 2
    with pytest.raises(FileNotFoundError, match="missing.extxyz"):
        read_structures(tmp_path / "missing.extxyz")


def test_counts_and_elements():
    s = structures()
    assert elements_of(s) == ["Be", "W"]  # by atomic number, not alphabetically by chance
    counts = element_counts(s, ["Be", "W"])
    np.testing.assert_array_equal(counts, [[0, 1], [4, 0], [1, 2]])
    with pytest.raises(InputError, match="Z=4"):
        element_counts(s, ["W"])


def test_reference_energy_errors():
    atoms = structures()[0]
    atoms.calc = None
    with pytest.raises(InputError, match="energy_key"):
        reference_energy(atoms)
    with pytest.raises(InputError, match="no info\\['E'\\]"):
        reference_energy(atoms, "E")
    atoms.info["E"] = 2.5
    assert reference_energy(atoms, "E") == 2.5


def test_core_and_foundation_imports_do_not_import_torch():
    code = (
        "import sys, popsdask, popsdask.foundation; "
        "bad = [m for m in ('torch', 'chgnet', 'mace', 'e3nn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_tuning_can_be_switched_off():
    code = "from popsdask.foundation.base import tune_malloc; print(tune_malloc(), tune_malloc())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    off = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "POPSDASK_MALLOC_TUNING": "0"},
    )
    assert off.stdout.split() == ["False", "False"]
    import platform

    expected = "True" if platform.libc_ver()[0] == "glibc" else "False"
    assert on.stdout.split() == [expected, expected]


def test_missing_torch_is_a_clear_error():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is not installed (blocked by the test)')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from popsdask.foundation import CHGNetExtractor, MACEExtractor\n"
        "for ext in (CHGNetExtractor(), MACEExtractor()):\n"
        "    try:\n"
        "        ext.load()\n"
        "    except ImportError as err:\n"
        "        assert 'popsdask[foundation]' in str(err) and 'torch==2.13.0' in str(err), err\n"
        "    else:\n"
        "        raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
