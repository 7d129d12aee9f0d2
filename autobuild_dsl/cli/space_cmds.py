"""`abc compile`, `abc sample`, `abc validate`, `abc fmt`: the language and the space."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    read_json_file,
    write_atomic,
)
from autobuild_dsl.space import summary
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize, sample
from autobuild_dsl.space.equivalence import (
    COUNT_LIMIT,
    TooFewNetworks,
    may_have_equivalences,
    network_keys,
    sample_distinct,
)
from autobuild_dsl.space.model import Space


@click.command("compile")
@opt.file_argument("space_file")
@opt.space_name()
@opt.as_json("Print {space, size, stages} as JSON only.")
@opt.path("--spec", "spec_out", help="Also save the typed spec as JSON here.")
@opt.force("Overwrite --spec if it exists.")
def compile_cmd(
    space_file: str, space_name: str | None, as_json: bool, spec_out: str | None, force: bool
) -> None:
    """Check SPACE_FILE and summarise the space: stages, layer choices, modules, exact size."""
    space = load_space(space_file, space_name)
    info = summary.summarize(space)
    if spec_out:
        write_atomic(Path(spec_out), space.to_json() + "\n", force=force)
    if as_json:
        payload: dict[str, object] = {
            "space": info.name,
            "size": info.size,
            "stages": [{"name": u.name, "modules": u.modules} for u in info.units],
        }
        if info.equivalences:  # null: not counted (too large)
            payload["networks"] = info.networks
        click.echo(json.dumps(payload))
        return
    console.print(f"[bold]{info.name}[/]  {info.description}")
    if info.globals:
        for name, domain in info.globals.items():
            console.print(f"  global [cyan]{name}[/]: {summary.show_domain(domain)}")
    table = Table(title=None, show_lines=False)
    for column in ("stage", "section", "depth", "layer choices", "stage choices", "modules"):
        table.add_column(column, justify="right" if column == "modules" else "left")
    for stage in info.stages:
        table.add_row(
            stage.name,
            stage.section or "",
            stage.depth,
            stage.layer_choices,
            stage.stage_choices,
            f"{stage.modules:,}" if stage.modules is not None else "(in unit)",
        )
    console.print(table)
    for unit in info.units:
        if len(unit.stages) > 1:
            console.print(
                f"  unit [cyan]{unit.name}[/] = {' + '.join(unit.stages)}: {unit.modules:,} modules"
            )
    for rule in info.rules:
        console.print(f"  rule: {escape(rule)}")
    for tie in info.ties:
        console.print(f"  tied: {escape(tie)}")
    console.print(
        f"size: [bold]{summary.grouped(info.size)}[/] architectures "
        f"({summary.scientific(info.size)})"
    )
    if info.equivalences:
        console.print(_networks_line(info.networks), soft_wrap=True)


def _networks_line(networks: int | None) -> str:
    if networks is None:
        return (
            f"distinct networks: not counted (over {COUNT_LIMIT:,} architectures); some "
            "architectures compile to the same network (a stride-1 identity is a no-op)"
        )
    return (
        f"distinct networks: [bold]{networks:,}[/] (architectures that differ only by where "
        "a no-op layer sits compile to the same network)"
    )


@click.command("sample")
@opt.file_argument("space_file")
@opt.count("-n", "count", default=10, help="How many.")
@opt.seed()
@opt.space_name("Which space of the file.")
@opt.output_file("Write JSON lines here instead of stdout.")
@opt.force("Overwrite --output if it exists.")
@click.option(
    "--distinct",
    is_flag=True,
    help="N different networks: drop a draw equivalent to an earlier one (same compiled network).",
)
def sample_cmd(
    space_file: str,
    count: int,
    seed: int,
    space_name: str | None,
    output: str | None,
    force: bool,
    distinct: bool,
) -> None:
    """Draw N architectures uniformly from the (constrained) space, as JSON lines."""
    space = load_space(space_file, space_name)
    if distinct:
        try:
            archs = sample_distinct(space, count, seed=seed)
        except TooFewNetworks as error:
            raise UserError(f"--distinct: {error}") from None
    else:
        archs = sample(space, count, seed=seed)
    lines = "".join(json.dumps({"arch": a.model_dump(mode="json")}) + "\n" for a in archs)
    if output:
        write_atomic(Path(output), lines, force=force)
        err_console.print(
            f"wrote {count} architectures to {output}{_sampled(space, archs)}", soft_wrap=True
        )
    else:
        sys.stdout.write(lines)
        note = _sampled(space, archs)
        if note:
            err_console.print(f"{count} architectures{note}", soft_wrap=True)


def _sampled(space: Space, archs: list[Architecture]) -> str:
    """How many distinct networks a sample holds, where that can differ from its size."""
    if not may_have_equivalences(space):
        return ""
    if len(archs) > COUNT_LIMIT:
        return f" (distinct networks not counted: over {COUNT_LIMIT:,})"
    return f" ({len(set(network_keys(space, archs))):,} distinct networks)"


@click.command("validate")
@opt.file_argument("space_file")
@opt.file_argument("arch_file")
@opt.space_name("Which space of the file.")
def validate_cmd(space_file: str, arch_file: str, space_name: str | None) -> None:
    """Check that ARCH_FILE (one architecture, or JSON lines of them) belongs to the space."""
    space = load_space(space_file, space_name)
    records = _read_architectures(arch_file)
    for where, raw in records:
        named = raw.get("space")
        if named is not None and named != space.name:
            # An architecture names its space; one of another space is not checked as ours.
            hint = f"; if the file defines it, pass --space {named}" if space_name is None else ""
            raise UserError(
                f"{where}: the architecture is of space '{named}', not '{space.name}'{hint}"
            )
        try:
            canonicalize(space, raw)
        except ArchitectureError as error:
            raise UserError(f"{where}: {error}") from None
    noun = "architecture" if len(records) == 1 else "architectures"
    console.print(f"[green]ok[/]: {len(records)} {noun} in {space.name}")


def _read_architectures(path: str) -> list[tuple[str, dict]]:
    """One JSON architecture, or JSON lines each holding one (bare or under "arch")."""
    from autobuild_dsl.space.architecture import ArchitectureFileError, read_architecture_records

    try:
        return read_architecture_records(path)
    except ArchitectureFileError as error:
        raise UserError(error_text(error)) from None


@click.command("fmt")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--check", is_flag=True, help="Only check; exit 1 if a file is not in canonical form."
)
@click.option("--write", "-w", is_flag=True, help="Rewrite the files in place.")
def fmt_cmd(files: tuple[str, ...], check: bool, write: bool) -> None:
    """Print .abs files in canonical form (or check / rewrite them)."""
    from autobuild_dsl.lang.formatter import format_file

    unformatted = []
    for name in files:
        try:
            original = Path(name).read_text(encoding="utf-8") if Path(name).is_file() else None
        except UnicodeDecodeError as error:
            raise UserError(f"{name}: not UTF-8 text (byte {error.start})") from None
        if original is None:
            raise UserError(f"{name}: no such file")
        formatted = format_file(name, original)
        if check:
            if formatted != original:
                unformatted.append(name)
        elif write:
            if formatted != original:
                write_atomic(Path(name), formatted, force=True)
        else:
            sys.stdout.write(formatted)
    if check:
        for name in unformatted:
            err_console.print(f"would reformat {name}")
        if unformatted:
            raise click.exceptions.Exit(1)
        err_console.print(f"{len(files)} file{'s' if len(files) != 1 else ''} already formatted")


def register(group: click.Group) -> None:
    for command in (compile_cmd, sample_cmd, validate_cmd, fmt_cmd):
        group.add_command(command)


_ = read_json_file
