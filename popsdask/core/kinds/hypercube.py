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
        return hypercube_second_moment(bounds.basis, bounds.lower, bounds.upper)

    def perturbations(self, post: PosteriorState, n: int, method: str, seed: int | None) -> np.ndarray:
        u = unit_samples(n, post.basis_.shape[1], method, seed)
        box = post.lower_ + (post.upper_ - post.lower_) * u
        return box @ post.basis_.T

    def box(self, post: PosteriorState) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        return post.basis_, post.lower_, post.upper_

    def variables(self, post: PosteriorState) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        if post.basis_ is None:
            return {}
        return {
            "basis": (("feature", "mode"), post.basis_),
            "lower": (("mode",), post.lower_),
            "upper": (("mode",), post.upper_),
        }

    def from_dataset(self, ds: Any) -> dict[str, Any]:
        return {f"{k}_": ds[k].values for k in ("basis", "lower", "upper") if k in ds}
