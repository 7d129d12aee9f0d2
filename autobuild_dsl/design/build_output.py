"""The build workflow `abc build` runs, with its outputs: runs in, a folder of built networks out.

    report = build_to_folder([load_run("runs/acc")], "out/built", top_k=3, n=20)
    print(report.summary["best_score"], report.files["architectures"])

`design.workflow.build_networks` ranks and builds; this module checks the runs agree,
finds the `.abs` file a reduced space extends, and writes the folder: architectures.jsonl
(the n best, with scores), modules.csv (the kept modules), build.json (a summary) and,
with a top-k, NAME.abs (the reduced space). Every file is written atomically and none is
overwritten without `force`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autobuild_dsl import io as abc_io
from autobuild_dsl.design.builder import BuildError, module_text
from autobuild_dsl.design.construct import (
    BuildResult,
    SelectionMode,
    architecture_lines,
    reduced_space,
    valid_combinations,
)
from autobuild_dsl.design.rank import RankProgress, RankResult, ScoreKind
from autobuild_dsl.design.ranking_workflow import run_encoding
from autobuild_dsl.design.workflow import DEFAULT_BUILT, build_networks
from autobuild_dsl.errors import Remedy
from autobuild_dsl.scorer.records import TrainedRun
from autobuild_dsl.space.decisions import canonicalize, space_size
from autobuild_dsl.space.model import Space

FORCE = Remedy("force", "to overwrite it")


@dataclass
class BuildReport:
    """The built folder: what was built, where each file went and the summary written."""

    result: BuildResult
    rankings: list[RankResult]
    space: Space
    files: dict[str, Path]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def reduced_size(self) -> int | None:
        return self.summary.get("reduced_size")

    @property
    def product_of_kept(self) -> int | None:
        return self.summary.get("product_of_kept")

    @property
    def valid(self) -> int | None:
        return self.summary.get("valid_combinations")


def check_runs(runs: Sequence[TrainedRun]) -> None:
    """Runs to build from: sequence-graph runs, all trained on one space."""
    if not runs:
        raise BuildError("no run to build from")
    for run in runs:
        if run_encoding(run) != "sequence":
            raise BuildError(
                f"{run.path}: an ONNX-IR run has no stage modules to build from; "
                "use a sequence-graph run"
            )
    first = runs[0].space.digest()
    for run in runs[1:]:
        if run.space.digest() != first:
            raise BuildError(f"{run.path}: trained on another space than {runs[0].path}")


def _load_space_file(path: str, name: str | None) -> Space:
    if path.endswith(".json"):
        return Space.from_json(Path(path).read_text(encoding="utf-8"))
    from autobuild_dsl.lang import compile_file

    return compile_file(path, name)


def space_file_of(runs: Sequence[TrainedRun], given: str | None) -> tuple[str, Space]:
    """The .abs file the runs' space came from (`given`, else the one the run records),
    checked to be that space."""
    candidates = [given] if given else [r.config.space_file for r in runs if r.config.space_file]
    asked = Remedy(
        "space_file", "(the space it was trained on) to write the reduced space", "SPACE.abs"
    )
    if not candidates:
        raise BuildError("the run does not record its .abs file", remedies=(asked,))
    path = candidates[0]
    if not Path(path).is_file():
        raise BuildError(
            f"{path}: no such space file",
            remedies=(Remedy("space_file", "(the space it was trained on)", "SPACE.abs"),),
        )
    from autobuild_dsl.lang import CompileError

    try:
        space = _load_space_file(path, runs[0].space.name)
    except CompileError:
        space = _load_space_file(path, None)  # no space of that name: the file's first one
    if space.digest() != runs[0].space.digest():
        raise BuildError(f"{path}: space '{space.name}' is not the space the run was trained on")
    return path, space


def output_files(out: Path, reduced_name: str | None) -> dict[str, Path]:
    files = {
        "architectures": out / "architectures.jsonl",
        "modules": out / "modules.csv",
        "summary": out / "build.json",
    }
    if reduced_name is not None:
        files["space"] = out / f"{reduced_name}.abs"
    return files


def build_to_folder(
    runs: Sequence[TrainedRun],
    output: str | Path,
    *,
    top_k: int | dict[str, int] | Sequence[int] | None = None,
    n: int = DEFAULT_BUILT,
    mode: SelectionMode = "unconstrained",
    score: ScoreKind = "pooled",
    standardize: bool = False,
    globals: Sequence[dict[str, Any]] | None = None,
    all_globals: bool = False,
    space_file: str | None = None,
    name: str | None = None,
    force: bool = False,
    threads: int = 1,
    progress: Callable[[int, RankProgress], None] | None = None,
) -> BuildReport:
    """Build the `n` best architectures from the module scores of `runs` into `output`.

    With `top_k`, also a reduced space NAME.abs (default SPACE_top) that extends the
    original `.abs` file (`space_file`, default: the one the run records).
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out} exists and is not a folder")
    check_runs(runs)
    space = runs[0].space
    file_path = None
    if top_k is not None:
        file_path, space = space_file_of(runs, space_file)
    reduced_name = name or f"{space.name}_top"
    files = output_files(out, reduced_name if top_k is not None else None)
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not force:
        raise abc_io.OutputExists(f"{existing[0]} exists", remedies=(FORCE,))
    result, rankings = build_networks(
        runs,
        top_k=top_k,
        n=n,
        mode=mode,
        score=score,
        standardize=standardize,
        globals=globals,
        all_globals=all_globals,
        space=space,
        threads=threads,
        progress=progress,
    )
    for built in result.architectures:
        canonicalize(space, built.arch)
    report = BuildReport(result=result, rankings=rankings, space=space, files=files)
    reduced = {}
    if file_path is not None:
        reduced = _write_reduced(report, runs, file_path, reduced_name, mode, force)
    _write(
        files["architectures"], "".join(line + "\n" for line in architecture_lines(result)), force
    )
    _write(files["modules"], kept_csv(result), force)
    report.summary = _summary(report, runs, file_path, mode, reduced)
    _write(files["summary"], json.dumps(report.summary, indent=2) + "\n", force)
    return report


def _write(path: Path, text: str, force: bool) -> None:
    abc_io.write_atomic(path, text, overwrite=force)


def _write_reduced(
    report: BuildReport,
    runs: Sequence[TrainedRun],
    file_path: str,
    reduced_name: str,
    mode: str,
    force: bool,
) -> dict[str, int | None]:
    """Write NAME.abs and check it: its size, the product of the kept counts, and how many
    combinations satisfy the space's ties and rules."""
    from autobuild_dsl.lang import compile_file

    result, space, path = report.result, report.space, report.files["space"]
    kept = ", ".join(f"{u} {k}" for u, k in (result.top_k or {}).items())
    header = [
        f"Reduced by `abc build` from {', '.join(str(r.path) for r in runs)}",
        f"target(s): {', '.join(r.config.target for r in runs)}; mode {mode}; "
        f"kept per unit: {kept}",
    ]
    text = reduced_space(space, file_path, path, result, reduced_name, header)
    _write(path, text, force)
    reduced = compile_file(str(path))
    expected = 1
    for modules in result.kept().units.values():
        expected *= len(modules)
    for built in result.architectures:
        canonicalize(reduced, built.arch)
    return {
        "reduced_size": space_size(reduced),
        "product_of_kept": expected,
        "valid_combinations": valid_combinations(space, result),
    }


def _summary(
    report: BuildReport,
    runs: Sequence[TrainedRun],
    file_path: str | None,
    mode: str,
    reduced: dict[str, int | None],
) -> dict[str, Any]:
    result = report.result
    return {
        "runs": [str(r.path) for r in runs],
        "targets": [r.config.target for r in runs],
        "space": report.space.name,
        "space_file": file_path,
        "mode": mode,
        "top_k": result.top_k,
        "kept": {u: len(m) for u, m in result.kept().units.items()},
        "reduced_space": str(report.files["space"]) if "space" in report.files else None,
        "reduced_size": reduced.get("reduced_size"),
        "product_of_kept": reduced.get("product_of_kept"),
        "valid_combinations": reduced.get("valid_combinations"),
        "architectures": len(result.architectures),
        "best_score": result.architectures[0].score if result.architectures else None,
        "rank_seconds": [r.seconds for r in report.rankings],
        "notes": result.notes,
    }


def kept_csv(result: BuildResult) -> str:
    """The kept modules of every unit (per global assignment), one row each."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = list(result.selections[0].globals) if result.selections else []
    writer.writerow(["unit", *names, "rank", "score", "size", "module"])
    for table in result.selections:
        glob = [table.globals.get(n) for n in names]
        glob = [json.dumps(v) if isinstance(v, bool) else v for v in glob]
        for unit, modules in table.units.items():
            for module in modules:
                writer.writerow(
                    [
                        unit,
                        *glob,
                        getattr(module, "rank", ""),
                        f"{module.score:.6g}",
                        module.size,
                        " + ".join(module_text(p) for p in module.parts),
                    ]
                )
    return buffer.getvalue()


__all__ = ["BuildReport", "build_to_folder", "check_runs", "kept_csv", "space_file_of"]
