"""`abc improve`: AutoBuild-NAS as a loop (train, reduce, evaluate, retrain) to a budget."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from autobuild_dsl.cli import options as opt
from autobuild_dsl.cli.common import (
    UserError,
    console,
    load_space,
)
from autobuild_dsl.cli.progress import ProgressView


@click.command("improve")
@opt.file_argument("space_file")
@opt.file_argument("data_file")
@click.option(
    "-t",
    "--target",
    "targets",
    multiple=True,
    help="A target expression to train a scorer on (repeat: one scorer each, the union "
    "of their top-k modules is searched) [default with --objectives: one per objective "
    "that --free does not answer].",
)
@opt.evaluator
@click.option(
    "--free",
    "free_spec",
    help="An evaluator cheap enough to run on every candidate, never counted in the budget "
    "(e.g. measure:macs): its metrics are added to every label and evaluation that lacks "
    "them, and with --objectives the objectives it answers guide the search exactly.",
)
@click.option(
    "--budget", type=click.IntRange(min=1), required=True, help="Real evaluations to pay for."
)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--objectives",
    help="Several targets: what the Pareto search maximises/minimises, e.g. "
    "'max acc, min macs' [default: max of the single target].",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    help="Modules kept per unit at the start (it grows when the reduced space is exhausted "
    "or a round stalls) [default: the smallest k whose reduced space holds 1.5 x the budget; "
    "the guided search with --objectives: every module].",
)
@opt.count("--per-round", default=8, help="Evaluations between retrainings of the scorers.")
@click.option(
    "--inner",
    type=click.Choice(["guided", "evolution", "tpe"]),
    default="guided",
    show_default=True,
    help="The search inside the reduced space: pay for the networks the round's scorers "
    "place best (guided), or regularized evolution / TPE warm-started with the labels "
    "inside it (one objective; several objectives use Pareto mutation).",
)
@click.option(
    "--widen-on-stall/--no-widen-on-stall",
    default=True,
    show_default=True,
    help="Also keep one more module per unit after a round that found nothing better "
    "(k always grows when the reduced space is exhausted).",
)
@opt.seed()
@opt.count("--epochs", default=100, help="Scorer epochs.")
@opt.count("--folds", default=5, help="Ensemble members (folds) per target.")
@opt.jobs("Processes for training members and for evaluating.", short=True)
@opt.path("--cache", "cache_dir", help="Evaluation cache folder [default: OUT/cache].", folder=True)
@opt.resume("Continue the loop in the output folder.")
@opt.force("Discard a previous loop in the output folder.")
@opt.space_name("Which space of the file.")
def improve_cmd(
    space_file: str,
    data_file: str,
    evaluator_spec: str,
    free_spec: str | None,
    out_dir: str,
    objectives: str | None,
    jobs: int,
    cache_dir: str | None,
    resume: bool,
    force: bool,
    space_name: str | None,
    **loop: Any,
) -> None:
    """Improve on the labels in DATA_FILE with BUDGET real evaluations (AutoBuild-NAS).

    Every round trains scorers on the labels, keeps each unit's top-k modules, searches
    that reduced space with the evaluator, and adds every evaluation to OUT/labels.jsonl.
    A killed run continues with --resume without paying for any evaluation twice.
    """
    from autobuild_dsl.data.dataset import load_dataset
    from autobuild_dsl.search.evaluators import make_evaluator, parse_evaluator_spec
    from autobuild_dsl.search.loop import LoopConfig, run_loop
    from autobuild_dsl.search.loop_free import default_targets, free_metrics_of
    from autobuild_dsl.search.pareto import parse_objectives
    from autobuild_dsl.search.runner import EvaluationRunner

    if resume and force:
        raise UserError("--resume and --force contradict each other; give one")
    space = load_space(space_file, space_name)
    out = Path(out_dir)
    labels = load_dataset(data_file, space)
    parsed = parse_objectives(objectives) if objectives else []
    free = make_evaluator(parse_evaluator_spec(free_spec), space) if free_spec else None
    loop["targets"] = list(loop["targets"])
    if not loop["targets"]:
        if not parsed:
            raise UserError("give --target (or --objectives, and a target is made of each)")
        names = free_metrics_of(free, space, labels).names() if free else []
        loop["targets"] = default_targets(parsed, names)
    config = LoopConfig(objectives=parsed, **loop)
    config.search_objectives()
    if force:
        _discard_loop(out)
    evaluator = parse_evaluator_spec(evaluator_spec)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    with (
        EvaluationRunner(space, evaluator, cache_dir=cache, jobs=jobs) as runner,
        ProgressView(remaining=False) as bar,
    ):
        result = run_loop(
            space,
            labels,
            runner,
            config,
            out,
            progress=_loop_progress(bar, config.budget),
            resume=resume,
            space_file=space_file if not space_file.endswith(".json") else None,
            jobs=jobs,
            free=free,
        )
    _render_loop(result, config.search_objectives(), runner, out)


def _discard_loop(out: Path) -> None:
    """`--force`: only what a loop writes: a mistyped -o must not wipe unrelated files."""
    from autobuild_dsl.search.loop import ROUNDS_DIR, STATE_FILE

    for name in (STATE_FILE, "evaluations.jsonl", "labels.jsonl", "front.jsonl",
                 "report.md", "progress.png"):  # fmt: skip
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / ROUNDS_DIR, ignore_errors=True)


def _loop_progress(bar: ProgressView, budget: int) -> Any:
    # The bar is made on the first event: an input the loop refuses shows no empty bar.
    tasks: list[Any] = []

    def show(event: Any) -> None:
        if not tasks:
            tasks.append(bar.add("round 0", total=budget))
        task = tasks[0]
        best = " · ".join(f"{label} {value:.6g}" for label, value in event.best.items())
        left = event.budget - event.evaluated
        bar.update(
            task,
            completed=event.evaluated,
            description=f"round {event.round} · k {event.k} · {event.phase}",
            info=f"best {best} · {left} left" + (f" · {event.detail}" if event.detail else ""),
        )

    return show


def _render_loop(result: Any, objectives_used: list[Any], runner: Any, out: Path) -> None:
    table = Table(title=f"rounds ({len(result.records)} evaluations, stopped: {result.stopped})")
    for column in ("round", "k", "reduced space", "trained on", "evaluated"):
        table.add_column(column, justify="right")
    for objective in objectives_used:
        table.add_column(f"best {objective.label}", justify="right")
    for info in result.rounds:
        table.add_row(
            str(info.round),
            str(info.k),
            f"{info.reduced_size:,}",
            str(info.trained_on),
            str(info.evaluated),
            *(f"{info.best.get(o.label, float('nan')):.6g}" for o in objectives_used),
        )
    console.print(table)
    if len(objectives_used) > 1:
        console.print(
            f"front: {len(result.front)} networks, {result.beyond_labels} found beyond the "
            "labels' front"
        )
    else:
        label = objectives_used[0].label
        start, end = result.best_so_far[0][label], result.best_so_far[-1][label]
        console.print(f"best {label}: {start:.6g} (labels) -> {end:.6g}")
    if result.resumed_from:
        console.print(f"resumed with {result.resumed_from} evaluations already paid")
    console.print(
        f"evaluated now: {runner.paid}, from cache: {runner.hits}; wrote {out / 'report.md'}, "
        f"{out / 'front.jsonl'}, {out / 'labels.jsonl'}"
    )


def register(group: click.Group) -> None:
    group.add_command(improve_cmd)
