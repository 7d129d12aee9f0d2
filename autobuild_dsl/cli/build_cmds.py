"""`abc rank` and `abc build`: module scores, feature importance and networks built from them."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from autobuild_dsl.cli.common import (
    UserError,
    console,
    err_console,
    force_option,
    jobs_option,
    json_option,
    load_space,
    quiet_option,
    score_option,
    seed_option,
    threads_option,
    write_atomic,
)
from autobuild_dsl.cli.progress import RankView


def _parse_globals(items: Sequence[str]) -> list[dict[str, Any]] | None:
    """`resolution=224` (repeatable; `a=1,b=x` for several globals) -> assignments."""
    if not items:
        return None
    result = []
    for item in items:
        values: dict[str, Any] = {}
        for piece in item.split(","):
            name, sep, text = piece.partition("=")
            if not sep or not name.strip():
                raise UserError(f"--globals {item!r}: expected NAME=VALUE[,NAME=VALUE...]")
            values[name.strip()] = _literal(text.strip())
        result.append(values)
    return result


def _literal(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip('"')


def _load_run(path: str) -> Any:
    from autobuild_dsl.scorer.run import load_run

    if not Path(path).exists():
        raise UserError(f"{path}: no such run folder")
    return load_run(path)


def _encoding(run: Any) -> str:
    return str(getattr(run.config, "encoding", "sequence") or "sequence")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "target"


def _globals_text(values: dict[str, Any]) -> str:
    from autobuild_dsl.design.importance import value_text

    return ", ".join(f"{k} = {value_text(v)}" for k, v in values.items())


# ----- abc rank ------------------------------------------------------------------------------


def _train_first(
    space_file: str,
    data_file: str,
    target: str,
    run_dir: str | None,
    space_name: str | None,
    epochs: int,
    folds: int,
    seeds: int,
    seed: int,
    jobs: int,
    force: bool,
    quiet: bool,
) -> str:
    """`abc rank SPACE DATA --target ...`: train a run first (as `abc train` does)."""
    from autobuild_dsl.cli.progress import TrainView
    from autobuild_dsl.data.dataset import load_dataset
    from autobuild_dsl.data.target import parse_target
    from autobuild_dsl.scorer.run import EnsembleConfig, train_run
    from autobuild_dsl.scorer.train import TrainConfig

    space = load_space(space_file, space_name)
    out = run_dir or str(Path("runs") / f"{space.name}-{_slug(target)}")
    parsed = parse_target(target)
    dataset = load_dataset(data_file, space)
    with nullcontext() if quiet else TrainView() as progress:
        train_run(
            space,
            dataset,
            parsed,
            out,
            train=TrainConfig(epochs=epochs),
            ensemble=EnsembleConfig(folds=folds, seeds=seeds, seed=seed),
            jobs=jobs,
            force=force,
            data_path=data_file,
            space_path=space_file,
            progress=progress,
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


def _scores_csv(result: Any) -> str:
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
        order = table.order()
        glob = [table.globals.get(n) for n in names]
        glob += [table.context.get(n, "") for n in contexts]
        glob = [json.dumps(v) if isinstance(v, bool) else v for v in glob]
        score, z, size = table.score, table.z, table.size
        nodes, hop = table.nodes, table.hop
        for rank, i in enumerate(order.tolist(), start=1):
            writer.writerow(
                [
                    table.unit,
                    *glob,
                    rank,
                    f"{score[i]:.6g}",
                    f"{z[i]:.6g}",
                    int(size[i]),
                    int(nodes[i]),
                    int(hop[i]),
                    texts[i],
                ]
            )
    return buffer.getvalue()


def _write_parquet(path: Path, text: str, force: bool) -> None:
    try:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            f"{path}: writing Parquet needs pyarrow (pip install pyarrow); or write .csv"
        ) from None
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it")
    table = pacsv.read_csv(io.BytesIO(text.encode()))
    from autobuild_dsl import io as abc_io

    with abc_io.atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


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


def _ir_subgraphs(run: Any, top: int) -> tuple[Any, str | None]:
    """The IR encoding's own ranking (top rooted subgraphs), when that module exists."""
    import importlib

    try:
        ir_rank = importlib.import_module("autobuild_dsl.design.ir_rank")
    except ImportError:
        return None, "this installation has no ONNX-IR subgraph ranking (build.ir_rank)"
    function = getattr(ir_rank, "top_rooted_subgraphs", None)
    if function is None:
        return None, "build.ir_rank has no top_rooted_subgraphs()"
    try:
        return function(run, top=top), None
    except ValueError as error:  # the IR package's errors (IrError) are ValueErrors
        raise UserError(escape(str(error))) from None


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
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write every module's score here (.csv; .parquet when pyarrow is installed).",
)
@json_option("Print a JSON summary instead of tables.")
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Best and worst modules shown per unit.",
)
@click.option(
    "--standardize",
    is_flag=True,
    help="Scores as N(0,1) per hop (for tens of labels) instead of the label-unit shift (Eq. 5).",
)
@score_option
@click.option(
    "--globals",
    "globals_",
    multiple=True,
    metavar="NAME=VALUE[,...]",
    help="Score with these global choices (repeat for several); default: those in the "
    "run's labeled data.",
)
@click.option(
    "--chart",
    type=click.Path(dir_okay=False),
    help="Bar chart of the feature importances (.png, .svg or .pdf).",
)
@force_option("Overwrite existing outputs (and run folder).")
@threads_option()
@click.option("--target", "target_text", help="With SPACE.abs DATA: what to learn (trains first).")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="With SPACE.abs DATA: the run folder to train into (default runs/SPACE-TARGET).",
)
@click.option("--space-name", help="With SPACE.abs DATA: which space of the file.")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="With SPACE.abs DATA: training epochs.",
)
@click.option(
    "--folds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="With SPACE.abs DATA: K-fold members (1: one train/test split).",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="With SPACE.abs DATA: members per fold.",
)
@click.option("--ensemble", is_flag=True, help="Shorthand for --folds 5 --seeds 4.")
@seed_option("Split and init seed.")
@jobs_option("With SPACE.abs DATA: members trained in parallel.")
@quiet_option()
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
    space_name: str | None,
    epochs: int,
    folds: int,
    seeds: int,
    ensemble: bool,
    seed: int,
    jobs: int,
    quiet: bool,
) -> None:
    """Score every module of every stage with a trained RUN, and explain its features.

    Prints each unit's best and worst modules (layers spelled out) and the FE-MLP
    importance of every value of every feature category. With SPACE.abs DATA --target
    EXPR it trains a run first (as `abc train` does), then ranks with it.
    """
    from autobuild_dsl.design.importance import feature_importance, importance_chart
    from autobuild_dsl.design.rank import rank_modules

    if len(inputs) == 2:
        if not target_text:
            raise UserError("ranking from SPACE.abs DATA needs --target EXPR (what to learn)")
        if ensemble:
            folds, seeds = 5, 4
        run_path = _train_first(
            inputs[0],
            inputs[1],
            target_text,
            run_dir,
            space_name,
            epochs,
            folds,
            seeds,
            seed,
            jobs,
            force,
            quiet or as_json,
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
    run = _load_run(run_path)
    importance = feature_importance(run)
    title = f"feature importance: {run.config.target} ({len(run.members)} member(s))"
    if chart:
        importance_chart(importance, chart, title=title)
    if _encoding(run) != "sequence":
        _rank_ir(run, importance, title, top, as_json, chart)
        return
    show = not (quiet or as_json)
    with RankView() if show else nullcontext() as progress:
        result = rank_modules(
            run,
            standardize=standardize,
            score=score,  # type: ignore[arg-type]
            globals=_parse_globals(globals_),
            threads=threads,
            progress=progress,
        )
    if output:
        text = _scores_csv(result)
        if output.lower().endswith(".parquet"):
            _write_parquet(Path(output), text, force)
        else:
            write_atomic(Path(output), text, force=force)
    if as_json:
        click.echo(json.dumps(_rank_json(result, importance, top)))
        return
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}")
    _render_ranking(result, top)
    console.print(_importance_table(importance, title))
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
    if output:
        console.print(f"wrote [bold]{escape(output)}[/]")
    if chart:
        console.print(f"wrote [bold]{escape(chart)}[/]")


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
            console.print(f"[bold]globals: {escape(_globals_text(values))}[/]")
        for table in result.for_globals(values):
            hops = sorted({int(h) for h in table.hop.tolist()})
            span = f"{hops[0]}" if len(hops) == 1 else f"{hops[0]}-{hops[-1]}"
            excluded = f", {table.excluded:,} unusable with these globals" if table.excluded else ""
            context = f" in context {_globals_text(table.context)}" if table.context else ""
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


def _rank_ir(
    run: Any, importance: list[Any], title: str, top: int, as_json: bool, chart: str | None
) -> None:
    """ONNX-IR runs: no stage modules to score; feature importance and rooted subgraphs."""
    message = (
        "module scoring does not apply to this run: it uses the ONNX-IR encoding (one node "
        "per primitive op, no stage modules). Showing feature importance and the top "
        "rooted subgraphs instead"
    )
    subgraphs, missing = _ir_subgraphs(run, top)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run": str(run.path),
                    "target": run.config.target,
                    "encoding": _encoding(run),
                    "note": message,
                    "feature_importance": [r.model_dump(mode="json") for r in importance],
                    "rooted_subgraphs": _plain(subgraphs) if subgraphs is not None else None,
                    "rooted_subgraphs_note": missing,
                }
            )
        )
        return
    err_console.print(f"[yellow]note:[/] {message}")
    console.print(_importance_table(importance, title))
    if subgraphs is None:
        err_console.print(f"[yellow]note:[/] {escape(missing or '')}")
    elif hasattr(subgraphs, "subgraphs"):
        _render_subgraphs(subgraphs, top)
    else:
        _render_generic(subgraphs, f"top {top} rooted subgraphs")
    if chart:
        console.print(f"wrote [bold]{escape(chart)}[/]")


# ----- abc build -----------------------------------------------------------------------------


def _parse_top_k(text: str | None) -> int | list[int] | dict[str, int] | None:
    """`4`, `2,3,1,4,2` (unit order) or `s1=2,s2=3,...`."""
    if text is None:
        return None
    pieces = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in pieces):
            return {p.split("=", 1)[0].strip(): int(p.split("=", 1)[1]) for p in pieces}
        if len(pieces) == 1:
            return int(pieces[0])
        return [int(p) for p in pieces]
    except ValueError:
        raise UserError(
            f"--top-k {text!r}: expected K, K1,K2,... (one per unit) or UNIT=K,..."
        ) from None


def _space_file(runs: list[Any], given: str | None) -> tuple[str, Any]:
    """The .abs file the runs' space came from (checked to be that space)."""
    candidates = [given] if given else [r.config.space_file for r in runs if r.config.space_file]
    if not candidates:
        raise UserError(
            "the run does not record its .abs file; pass --space SPACE.abs (the space "
            "it was trained on) to write the reduced space"
        )
    path = candidates[0]
    if not Path(path).is_file():
        raise UserError(f"{path}: no such space file (pass --space SPACE.abs)")
    from autobuild_dsl.lang import CompileError

    try:
        space = load_space(path, runs[0].space.name)
    except CompileError:
        space = load_space(path)  # no space of that name: compare the file's first one
    if space.digest() != runs[0].space.digest():
        raise UserError(f"{path}: space '{space.name}' is not the space the run was trained on")
    return path, space


@click.command("build")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "-k",
    "--top-k",
    "top_k_text",
    help="Modules kept per unit: K, one K per unit (K1,K2,...) or UNIT=K,...; writes the "
    "reduced space.",
)
@click.option(
    "-n",
    "n",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Architectures to build (highest summed module score).",
)
@click.option(
    "--mode",
    type=click.Choice(["unconstrained", "constrained"]),
    default="unconstrained",
    show_default=True,
    help="unconstrained: the k best; constrained: an even quota of each module size.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder.",
)
@click.option(
    "--space",
    "space_path",
    type=click.Path(dir_okay=False),
    help="The .abs file the run was trained on (default: the one the run records).",
)
@click.option("--name", help="Name of the reduced space (default: SPACE_top).")
@click.option("--standardize", is_flag=True, help="Rank with N(0,1) scores (see abc rank).")
@score_option
@click.option(
    "--globals",
    "globals_",
    multiple=True,
    metavar="NAME=VALUE[,...]",
    help="Score with these global choices (see abc rank).",
)
@click.option(
    "--all-globals",
    is_flag=True,
    help="Keep every scored assignment of the global choices (default: the one whose best "
    "architecture scores highest).",
)
@force_option("Overwrite existing output files.")
@threads_option()
@json_option("Print a JSON summary.")
@quiet_option()
def build_cmd(
    runs: tuple[str, ...],
    top_k_text: str | None,
    n: int,
    mode: str,
    output: str,
    space_path: str | None,
    name: str | None,
    standardize: bool,
    score: str,
    globals_: tuple[str, ...],
    all_globals: bool,
    force: bool,
    threads: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Build the best architectures from the module scores of one or more RUNS.

    Writes OUTPUT/architectures.jsonl (the N best, with scores), OUTPUT/modules.csv (the
    kept modules) and, with --top-k, OUTPUT/NAME.abs: a space that extends the original
    and keeps only the top-k modules of each unit (size = the product of the k's, less
    combinations a rule rejects). Several runs (e.g. one per target) are merged: the union of
    each run's top-k per unit.
    """
    from autobuild_dsl.design.construct import (
        architecture_lines,
        reduced_space,
        valid_combinations,
    )
    from autobuild_dsl.design.workflow import build_networks
    from autobuild_dsl.lang import compile_file
    from autobuild_dsl.space.decisions import canonicalize, space_size

    top_k = _parse_top_k(top_k_text)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    loaded = [_load_run(path) for path in runs]
    for run in loaded:
        if _encoding(run) != "sequence":
            raise UserError(
                f"{run.path}: an ONNX-IR run has no stage modules to build from; "
                "use a sequence-graph run"
            )
    first = loaded[0].space.digest()
    for run in loaded[1:]:
        if run.space.digest() != first:
            raise UserError(f"{run.path}: trained on another space than {loaded[0].path}")
    space = loaded[0].space
    file_path = None
    if top_k is not None:
        file_path, space = _space_file(loaded, space_path)
    reduced_name = name or f"{space.name}_top"
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", reduced_name):
        raise UserError(f"--name {reduced_name!r}: not an identifier")
    files = {
        "architectures": out / "architectures.jsonl",
        "modules": out / "modules.csv",
        "summary": out / "build.json",
    }
    if top_k is not None:
        files["space"] = out / f"{reduced_name}.abs"
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} exists; pass --force to overwrite it")
    show = not (quiet or as_json)
    with RankView() if show else nullcontext() as progress:
        result, rankings = build_networks(
            loaded,
            top_k=top_k,
            n=n,
            mode=mode,  # type: ignore[arg-type]
            score=score,  # type: ignore[arg-type]
            standardize=standardize,
            globals=_parse_globals(globals_),
            all_globals=all_globals,
            space=space,
            threads=threads,
            progress=(lambda _, event: progress(event)) if progress else None,
        )
    for built in result.architectures:
        canonicalize(space, built.arch)
    reduced_size = None
    expected = None
    valid = None
    if top_k is not None:
        assert file_path is not None
        header = [
            f"Reduced by `abc build` from {', '.join(str(r.path) for r in loaded)}",
            f"target(s): {', '.join(r.config.target for r in loaded)}; mode {mode}; "
            f"kept per unit: {', '.join(f'{u} {k}' for u, k in (result.top_k or {}).items())}",
        ]
        text = reduced_space(space, file_path, files["space"], result, reduced_name, header)
        write_atomic(files["space"], text, force=force)
        reduced = compile_file(str(files["space"]))
        reduced_size = space_size(reduced)
        expected = 1
        for modules in result.kept().units.values():
            expected *= len(modules)
        for built in result.architectures:
            canonicalize(reduced, built.arch)
        valid = valid_combinations(space, result)
    write_atomic(
        files["architectures"],
        "".join(line + "\n" for line in architecture_lines(result)),
        force=force,
    )
    write_atomic(files["modules"], _kept_csv(result), force=force)
    summary = {
        "runs": [str(r.path) for r in loaded],
        "targets": [r.config.target for r in loaded],
        "space": space.name,
        "space_file": file_path,
        "mode": mode,
        "top_k": result.top_k,
        "kept": {u: len(m) for u, m in result.kept().units.items()},
        "reduced_space": str(files["space"]) if "space" in files else None,
        "reduced_size": reduced_size,
        "product_of_kept": expected,
        "valid_combinations": valid,
        "architectures": len(result.architectures),
        "best_score": result.architectures[0].score if result.architectures else None,
        "rank_seconds": [r.seconds for r in rankings],
        "notes": result.notes,
    }
    write_atomic(files["summary"], json.dumps(summary, indent=2) + "\n", force=force)
    if as_json:
        click.echo(json.dumps(summary))
        return
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}")
    _render_built(result, space)
    if reduced_size is not None:
        console.print(
            f"reduced space [bold]{escape(str(files['space']))}[/]: {reduced_size:,} "
            f"architectures (kept per unit: "
            f"{' x '.join(str(len(m)) for m in result.kept().units.values())} = {expected:,})"
        )
        if valid is not None and valid != reduced_size:
            err_console.print(
                f"[yellow]note:[/] {valid:,} combinations of the kept modules satisfy the "
                f"space's ties and rules; `abc compile` counts {reduced_size:,} (it does not "
                "yet pair tied choices inside `restrict` lists)"
            )
    console.print(
        f"wrote [bold]{escape(str(out))}[/] ({', '.join(p.name for p in files.values())})"
    )


def _kept_csv(result: Any) -> str:
    from autobuild_dsl.design.builder import module_text

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


def _render_built(result: Any, space: Any) -> None:
    from autobuild_dsl.design.rank import module_description
    from autobuild_dsl.space.decisions import architecture_modules, index_of

    units = index_of(space).units
    table = Table(title=f"{len(result.architectures)} best architecture(s)")
    table.add_column("#", justify="right")
    several = any(b.run_scores for b in result.architectures)
    table.add_column("summed score" + (" per run" if several else ""), justify="right")
    table.add_column("predicted" + (" per run" if several else ""), justify="right")
    table.add_column("architecture")
    for i, built in enumerate(result.architectures, start=1):
        lines = [_globals_text(built.globals)] if built.globals else []
        modules = architecture_modules(space, built.arch)
        for unit in units:
            lines.append(module_description(unit.stages, modules[unit.name]))
        scores = built.run_scores or [built.score]
        score_text = " / ".join(f"{v:.4g}" for v in scores)
        if built.score_sd and not built.run_scores:
            score_text += f" ± {built.score_sd:.2g}"
        predicted = "-"
        if built.predicted is not None:
            spreads = built.predicted_sd or [0.0] * len(built.predicted)
            # A spread of exactly 0 is a run of one member: nothing to show.
            predicted = " / ".join(
                f"{m:.4g} ± {s:.2g}" if s > 0 else f"{m:.4g}"
                for m, s in zip(built.predicted, spreads, strict=True)
            )
        table.add_row(str(i), score_text, predicted, escape("\n".join(lines)))
    console.print(table)


def register(group: click.Group) -> None:
    for command in (rank_cmd, build_cmd):
        group.add_command(command)
