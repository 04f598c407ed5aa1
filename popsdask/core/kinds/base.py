"""A posterior kind's interface (:class:`PosteriorKind`), what it reads of a posterior
(:class:`PosteriorState`) and the registry of kinds by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from ..pops import SAMPLING_METHODS
from ..validation import InputError

if TYPE_CHECKING:
    import dask.array as da


class PosteriorState(Protocol):
    """What a kind reads of a fitted posterior (:class:`popsdask.Posterior` has these): the box
    of a box posterior, the lazy kept corrections of one that streams them (None otherwise)."""

    basis_: np.ndarray | None
    lower_: np.ndarray | None
    upper_: np.ndarray | None
    corrections_: da.Array | None


class Box(Protocol):
    """Pass 4's result as a kind reads it: the principal basis (P × K) and the box's bounds (K)."""

    basis: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


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

    def second_moment(self, moment: np.ndarray, n_selected: int, bounds: Box | None) -> np.ndarray:
        """``misspecification_sigma_`` from pass 3's A⁻¹(Σ c²xxᵀ)A⁻¹ (P × P) and pass 4's box
        (None for a kind without pass 4)."""
        raise NotImplementedError

    def perturbations(self, post: PosteriorState, n: int, method: str, seed: int | None) -> np.ndarray:
        """``n`` parameter perturbations δθ (n × P), reproducible from ``seed``."""
        raise NotImplementedError

    def prefix_draws(self, post: PosteriorState, n: int, method: str, seed: int | None) -> np.ndarray:
        """``n`` perturbations whose first S rows are a draw of S (the envelope-vs-S curve)."""
        return self.perturbations(post, n, method, seed)

    def support(self, post: PosteriorState) -> da.Array | None:
        """The finite set of corrections the posterior draws from (lazy), or None: then the
        predictions' summaries can be exact over all of it."""
        return None

    def box(self, post: PosteriorState) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(basis, lower, upper) of a box posterior, whose exact prediction envelope has a
        closed form per row, or None."""
        return None

    def variables(self, post: PosteriorState) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        """The kind's in-memory arrays as Dataset variables, saved beside ``coef`` and ``sigma``
        (the lazy ``corrections_`` are streamed by :meth:`popsdask.Posterior.save` for every kind)."""
        return {}

    def from_dataset(self, ds: Any) -> dict[str, Any]:
        """:class:`popsdask.Posterior` keyword arguments read back from the saved :meth:`variables`."""
        return {}

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise ValueError(f"the {self.name} posterior {self.method_note}: method={self.methods[0]!r}")


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
