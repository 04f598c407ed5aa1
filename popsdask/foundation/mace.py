"""MACE (mace-torch) as a descriptor extractor: per-atom invariant features of every layer.

The features are the scalar (``0e``) channels of each interaction layer's node features, i.e.
what MACE's readouts receive — the same as ``MACECalculator.get_descriptors(...,
invariants_only=True)``; for MACE-MP/MPA-0 medium (128 channels, 2 layers) that is 256 per atom.

Model files are looked up locally and never downloaded unless ``download=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import Extracted, require_torch, set_torch_threads

__all__ = ["MACEExtractor", "resolve_mace_model", "mace_cache_dir"]

DEFAULT_MODEL = "medium-mpa-0"


def mace_cache_dir() -> Path:
    """Where mace-torch caches downloaded foundation models (``$XDG_CACHE_HOME/mace``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mace"


def _cached_name(url: str) -> str:
    # mace.calculators.foundations_models.download_mace_mp_checkpoint's cache file name
    return "".join(c for c in os.path.basename(url) if c.isalnum() or c in "_")


def resolve_mace_model(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> Path:
    """Find a MACE model file without touching the network unless asked.

    Parameters
    ----------
    model : str or path-like
        A file path, or a ``mace_mp`` model name (``"medium-mpa-0"`` = MACE-MPA-0, ``"medium"``,
        ``"small"``, ``"medium-omat-0"``, ...), or a download URL.
    cache_dir : path-like, optional
        Directory holding downloaded models (default: mace-torch's, ``~/.cache/mace``).
    download : bool
        When the file is not found locally, download it with mace-torch into the cache. Off by
        default: nothing is fetched unless the caller asks.

    Returns
    -------
    pathlib.Path of an existing model file.

    Raises
    ------
    FileNotFoundError
        Naming every place that was looked at.
    """
    text = os.fspath(model)
    as_path = Path(os.path.expanduser(text))
    if as_path.is_file():
        return as_path
    cache = Path(cache_dir) if cache_dir is not None else mace_cache_dir()
    try:
        from mace.calculators import foundations_models as fm
    except ImportError as err:
        raise ImportError("MACE models need mace-torch: pip install 'popsdask[foundation]'") from err
    urls: dict[str, str] = dict(fm.mace_mp_urls)
    looked: list[Path] = []
    if text in urls or text.startswith(("https://", "http://")):
        url = urls.get(text, text)
        candidates = []
        if url == urls.get(DEFAULT_MODEL):
            candidates.append(Path(fm.local_model_path))  # a copy shipped next to mace-torch
        candidates += [cache / _cached_name(url), cache / os.path.basename(url)]
        for c in candidates:
            looked.append(c)
            if c.is_file():
                return c
        if download:
            if cache_dir is not None:
                raise ValueError(
                    "download=True stores models in mace-torch's own cache "
                    f"({mace_cache_dir()}); leave cache_dir unset to download"
                )
            return Path(fm.download_mace_mp_checkpoint(url if text not in urls else text))
        where = "\n  ".join(str(p) for p in looked)
        raise FileNotFoundError(
            f"MACE model {text!r} not found locally; looked at:\n  {where}\n"
            f"Put the file (from {url}) at one of these paths, pass its path, or pass "
            "download=True to let mace-torch download it."
        )
    names = ", ".join(sorted(urls))
    raise FileNotFoundError(
        f"MACE model file not found: {as_path.absolute()} (not a file, and not a mace_mp model name: {names})"
    )


@dataclass(frozen=True)
class MACEExtractor:
    """Per-atom invariant descriptors and energies of a MACE model.

    Parameters
    ----------
    model : str or path
        Model file path or ``mace_mp`` name (see :func:`resolve_mace_model`); default MACE-MPA-0.
    dtype : {"float32", "float64"}
        Precision of the model and its inputs.
    head : str, optional
        Readout head of multi-head models (default: the model's first head).
    num_layers : int
        Interaction layers whose invariants are kept (-1: all, as ``get_descriptors``).
    cache_dir : str, optional
        Where downloaded models are looked for (default ``~/.cache/mace``).
    download : bool
        Allow mace-torch to download a missing model (default False: never).
    torch_threads : int or None
        Intra-op threads of torch in each worker process.
    """

    model: str = DEFAULT_MODEL
    dtype: str = "float32"
    head: str | None = None
    num_layers: int = -1
    cache_dir: str | None = None
    download: bool = False
    torch_threads: int | None = 1
    name: str = "mace"

    def path(self) -> Path:
        """The model file (looked up, downloaded only when ``download=True``)."""
        return resolve_mace_model(self.model, cache_dir=self.cache_dir, download=self.download)

    def load(self) -> Any:
        """Load the model on the CPU in ``dtype``.

        MACE model files are pickled torch modules: load only files you trust.
        """
        torch = require_torch("MACEExtractor")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype={self.dtype!r}: use 'float32' or 'float64'")
        import mace  # noqa: F401  (mace sets up torch.load for e3nn before e3nn is imported)

        set_torch_threads(self.torch_threads)
        path = self.path()
        model = torch.load(str(path), map_location="cpu", weights_only=False)
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "products"):
            raise ValueError(f"{path}: not a MACE model (a pickled mace.modules model)")
        model = model.to(getattr(torch, self.dtype)).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        model._popsdask_path = str(path)
        return model

    # -- layout of node_feats -------------------------------------------------------------
    def _layout(self, model: Any) -> tuple[int, int, int]:
        """(num_layers kept, invariant features per layer, l_max) as in get_descriptors."""
        from e3nn import o3

        n_int = int(model.num_interactions)
        layers = n_int if self.num_layers == -1 else int(self.num_layers)
        if not 1 <= layers <= n_int:
            raise ValueError(f"num_layers={self.num_layers}: the model has {n_int} layers")
        irreps_out = o3.Irreps(str(model.products[0].linear.irreps_out))
        l_max = irreps_out.lmax
        return layers, irreps_out.dim // (l_max + 1) ** 2, l_max

    def feature_names(self, model: Any) -> list[str]:
        layers, per_layer, _ = self._layout(model)
        return [f"mace_l{i}_{j}" for i in range(layers) for j in range(per_layer)]

    def describe(self, model: Any) -> dict[str, Any]:
        import mace

        layers, per_layer, l_max = self._layout(model)
        return {
            "extractor": self.name,
            "mace_version": getattr(mace, "__version__", "unknown"),
            "model": str(self.model),
            "model_file": getattr(model, "_popsdask_path", ""),
            "dtype": self.dtype,
            "head": self._head(model),
            "layers": layers,
            "invariants_per_layer": per_layer,
            "l_max": l_max,
            "r_max": float(model.r_max),
            "atomic_numbers": [int(z) for z in model.atomic_numbers],
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "energy": "MACE total energy (eV) of the chosen head",
        }

    def _head(self, model: Any) -> str:
        heads = [str(h) for h in getattr(model, "heads", None) or ["Default"]]
        if self.head is None:
            return heads[0]
        if self.head not in heads:
            raise ValueError(f"head={self.head!r}: the model's heads are {heads}")
        return self.head

    def extract(self, model: Any, structures: list[Any]) -> Extracted:
        """Invariant per-atom descriptors and total energies for a batch of ``ase.Atoms``."""
        torch = require_torch("MACEExtractor")
        from mace import data as mace_data
        from mace.modules.utils import extract_invariant
        from mace.tools import torch_geometric, torch_tools, utils

        set_torch_threads(self.torch_threads)
        layers, per_layer, l_max = self._layout(model)
        head = self._head(model)
        heads = [str(h) for h in getattr(model, "heads", None) or ["Default"]]
        zs = [int(z) for z in model.atomic_numbers]
        z_table = utils.AtomicNumberTable(zs)
        for i, atoms in enumerate(structures):
            missing = sorted(set(int(z) for z in atoms.numbers) - set(zs))
            if missing:
                raise ValueError(
                    f"structure {i} ({atoms.get_chemical_formula()}) has atomic numbers "
                    f"{missing} that the MACE model does not know (it covers {zs})"
                )
        keyspec = mace_data.KeySpecification()
        dtype = next(model.parameters()).dtype  # inputs in the precision the model is in
        with torch_tools.default_dtype(dtype):
            graphs = [
                mace_data.AtomicData.from_config(
                    mace_data.config_from_atoms(a, key_specification=keyspec, head_name=head),
                    z_table=z_table,
                    cutoff=float(model.r_max),
                    heads=heads,
                )
                for a in structures
            ]
        loader = torch_geometric.dataloader.DataLoader(
            dataset=graphs, batch_size=len(graphs), shuffle=False, drop_last=False
        )
        batch = next(iter(loader))
        with torch.no_grad():
            out = model(batch.to_dict(), training=False, compute_force=False)
        inv = extract_invariant(out["node_feats"], num_layers=layers, num_features=per_layer, l_max=l_max)
        inv = inv[:, : layers * per_layer].detach().cpu().numpy().astype(np.float64)
        bounds = batch.ptr.cpu().numpy()
        descriptors = [inv[bounds[i] : bounds[i + 1]] for i in range(len(structures))]
        energy = out["energy"].detach().cpu().numpy().astype(np.float64).reshape(-1)
        return Extracted(descriptors=descriptors, energy=energy)
