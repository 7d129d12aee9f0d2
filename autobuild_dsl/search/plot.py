"""Pareto fronts of several results and the labeled data, on one chart (matplotlib, Agg).

A result is a search output folder (`abc search -o`), an exhaustive-search folder, or any
JSON-lines file whose lines carry a `metrics` object (or plain numeric fields). The axes
are objectives (`min latency`, `max acc`, or an expression), so each series' front is its
2-D Pareto front in the plotted pair.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from autobuild_dsl import io
from autobuild_dsl.search.pareto import Objective, ObjectiveError, non_dominated

Metrics = dict[str, float]


class Series(BaseModel):
    label: str
    points: list[Metrics] = Field(description="every evaluated architecture's metrics")
    objectives: list[Objective] = Field(
        default_factory=list, description="the objectives the result was searched for"
    )


class SeriesSummary(BaseModel):
    label: str
    points: int
    front: list[tuple[float, float]]


class PlotSummary(BaseModel):
    path: str
    series: list[SeriesSummary]


def load_series(path: Path, label: str | None = None) -> Series:
    """Read a result folder or a JSON-lines file of metrics."""
    from autobuild_dsl.search.evolution import STATE_FILE, load_result

    name = label or (path.name if path.is_dir() else path.stem)
    if path.is_dir() and (path / STATE_FILE).exists():
        result = load_result(path)
        return Series(
            label=name,
            points=[r.metrics for r in result.records],
            objectives=list(result.config.objectives),
        )
    if path.is_dir() and (path / "top.jsonl").exists():
        return Series(label=name, points=_jsonl_metrics(path / "top.jsonl"))
    if path.is_dir():
        raise ValueError(f"{path}: neither a search folder nor an exhaustive-search folder")
    return Series(label=name, points=_jsonl_metrics(path))


def _jsonl_metrics(path: Path) -> list[Metrics]:
    points: list[Metrics] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: not JSON: {error}") from None
        if not isinstance(row, dict):
            continue
        source = row.get("metrics") if isinstance(row.get("metrics"), dict) else row
        points.append(
            {
                k: float(v)
                for k, v in source.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
        )
    return points


def axis_objective(text: str, series: Sequence[Series], default: str) -> Objective:
    """`min lat` / `max acc` as given; a bare name takes the direction a result searched it
    with, else `default` ("min" for x, "max" for y)."""
    from autobuild_dsl.search.pareto import parse_objective

    stripped = text.strip()
    head = stripped.split(None, 1)[0].lower() if stripped else ""
    if head in ("max", "min", "maximize", "minimize") and " " in stripped:
        return parse_objective(stripped)
    for item in series:
        for objective in item.objectives:
            if objective.expr == stripped:
                return objective
    return parse_objective(f"{default} {stripped}")


def _xy(
    points: Sequence[Mapping[str, float]], x: Objective, y: Objective
) -> list[tuple[float, float]]:
    pairs = []
    for metrics in points:
        try:
            pairs.append((x.value(metrics), y.value(metrics)))
        except ObjectiveError:
            continue  # a point without one of the plotted metrics is not drawn
    return pairs


def front_2d(
    pairs: Sequence[tuple[float, float]], x: Objective, y: Objective
) -> list[tuple[float, float]]:
    """The Pareto-optimal pairs, sorted by x."""
    import numpy as np

    if not pairs:
        return []
    signs = np.array([-1.0 if x.direction == "max" else 1.0, -1.0 if y.direction == "max" else 1.0])
    indices = non_dominated(np.array(pairs, dtype=float) * signs)
    return sorted({pairs[i] for i in indices})


def plot_fronts(
    results: Sequence[Series],
    x: Objective,
    y: Objective,
    out: Path,
    *,
    data: Series | None = None,
    title: str | None = None,
    show_points: bool = True,
) -> PlotSummary:
    """Draw each result's evaluated points (faint) and 2-D front (a step line) and the
    data's points and front (grey), and save to `out` (format from its suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.0, 5.0), dpi=150)
    # The attainment surface: for a `min` x the best y holds until the next front point.
    steps = "steps-post" if x.direction == "min" else "steps-pre"
    summaries: list[SeriesSummary] = []
    if data is not None:
        pairs = _xy(data.points, x, y)
        front = front_2d(pairs, x, y)
        if pairs:
            axes.scatter(*zip(*pairs, strict=True), s=6, color="0.75", label=data.label, zorder=1)
        if front:
            axes.plot(
                *zip(*front, strict=True),
                drawstyle=steps,
                color="0.4",
                linestyle="--",
                linewidth=1.2,
                label=f"{data.label} front",
                zorder=2,
            )
        summaries.append(SeriesSummary(label=data.label, points=len(pairs), front=front))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, item in enumerate(results):
        colour = colours[i % len(colours)]
        pairs = _xy(item.points, x, y)
        front = front_2d(pairs, x, y)
        if show_points and pairs:
            axes.scatter(*zip(*pairs, strict=True), s=8, color=colour, alpha=0.25, zorder=3)
        if front:
            axes.plot(
                *zip(*front, strict=True),
                drawstyle=steps,
                color=colour,
                marker="o",
                markersize=4,
                linewidth=1.6,
                label=item.label,
                zorder=4,
            )
        summaries.append(SeriesSummary(label=item.label, points=len(pairs), front=front))
    axes.set_xlabel(x.label)
    axes.set_ylabel(y.label)
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    _save_atomic(figure, out)
    plt.close(figure)
    return PlotSummary(path=str(out), series=summaries)


def _save_atomic(figure: object, out: Path) -> None:
    suffix = out.suffix or ".png"
    with io.atomic_path(out, suffix=suffix) as tmp:
        figure.savefig(tmp, format=suffix.lstrip(".").lower())  # type: ignore[attr-defined]
