"""Posterior kinds: what a POPS posterior keeps of the pointwise corrections, and how it is used.

Every kind shares passes 1–3 (Gram and evidence, leverage, the second moment of the kept
corrections). A kind says what else the fit computes and how the posterior is then drawn and
predicted with:

======================  ==================================  ===================================
                        ``hypercube``                       ``ensemble``
======================  ==================================  ===================================
pass 3 also             –                                   streams every kept correction to
                                                            Zarr (``streams_corrections``)
pass 4                  the box along the principal basis   – (``bounds = False``)
                        (``bounds = True``)
samples                 U (lo + (hi − lo) u), u from the    stored corrections without
                        sampling method                     replacement (``uniform`` only)
second moment           exact moment of the uniform box     mean of c² A⁻¹xxᵀA⁻¹ over the kept
                                                            rows
prediction envelope     closed form ``box`` per row         min/max over the ``support``
saved                   basis, lower, upper                 corrections
======================  ==================================  ===================================

To add a kind: subclass :class:`PosteriorKind` in a new module (overriding what differs), call
:func:`register_kind` at its bottom, and import that module at the bottom of this one so that
``popsdask.fit``, :class:`popsdask.POPSRegressor` and the CLI offer it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .pops import SAMPLING_METHODS, hypercube_second_moment, unit_samples
from .validation import InputError

if TYPE_CHECKING:
    import dask.array as da

    from ..engine.posterior import Posterior

__all__ = ["KINDS", "Ensemble", "Hypercube", "PosteriorKind", "kind_names", "posterior_kind", "register_kind"]


class PosteriorKind:
    """One posterior kind. Subclasses set ``name`` and ``help`` and override what differs."""

    #: the name in ``posterior=`` and in a saved posterior's ``posterior`` attribute
    name: ClassVar[str] = ""
    #: one phrase for the settings table and ``--posterior``'s help
    help: ClassVar[str] = ""
    #: pass 3 also writes every kept correction to Zarr (the posterior reads them lazily)
    streams_corrections: ClassVar[bool] = False
    #: pass 4 runs: the principal basis of the moment and the box's bounds along it
    bounds: ClassVar[bool] = False
    #: the sampling methods ``perturbations`` accepts, and why others are refused
    methods: ClassVar[tuple[str, ...]] = SAMPLING_METHODS
    method_note: ClassVar[str] = ""

    def second_moment(self, moment: np.ndarray, n_selected: int, bounds: Any) -> np.ndarray:
        """``misspecification_sigma_`` from pass 3's A⁻¹(Σ c²xxᵀ)A⁻¹ and pass 4's bounds."""
        raise NotImplementedError

    def perturbations(self, post: Posterior, n: int, method: str, seed: int | None) -> np.ndarray:
        """``n`` parameter perturbations δθ (n × P), reproducible from ``seed``."""
        raise NotImplementedError

    def prefix_draws(self, post: Posterior, n: int, method: str, seed: int | None) -> np.ndarray:
        """``n`` perturbations whose first S rows are a draw of S (the envelope-vs-S curve)."""
        return self.perturbations(post, n, method, seed)

    def support(self, post: Posterior) -> da.Array | None:
        """The finite set of corrections the posterior draws from (lazy), or None: then the
        predictions' summaries can be exact over all of it."""
        return None

    def box(self, post: Posterior) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(basis, lower, upper) of a box posterior, whose exact prediction envelope has a
        closed form per row, or None."""
        return None

    def variables(self, post: Posterior) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        """The kind's in-memory arrays as Dataset variables, saved beside ``coef`` and ``sigma``
        (the lazy ``corrections_`` are streamed by :meth:`Posterior.save` for every kind)."""
        return {}

    def from_dataset(self, ds: Any) -> dict[str, Any]:
        """:class:`Posterior` keyword arguments read back from the saved :meth:`variables`."""
        return {}

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise ValueError(f"the {self.name} posterior {self.method_note}: method={self.methods[0]!r}")


class Hypercube(PosteriorKind):
    """A box in the principal basis of the corrections, sampled uniformly (or quasi-randomly)."""

    name = "hypercube"
    help = "box in the principal basis of the corrections"
    bounds = True

    def second_moment(self, moment: np.ndarray, n_selected: int, bounds: Any) -> np.ndarray:
        return hypercube_second_moment(bounds.basis, bounds.lower, bounds.upper)

    def perturbations(self, post: Posterior, n: int, method: str, seed: int | None) -> np.ndarray:
        u = unit_samples(n, post.basis_.shape[1], method, seed)
        box = post.lower_ + (post.upper_ - post.lower_) * u
        return box @ post.basis_.T

    def box(self, post: Posterior) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        return post.basis_, post.lower_, post.upper_

    def variables(self, post: Posterior) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        if post.basis_ is None:
            return {}
        return {
            "basis": (("feature", "mode"), post.basis_),
            "lower": (("mode",), post.lower_),
            "upper": (("mode",), post.upper_),
        }

    def from_dataset(self, ds: Any) -> dict[str, Any]:
        return {f"{k}_": ds[k].values for k in ("basis", "lower", "upper") if k in ds}


class Ensemble(PosteriorKind):
    """The kept pointwise corrections themselves (on disk, drawn without replacement)."""

    name = "ensemble"
    help = "the corrections themselves"
    streams_corrections = True
    methods = ("uniform",)
    method_note = "samples stored corrections"

    def second_moment(self, moment: np.ndarray, n_selected: int, bounds: Any) -> np.ndarray:
        return moment / n_selected

    def perturbations(self, post: Posterior, n: int, method: str, seed: int | None) -> np.ndarray:
        # all of them when n is at least their number, else n drawn in index order
        self.check_method(method)
        total = int(post.corrections_.shape[0])
        rng = np.random.default_rng(seed)
        idx = np.arange(total) if n >= total else np.sort(rng.choice(total, n, replace=False))
        return np.asarray(post.corrections_[idx].compute(), dtype=np.float64)

    def prefix_draws(self, post: Posterior, n: int, method: str, seed: int | None) -> np.ndarray:
        draws = self.perturbations(post, n, method, seed)
        # drawn in index order: shuffle so that prefixes are random subsets
        return draws[np.random.default_rng(seed).permutation(draws.shape[0])]

    def support(self, post: Posterior) -> da.Array | None:
        return post.corrections_


#: the registered kinds by name, in the order the settings table lists them
KINDS: dict[str, PosteriorKind] = {}


def register_kind(kind: PosteriorKind) -> PosteriorKind:
    """Register ``kind`` under ``kind.name`` (replacing a kind of that name)."""
    if not kind.name:
        raise ValueError(f"{type(kind).__name__}: a posterior kind needs a name")
    KINDS[kind.name] = kind
    return kind


def posterior_kind(name: str) -> PosteriorKind:
    """The registered kind ``name`` (:class:`InputError` naming the known ones otherwise)."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise InputError(f"posterior={name!r}: must be one of {', '.join(KINDS)}") from None


def kind_names() -> tuple[str, ...]:
    return tuple(KINDS)


register_kind(Hypercube())
register_kind(Ensemble())
