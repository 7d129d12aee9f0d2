"""Feature importance (paper Sec. 4.3): the FE-MLP score of every value of every category.

The scores come from the run (`scorer.run_feature_importance`: members weighted by their
held-out hop-0 SRCC); this module draws them as a bar chart (matplotlib, Agg backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from autobuild_dsl import io
from autobuild_dsl.scorer.model import FeatureScore
from autobuild_dsl.scorer.run import TrainedRun, run_feature_importance
from autobuild_dsl.space.expr import format_value

CHART_FORMATS = (".png", ".svg", ".pdf")


class ChartError(ValueError):
    """The chart cannot be written (unknown format)."""


def feature_importance(run: TrainedRun) -> list[FeatureScore]:
    """Every (category, value) of the run's node features with its FE-MLP score."""
    return run_feature_importance(run)


def value_text(value: object) -> str:
    if isinstance(value, bool | int | float | str):
        return format_value(value)
    return str(value)


def importance_chart(rows: Sequence[FeatureScore], out: str | Path, title: str = "") -> Path:
    """A horizontal bar per (category, value), grouped and coloured by category."""
    out = Path(out)
    if out.suffix.lower() not in CHART_FORMATS:
        raise ChartError(
            f"{out}: chart format '{out.suffix or '(none)'}' is not one of "
            f"{', '.join(CHART_FORMATS)}"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories: list[str] = []
    for row in rows:
        if row.category not in categories:
            categories.append(row.category)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels, scores, bar_colours = [], [], []
    for c, category in enumerate(categories):
        for row in rows:
            if row.category == category:
                labels.append(f"{category} = {value_text(row.value)}")
                scores.append(row.score)
                bar_colours.append(colours[c % len(colours)])
    height = max(2.5, 0.22 * len(labels) + 1.2)
    figure, axes = plt.subplots(figsize=(7.0, height), dpi=150)
    positions = list(range(len(labels)))[::-1]  # first row on top
    axes.barh(positions, scores, color=bar_colours, height=0.75)
    axes.set_yticks(positions)
    axes.set_yticklabels(labels, fontsize=7 if len(labels) > 40 else 8)
    axes.set_xlabel("FE-MLP importance (|scalar|: contribution to the hop-0 norm)")
    axes.set_ylim(-0.75, len(labels) - 0.25)
    axes.grid(True, axis="x", alpha=0.3)
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    try:
        _save_atomic(figure, out)
    finally:
        plt.close(figure)
    return out


def _save_atomic(figure: object, out: Path) -> None:
    suffix = out.suffix.lower()
    with io.atomic_path(out, suffix=suffix) as tmp:
        figure.savefig(tmp, format=suffix.lstrip("."))  # type: ignore[attr-defined]


__all__ = ["CHART_FORMATS", "ChartError", "feature_importance", "importance_chart", "value_text"]
