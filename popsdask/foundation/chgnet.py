"""CHGNet as a descriptor extractor (the ``chgnet`` wheel ships its pretrained weights)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import Extracted, require_torch, set_torch_threads

__all__ = ["CHGNetExtractor"]

FEATURES = ("atom_fea", "readout")


@dataclass(frozen=True)
class CHGNetExtractor:
    """Per-atom features of CHGNet and its energy.

    Parameters
    ----------
    model : str
        A pretrained version bundled with the wheel (``"0.3.0"``, ``"0.2.0"``, ``"r2scan"``)
        or the path of a CHGNet checkpoint (``CHGNet.from_file``).
    features : {"atom_fea", "readout"} or tuple of them
        ``"atom_fea"``: the atom features ``predict_structure(..., return_atom_feas=True)``
        returns (after the second-to-last atom convolution; CHGNet's magnetic-moment head
        reads them). ``"readout"``: the exact per-atom input of the energy MLP (after the last
        atom convolution and the readout layer norm), captured with a forward pre-hook. Both
        come from the same forward pass; a tuple concatenates them in order.
    batch_size : int
        Structures per CHGNet forward pass.
    torch_threads : int or None
        Intra-op threads of torch in each worker process (1 suits one worker per core).
    """

    model: str = "0.3.0"
    features: str | tuple[str, ...] = "atom_fea"
    batch_size: int = 16
    torch_threads: int | None = 1
    name: str = "chgnet"

    def _features(self) -> tuple[str, ...]:
        feats = (self.features,) if isinstance(self.features, str) else tuple(self.features)
        bad = [f for f in feats if f not in FEATURES]
        if bad or not feats:
            raise ValueError(f"CHGNet features {bad or feats!r}: choose from {FEATURES}")
        return feats

    def load(self) -> Any:
        """Load the CHGNet model on the CPU (bundled weights or a local checkpoint)."""
        require_torch("CHGNetExtractor")
        self._features()
        set_torch_threads(self.torch_threads)
        from chgnet.model import CHGNet

        if self.model in ("0.3.0", "0.2.0", "r2scan"):
            model = CHGNet.load(model_name=self.model, use_device="cpu", verbose=False)
        else:
            path = Path(os.path.expanduser(self.model))
            if not path.is_file():
                raise FileNotFoundError(
                    f"CHGNet checkpoint not found: looked for {path.absolute()}; give one of the "
                    "bundled versions '0.3.0', '0.2.0', 'r2scan' or an existing file"
                )
            model = CHGNet.from_file(str(path)).to("cpu")
        model.eval()
        return model

    def feature_names(self, model: Any) -> list[str]:
        dim = int(model.atom_fea_dim)
        return [f"chgnet_{f}_{i}" for f in self._features() for i in range(dim)]

    def describe(self, model: Any) -> dict[str, Any]:
        import chgnet

        return {
            "extractor": self.name,
            "chgnet_version": getattr(chgnet, "__version__", "unknown"),
            "model": self.model,
            "model_version": str(getattr(model, "version", self.model)),
            "features": list(self._features()),
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "energy": "CHGNet total energy (eV): predict_structure 'e' times n_atoms for intensive models",
        }

    def extract(self, model: Any, structures: list[Any]) -> Extracted:
        """Descriptors and total energies for a batch of ``ase.Atoms``."""
        torch = require_torch("CHGNetExtractor")
        from pymatgen.io.ase import AseAtomsAdaptor

        feats = self._features()
        set_torch_threads(self.torch_threads)
        pmg = [AseAtomsAdaptor.get_structure(a) for a in structures]
        n_atoms = np.array([len(a) for a in structures])
        captured: list[np.ndarray] = []

        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            captured.append(args[0].detach().cpu().numpy().astype(np.float64))

        handle = model.mlp.register_forward_pre_hook(hook) if "readout" in feats else None
        if handle is not None and not getattr(model, "mlp_first", True):
            handle.remove()
            raise ValueError("features='readout' needs a CHGNet whose energy MLP acts per atom (mlp_first)")
        try:
            with torch.no_grad():
                preds = model.predict_structure(
                    pmg,
                    task="e",
                    return_atom_feas="atom_fea" in feats,
                    batch_size=self.batch_size,
                )
        finally:
            if handle is not None:
                handle.remove()
        preds = [preds] if isinstance(preds, dict) else preds
        energy = np.array([float(p["e"]) for p in preds], dtype=np.float64)
        if getattr(model, "is_intensive", True):
            energy = energy * n_atoms
        readout = np.split(np.concatenate(captured, axis=0), np.cumsum(n_atoms)[:-1]) if "readout" in feats else []
        descriptors = []
        for i, p in enumerate(preds):
            parts = []
            for f in feats:
                parts.append(p["atom_fea"].astype(np.float64) if f == "atom_fea" else readout[i])
            block = np.concatenate(parts, axis=1)
            if block.shape[0] != n_atoms[i]:
                raise RuntimeError(
                    f"CHGNet returned {block.shape[0]} atom feature rows for a structure of {n_atoms[i]} atoms"
                )
            descriptors.append(block)
        return Extracted(descriptors=descriptors, energy=energy)
