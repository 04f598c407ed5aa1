"""A POPS fit: the passes in order, each taken from a checkpoint when it holds it, and the
posterior they define."""

from __future__ import annotations

import os

from ..core.evidence import Evidence, EvidenceParams
from ..core.kinds import posterior_kind
from ..core.validation import InputError
from ..io.store import output_lock
from .checkpoint import CHECKPOINT_PASSES, Checkpoint
from .design import Design
from .execution import client_blas
from .incremental import added_design, fitted_rows
from .passes import bounds_pass, leverage_pass, moment_pass, statistics_and_evidence
from .posterior import Posterior, provenance
from .state import Bounds, Leverage, Moment, Pass1, PopsSettings


def check_enough_rows(n: int, p: int, source: str) -> None:
    """POPS needs at least as many rows as parameters (known from the metadata, before any pass)."""
    if n < p:
        raise InputError(
            f"{source}: {n} rows (n_samples = {n}) but {p} features; POPS needs at least as many rows as features"
        )


def fit_pops_with_evidence(
    design: Design,
    *,
    evidence: EvidenceParams | None = None,
    settings: PopsSettings | None = None,
    corrections_path: str | os.PathLike | None = None,
    progress: bool = False,
    reuse_statistics: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    previous: Posterior | str | os.PathLike | None = None,
) -> tuple[Posterior, Evidence]:
    """Fit BayesianRidge evidence maximisation and the POPS posterior, pass by pass; also return
    the evidence maximisation (its ``scores`` are the log marginal likelihood per iteration when
    ``compute_score``).

    ``previous`` (a posterior, or its path): add ``design``'s rows to the rows it was fitted to.
    Pass 1 reads only ``design`` and combines its statistics with those ``previous`` stores;
    passes 2–4 read the old rows again (from the stores ``previous`` records, refused if they
    changed) and the new ones. The result equals a fit of all rows from scratch.

    ``corrections_path`` (a new Zarr array directory) receives the pointwise corrections of
    the ``ensemble`` posterior. ``reuse_statistics``: take pass 1 from (and put it in)
    :data:`STATISTICS_CACHE` when the design has a :attr:`~Design.key`.

    ``checkpoint``: a directory where each finished pass's result is written atomically
    (:class:`Checkpoint`); ``resume`` continues from its last finished pass after checking that
    the data's fingerprint and the settings are those it was made with (else
    :class:`InputError`). Without ``resume`` an existing checkpoint is replaced. The ``ensemble``
    corrections then live in the checkpoint (``corrections_path`` is not used): keep it until
    the posterior is saved.
    """
    settings = settings or PopsSettings()
    evidence = evidence or EvidenceParams()
    if previous is not None:
        where = "the previous posterior" if isinstance(previous, Posterior) else str(previous)
        design = added_design(previous if isinstance(previous, Posterior) else Posterior.load(previous), design, where)
    check_enough_rows(design.n_rows, design.n_features, design.source)
    if checkpoint is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint directory to resume from")
        with client_blas(design.n_features):
            return _fit_passes(design, evidence, settings, corrections_path, progress, reuse_statistics, None)
    with output_lock(checkpoint), client_blas(design.n_features):  # one fit per checkpoint at a time
        ckpt = Checkpoint.open(checkpoint, design, evidence, settings, resume=resume)
        try:
            return _fit_passes(design, evidence, settings, corrections_path, progress, reuse_statistics, ckpt)
        except BaseException:
            if not any(ckpt.has(name) for name in CHECKPOINT_PASSES):
                ckpt.remove()  # nothing to resume: leave no empty directory behind
            raise


def _fit_passes(
    design: Design,
    evidence: EvidenceParams,
    settings: PopsSettings,
    corrections_path: str | os.PathLike | None,
    progress: bool,
    reuse_statistics: bool,
    ckpt: Checkpoint | None,
) -> tuple[Posterior, Evidence]:
    """The passes in order, each taken from ``ckpt`` when it holds it, else computed (and then
    checkpointed)."""
    loaded = ckpt.load_evidence(progress) if ckpt else None
    if loaded is None:
        first, ev = statistics_and_evidence(design, evidence, progress=progress, reuse=reuse_statistics)
        if ckpt:
            ckpt.save_evidence(first, ev)
    else:
        first, ev = loaded
    kind = posterior_kind(settings.posterior)
    lev = None
    if ckpt:
        # pass 2's blocks are read back only for a pass 3 or 4 still to run
        done = ckpt.has("moment") and (not kind.bounds or ckpt.has("bounds"))
        lev = ckpt.load_leverage(progress, blocks=not done)
    if lev is None:
        lev = leverage_pass(design, ev, settings, progress)
        if ckpt:
            ckpt.save_leverage(lev)
    moment = ckpt.load_moment(progress) if ckpt else None
    if moment is None:
        moment = moment_pass(design, ev, lev, settings, corrections_path, progress, ckpt)
    bounds = None
    if kind.bounds:
        bounds = ckpt.load_bounds(progress) if ckpt else None
        if bounds is None:
            bounds = bounds_pass(design, ev, lev, moment.moment, settings, progress)
            if ckpt:
                ckpt.save_bounds(bounds)
    return _posterior(design, first, ev, lev, moment, bounds, evidence, settings), ev


def _posterior(
    design: Design,
    first: Pass1,
    ev: Evidence,
    lev: Leverage,
    moment: Moment,
    bounds: Bounds | None,
    evidence: EvidenceParams,
    settings: PopsSettings,
) -> Posterior:
    basis, lower, upper = (None, None, None) if bounds is None else (bounds.basis, bounds.lower, bounds.upper)
    mis_sigma = posterior_kind(settings.posterior).second_moment(moment.moment, lev.n_selected, bounds)
    return Posterior(
        coef_=ev.coef,
        sigma_=ev.sigma,
        alpha_=ev.alpha,
        lambda_=ev.lambda_,
        misspecification_sigma_=mis_sigma,
        kind=settings.posterior,
        basis_=basis,
        lower_=lower,
        upper_=upper,
        corrections_=moment.corrections,
        leverage_threshold_=lev.threshold,
        n_rows_=design.n_rows,
        n_selected_=lev.n_selected,
        n_iter_=ev.n_iter,
        condition_number_=ev.condition_number,
        feature_names=design.feature_names,
        settings={
            **vars(settings),
            **vars(evidence),
            # the minimum_relative_error selection as applied (None when off or all rows kept)
            "leverage_floor": lev.floor,
            "residual_threshold": lev.min_residual,
        },
        provenance={
            **provenance(design.source),
            # what each pass read: pass 1 skips rows whose statistics a previous posterior held
            "rows read": {"pass 1": first.rows_read, "passes 2-4": design.n_rows},
        },
        fitted_rows_=fitted_rows(design, first.stats),
    )
