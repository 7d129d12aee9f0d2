"""`abc search` (evolutionary or exhaustive) and `abc plot`: searching spaces, drawing fronts."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from autobuild_dsl.cli import options as opt
from autobuild_dsl.cli.common import (
    UserError,
    console,
    err_console,
    load_space,
    write_atomic,
)
from autobuild_dsl.cli.progress import ProgressView
from autobuild_dsl.search.cache import default_cache_dir
from autobuild_dsl.search.evaluators import parse_evaluator_spec
from autobuild_dsl.search.evolution import (
    FRONT_FILE,
    RECORDS_FILE,
    STATE_FILE,
    SearchConfig,
    SearchProgress,
    SearchResult,
    run_search,
)
from autobuild_dsl.search.exhaustive import (
    DEFAULT_MAX_ARCHITECTURES,
    ExhaustiveConfig,
    ExhaustiveProgress,
    ExhaustiveResult,
    exhaustive_search,
    format_seconds,
)
from autobuild_dsl.search.pareto import Objective, parse_objectives
from autobuild_dsl.search.runner import EvaluationRunner
from autobuild_dsl.space.model import Space

EXHAUSTIVE_SUMMARY = "exhaustive.json"
EXHAUSTIVE_TOP = "top.jsonl"


def _fmt(value: float) -> str:
    return f"{value:.6g}"


@click.command("search")
@opt.file_argument("space_file")
@opt.evaluator
@click.option(
    "--objectives",
    help="Comma-separated 'max NAME' / 'min NAME' (NAME a metric or target expression).",
)
@click.option("--budget", type=click.IntRange(min=1), help="Distinct architectures to evaluate.")
@opt.choice(
    "--mode",
    choices=["stage", "layer"],
    default="stage",
    help="Mutation: a whole stage module (Stage-Full) or one layer (Layer-Full).",
)
@opt.seed()
@opt.count("--init", default=50, help="Random architectures in generation 0.")
@opt.count("--per-generation", default=20, help="Mutants of the front per generation.")
@opt.path("-o", "--out", "out_dir", help="Output folder.", folder=True)
@opt.jobs("Processes.", short=True)
@click.option("--ray", "ray_address", help="Evaluate on a Ray cluster (e.g. 'auto').")
@opt.path(
    "--cache",
    "cache_dir",
    help="Evaluation cache folder [default: $ABC_CACHE_DIR or ~/.cache/autobuild-dsl/evaluations].",
    folder=True,
)
@click.option("--no-cache", is_flag=True, help="Do not read or write the evaluation cache.")
@opt.force("Discard a previous search in the output folder.")
@click.option(
    "--exhaustive", is_flag=True, help="Score every architecture and keep the top N instead."
)
@opt.count("--top", default=10, help="Exhaustive: N.")
@opt.count("--batch-size", default=2048, help="Exhaustive: architectures per batch.")
@opt.count(
    "--max-architectures",
    default=DEFAULT_MAX_ARCHITECTURES,
    help="Exhaustive: refuse larger spaces.",
)
@click.option(
    "--max-time", type=float, help="Exhaustive: refuse when the estimate exceeds these seconds."
)
@opt.space_name("Which space of the file.")
def search_cmd(
    space_file: str,
    evaluator_spec: str,
    objectives: str | None,
    budget: int | None,
    mode: str,
    seed: int,
    init: int,
    per_generation: int,
    out_dir: str | None,
    jobs: int,
    ray_address: str | None,
    cache_dir: str | None,
    no_cache: bool,
    force: bool,
    exhaustive: bool,
    top: int,
    batch_size: int,
    max_architectures: int,
    max_time: float | None,
    space_name: str | None,
) -> None:
    """Search SPACE_FILE: evolutionary multi-objective search, or --exhaustive scoring.

    A reduced space (from `abc build`) with --mode stage is AutoBuild-NAS. Rerunning in
    the same output folder resumes an interrupted search; the result is the same.
    """
    if not exhaustive:
        if objectives is None:
            raise UserError("--objectives is required, e.g. --objectives 'max acc, min latency'")
        if budget is None:
            raise UserError("--budget is required (the number of architectures to evaluate)")
        if out_dir is None:
            raise UserError("-o/--out is required: the search checkpoints and writes there")
    space = load_space(space_file, space_name)
    config = parse_evaluator_spec(evaluator_spec)
    parsed = parse_objectives(objectives) if objectives is not None else None
    cache = None if no_cache or exhaustive else Path(cache_dir or default_cache_dir())
    with EvaluationRunner(
        space, config, cache_dir=cache, jobs=jobs, ray_address=ray_address
    ) as runner:
        for note in runner.notes:
            err_console.print(f"note: {escape(note)}", soft_wrap=True)
        if exhaustive:
            _exhaustive(
                space,
                runner,
                parsed,
                top,
                batch_size,
                max_architectures,
                max_time,
                out_dir,
                force,
            )
            return
        assert parsed is not None and budget is not None and out_dir is not None
        out = Path(out_dir)
        search_config = SearchConfig(
            objectives=parsed,
            budget=budget,
            init=init,
            per_generation=per_generation,
            mode=mode,  # type: ignore[arg-type]
            seed=seed,
        )
        result = _run_with_progress(space, runner, search_config, out, force)
        _render_search(result, out, runner)


def _run_with_progress(
    space: Space, runner: EvaluationRunner, config: SearchConfig, out: Path, force: bool
) -> SearchResult:
    with ProgressView() as bar:
        task = bar.add("search", total=config.budget)

        def show(event: SearchProgress) -> None:
            best = " · ".join(f"{label} {_fmt(v)}" for label, v in event.best.items())
            bar.update(
                task,
                completed=event.evaluated,
                description=f"gen {event.generation}",
                info=f"front {event.front_size} · {best}" if best else "",
            )

        return run_search(space, runner, config, out, progress=show, force=force)


def _render_search(result: SearchResult, out: Path, runner: EvaluationRunner) -> None:
    labels = [o.label for o in result.config.objectives]
    table = Table(title=f"Pareto front ({len(result.front)} of {len(result.records)})")
    for column in ("#", "gen", *labels):
        table.add_column(column, justify="right")
    rows = sorted(result.front_records(), key=lambda r: r.objectives[labels[0]])
    for record in rows:
        table.add_row(
            str(record.index),
            str(record.generation),
            *(_fmt(record.objectives[label]) for label in labels),
        )
    console.print(table)
    stopped = {
        "budget": "budget reached",
        "exhausted": "no new architecture reachable by mutation",
        "interrupted": "interrupted",
    }[result.stopped]
    resumed = f", resumed from {result.resumed_from}" if result.resumed_from else ""
    plural = "s" if result.generations != 1 else ""
    console.print(
        f"{len(result.records)} architectures, {result.generations} full generation{plural} "
        f"({stopped}{resumed}); evaluated now: {runner.paid}, from cache: {runner.hits}"
    )
    console.print(f"wrote {out / RECORDS_FILE}, {out / FRONT_FILE}, {out / STATE_FILE}")


def _exhaustive(
    space: Space,
    runner: EvaluationRunner,
    objectives: list[Objective] | None,
    top: int,
    batch_size: int,
    max_architectures: int,
    max_time: float | None,
    out_dir: str | None,
    force: bool,
) -> None:
    if objectives is not None and len(objectives) != 1:
        raise UserError("--exhaustive ranks by one objective; give one, e.g. 'min fid'")
    out = Path(out_dir) if out_dir else None
    if out is not None and (out / EXHAUSTIVE_TOP).exists() and not force:
        raise UserError(f"{out / EXHAUSTIVE_TOP} exists; pass --force to overwrite it")
    config = ExhaustiveConfig(
        objective=objectives[0] if objectives else None,
        top=top,
        batch_size=batch_size,
        max_architectures=max_architectures,
        max_seconds=max_time,
    )
    with ProgressView() as bar:
        task = bar.add("scoring", info="measuring throughput")

        def show(event: ExhaustiveProgress) -> None:
            bar.update(
                task, completed=event.done, total=event.total, info=f"{event.rate:,.0f} archs/s"
            )

        result = exhaustive_search(space, runner, config, progress=show)
    _render_exhaustive(result)
    if out is not None:
        lines = "".join(r.model_dump_json() + "\n" for r in result.top)
        write_atomic(out / EXHAUSTIVE_TOP, lines, force=True)
        summary = result.model_dump(mode="json", exclude={"top"})
        write_atomic(out / EXHAUSTIVE_SUMMARY, json.dumps(summary, indent=2) + "\n", force=True)
        console.print(f"wrote {out / EXHAUSTIVE_TOP}, {out / EXHAUSTIVE_SUMMARY}")


def _render_exhaustive(result: ExhaustiveResult) -> None:
    table = Table(title=f"top {len(result.top)} by {result.objective.label}")
    metric_names = list(result.top[0].metrics) if result.top else []
    for column in ("rank", *metric_names):
        table.add_column(column, justify="right")
    table.add_column("architecture", overflow="fold")
    for entry in result.top:
        table.add_row(
            str(entry.rank),
            *(_fmt(entry.metrics[m]) for m in metric_names),
            escape(_short(entry.arch)),
        )
    console.print(table)
    console.print(
        f"scored {result.evaluated:,} of {result.size:,} architectures in "
        f"{format_seconds(result.seconds)}: {result.throughput:,.0f} architectures/s"
    )


def _short(architecture: dict) -> str:
    """A compact one-line view: globals, then each stage's depth and layer ops/choices."""
    parts = [f"{k}={v}" for k, v in architecture.get("globals", {}).items()]
    for name, stage in architecture.get("stages", {}).items():
        choices = ",".join(f"{k}={v}" for k, v in stage.get("choices", {}).items())
        layers = "/".join(
            "-".join(str(v) for v in layer.values()) or "." for layer in stage.get("layers", [])
        )
        parts.append(f"{name}[{choices}{';' if choices else ''}{layers}]")
    return " ".join(parts)


@click.command("plot")
@click.argument("results", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Labeled data (JSON lines).",
)
@click.option("--x", "x_axis", required=True, help="X metric: 'min lat', 'max acc' or a name.")
@click.option("--y", "y_axis", required=True, help="Y metric: 'max acc' or a name.")
@opt.path("-o", "--output", help="FIG.png|svg|pdf", required=True)
@click.option("--label", "labels", multiple=True, help="A legend label per RESULT, in order.")
@click.option("--title")
@click.option("--no-points", is_flag=True, help="Draw fronts only, not every evaluated point.")
@opt.force("Overwrite the output if it exists.")
def plot_cmd(
    results: tuple[str, ...],
    data_path: str | None,
    x_axis: str,
    y_axis: str,
    output: str,
    labels: tuple[str, ...],
    title: str | None,
    no_points: bool,
    force: bool,
) -> None:
    """Plot the Pareto fronts of RESULT folders/files and the labeled data on one chart."""
    from autobuild_dsl.search.plot import axis_objective, load_series, plot_fronts

    if not results and not data_path:
        raise UserError("give at least one RESULT or --data")
    if labels and len(labels) != len(results):
        raise UserError(f"{len(labels)} --label for {len(results)} results")
    out = Path(output)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(f"{out}: the figure must end in .png, .svg or .pdf")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    try:
        series = [
            load_series(Path(p), labels[i] if labels else None) for i, p in enumerate(results)
        ]
        data = load_series(Path(data_path), Path(data_path).stem) if data_path else None
    except ValueError as error:
        raise UserError(str(error)) from None
    x = axis_objective(x_axis, series, "min")
    y = axis_objective(y_axis, series, "max")
    summary = plot_fronts(series, x, y, out, data=data, title=title, show_points=not no_points)
    for item in summary.series:
        console.print(f"{item.label}: {item.points} points, front of {len(item.front)}")
    console.print(f"wrote {out}")


def register(group: click.Group) -> None:
    for command in (search_cmd, plot_cmd):
        group.add_command(command)
