"""`abc build`: the best networks built from the module scores of runs (design.build_output)."""

from __future__ import annotations

import re
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
    parse_globals,
)
from autobuild_dsl.cli.progress import RankView
from autobuild_dsl.design.workflow import DEFAULT_BUILT


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


@click.command("build")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "-k",
    "--top-k",
    "top_k_text",
    help="Modules kept per unit: K, one K per unit (K1,K2,...) or UNIT=K,...; writes the "
    "reduced space.",
)
@opt.count(
    "-n",
    "n",
    default=DEFAULT_BUILT,
    help="Architectures to build (highest summed module score).",
    minimum=0,
)
@opt.choice(
    "--mode",
    choices=["unconstrained", "constrained"],
    default="unconstrained",
    help="unconstrained: the k best; constrained: an even quota of each module size.",
)
@opt.path("-o", "--output", help="Output folder.", folder=True, required=True)
@opt.path(
    "--space",
    "space_path",
    help="The .abs file the run was trained on (default: the one the run records).",
)
@click.option("--name", help="Name of the reduced space (default: SPACE_top).")
@click.option("--standardize", is_flag=True, help="Rank with N(0,1) scores (see abc rank).")
@opt.score
@opt.global_choices("Score with these global choices (see abc rank).")
@click.option(
    "--all-globals",
    is_flag=True,
    help="Keep every scored assignment of the global choices (default: the one whose best "
    "architecture scores highest).",
)
@opt.force("Overwrite existing output files.")
@opt.threads()
@opt.as_json("Print a JSON summary.")
@opt.quiet()
def build_cmd(
    runs: tuple[str, ...],
    top_k_text: str | None,
    output: str,
    space_path: str | None,
    name: str | None,
    globals_: tuple[str, ...],
    as_json: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Build the best architectures from the module scores of one or more RUNS.

    Writes OUTPUT/architectures.jsonl (the N best, with scores), OUTPUT/modules.csv (the
    kept modules) and, with --top-k, OUTPUT/NAME.abs: a space that extends the original
    and keeps only the top-k modules of each unit (size = the product of the k's, less
    combinations a rule rejects). Several runs (e.g. one per target) are merged: the union of
    each run's top-k per unit.
    """
    import json

    from autobuild_dsl.design.build_output import build_to_folder

    top_k = _parse_top_k(top_k_text)
    if name is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise UserError(f"--name {name!r}: not an identifier")
    loaded = [load_run(path) for path in runs]
    show = not (quiet or as_json)
    with RankView() if show else nullcontext() as progress:
        report = build_to_folder(
            loaded,
            output,
            top_k=top_k,
            space_file=space_path,
            name=name,
            globals=parse_globals(globals_),
            progress=(lambda _, event: progress(event)) if progress else None,
            **options,
        )
    if as_json:
        click.echo(json.dumps(report.summary))
        return
    _render_report(report, Path(output))


def _render_report(report: Any, out: Path) -> None:
    result, files = report.result, report.files
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}")
    _render_built(result, report.space)
    if report.reduced_size is not None:
        kept = " x ".join(str(len(m)) for m in result.kept().units.values())
        console.print(
            f"reduced space [bold]{escape(str(files['space']))}[/]: {report.reduced_size:,} "
            f"architectures (kept per unit: {kept} = {report.product_of_kept:,})"
        )
        if report.valid is not None and report.valid != report.reduced_size:
            err_console.print(
                f"[yellow]note:[/] {report.valid:,} combinations of the kept modules satisfy "
                f"the space's ties and rules; `abc compile` counts {report.reduced_size:,} (it "
                "does not yet pair tied choices inside `restrict` lists)"
            )
    console.print(
        f"wrote [bold]{escape(str(out))}[/] ({', '.join(p.name for p in files.values())})"
    )


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
        lines = [globals_text(built.globals)] if built.globals else []
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
    group.add_command(build_cmd)
