"""`abc rank`: module scores and feature importance of a trained run (design.ranking_workflow)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from autobuild_dsl.cli import options as opt
from autobuild_dsl.cli.common import (
    UserError,
    console,
    err_console,
    globals_text,
    load_run,
    load_space,
    parse_globals,
)
from autobuild_dsl.cli.progress import RankView, TrainView


def _train_first(
    space_file: str, data_file: str, target: str, run_dir: str | None, **options: Any
) -> str:
    """`abc rank SPACE DATA --target ...`: train a run first (as `abc train` does)."""
    from autobuild_dsl.design.ranking_workflow import default_run_dir
    from autobuild_dsl.scorer.run import EnsembleConfig
    from autobuild_dsl.scorer.train import TrainConfig
    from autobuild_dsl.scorer.workflow import train_from_file

    quiet = options.pop("quiet")
    space = load_space(space_file, options.pop("space_name"))
    out = run_dir or default_run_dir(space.name, target)
    ensemble = EnsembleConfig(
        folds=options.pop("folds"), seeds=options.pop("seeds"), seed=options.pop("seed")
    )
    with nullcontext() if quiet else TrainView() as progress:
        train_from_file(
            space,
            data_file,
            target,
            out,
            train=TrainConfig(epochs=options.pop("epochs")),
            ensemble=ensemble,
            space_path=space_file,
            progress=progress,
            **options,
        )
    if not quiet:
        err_console.print(f"trained [bold]{escape(out)}[/]")
    return out


def _module_row(module: Any, stages: list[str]) -> list[str]:
    from autobuild_dsl.design.rank import module_description

    return [
        str(module.rank),
        f"{module.score:.4g}",
        f"{module.z:+.3f}",
        str(module.size),
        str(module.hop),
        escape(module_description(stages, module.parts)),
    ]


def _module_json(module: Any, stages: list[str]) -> dict[str, Any]:
    from autobuild_dsl.design.rank import module_description

    return {
        "rank": module.rank,
        "score": module.score,
        "z": module.z,
        "size": module.size,
        "hop": module.hop,
        "nodes": module.nodes,
        "module": module_description(stages, module.parts),
        "parts": [p.model_dump(mode="json") for p in module.parts],
    }


def _importance_table(rows: list[Any], title: str) -> Table:
    from autobuild_dsl.design.importance import value_text

    table = Table(title=title)
    for column in ("category", "group", "value", "score", "raw"):
        table.add_column(column, justify="right" if column in ("score", "raw") else "left")
    previous = None
    for row in rows:
        shown = row.category if row.category != previous else ""
        previous = row.category
        unseen = getattr(row, "seen", None) is False  # never in the labeled data
        table.add_row(
            escape(shown),
            row.group,
            escape(value_text(row.value)) + (" [dim](unseen)[/]" if unseen else ""),
            f"[dim]{row.score:.4f}[/]" if unseen else f"{row.score:.4f}",
            f"[dim]{row.raw:+.4f}[/]" if unseen else f"{row.raw:+.4f}",
        )
    return table


def _render_subgraphs(report: Any, top: int) -> None:
    """The IR helper's SubgraphReport: one row per rooted subgraph."""
    table = Table(title=f"top {top} rooted subgraphs ({escape(str(report.source))})")
    for column in ("rank", "hop", "score", "root", "operations", "layers", "graphs"):
        table.add_column(column, justify="right" if column in ("rank", "hop", "score") else "left")
    for item in report.subgraphs:
        root = f"{item.root.op}" + (f" @ {item.root.place}" if item.root.place else "")
        ops = ", ".join(f"{op} x{count}" for op, count in item.ops.items())
        table.add_row(
            str(item.rank),
            str(item.hop),
            f"{item.score:+.3f}",
            escape(root),
            escape(ops),
            escape(", ".join(item.places)),
            str(item.occurrences),
        )
    console.print(table)


def _plain(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _render_generic(items: Any, title: str) -> None:
    rows = _plain(items)
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list) or not rows:
        console.print(f"{title}: none")
        return
    if all(isinstance(r, dict) for r in rows):
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        table = Table(title=title)
        for key in keys:
            table.add_column(escape(key))
        for r in rows:
            table.add_row(*(escape(_short(r.get(k))) for k in keys))
        console.print(table)
    else:
        console.print(title)
        for r in rows:
            console.print(f"  {escape(_short(r))}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


@click.command("rank")
@click.argument("inputs", nargs=-1, required=True, metavar="RUN | SPACE.abs DATA")
@opt.output_file("Write every module's score here (.csv; .parquet when pyarrow is installed).")
@opt.as_json("Print a JSON summary instead of tables.")
@opt.count("--top", default=5, help="Best and worst modules shown per unit.", minimum=0)
@click.option(
    "--standardize",
    is_flag=True,
    help="Scores as N(0,1) per hop (for tens of labels) instead of the label-unit shift (Eq. 5).",
)
@opt.score
@opt.global_choices(
    "Score with these global choices (repeat for several); default: those in the "
    "run's labeled data."
)
@opt.path("--chart", help="Bar chart of the feature importances (.png, .svg or .pdf).")
@opt.force("Overwrite existing outputs (and run folder).")
@opt.threads()
@click.option("--target", "target_text", help="With SPACE.abs DATA: what to learn (trains first).")
@opt.path(
    "--run-dir",
    help="With SPACE.abs DATA: the run folder to train into (default runs/SPACE-TARGET).",
    folder=True,
)
@click.option("--space-name", help="With SPACE.abs DATA: which space of the file.")
@opt.count("--epochs", default=200, help="With SPACE.abs DATA: training epochs.")
@opt.count(
    "--folds", default=1, help="With SPACE.abs DATA: K-fold members (1: one train/test split)."
)
@opt.count("--seeds", default=1, help="With SPACE.abs DATA: members per fold.")
@click.option("--ensemble", is_flag=True, help="Shorthand for --folds 5 --seeds 4.")
@opt.seed("Split and init seed.")
@opt.jobs("With SPACE.abs DATA: members trained in parallel.")
@opt.quiet()
def rank_cmd(
    inputs: tuple[str, ...],
    output: str | None,
    as_json: bool,
    top: int,
    standardize: bool,
    score: str,
    globals_: tuple[str, ...],
    chart: str | None,
    force: bool,
    threads: int,
    target_text: str | None,
    run_dir: str | None,
    ensemble: bool,
    quiet: bool,
    **training: Any,
) -> None:
    """Score every module of every stage with a trained RUN, and explain its features.

    Prints each unit's best and worst modules (layers spelled out) and the FE-MLP
    importance of every value of every feature category. With SPACE.abs DATA --target
    EXPR it trains a run first (as `abc train` does), then ranks with it.
    """
    from autobuild_dsl.design.ranking_workflow import rank_run, write_scores

    if len(inputs) == 2:
        if not target_text:
            raise UserError("ranking from SPACE.abs DATA needs --target EXPR (what to learn)")
        if ensemble:
            training.update(folds=5, seeds=4)
        quiet_training = quiet or as_json
        run_path = _train_first(
            inputs[0],
            inputs[1],
            target_text,
            run_dir,
            force=force,
            quiet=quiet_training,
            **training,
        )
    elif len(inputs) == 1:
        if target_text:
            raise UserError("--target is for SPACE.abs DATA; a run already has its target")
        run_path = inputs[0]
    else:
        raise UserError("give a run folder, or SPACE.abs DATA --target EXPR")
    for path in (output, chart):
        if path and Path(path).exists() and not force:
            raise UserError(f"{path} exists; pass --force to overwrite it")
    show = not (quiet or as_json)
    with RankView() if show else nullcontext() as progress:
        report = rank_run(
            load_run(run_path),
            standardize=standardize,
            score=score,  # type: ignore[arg-type]
            globals=parse_globals(globals_),
            threads=threads,
            top=top,
            chart=chart,
            progress=progress,
        )
    if report.result is None:
        _rank_ir(report, top, as_json, chart)
        return
    if output:
        write_scores(output, report.result, force=force)
    if as_json:
        click.echo(json.dumps(_rank_json(report.result, report.importance, top)))
        return
    _render_report(report, top)
    for path in (output, chart):
        if path:
            console.print(f"wrote [bold]{escape(path)}[/]")


def _render_report(report: Any, top: int) -> None:
    result = report.result
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}")
    _render_ranking(result, top)
    console.print(_importance_table(report.importance, report.title))
    units = len({t.unit for t in result.tables})
    how = (
        "standardised, N(0,1) per hop"
        if result.mode == "standardize"
        else "shifted to label units, Eq. 5"
    )
    console.print(
        f"scored {result.modules:,} modules of {units} unit(s) with {result.members} "
        f"member(s) in {result.seconds:.2f} s ({how})"
    )


def _rank_json(result: Any, importance: list[Any], top: int) -> dict[str, Any]:
    return {
        "run": result.run,
        "target": result.target,
        "mode": result.mode,
        "members": result.members,
        "modules": result.modules,
        "seconds": result.seconds,
        "notes": result.notes,
        "units": [
            {
                "unit": table.unit,
                "stages": table.stages,
                "globals": table.globals,
                "modules": len(table),
                "excluded": table.excluded,
                "best": [_module_json(m, table.stages) for m in table.top(top)],
                "worst": [_module_json(m, table.stages) for m in table.bottom(top)],
            }
            for table in result.tables
        ],
        "feature_importance": [r.model_dump(mode="json") for r in importance],
    }


def _render_ranking(result: Any, top: int) -> None:
    assignments = result.assignments()
    for values in assignments:
        if len(assignments) > 1 or values:
            console.print(f"[bold]globals: {escape(globals_text(values))}[/]")
        for table in result.for_globals(values):
            hops = sorted({int(h) for h in table.hop.tolist()})
            span = f"{hops[0]}" if len(hops) == 1 else f"{hops[0]}-{hops[-1]}"
            excluded = f", {table.excluded:,} unusable with these globals" if table.excluded else ""
            context = f" in context {globals_text(table.context)}" if table.context else ""
            grid = Table(
                title=f"unit {escape(table.unit)}{escape(context)}: {len(table):,} "
                f"modules{excluded} (score hops {span})"
            )
            for column in ("rank", "score", "z", "layers", "hop", "module"):
                grid.add_column(column, justify="left" if column == "module" else "right")
            best = table.top(top)
            worst = table.bottom(top)
            worst = [m for m in reversed(worst) if m.rank > (best[-1].rank if best else 0)]
            for module in best:
                grid.add_row(*_module_row(module, table.stages))
            if worst:
                if best and worst[0].rank > best[-1].rank + 1:
                    grid.add_row("...", "", "", "", "", "")
                for module in worst:
                    grid.add_row(*_module_row(module, table.stages))
            console.print(grid)


def _rank_ir(report: Any, top: int, as_json: bool, chart: str | None) -> None:
    """ONNX-IR runs: no stage modules to score; feature importance and rooted subgraphs."""
    from autobuild_dsl.design.ranking_workflow import IR_NOTE

    run, subgraphs = report.run, report.subgraphs
    if as_json:
        summary = {
            "run": str(run.path),
            "target": run.config.target,
            "encoding": report.encoding,
            "note": IR_NOTE,
            "feature_importance": [r.model_dump(mode="json") for r in report.importance],
            "rooted_subgraphs": _plain(subgraphs) if subgraphs is not None else None,
            "rooted_subgraphs_note": None,
        }
        click.echo(json.dumps(summary))
        return
    err_console.print(f"[yellow]note:[/] {IR_NOTE}")
    console.print(_importance_table(report.importance, report.title))
    if hasattr(subgraphs, "subgraphs"):
        _render_subgraphs(subgraphs, top)
    else:
        _render_generic(subgraphs, f"top {top} rooted subgraphs")
    if chart:
        console.print(f"wrote [bold]{escape(chart)}[/]")


def register(group: click.Group) -> None:
    group.add_command(rank_cmd)
