"""Exhaustive search: score every architecture of a space, keep the best N (the paper's ES).

Architectures are enumerated lazily and scored batch by batch, so memory holds one batch
(times the number of batches in flight) and a heap of N, never the space. The first batch
measures the throughput; a space larger than `max_architectures` (or whose estimated time
exceeds `max_seconds`) is refused then, with its size and the estimate. The top N holds
each network once: of architectures that compile to the same network, the best-scoring.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.errors import AbcError
from autobuild_dsl.search.pareto import Objective, ObjectiveError
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import iter_architectures, space_size
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space

DEFAULT_MAX_ARCHITECTURES = 2_000_000


class SpaceTooLarge(AbcError, ValueError):
    """The space is over the limit; carries its size and the estimated time to score it."""

    code = "space-too-large"

    def __init__(self, size: int, limit: int, seconds: float | None, reason: str) -> None:
        self.size = size
        self.limit = limit
        self.estimated_seconds = seconds
        estimate = (
            f"; at the measured rate it would take {format_seconds(seconds)}" if seconds else ""
        )
        super().__init__(f"the space has {size:,} architectures ({reason}){estimate}")


class ExhaustiveConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    objective: Objective | None = Field(
        default=None, description="what to rank by; default: max of the first metric"
    )
    top: int = Field(default=10, ge=1)
    batch_size: int = Field(default=2048, ge=1)
    max_architectures: int = Field(default=DEFAULT_MAX_ARCHITECTURES, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)


class RankedArchitecture(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")

    rank: int
    key: str
    arch: dict
    metrics: dict[str, float]
    value: float = Field(description="the objective's value")


class ExhaustiveProgress(BaseModel):
    done: int
    total: int
    seconds: float
    rate: float = Field(description="architectures per second so far")


class ExhaustiveResult(BaseModel):
    space: str
    size: int
    evaluated: int
    objective: Objective
    seconds: float
    throughput: float = Field(description="architectures per second, whole run")
    first_batch_throughput: float
    top: list[RankedArchitecture]


def exhaustive_search(
    space: Space,
    runner: Any,
    config: ExhaustiveConfig,
    progress: Callable[[ExhaustiveProgress], None] | None = None,
) -> ExhaustiveResult:
    """Score every architecture with `runner.stream` (see `runner.EvaluationRunner`)."""
    size = space_size(space)
    archs = iter_architectures(space)
    start = time.perf_counter()
    first = list(itertools.islice(archs, config.batch_size))
    if not first:
        raise ValueError("the space is empty")
    [(first_batch, first_metrics)] = list(runner.stream([first]))
    elapsed = max(time.perf_counter() - start, 1e-9)
    first_rate = len(first) / elapsed
    estimate = size / first_rate
    if size > config.max_architectures:
        raise SpaceTooLarge(
            size, config.max_architectures, estimate, f"over the limit {config.max_architectures:,}"
        )
    if config.max_seconds is not None and estimate > config.max_seconds:
        raise SpaceTooLarge(
            size,
            config.max_architectures,
            estimate,
            f"over the time limit {format_seconds(config.max_seconds)}",
        )
    objective = config.objective or _default_objective(first_metrics[0])
    top = _Top(config.top, objective, network_keyer(space))
    done = 0

    def take(batch: Sequence[Architecture], metrics: list[dict[str, float]]) -> None:
        nonlocal done
        for arch, values in zip(batch, metrics, strict=True):
            top.offer(arch, values)
        done += len(batch)
        if progress is not None:
            seconds = time.perf_counter() - start
            progress(
                ExhaustiveProgress(done=done, total=size, seconds=seconds, rate=done / seconds)
            )

    take(first_batch, first_metrics)
    for batch, metrics in runner.stream(_batches(archs, config.batch_size)):
        take(batch, metrics)
    seconds = time.perf_counter() - start
    return ExhaustiveResult(
        space=space.name,
        size=size,
        evaluated=done,
        objective=objective,
        seconds=seconds,
        throughput=done / max(seconds, 1e-9),
        first_batch_throughput=first_rate,
        top=top.ranked(),
    )


class _Top:
    """The best `size` architectures by `objective`, each network once: of equivalent
    architectures (a no-op layer at another place) the best-scoring member is kept."""

    def __init__(self, size: int, objective: Objective, network: Callable[[Architecture], str]):
        self.size = size
        self.objective = objective
        self.network = network
        self.heap: list[tuple[float, _Reversed, Architecture, dict[str, float], str]] = []
        self.held: dict[str, tuple[float, _Reversed, Architecture, dict[str, float], str]] = {}

    def offer(self, arch: Architecture, values: dict[str, float]) -> None:
        heap, held = self.heap, self.held
        # Larger is better; on ties the smaller key wins, whatever the batch order.
        score = -self.objective.minimised(values)
        full = len(heap) >= self.size
        if full and score < heap[0][0]:
            return  # the common case: no key needed (keys cost ~20 us each)
        net = self.network(arch)
        item = (score, _Reversed(arch.key()), arch, values, net)
        old = held.get(net)
        if old is not None:
            if item[:2] > old[:2]:  # a better member of a network already held
                heap.remove(old)
                heapq.heapify(heap)
                heapq.heappush(heap, item)
                held[net] = item
            return
        if not full:
            heapq.heappush(heap, item)
            held[net] = item
        elif item[:2] > heap[0][:2]:
            evicted = heapq.heapreplace(heap, item)
            del held[evicted[4]]
            held[net] = item

    def ranked(self) -> list[RankedArchitecture]:
        ranked = sorted(self.heap, key=lambda item: item[:2], reverse=True)
        return [
            RankedArchitecture(
                rank=i + 1,
                key=arch.key(),
                arch=arch.model_dump(mode="json"),
                metrics=values,
                value=self.objective.value(values),
            )
            for i, (_, _, arch, values, _) in enumerate(ranked)
        ]


class _Reversed:
    """Orders strings backwards, so a min-heap evicts the larger key on equal scores."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _Reversed) -> bool:
        return self.text > other.text

    def __gt__(self, other: _Reversed) -> bool:
        return self.text < other.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)


def _batches(archs: Iterator[Architecture], size: int) -> Iterator[list[Architecture]]:
    while batch := list(itertools.islice(archs, size)):
        yield batch


def _default_objective(metrics: dict[str, float]) -> Objective:
    names = [n for n in metrics if not n.endswith("_std")] or list(metrics)
    if not names:
        raise ObjectiveError("the evaluator returned no metrics")
    return Objective(direction="max", expr=names[0])


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
