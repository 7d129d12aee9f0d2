"""Free metrics: what is cheap enough to compute for every candidate, never paid for.

Parameters and MACs are exact counts from the compiler (`measure:params,macs`), so the
loop need not predict them, and a user's evaluator need not return them. Given such an
evaluator (`abc improve --free SPEC`), the loop
- adds its metrics to every label and every evaluation that lacks them (the paid
  evaluator's own values win);
- with several objectives, uses an objective's exact value wherever the free metrics
  answer it: the guided search then sorts candidates by the scorers' scores *and* the
  exact objectives (the predicted front over, e.g., predicted accuracy and exact MACs),
  instead of leaving the trade-off to the targets' slopes alone.

Values are computed once per network (equivalent architectures share them) and kept for
the loop's lifetime; being free, they are recomputed rather than stored on resume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from autobuild_dsl.data.dataset import LabeledDataset
from autobuild_dsl.search.evaluators import Evaluator
from autobuild_dsl.search.loop_guided import calibrated, score_pool
from autobuild_dsl.search.loop_state import LoopError, target_metrics
from autobuild_dsl.search.pareto import Objective
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.enumeration import iter_architectures
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space

# Candidates are measured in chunks of this size: one evaluator call never holds a
# whole space's networks (a `measure` evaluator builds every one it is given).
CHUNK = 512


class FreeMetrics:
    """An evaluator's metrics for any architecture, computed once per network. `probe`
    (any architecture of the space, e.g. the first label) tells which metrics it gives."""

    def __init__(
        self,
        evaluator: Evaluator,
        network_key: Callable[[Architecture], str],
        probe: Architecture,
    ) -> None:
        self.evaluator = evaluator
        self.network_key = network_key
        self.probe = probe
        self._by_network: dict[str, dict[str, float]] = {}
        self._names: list[str] | None = None

    @property
    def identity(self) -> str:
        return self.evaluator.identity

    def names(self) -> list[str]:
        """The metrics it gives (those it gave for the probe)."""
        if self._names is None:
            self._names = list(self.of([self.probe])[0])
            if not self._names:
                raise LoopError(f"the free evaluator ({self.identity}) gave no metrics")
        return self._names

    def of(self, archs: Sequence[Architecture]) -> list[dict[str, float]]:
        keys = [self.network_key(a) for a in archs]
        todo: dict[str, Architecture] = {}
        for key, arch in zip(keys, archs, strict=True):
            if key not in self._by_network:
                todo.setdefault(key, arch)
        pending = list(todo.items())
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start : start + CHUNK]
            values = self.evaluator.evaluate([arch for _, arch in chunk])
            for (key, _), metrics in zip(chunk, values, strict=True):
                self._by_network[key] = {name: float(v) for name, v in metrics.items()}
        return [self._by_network[key] for key in keys]

    def fill(self, arch: Architecture, metrics: dict[str, float]) -> dict[str, float]:
        """`metrics` with the free ones it lacks added."""
        return {**self.of([arch])[0], **metrics}

    def exact(self, objectives: Sequence[Objective]) -> list[Objective]:
        """The objectives the free metrics answer on their own."""
        names = set(self.names())
        return [o for o in objectives if set(objective_metrics(o)) <= names]

    def columns(
        self, objectives: Sequence[Objective], archs: Sequence[Architecture]
    ) -> list[np.ndarray]:
        """Each objective's exact value per architecture, oriented so higher is better."""
        rows = self.of(archs)
        return [np.array([-o.minimised(row) for row in rows]) for o in objectives]


def free_metrics_of(evaluator: Evaluator, space: Space, labels: LabeledDataset) -> FreeMetrics:
    """The free metrics of `evaluator` for a loop over `space` starting from `labels`
    (probed with the first label, or the space's first architecture when there is none)."""
    probe = labels.architectures[0] if len(labels) else next(iter_architectures(space))
    return FreeMetrics(evaluator, network_keyer(space), probe)


def front_values(
    free: FreeMetrics | None,
    objectives: Sequence[Objective],
    targets: Sequence[str],
    runs: Sequence[object],
    pool: Sequence[Architecture],
    pool_scores: Sequence[np.ndarray],
    held: Sequence[Architecture],
    held_rows: Sequence[Mapping[str, float]],
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """For two objectives, each either answered by the free metrics or learned by its own
    target (`oriented_target`): their values (higher is better) over the pool, predicted
    ones calibrated to the held networks, and over the held networks. None when the
    objectives are not of that kind (the caller then sorts by the scores)."""
    if len(objectives) != 2 or not held:
        return None
    exact = free.exact(objectives) if free is not None else []
    pool_values, held_values = [], []
    held_scores: list[np.ndarray] | None = None
    for objective in objectives:
        values = np.array([-objective.minimised(row) for row in held_rows])
        held_values.append(values)
        if free is not None and objective in exact:
            pool_values += free.columns([objective], pool)
            continue
        target = oriented_target(objective)
        if target not in targets:
            return None
        j = list(targets).index(target)
        held_scores = held_scores or score_pool(runs, held)
        pool_values.append(calibrated(held_scores[j], values, pool_scores[j]))
    return pool_values, held_values


def default_targets(objectives: Sequence[Objective], free_names: Sequence[str]) -> list[str]:
    """One target per objective the free metrics do not answer, oriented so higher is
    better (`abc improve --objectives ... --free ...` without `--target`)."""
    names = set(free_names)
    targets = [oriented_target(o) for o in objectives if not set(objective_metrics(o)) <= names]
    if not targets:
        raise LoopError(
            "the free metrics answer every objective: there is nothing to learn or pay for"
        )
    return targets


def oriented_target(objective: Objective) -> str:
    """The target expression that learns an objective (higher is better)."""
    return objective.expr if objective.direction == "max" else f"-({objective.expr})"


def objective_metrics(objective: Objective) -> list[str]:
    return [objective.expr] if objective.is_metric else target_metrics(objective.expr)


__all__ = [
    "FreeMetrics",
    "default_targets",
    "free_metrics_of",
    "front_values",
    "objective_metrics",
    "oriented_target",
]
