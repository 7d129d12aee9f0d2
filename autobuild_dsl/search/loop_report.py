"""The AutoBuild-NAS loop's report: `report.md` and `progress.png`."""

from __future__ import annotations

from pathlib import Path

from autobuild_dsl import io as abc_io
from autobuild_dsl.data.dataset import write_text_atomic
from autobuild_dsl.search.loop_state import PLOT_FILE, REPORT_FILE, LoopResult


def write_report(result: LoopResult, out: Path) -> None:
    """`report.md` and `progress.png` (best so far vs evaluations; the front for two
    objectives or more)."""
    objectives = result.config.search_objectives()
    plot = _plot(result, out / PLOT_FILE)
    lines = [
        "# AutoBuild-NAS loop",
        "",
        f"Targets: {', '.join(f'`{t}`' for t in result.config.targets)}; objectives: "
        f"{', '.join(o.label for o in objectives)}.",
        f"{result.labels} labels given; {len(result.records)} of {result.config.budget} "
        f"evaluations paid; stopped: {result.stopped}.",
        "",
        "| round | k | reduced space | trained on | evaluated | "
        + " | ".join(f"best {o.label}" for o in objectives)
        + " |",
        "|---" * (5 + len(objectives)) + "|",
    ]
    for info in result.rounds:
        best = " | ".join(f"{info.best.get(o.label, float('nan')):.6g}" for o in objectives)
        lines.append(
            f"| {info.round} | {info.k} | {info.reduced_size:,} | {info.trained_on} | "
            f"{info.evaluated} | {best} |"
        )
    lines += [
        "",
        f"Front: {len(result.front)} network(s), {result.beyond_labels} found by "
        "the loop beyond the labels' front.",
        "",
    ]
    for row in result.front[:20]:
        values = ", ".join(f"{o.label} = {o.value(row['metrics']):.6g}" for o in objectives)
        lines.append(f"- {row['source']}: {values}")
    if plot:
        lines += ["", f"![progress]({PLOT_FILE})"]
    write_text_atomic(out / REPORT_FILE, "\n".join(lines) + "\n")


def _plot(result: LoopResult, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    objectives = result.config.search_objectives()
    if len(objectives) == 1:
        figure, axis = plt.subplots(figsize=(6, 3.6))
        label = objectives[0].label
        axis.plot([row[label] for row in result.best_so_far], drawstyle="steps-post")
        axis.set_xlabel("real evaluations")
        axis.set_ylabel(f"best {label}")
    else:
        figure, axis = plt.subplots(figsize=(6, 4))
        x, y = objectives[0], objectives[1]
        evaluated = [r.metrics for r in result.records]
        axis.scatter([x.value(m) for m in evaluated], [y.value(m) for m in evaluated], s=8,
                     alpha=0.5, label="evaluated")  # fmt: skip
        front = sorted(result.front, key=lambda row: x.value(row["metrics"]))
        axis.plot([x.value(r["metrics"]) for r in front], [y.value(r["metrics"]) for r in front],
                  marker="o", color="C3", label="front")  # fmt: skip
        axis.set_xlabel(x.label)
        axis.set_ylabel(y.label)
        axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with abc_io.atomic_path(path, suffix=".png") as tmp:
            figure.savefig(tmp, dpi=110)
    finally:
        plt.close(figure)
