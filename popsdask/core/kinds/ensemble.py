"""The ``ensemble`` posterior kind: the kept pointwise corrections themselves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import Box, PosteriorKind, PosteriorState

if TYPE_CHECKING:
    import dask.array as da


class Ensemble(PosteriorKind):
    """The kept pointwise corrections themselves (on disk, drawn without replacement)."""

    name = "ensemble"
    help = "the corrections themselves"
    streams_corrections = True
    methods = ("uniform",)
    method_note = "samples stored corrections"

    def second_moment(self, moment: np.ndarray, n_selected: int, bounds: Box | None) -> np.ndarray:
        return moment / n_selected

    def perturbations(self, post: PosteriorState, n: int, method: str, seed: int | None) -> np.ndarray:
        # all of them when n is at least their number, else n drawn in index order
        self.check_method(method)
        corrections = post.corrections_
        assert corrections is not None  # this kind streams its corrections into the posterior
        total = int(corrections.shape[0])
        rng = np.random.default_rng(seed)
        idx = np.arange(total) if n >= total else np.sort(rng.choice(total, n, replace=False))
        return np.asarray(corrections[idx].compute(), dtype=np.float64)

    def prefix_draws(self, post: PosteriorState, n: int, method: str, seed: int | None) -> np.ndarray:
        draws = self.perturbations(post, n, method, seed)
        # drawn in index order: shuffle so that prefixes are random subsets
        return draws[np.random.default_rng(seed).permutation(draws.shape[0])]

    def support(self, post: PosteriorState) -> da.Array | None:
        return post.corrections_
