"""Objectives and Pareto fronts.

An objective is `max EXPR` or `min EXPR`, where EXPR is a metric name (`acc`) or a target
expression over metrics (`acc - 0.5 * lat`, parsed by `autobuild_dsl.data.parse_target`).
Fronts are computed with pymoo's non-dominated sorting on values turned into minimisation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from autobuild_dsl.errors import AbcError, Remedy

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_OBJECTIVE = re.compile(r"\s*(max|min|maximize|minimize)\s+(.+?)\s*\Z", re.IGNORECASE | re.DOTALL)


class ObjectiveError(AbcError, ValueError):
    """An objective could not be parsed, or a metric it needs is missing or not finite."""

    code = "objective"


class Objective(BaseModel):
    """One objective: a direction and a metric name or target expression."""

    model_config = ConfigDict(frozen=True)

    direction: Literal["max", "min"]
    expr: str

    @property
    def label(self) -> str:
        return f"{self.direction} {self.expr}"

    @property
    def is_metric(self) -> bool:
        return bool(_NAME.match(self.expr))

    @cached_property
    def _target(self) -> Any:
        return _parse_target(self.expr)

    def value(self, metrics: Mapping[str, float]) -> float:
        """The objective's value for one architecture's metrics (not sign-flipped)."""
        if self.expr in metrics:
            value = float(metrics[self.expr])
        elif self.is_metric:
            known = ", ".join(sorted(metrics)) or "none"
            raise ObjectiveError(f"objective '{self.label}': no metric '{self.expr}' (has {known})")
        else:
            value = _evaluate_target(self._target, metrics, self.label)
        if not math.isfinite(value):
            raise ObjectiveError(f"objective '{self.label}' is not finite ({value})")
        return value

    def minimised(self, metrics: Mapping[str, float]) -> float:
        """The value as a minimisation objective (max objectives are negated)."""
        value = self.value(metrics)
        return -value if self.direction == "max" else value


def parse_objective(text: str) -> Objective:
    match = _OBJECTIVE.match(text)
    if not match:
        raise ObjectiveError(
            f"objective '{text.strip()}' must start with 'max' or 'min', e.g. 'max acc'"
        )
    direction = "max" if match.group(1).lower().startswith("max") else "min"
    objective = Objective(direction=direction, expr=match.group(2))
    if not objective.is_metric:
        _ = objective._target  # parse now so a typo fails before any evaluation
    return objective


def parse_objectives(text: str | Sequence[str]) -> list[Objective]:
    """`"max acc, min latency"` (or a list of such strings) -> objectives, in order."""
    parts: list[str] = []
    for chunk in [text] if isinstance(text, str) else list(text):
        parts.extend(_split_top_level(chunk))
    objectives = [parse_objective(p) for p in parts if p.strip()]
    if not objectives:
        raise ObjectiveError(
            "no objectives given (e.g. 'max acc, min latency')",
            remedies=(Remedy("objectives", "", "'max acc, min latency'"),),
        )
    labels = [o.label for o in objectives]
    if len(set(labels)) != len(labels):
        raise ObjectiveError(f"an objective is repeated: {', '.join(labels)}")
    return objectives


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses (a target may call `max(a, b)`)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _parse_target(text: str) -> Any:
    try:
        from autobuild_dsl.data import parse_target
    except ImportError as error:  # the data package is optional for plain metric names
        raise ObjectiveError(
            f"objective '{text}' is an expression, and target expressions need "
            f"autobuild_dsl.data.parse_target ({error})"
        ) from None
    try:
        return parse_target(text)
    except Exception as error:
        raise ObjectiveError(f"objective '{text}': {error}") from None


def _evaluate_target(target: Any, metrics: Mapping[str, float], label: str) -> float:
    try:
        return float(target.evaluate_one(metrics))
    except (ValueError, TypeError) as error:  # TargetError: unknown metric, not finite
        raise ObjectiveError(f"objective '{label}': {error}") from None


def objective_matrix(
    objectives: Sequence[Objective], metrics: Sequence[Mapping[str, float]]
) -> np.ndarray:
    """Rows = architectures, columns = objectives, all as minimisation."""
    matrix = np.empty((len(metrics), len(objectives)), dtype=float)
    for i, row in enumerate(metrics):
        for j, objective in enumerate(objectives):
            matrix[i, j] = objective.minimised(row)
    return matrix


def non_dominated(points: np.ndarray) -> list[int]:
    """Indices (ascending) of the rows no other row dominates (minimisation)."""
    if len(points) == 0:
        return []
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    front = NonDominatedSorting().do(points, only_non_dominated_front=True)
    return sorted(int(i) for i in front)


def dominated_by(point: np.ndarray, others: np.ndarray) -> bool:
    """Whether a row of `others` dominates `point` (minimisation)."""
    if len(others) == 0:
        return False
    return bool(np.any(np.all(others <= point, axis=1) & np.any(others < point, axis=1)))


def extends_front(
    objectives: Sequence[Objective],
    before: Sequence[Mapping[str, float]],
    new: Sequence[Mapping[str, float]],
) -> bool:
    """Whether some row of `new` is not weakly dominated by any row of `before` (with one
    objective: strictly better than all of them)."""
    if not new:
        return False
    if not before:
        return True
    old = objective_matrix(objectives, before)
    fresh = objective_matrix(objectives, new)
    return any(not np.any(np.all(old <= point, axis=1)) for point in fresh)


def pareto_front(
    objectives: Sequence[Objective], metrics: Sequence[Mapping[str, float]]
) -> list[int]:
    """Indices of the Pareto-optimal rows of `metrics` under `objectives`."""
    return non_dominated(objective_matrix(objectives, metrics))
