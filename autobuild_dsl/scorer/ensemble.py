"""Ensembles: which members to train (K folds x seeds) and where to train them.

Members run in this process, in local worker processes (spawned, one torch thread each),
or on a Ray cluster, through `autobuild_dsl.parallel`. Whatever runs them, each finished member is handed to `on_done` in
this process, in completion order, so the caller can save it at once (and a rerun can skip
it). Epoch progress is forwarded from local workers through a queue; Ray members report
only when they finish.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from autobuild_dsl.data.splits import kfold_splits, train_test_split
from autobuild_dsl.errors import AbcError
from autobuild_dsl.parallel import Fanout
from autobuild_dsl.scorer.model import PackedGraphs
from autobuild_dsl.scorer.train import (
    EpochProgress,
    MemberMetrics,
    Moments,
    ProgressFn,
    TrainConfig,
    train_member,
)


class EnsembleError(AbcError, ValueError):
    """Members cannot be trained as asked (e.g. Ray requested but not installed)."""

    code = "ensemble"


@dataclass(frozen=True)
class MemberSpec:
    """One predictor to train: its rows and its seed."""

    name: str
    fold: int
    seed: int
    train: list[int]
    test: list[int]


@dataclass
class MemberResult:
    """A trained member as plain data (state dict on CPU), safe to send between processes."""

    spec: MemberSpec
    state: dict[str, torch.Tensor]
    metrics: MemberMetrics
    label: Moments
    hop_norms: list[Moments]
    graph_norms: list[Moments]


def plan_members(
    n: int, *, folds: int = 1, seeds: int = 1, test_fraction: float = 0.1, seed: int = 0
) -> list[MemberSpec]:
    """Members for n rows: one seeded train/test split (folds = 1) or K folds, x seeds.

    The split depends on `seed` only, so every seed of a fold sees the same rows; member
    s of a fold is initialised and shuffled with `seed + s`.
    """
    if seeds < 1:
        raise ValueError("at least one seed is needed")
    if folds == 1:
        split = train_test_split(n, test_fraction, seed)
        parts = [(split.train, split.test)]
    else:
        parts = [(s.train, s.test) for s in kfold_splits(n, folds, seed)]
    return [
        MemberSpec(
            name=f"f{fold}s{s}",
            fold=fold,
            seed=seed + s,
            train=list(train),
            test=list(test),
        )
        for fold, (train, test) in enumerate(parts)
        for s in range(seeds)
    ]


def _train(
    spec: MemberSpec,
    packed: PackedGraphs,
    y: np.ndarray,
    vocab_sizes: Sequence[int],
    config: TrainConfig,
    progress: ProgressFn | None,
) -> MemberResult:
    trained = train_member(
        packed,
        y,
        spec.train,
        spec.test,
        vocab_sizes,
        config,
        seed=spec.seed,
        name=spec.name,
        progress=progress,
    )
    state = {k: v.detach().clone() for k, v in trained.model.state_dict().items()}
    return MemberResult(
        spec=spec,
        state=state,
        metrics=trained.metrics,
        label=trained.label,
        hop_norms=trained.hop_norms,
        graph_norms=trained.graph_norms,
    )


# ----- worker processes or Ray (autobuild_dsl.parallel) ----------------------------------


def _member_state(
    packed: PackedGraphs,
    y: np.ndarray,
    vocab_sizes: list[int],
    config: TrainConfig,
    events: multiprocessing.Queue | None,
) -> tuple[PackedGraphs, np.ndarray, list[int], TrainConfig, multiprocessing.Queue | None]:
    return packed, y, vocab_sizes, config, events


def _worker_train(
    state: tuple[PackedGraphs, np.ndarray, list[int], TrainConfig, multiprocessing.Queue | None],
    spec: MemberSpec,
) -> MemberResult:
    packed, y, vocab_sizes, config, events = state
    progress = events.put if events is not None else None
    return _train(spec, packed, y, vocab_sizes, config, progress)


def _drain(events: multiprocessing.Queue | None, progress: ProgressFn | None) -> None:
    if events is None:
        return
    while True:
        try:
            event = events.get_nowait()
        except queue_module.Empty:
            return
        if progress is not None and isinstance(event, EpochProgress):
            progress(event)


def _run_elsewhere(
    specs: Sequence[MemberSpec],
    packed: PackedGraphs,
    y: np.ndarray,
    vocab_sizes: list[int],
    config: TrainConfig,
    jobs: int,
    ray_address: str | None,
    progress: ProgressFn | None,
    on_done: Callable[[MemberResult], None],
) -> None:
    """Members in worker processes (one torch thread each) or on Ray. Epoch progress comes
    back from local workers through a queue; Ray members report only when they finish."""
    local_progress = progress is not None and ray_address is None
    events = multiprocessing.get_context("spawn").Queue() if local_progress else None
    worker_config = config.model_copy(update={"threads": 1})
    fanout: Fanout[MemberSpec] = Fanout(
        _member_state,
        (packed, y, vocab_sizes, worker_config, events),
        jobs=min(jobs, len(specs)),
        ray_address=ray_address,
        error=EnsembleError,
    )
    with fanout:
        try:
            tasks = ((spec, spec) for spec in specs)
            drain = (lambda: _drain(events, progress)) if events is not None else None
            for _, result in fanout.map(_worker_train, tasks, window=len(specs), idle=drain):
                on_done(result)
        finally:
            _drain(events, progress)


def run_members(
    specs: Sequence[MemberSpec],
    packed: PackedGraphs,
    y: np.ndarray,
    vocab_sizes: Sequence[int],
    config: TrainConfig,
    *,
    on_done: Callable[[MemberResult], None],
    jobs: int = 1,
    ray_address: str | None = None,
    progress: ProgressFn | None = None,
) -> None:
    """Train every member of `specs`; `on_done` receives each as it finishes."""
    if not specs:
        return
    vocab = [int(v) for v in vocab_sizes]
    if ray_address or (jobs > 1 and len(specs) > 1):
        _run_elsewhere(
            specs, packed, y, vocab, config, jobs, ray_address or None, progress, on_done
        )
    else:
        for spec in specs:
            on_done(_train(spec, packed, y, vocab, config, progress))
