"""The ``hypercube`` posterior kind: a box in the principal basis of the corrections."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pops import hypercube_second_moment, unit_samples
from .base import Box, PosteriorKind, PosteriorState


class Hypercube(PosteriorKind):
    """A box in the principal basis of the corrections, sampled uniformly (or quasi-randomly)."""

    name = "hypercube"
    help = "box in the principal basis of the corrections"
    bounds = True

    def second_moment(self, moment: np.ndarray, n_selected: int, bounds: Box | None) -> np.ndarray:
        assert bounds is not None  # this kind declares bounds = True, so the fit measured them
        return hypercube_second_moment(bounds.basis, bounds.lower, bounds.upper)

    def perturbations(self, post: PosteriorState, n: int, method: str, seed: int | None) -> np.ndarray:
        basis, lower, upper = _fitted_box(post)
        u = unit_samples(n, basis.shape[1], method, seed)
        box = lower + (upper - lower) * u
        delta: np.ndarray = box @ basis.T
        return delta

    def box(self, post: PosteriorState) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        return None if post.basis_ is None else _fitted_box(post)

    def variables(self, post: PosteriorState) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        if post.basis_ is None:
            return {}
        basis, lower, upper = _fitted_box(post)
        return {
            "basis": (("feature", "mode"), basis),
            "lower": (("mode",), lower),
            "upper": (("mode",), upper),
        }

    def from_dataset(self, ds: Any) -> dict[str, Any]:
        return {f"{k}_": ds[k].values for k in ("basis", "lower", "upper") if k in ds}


def _fitted_box(post: PosteriorState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(basis, lower, upper)`` of a fitted hypercube posterior (all three are set together)."""
    assert post.basis_ is not None and post.lower_ is not None and post.upper_ is not None
    return post.basis_, post.lower_, post.upper_
