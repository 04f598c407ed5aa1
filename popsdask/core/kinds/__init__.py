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

To add a kind: subclass :class:`PosteriorKind` in a module of its own (overriding what differs)
and call :func:`register_kind` with an instance; ``popsdask.fit``, :class:`popsdask.POPSRegressor`
and the CLI then offer it (they ask the registry when they check or list the kinds). The built-in
kinds are registered here.
"""

from .base import KINDS, PosteriorKind, PosteriorState, kind_names, posterior_kind, register_kind
from .ensemble import Ensemble
from .hypercube import Hypercube

__all__ = [
    "KINDS",
    "Ensemble",
    "Hypercube",
    "PosteriorKind",
    "PosteriorState",
    "kind_names",
    "posterior_kind",
    "register_kind",
]

register_kind(Hypercube())
register_kind(Ensemble())
