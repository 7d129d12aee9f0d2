"""`abc data import` and `abc data describe`: labeled datasets."""

from __future__ import annotations

import math
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
    error_text,
    load_space,
)
from autobuild_dsl.cli.progress import counting

# How many rejected rows an import prints before summarising the rest.
SHOWN_REJECTIONS = 20


def _parse_metric_options(items: tuple[str, ...]) -> dict[str, str]:
    metrics: dict[str, str] = {}
    for item in items:
        name, sep, column = item.partition("=")
        if not sep or not name.strip() or not column:
            raise UserError(f"--metric {item!r}: expected NAME=COLUMN (e.g. top1='Top-1 Acc')")
        metrics[name.strip()] = column
    return metrics


@click.group("data")
def data_group() -> None:
    """Labeled datasets: import public benchmarks or your own tables, describe them."""


@data_group.command("import")
@click.option(
    "--from",
    "fmt",
    required=True,
    type=click.Choice(["ofa", "nas-bench-macro", "generic"]),
    help="Input format.",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@opt.space_file()
@click.option("--space-name", help="Which space of the file (default: the first one).")
@opt.path("-o", "--output", help="OUT.jsonl", required=True)
@click.option("--skip-bad", is_flag=True, help="Write the good rows even if some are rejected.")
@opt.force("Overwrite the output if it exists.")
@opt.path(
    "--map", "map_file", help="generic: a JSON mapping (arch column, metric columns, format)."
)
@click.option("--arch", "arch_column", help="generic: the column holding the architecture.")
@click.option(
    "--arch-format",
    type=click.Choice(["canonical", "ofa"]),
    help="generic: how the architecture is written (default canonical).",
)
@click.option(
    "--metric",
    "metric_options",
    multiple=True,
    metavar="NAME=COLUMN",
    help="generic: a metric and its column (repeat for several).",
)
def import_cmd(
    fmt: str,
    files: tuple[str, ...],
    space_file: str,
    space_name: str | None,
    output: str,
    skip_bad: bool,
    force: bool,
    map_file: str | None,
    arch_column: str | None,
    arch_format: str | None,
    metric_options: tuple[str, ...],
) -> None:
    """Import FILES (in format --from) as a labeled dataset of the space, as JSON lines.

    Rows naming the same architecture are merged (metrics averaged, `count` kept). Any row
    that does not parse or does not fit the space is reported with file, row and reason,
    and the import exits 1 without writing unless --skip-bad.
    """
    from autobuild_dsl.data.dataset import save_dataset
    from autobuild_dsl.data.importers import import_files

    out = Path(output)
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    mapping = _generic_mapping(fmt, map_file, arch_column, arch_format, metric_options)
    space = load_space(space_file, space_name)
    with counting(f"importing {fmt}") as update:
        result = import_files(fmt, list(files), space, mapping=mapping, progress=update)
    report = result.report
    _report_import(report)
    if result.dataset is None:
        raise UserError("no row could be imported; nothing written")
    if report.rejected and not skip_bad:
        raise UserError(
            f"{len(report.rejected):,} row(s) rejected; nothing written "
            f"(pass --skip-bad to write the {report.imported:,} good architectures)"
        )
    save_dataset(result.dataset, out, overwrite=True)
    console.print(f"wrote {out}")


def _generic_mapping(
    fmt: str,
    map_file: str | None,
    arch_column: str | None,
    arch_format: str | None,
    metric_options: tuple[str, ...],
) -> Any:
    """The column mapping of `--from generic` (a --map file, overridden by the options)."""
    from autobuild_dsl.data.importers import GenericMapping, load_mapping

    if fmt != "generic":
        if map_file or arch_column or arch_format or metric_options:
            raise UserError("--map, --arch, --arch-format and --metric are for --from generic")
        return None
    if map_file:
        overrides: dict[str, object] = {}
        if arch_column:
            overrides["arch"] = arch_column
        if arch_format:
            overrides["arch_format"] = arch_format
        if metric_options:
            overrides["metrics"] = _parse_metric_options(metric_options)
        return load_mapping(map_file).model_copy(update=overrides)
    metrics = _parse_metric_options(metric_options)
    if not metrics:
        raise UserError("--from generic needs --map MAPPING.json or --metric NAME=COL")
    return GenericMapping(
        arch=arch_column or "arch",
        arch_format=arch_format or "canonical",  # type: ignore[arg-type]
        metrics=metrics,
    )


def _report_import(report: Any) -> None:
    for rejection in report.rejected[:SHOWN_REJECTIONS]:
        err_console.print(f"[red]rejected[/] {escape(str(rejection))}", soft_wrap=True)
    if len(report.rejected) > SHOWN_REJECTIONS:
        err_console.print(f"[red]... and {len(report.rejected) - SHOWN_REJECTIONS} more[/]")
    for note in report.notes:
        err_console.print(f"note: {escape(note)}", soft_wrap=True)
    summary = (
        f"read {report.read:,} rows ({report.distinct_raw:,} distinct as written), "
        f"imported {report.imported:,} networks, merged {report.merged:,}, "
        f"rejected {len(report.rejected):,}"
    )
    # soft_wrap: one line per fact, so the summary stays greppable in logs.
    console.print(summary, soft_wrap=True)
    if report.equivalent:
        console.print(
            f"{report.read:,} rows -> {report.imported:,} distinct networks "
            f"({report.equivalent:,} architectures merged into an equivalent one: "
            "the same compiled network)",
            soft_wrap=True,
        )
    if report.metrics:
        console.print(f"metrics: {', '.join(report.metrics)}", soft_wrap=True)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.6g}"


@data_group.command("describe")
@opt.file_argument("data_file")
@opt.space_file()
@click.option("--space-name", help="Which space of the file.")
@click.option("--target", "target_text", help="Also evaluate a target expression, e.g. 'top1'.")
@opt.as_json("Print the description as JSON only.")
def describe_cmd(
    data_file: str,
    space_file: str,
    space_name: str | None,
    target_text: str | None,
    as_json: bool,
) -> None:
    """Summarise DATA_FILE: size, metrics (min/mean/max), depth coverage per stage."""
    from autobuild_dsl.data.dataset import DatasetError, load_dataset
    from autobuild_dsl.data.describe import describe
    from autobuild_dsl.data.target import TargetError, parse_target

    try:
        target = parse_target(target_text) if target_text is not None else None
    except TargetError as error:
        raise UserError(escape(error_text(error))) from None
    space = load_space(space_file, space_name)
    try:
        dataset = load_dataset(data_file, space)
        info = describe(dataset, target)
    except (DatasetError, TargetError) as error:
        raise UserError(escape(error_text(error))) from None
    if as_json:
        click.echo(info.model_dump_json())
        return
    if info.target_dropped:
        why = ", ".join(f"{n:,} rows lack {escape(m)}" for m, n in info.target_lacking.items())
        err_console.print(
            f"note: target left out {info.target_dropped:,} of {info.rows:,} rows ({why}); "
            "abc train leaves out the same rows",
            soft_wrap=True,
        )
    console.print(
        f"[bold]{escape(data_file)}[/]: {info.rows:,} architectures of "
        f"{escape(info.space)} ({info.measurements:,} measurements)"
    )
    table = Table(title="metrics")
    for column in ("metric", "rows", "min", "mean", "max"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    rows = [(escape(n), m) for n, m in info.metrics.items()]
    if info.target is not None and info.target_summary is not None:
        rows.append((f"[cyan]{escape(info.target)}[/]", info.target_summary))
    for name, m in rows:
        cells = [_number(v) if v is not None else "-" for v in (m.min, m.mean, m.max)]
        table.add_row(name, f"{m.rows:,}", *cells)
    console.print(table)
    depths = Table(title="architectures per stage depth")
    depths.add_column("stage")
    all_depths = sorted({d for per in info.stage_depths.values() for d in per})
    for d in all_depths:
        depths.add_column(f"depth {d}", justify="right")
    for stage, per in info.stage_depths.items():
        depths.add_row(stage, *(f"{per[d]:,}" if d in per else "" for d in all_depths))
    console.print(depths)
    for name, g in info.globals.items():
        extent = f", {_number(g.min)}..{_number(g.max)}" if g.min is not None else ""
        console.print(f"global [cyan]{escape(name)}[/]: {g.distinct} of {g.of} values{extent}")


@data_group.command("merge")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@opt.space_file()
@click.option("--space-name", help="Which space of the file.")
@opt.path("-o", "--output", help="OUT.jsonl", required=True)
@opt.real(
    "--tolerance",
    default=1e-06,
    help="Relative difference above which two values of one metric disagree.",
)
@click.option(
    "--average",
    is_flag=True,
    help="Average repeated measurements of a metric (weighted by count) instead of refusing "
    "values that disagree.",
)
@click.option("--inner", is_flag=True, help="Keep only the architectures every file holds.")
@opt.force("Overwrite the output if it exists.")
def merge_cmd(
    files: tuple[str, ...],
    space_file: str,
    space_name: str | None,
    output: str,
    tolerance: float,
    average: bool,
    inner: bool,
    force: bool,
) -> None:
    """Join the metrics of the same architectures from FILES (datasets of one space) into one
    dataset: e.g. accuracy from one file and measured latency from another.

    Architectures present in only some files are reported (and kept, unless --inner). Two
    values of one metric for one architecture that differ by more than --tolerance are
    reported and nothing is written, unless --average asks to average them."""
    from autobuild_dsl.data.dataset import save_dataset
    from autobuild_dsl.data.merge import MergeError, merge_files

    out = Path(output)
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    space = load_space(space_file, space_name)
    try:
        dataset, report = merge_files(
            files, space, tolerance=tolerance, average=average, inner=inner
        )
    except MergeError as error:
        raise UserError(error_text(error)) from None
    for name, rows in zip(report.files, report.rows_per_file, strict=True):
        console.print(f"{escape(name)}: {rows:,} architectures", soft_wrap=True)
    for where, count in report.only_in_some.items():
        kept = "left out (--inner)" if inner else "kept, lacking the other files' metrics"
        err_console.print(
            f"note: {count:,} architectures only in {escape(where)}: {kept}", soft_wrap=True
        )
    if report.disagreements:
        err_console.print(
            f"note: averaged {len(report.disagreements):,} values that disagree by more "
            f"than {tolerance:g}, e.g. {escape(str(report.disagreements[0]))}",
            soft_wrap=True,
        )
    if report.averaged:
        console.print(f"averaged {report.averaged:,} repeated (architecture, metric) values")
    save_dataset(dataset, out, overwrite=True)
    console.print(
        f"wrote {escape(str(out))}: {report.rows:,} architectures, metrics "
        f"{', '.join(dataset.metric_names)}",
        soft_wrap=True,
    )


def register(group: click.Group) -> None:
    group.add_command(data_group)
