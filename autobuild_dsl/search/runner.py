"""Running an evaluator: the on-disk cache first, then the misses in parallel.

Results are keyed by network (`space.equivalence.network_keyer`): two architectures that
compile to the same network are evaluated once, in memory and in the cache.

Misses are split into chunks and spread over worker processes (`jobs`) or Ray tasks
(`ray_address`; Ray is an optional dependency, imported only when asked for). Workers
rebuild the evaluator from its config, so anything a config can describe runs anywhere.
Each finished chunk is written to the cache at once, so an interruption keeps it.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from autobuild_dsl.io import die_with_parent
from autobuild_dsl.search.cache import EvaluationCache
from autobuild_dsl.search.evaluators import (
    EvaluationError,
    Evaluator,
    PredictorConfig,
    config_from_json,
    config_to_json,
    make_evaluator,
)
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space
from autobuild_dsl.space.resolve import ResolveError

Metrics = dict[str, float]
# Called with (finished, total) as chunks of a batch complete.
OnEvaluated = Callable[[int, int], None]


class EvaluationRunner:
    """Evaluate architectures once each: cached results are reused, misses run in parallel."""

    def __init__(
        self,
        space: Space,
        config: Any | None = None,
        *,
        evaluator: Evaluator | None = None,
        cache_dir: Path | None = None,
        jobs: int = 1,
        ray_address: str | None = None,
    ) -> None:
        if evaluator is None and config is None:
            raise ValueError("give an evaluator config or an evaluator")
        self.space = space
        self.evaluator = evaluator if evaluator is not None else make_evaluator(config, space)
        self.config = config if config is not None else self.evaluator.config
        self.jobs = max(1, int(jobs))
        self.ray_address = ray_address
        self.cache = (
            EvaluationCache(cache_dir, self.evaluator.identity)
            if cache_dir is not None and self.evaluator.cacheable
            else None
        )
        # Results are keyed by network: equivalent architectures (one compiled network,
        # space/equivalence.py) are evaluated once and share the cached result.
        self.network_key = network_keyer(space)
        self.paid = 0  # evaluations actually run
        self.hits = 0  # answered from the on-disk cache
        self._pool: ProcessPoolExecutor | None = None
        self._ray: Any = None

    @property
    def identity(self) -> str:
        return self.evaluator.identity

    @property
    def notes(self) -> list[str]:
        """What the evaluator asks to tell the user once (rows skipped, ...)."""
        return list(getattr(self.evaluator, "notes", []))

    @property
    def remote(self) -> bool:
        """Whether misses go to other processes (workers or Ray)."""
        return self.evaluator.parallel and (self.jobs > 1 or self.ray_address is not None)

    def chunk_size(self, misses: int) -> int:
        if isinstance(self.config, PredictorConfig):
            return self.config.batch_size
        if not self.remote:
            return 1  # write each expensive result to the cache as soon as it exists
        workers = self.jobs if self.ray_address is None else max(self.jobs, 8)
        return max(1, math.ceil(misses / (workers * 4)))

    def evaluate(
        self, archs: Sequence[Architecture], on_evaluated: OnEvaluated | None = None
    ) -> list[Metrics]:
        """Metrics for each architecture, in order; each distinct network is evaluated once."""
        keys = [self._key(arch) for arch in archs]
        found: dict[str, Metrics] = {}
        misses: list[tuple[str, Architecture]] = []
        queued: set[str] = set()
        for key, arch in zip(keys, archs, strict=True):
            if key in found or key in queued:
                continue
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                found[key] = cached
                self.hits += 1
            else:
                queued.add(key)
                misses.append((key, arch))
        total = len(misses)
        done = 0
        if on_evaluated is not None:
            on_evaluated(0, total)
        if misses:
            size = self.chunk_size(total)
            chunks = [misses[i : i + size] for i in range(0, total, size)]
            for chunk, metrics in self._run_chunks(chunks):
                if len(metrics) != len(chunk):
                    raise EvaluationError(
                        f"the evaluator returned {len(metrics)} results for {len(chunk)} "
                        "architectures"
                    )
                pairs = [(key, m) for (key, _), m in zip(chunk, metrics, strict=True)]
                if self.cache is not None:
                    self.cache.put_many(pairs)
                found.update(pairs)
                self.paid += len(chunk)
                done += len(chunk)
                if on_evaluated is not None:
                    on_evaluated(done, total)
        return [dict(found[key]) for key in keys]

    def _key(self, arch: Architecture) -> str:
        try:
            return self.network_key(arch)
        except (ResolveError, KeyError, ValueError):
            # Not a network of the space: keyed as written; the evaluator will say why.
            return "arch:" + arch.key()

    def stream(
        self, batches: Iterable[Sequence[Architecture]], window: int | None = None
    ) -> Iterator[tuple[Sequence[Architecture], list[Metrics]]]:
        """Evaluate a stream of batches without the cache, at most `window` in flight;
        yields (batch, metrics) in completion order. Memory stays bounded by the window."""
        if not self.remote:
            for batch in batches:
                metrics = self.evaluator.evaluate(list(batch))
                self.paid += len(batch)
                yield batch, metrics
            return
        window = window or 2 * self.jobs
        # Keys are not needed here (no cache); computing them would cost ~20 us each.
        chunks = ([("", arch) for arch in batch] for batch in batches)
        for chunk, metrics in self._run_chunks(chunks, window):
            self.paid += len(chunk)
            yield [arch for _, arch in chunk], metrics

    def _run_chunks(
        self, chunks: Iterable[list[tuple[str, Architecture]]], window: int | None = None
    ) -> Iterator[tuple[list[tuple[str, Architecture]], list[Metrics]]]:
        if not self.remote:
            for chunk in chunks:
                yield chunk, self.evaluator.evaluate([arch for _, arch in chunk])
        elif self.ray_address is not None:
            yield from self._run_ray(chunks, window)
        else:
            yield from self._run_pool(chunks, window)

    def _run_pool(
        self, chunks: Iterable[list[tuple[str, Architecture]]], window: int | None
    ) -> Iterator[tuple[list[tuple[str, Architecture]], list[Metrics]]]:
        pool = self._get_pool()
        pending: dict[Future[list[Metrics]], list[tuple[str, Architecture]]] = {}
        iterator = iter(chunks)
        limit = window or sys.maxsize
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    chunk = next(iterator, None)
                    if chunk is None:
                        exhausted = True
                        break
                    future = pool.submit(_worker_evaluate, [a.to_json() for _, a in chunk])
                    pending[future] = chunk
                if not pending:
                    return
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    chunk = pending.pop(future)
                    yield chunk, future.result()
        except BaseException:
            # Do not wait for running evaluations (a Ctrl-C also reaches a user's command).
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            raise

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: forking a process that has started torch's thread pools can hang.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=context,
                initializer=_worker_init,
                initargs=(config_to_json(self.config), self.space.to_json(), list(sys.path)),
            )
        return self._pool

    def _run_ray(
        self, chunks: Iterable[list[tuple[str, Architecture]]], window: int | None
    ) -> Iterator[tuple[list[tuple[str, Architecture]], list[Metrics]]]:
        ray = self._get_ray()
        task = ray.remote(_ray_evaluate)
        config_json, space_json = config_to_json(self.config), self.space.to_json()
        pending: dict[Any, list[tuple[str, Architecture]]] = {}
        iterator = iter(chunks)
        limit = window or sys.maxsize
        exhausted = False
        while True:
            while not exhausted and len(pending) < limit:
                chunk = next(iterator, None)
                if chunk is None:
                    exhausted = True
                    break
                ref = task.remote(config_json, space_json, [a.to_json() for _, a in chunk])
                pending[ref] = chunk
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                chunk = pending.pop(ref)
                yield chunk, ray.get(ref)

    def _get_ray(self) -> Any:
        if self._ray is None:
            try:
                import ray
            except ImportError:
                raise EvaluationError(
                    "running on Ray needs the optional dependency ray: pip install 'autobuild-dsl[ray]'"
                ) from None
            if not ray.is_initialized():
                ray.init(address=self.ray_address, ignore_reinit_error=True, log_to_driver=False)
            self._ray = ray
        return self._ray

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.evaluator.close()

    def __enter__(self) -> EvaluationRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Worker side: one evaluator per process, built once from its config.
_WORKER: dict[str, Evaluator] = {}


def _worker_init(config_json: str, space_json: str, path: list[str]) -> None:
    # The parent handles Ctrl-C; workers would only print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()  # a kill -9 of the parent must not leave workers running
    for entry in path:
        if entry not in sys.path:
            sys.path.append(entry)
    _WORKER["evaluator"] = make_evaluator(
        config_from_json(config_json), Space.from_json(space_json)
    )


def _worker_evaluate(arch_jsons: list[str]) -> list[Metrics]:
    evaluator = _WORKER["evaluator"]
    return evaluator.evaluate([Architecture.model_validate_json(a) for a in arch_jsons])


def _ray_evaluate(config_json: str, space_json: str, arch_jsons: list[str]) -> list[Metrics]:
    key = f"{config_json}|{hash(space_json)}"
    evaluator = _WORKER.get(key)
    if evaluator is None:
        evaluator = make_evaluator(config_from_json(config_json), Space.from_json(space_json))
        _WORKER[key] = evaluator
    return evaluator.evaluate([Architecture.model_validate_json(a) for a in arch_jsons])
