"""What a labeled dataset holds: size, metric ranges, depth and global-choice coverage."""

from __future__ import annotations

from collections import Counter

import numpy as np
from pydantic import BaseModel

from autobuild_dsl.data.dataset import LabeledDataset
from autobuild_dsl.data.target import Target, TargetError


class ColumnSummary(BaseModel):
    rows: int
    min: float | None = None
    mean: float | None = None
    max: float | None = None
    sd: float | None = None


class GlobalCoverage(BaseModel):
    distinct: int
    of: int
    min: float | None = None
    max: float | None = None


class DatasetSummary(BaseModel):
    space: str
    rows: int
    measurements: int
    metrics: dict[str, ColumnSummary]
    stage_depths: dict[str, dict[int, int]]
    globals: dict[str, GlobalCoverage]
    target: str | None = None
    target_summary: ColumnSummary | None = None
    # Rows left out of the target because they lack a metric it reads (as `abc train`
    # leaves them out), and how many rows lack each such metric.
    target_dropped: int = 0
    target_lacking: dict[str, int] = {}


def _column(values: np.ndarray) -> ColumnSummary:
    present = values[~np.isnan(values)]
    if not present.size:
        return ColumnSummary(rows=0)
    return ColumnSummary(
        rows=int(present.size),
        min=float(present.min()),
        mean=float(present.mean()),
        max=float(present.max()),
        sd=float(present.std()),
    )


def describe(dataset: LabeledDataset, target: Target | None = None) -> DatasetSummary:
    """Summarise `dataset` (and the target over it, when given; raises TargetError)."""
    space = dataset.space
    stage_depths = {}
    for stage in space.stages:
        seen = Counter(a.stages[stage.name].depth for a in dataset.architectures)
        stage_depths[stage.name] = {d: seen.get(d, 0) for d in stage.depths}
    globals_ = {}
    for name, domain in space.choices.items():
        values = [a.globals[name] for a in dataset.architectures]
        coverage = GlobalCoverage(distinct=len({repr(v) for v in values}), of=len(domain))
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            coverage = coverage.model_copy(
                update={"min": float(min(values)), "max": float(max(values))}  # type: ignore[type-var]
            )
        globals_[name] = coverage
    summary = DatasetSummary(
        space=space.name,
        rows=len(dataset),
        measurements=int(dataset.counts.sum()),
        metrics={
            name: _column(dataset.values[:, j]) for j, name in enumerate(dataset.metric_names)
        },
        stage_depths=stage_depths,
        globals=globals_,
    )
    if target is not None:
        labeled = target.labeled_rows(dataset)
        if not labeled.kept:
            raise TargetError(
                f"target `{target.text}`: no row has every metric it reads ("
                + ", ".join(
                    f"{n} of {len(dataset)} rows lack {m}" for m, n in labeled.lacking.items()
                )
                + ")"
            )
        summary.target = target.text
        summary.target_summary = _column(
            target.evaluate(dataset.subset(np.flatnonzero(labeled.keep)))
        )
        summary.target_dropped = labeled.dropped
        summary.target_lacking = labeled.lacking
    return summary


__all__ = ["ColumnSummary", "DatasetSummary", "GlobalCoverage", "describe"]
