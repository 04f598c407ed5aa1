"""Linear correctors with POPS uncertainty on foundation (universal) interatomic potentials.

Treat the per-atom invariant features that a foundation model's energy readout receives as
descriptors D_i and fit ``E_ref − E_model ≈ Θ · Σ_i D_i + Σ_e c_e n_e`` (per-element offsets
``c_e`` on the element counts ``n_e``) with POPS (paper section III.G).

Importing this package does not import torch; the extractors import torch, chgnet or
mace-torch (the ``foundation`` extra) when a model is loaded.
"""

from .base import Extracted, Extractor, clear_model_cache, worker_model
from .build import build_store, extract_rows
from .chgnet import CHGNetExtractor
from .mace import MACEExtractor, mace_cache_dir, resolve_mace_model
from .structures import element_counts, elements_of, read_structures, reference_energy

__all__ = [
    "CHGNetExtractor",
    "Extracted",
    "Extractor",
    "MACEExtractor",
    "build_store",
    "clear_model_cache",
    "element_counts",
    "elements_of",
    "extract_rows",
    "mace_cache_dir",
    "read_structures",
    "reference_energy",
    "resolve_mace_model",
    "worker_model",
]
