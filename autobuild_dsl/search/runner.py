"""Running an evaluator: the on-disk cache first, then the misses in parallel.

Results are keyed by network (`space.equivalence.network_keyer`): two architectures that
compile to the same network are evaluated once, in memory and in the cache.

Misses are split into chunks and spread over worker processes (`jobs`) or Ray tasks
(`ray_address`; Ray is an optional dependency, imported only when asked for), through
`autobuild_dsl.parallel` (one torch thread per worker). Workers rebuild the evaluator from
its config, so anything a config can describe runs anywhere.
Each finished chunk is written to the cache at once, so an interruption keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from autobuild_dsl.parallel import Fanout
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
# A chunk of misses: (network key, architecture) pairs.
Chunk = list[tuple[str, Architecture]]


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
        self._fanout: Fanout[Any] | None = None

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

    def map(
        self, fn: Callable[[Evaluator, Any], Any], tasks: Iterable[tuple[Any, Any]]
    ) -> Iterator[tuple[Any, Any]]:
        """(tag, fn(evaluator, payload)) for each (tag, payload), in completion order: here
        with this runner's evaluator, or in the workers with each one's own (`fn` must be
        a top-level function; payloads and results must pickle). The cache is not used."""
        if not self.remote:
            for tag, payload in tasks:
                yield tag, fn(self.evaluator, payload)
            return
        yield from self._pool().map(fn, tasks)

    def _run_chunks(self, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, list[Metrics]]]:
        if not self.remote:
            for chunk in chunks:
                yield chunk, self.evaluator.evaluate([arch for _, arch in chunk])
            return
        tasks = ((chunk, [a.to_json() for _, a in chunk]) for chunk in chunks)
        yield from self._pool().map(_worker_evaluate, tasks)

    def _pool(self) -> Fanout[Any]:
        if self._fanout is None:
            self._fanout = Fanout(
                _worker_evaluator,
                (config_to_json(self.config), self.space.to_json()),
                jobs=self.jobs,
                ray_address=self.ray_address,
                error=EvaluationError,
            )
        return self._fanout

    def close(self) -> None:
        if self._fanout is not None:
            self._fanout.close()
            self._fanout = None
        self.evaluator.close()

    def __enter__(self) -> EvaluationRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Worker side: one evaluator per worker process, built once from its config.


def _worker_evaluator(config_json: str, space_json: str) -> Evaluator:
    return make_evaluator(config_from_json(config_json), Space.from_json(space_json))


def _worker_evaluate(evaluator: Evaluator, arch_jsons: list[str]) -> list[Metrics]:
    return evaluator.evaluate([Architecture.model_validate_json(a) for a in arch_jsons])
