"""The ranking workflow `abc rank` runs, as one library call: a trained run in, module scores
and feature importance out.

    report = rank_run(load_run("runs/acc_lat"), chart="importance.png")
    for table in report.result.tables:
        print(table.unit, [m.score for m in table.top(3)])
    write_scores("scores.csv", report.result)

A run trained on ONNX-IR graphs has no stage modules: its report holds the feature
importance and the top rooted subgraphs instead (`report.result` is None).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autobuild_dsl import io as abc_io
from autobuild_dsl.design.importance import feature_importance, importance_chart
from autobuild_dsl.design.rank import RankError, RankProgress, RankResult, ScoreKind, rank_modules
from autobuild_dsl.errors import AbcError
from autobuild_dsl.scorer.records import TrainedRun

if TYPE_CHECKING:
    from autobuild_dsl.data.dataset import LabeledDataset

IR_NOTE = (
    "module scoring does not apply to this run: it uses the ONNX-IR encoding (one node "
    "per primitive op, no stage modules). Showing feature importance and the top "
    "rooted subgraphs instead"
)


@dataclass
class RankReport:
    """What ranking a run gives: feature importance, and module scores (sequence runs) or
    the top rooted subgraphs (ONNX-IR runs)."""

    run: TrainedRun
    importance: list[Any]
    title: str
    result: RankResult | None = None
    subgraphs: Any = None

    @property
    def encoding(self) -> str:
        return run_encoding(self.run)


def run_encoding(run: TrainedRun) -> str:
    return str(getattr(run.config, "encoding", "sequence") or "sequence")


def default_run_dir(space_name: str, target: str) -> str:
    """Where `abc rank SPACE DATA --target T` trains: runs/SPACE-TARGET (target slugged)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", target).strip("_")[:40] or "target"
    return str(Path("runs") / f"{space_name}-{slug}")


def rank_run(
    run: TrainedRun,
    *,
    standardize: bool = False,
    score: ScoreKind = "pooled",
    globals: Sequence[dict[str, Any]] | None = None,
    threads: int = 1,
    top: int = 5,
    chart: str | None = None,
    progress: Callable[[RankProgress], None] | None = None,
) -> RankReport:
    """Feature importance (and its bar chart at `chart`), then every module's score; for an
    ONNX-IR run the `top` rooted subgraphs instead of module scores."""
    importance = feature_importance(run)
    title = f"feature importance: {run.config.target} ({len(run.members)} member(s))"
    if chart:
        importance_chart(importance, chart, title=title)
    report = RankReport(run=run, importance=importance, title=title)
    if run_encoding(run) != "sequence":
        from autobuild_dsl.design.ir_rank import top_rooted_subgraphs

        try:
            report.subgraphs = top_rooted_subgraphs(run, top=top)
        except ValueError as error:
            if isinstance(error, AbcError):
                raise
            raise RankError(str(error)) from None
        return report
    report.result = rank_modules(
        run,
        standardize=standardize,
        score=score,
        globals=globals,
        threads=threads,
        progress=progress,
    )
    return report


def prime_cache(
    run: TrainedRun,
    *,
    threads: int = 1,
    progress: Callable[[RankProgress], None] | None = None,
    loaded: LabeledDataset | None = None,
) -> bool:
    """Compute and keep in RUN/cache/ what `abc rank RUN` and `abc build RUN -o DIR` read
    with their default options: the members' module norms, the feature importance, the
    feature values the labeled data holds and the predictions of the default build's
    networks. `abc train` calls it at the end (torch is loaded then anyway), so a user's
    first `rank` (and first default `build`) is a cache hit that imports no torch. False
    (nothing kept) where ranking with the defaults fails: `abc rank` reports why."""
    from autobuild_dsl.design.workflow import DEFAULT_BUILT, build_networks

    try:
        feature_importance(run, loaded=loaded)
        if run_encoding(run) == "sequence":
            rank_modules(run, threads=threads, progress=progress)
            build_networks([run], top_k=None, n=DEFAULT_BUILT, threads=threads)
    except AbcError:
        return False
    return True


def scores_csv(result: RankResult) -> str:
    """Every module of every unit and global assignment, one row each, best first."""
    names = list(result.assignments()[0]) if result.tables else []
    contexts = result.context_names()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["unit", *names, *contexts, "rank", "score", "z", "size", "nodes", "hop", "module"]
    )
    for table in result.tables:
        texts = table.texts()
        glob = [table.globals.get(n) for n in names]
        glob += [table.context.get(n, "") for n in contexts]
        glob = [json.dumps(v) if isinstance(v, bool) else v for v in glob]
        order = table.order()
        # Whole columns as Python lists, best first: no numpy scalar per cell.
        columns = [
            [f"{v:.6g}" for v in table.score[order].tolist()],
            [f"{v:.6g}" for v in table.z[order].tolist()],
            np.asarray(table.size)[order].astype(np.int64).tolist(),
            np.asarray(table.nodes)[order].astype(np.int64).tolist(),
            np.asarray(table.hop)[order].astype(np.int64).tolist(),
            [texts[i] for i in order.tolist()],
        ]
        writer.writerows(
            [table.unit, *glob, rank, *cells]
            for rank, cells in enumerate(zip(*columns, strict=True), start=1)
        )
    return buffer.getvalue()


def write_scores(path: str | Path, result: RankResult, *, force: bool = False) -> None:
    """Write every module's score: CSV, or Parquet for a `.parquet` path (needs pyarrow)."""
    path = Path(path)
    text = scores_csv(result)
    if not path.name.lower().endswith(".parquet"):
        abc_io.write_atomic(path, text, overwrite=force)
        return
    try:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        raise RankError(
            f"{path}: writing Parquet needs pyarrow (pip install pyarrow); or write .csv"
        ) from None
    table = pacsv.read_csv(io.BytesIO(text.encode()))
    with abc_io.atomic_path(path, overwrite=force, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


__all__ = [
    "IR_NOTE",
    "RankReport",
    "default_run_dir",
    "prime_cache",
    "rank_run",
    "run_encoding",
    "scores_csv",
    "write_scores",
]
