"""Ensembles: which members to train (K folds x seeds) and where to train them.

Members run in this process, in local worker processes (spawned, one torch thread each),
or on a Ray cluster. Whatever runs them, each finished member is handed to `on_done` in
this process, in completion order, so the caller can save it at once (and a rerun can skip
it). Epoch progress is forwarded from local workers through a queue; Ray members report
only when they finish.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import queue as queue_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from autobuild_dsl.data.splits import kfold_splits, train_test_split
from autobuild_dsl.errors import AbcError
from autobuild_dsl.io import die_with_parent
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


# ----- local worker processes ------------------------------------------------------------

_WORKER: dict[str, object] = {}


def _init_worker(
    packed: PackedGraphs,
    y: np.ndarray,
    vocab_sizes: list[int],
    config: TrainConfig,
    events: multiprocessing.Queue | None,
) -> None:
    die_with_parent()  # a kill -9 of `abc train --jobs N` must not leave workers running
    # One thread per worker: N workers on N cores, no oversubscription.
    torch.set_num_threads(1)
    _WORKER.update(packed=packed, y=y, vocab_sizes=vocab_sizes, config=config, events=events)


def _worker_train(spec: MemberSpec) -> MemberResult:
    events = _WORKER["events"]
    progress = events.put if events is not None else None  # type: ignore[attr-defined]
    return _train(
        spec,
        _WORKER["packed"],  # type: ignore[arg-type]
        _WORKER["y"],  # type: ignore[arg-type]
        _WORKER["vocab_sizes"],  # type: ignore[arg-type]
        _WORKER["config"],  # type: ignore[arg-type]
        progress,
    )


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


def _run_local(
    specs: Sequence[MemberSpec],
    packed: PackedGraphs,
    y: np.ndarray,
    vocab_sizes: list[int],
    config: TrainConfig,
    jobs: int,
    progress: ProgressFn | None,
    on_done: Callable[[MemberResult], None],
) -> None:
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue() if progress is not None else None
    worker_config = config.model_copy(update={"threads": 1})
    with cf.ProcessPoolExecutor(
        max_workers=min(jobs, len(specs)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(packed, y, vocab_sizes, worker_config, events),
    ) as pool:
        pending = {pool.submit(_worker_train, spec) for spec in specs}
        try:
            while pending:
                done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                _drain(events, progress)
                for future in done:
                    on_done(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        finally:
            _drain(events, progress)


# ----- Ray --------------------------------------------------------------------------------


def _ray_train(
    data: tuple[PackedGraphs, np.ndarray, list[int], TrainConfig], spec: MemberSpec
) -> MemberResult:
    torch.set_num_threads(1)
    packed, y, vocab_sizes, config = data
    return _train(spec, packed, y, vocab_sizes, config, None)


def _run_ray(
    specs: Sequence[MemberSpec],
    packed: PackedGraphs,
    y: np.ndarray,
    vocab_sizes: list[int],
    config: TrainConfig,
    address: str,
    on_done: Callable[[MemberResult], None],
) -> None:
    try:
        import ray
    except ImportError:
        raise EnsembleError(
            "training on Ray needs the optional extra: pip install 'autobuild-dsl[ray]'"
        ) from None
    started_here = False
    if not ray.is_initialized():
        # "local" starts a private single-machine instance (tests, laptops).
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started_here = True
    try:
        data_ref = ray.put((packed, y, vocab_sizes, config.model_copy(update={"threads": 1})))
        remote = ray.remote(num_cpus=1)(_ray_train)
        refs = {remote.remote(data_ref, spec): spec for spec in specs}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                refs.pop(ref)
                on_done(ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()


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
    if ray_address:
        _run_ray(specs, packed, y, vocab, config, ray_address, on_done)
    elif jobs > 1 and len(specs) > 1:
        _run_local(specs, packed, y, vocab, config, jobs, progress, on_done)
    else:
        for spec in specs:
            on_done(_train(spec, packed, y, vocab, config, progress))
