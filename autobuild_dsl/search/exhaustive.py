"""Exhaustive search: score every architecture of a space, keep the best N (the paper's ES).

The enumeration is cut into ranges of `batch_size` positions. Whoever scores a range (this
process, or a worker process with its own evaluator) enumerates it itself and sends back
only its best N, which are merged here; so memory holds a range per worker and a heap of N,
never the space, and nothing per architecture crosses a process boundary. The first range
measures the throughput; a space larger than `max_architectures` (or whose estimated time
exceeds `max_seconds`) is refused then, with its size and the estimate. The top N holds
each network once: of architectures that compile to the same network, the best-scoring."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.errors import AbcError
from autobuild_dsl.search.evaluators import EvaluationError
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
    limit: int | None = Field(
        default=None, ge=1, description="score only the first N of the enumeration (a prefix)"
    )


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
    """Score every architecture through `runner` (see `runner.EvaluationRunner.map`).

    The enumeration is cut into ranges of `batch_size` positions; whoever scores a range
    (this process, or a worker with its own evaluator) enumerates it itself
    (`iter_architectures(space, start, stop)`) and returns only its best `top`, which are
    merged here: nothing per architecture crosses a process boundary.
    """
    size = space_size(space)
    wanted = size if config.limit is None else min(size, config.limit)
    if not wanted:
        raise ValueError("the space is empty")
    start = time.perf_counter()
    step = config.batch_size
    task = _RangeTask(start=0, stop=min(step, wanted), objective=config.objective, top=config.top)
    [(_, first)] = list(runner.map(score_range, [(None, task)]))
    elapsed = max(time.perf_counter() - start, 1e-9)
    first_rate = first.count / elapsed
    _check_limits(size, wanted, wanted / first_rate, config)
    objective = first.objective
    top = _Top(config.top, objective, network_keyer(space))
    done = 0

    def take(result: _RangeResult) -> None:
        nonlocal done
        for item in result.items:
            top.push(item)
        done += result.count
        runner.paid += result.count
        if progress is not None:
            seconds = time.perf_counter() - start
            progress(
                ExhaustiveProgress(done=done, total=wanted, seconds=seconds, rate=done / seconds)
            )

    take(first)
    tasks = (
        (None, _RangeTask(start=a, stop=min(a + step, wanted), objective=objective, top=config.top))
        for a in range(task.stop, wanted, step)
    )
    for _, result in runner.map(score_range, tasks):
        take(result)
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


def _check_limits(size: int, wanted: int, estimate: float, config: ExhaustiveConfig) -> None:
    if wanted > config.max_architectures:
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


# Worker side: a range of the enumeration in, its best candidates out.

# A candidate: (score: larger is better, key reversed for ties, architecture, metrics,
# network key).
_Item = tuple[float, "_Reversed", Architecture, dict[str, float], str]


@dataclass(frozen=True)
class _RangeTask:
    start: int
    stop: int
    objective: Objective | None  # None: the default objective of the first metrics seen
    top: int


@dataclass(frozen=True)
class _RangeResult:
    count: int
    objective: Objective
    items: list[_Item]


def score_range(evaluator: Any, task: _RangeTask) -> _RangeResult:
    """Enumerate positions start..stop-1 of the evaluator's space, evaluate them (one call)
    and keep the best `task.top` (each network once)."""
    space = evaluator.space
    batch = list(iter_architectures(space, task.start, task.stop))
    metrics = evaluator.evaluate(batch)
    if len(metrics) != len(batch):
        raise EvaluationError(
            f"the evaluator returned {len(metrics)} results for {len(batch)} architectures"
        )
    objective = task.objective or _default_objective(metrics[0])
    top = _Top(task.top, objective, network_keyer(space))
    for arch, values in zip(batch, metrics, strict=True):
        top.offer(arch, values)
    return _RangeResult(count=len(batch), objective=objective, items=top.heap)


class _Top:
    """The best `size` architectures by `objective`, each network once: of equivalent
    architectures (a no-op layer at another place) the best-scoring member is kept."""

    def __init__(self, size: int, objective: Objective, network: Callable[[Architecture], str]):
        self.size = size
        self.objective = objective
        self.network = network
        self.heap: list[_Item] = []
        self.held: dict[str, _Item] = {}

    def offer(self, arch: Architecture, values: dict[str, float]) -> None:
        # Larger is better; on ties the smaller key wins, whatever the batch order.
        score = -self.objective.minimised(values)
        if len(self.heap) >= self.size and score < self.heap[0][0]:
            return  # the common case: no key needed (keys cost ~20 us each)
        self.push((score, _Reversed(arch.key()), arch, values, self.network(arch)))

    def push(self, item: _Item) -> None:
        """Offer a scored candidate (also one another `_Top` kept: merging is exact, since
        a network's best member is in the top of whichever range holds it)."""
        heap, held = self.heap, self.held
        net = item[4]
        old = held.get(net)
        if old is not None:
            if item[:2] > old[:2]:  # a better member of a network already held
                heap.remove(old)
                heapq.heapify(heap)
                heapq.heappush(heap, item)
                held[net] = item
            return
        if len(heap) < self.size:
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
