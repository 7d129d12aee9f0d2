"""`abc graph`: show the graph the scorer sees for one architecture."""

from __future__ import annotations

import json

import click
from rich.table import Table

from autobuild_dsl.cli import options as opt
from autobuild_dsl.cli.common import UserError, console, load_space
from autobuild_dsl.cli.ir_support import ENCODINGS, cache_option, fit_ir_encoder
from autobuild_dsl.graphs.encode import EncodeError, GraphEncoder
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@click.command("graph")
@opt.file_argument("space_file")
@opt.file_argument("arch_file")
@opt.space_name()
@click.option(
    "--line", "line", type=int, default=1, show_default=True,
    help="Which architecture of a JSON-lines file (1-based).",
)  # fmt: skip
@opt.as_json("Print nodes, categories and edges as JSON.")
@opt.choice(
    "--encoding",
    choices=ENCODINGS,
    default="sequence",
    help="sequence (a node per layer) or ir (a node per ONNX operation).",
)
@cache_option
def graph_cmd(
    space_file: str,
    arch_file: str,
    space_name: str | None,
    line: int,
    as_json: bool,
    encoding: str = "sequence",
    ir_cache: str | None = None,
) -> None:
    """Print the sequence graph of one architecture: a node per layer and extra node, its
    feature values per category, and the edges of the forward pass (skips included).

    With --encoding ir: the ONNX-IR graph instead, a node per operation of the exported
    network (docs/ir.md)."""
    from autobuild_dsl.cli.space_cmds import _read_architectures as read_architectures

    space = load_space(space_file, space_name)
    records = read_architectures(arch_file)
    if not 1 <= line <= len(records):
        raise UserError(f"{arch_file}: --line {line} is out of range (1..{len(records)})")
    where, raw = records[line - 1]
    named = raw.get("space")
    if named is not None and named != space.name:  # as `abc validate`: not checked as ours
        raise UserError(f"{where}: the architecture is of space '{named}', not '{space.name}'")
    try:
        arch = canonicalize(space, raw)
        if encoding == "ir":
            # Vocabularies fitted on this one network: its own values, as codes.
            encoder = fit_ir_encoder([space], [arch], cache=ir_cache, show=False)
        else:
            encoder = GraphEncoder(space)
        graph = encoder.encode(arch)
    except (ArchitectureError, EncodeError) as error:
        raise UserError(f"{where}: {error}") from None
    categories = encoder.categories
    codes = graph.x.tolist()
    nodes = [
        {
            category.name: (None if code == 0 else category.vocab[code - 1])
            for category, code in zip(categories, row, strict=True)
        }
        for row in codes
    ]
    edges = [list(pair) for pair in graph.edge_index.t().tolist()]
    if as_json:
        payload = {
            "space": space.name,
            "categories": [c.model_dump(mode="json") for c in categories],
            "nodes": nodes,
            "edges": edges,
        }
        click.echo(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{space.name}: {len(nodes)} nodes, {len(edges)} edges")
    table.add_column("node", justify="right")
    for category in categories:
        table.add_column(category.name, overflow="fold")
    for i, node in enumerate(nodes):
        table.add_row(str(i), *("-" if v is None else _value_text(v) for v in node.values()))
    console.print(table)
    chain = all(b == a + 1 for a, b in edges)
    extra = [f"{a}->{b}" for a, b in edges if b != a + 1]
    console.print("edges: the forward chain" + ("" if chain else f" plus skips {', '.join(extra)}"))


def register(group: click.Group) -> None:
    group.add_command(graph_cmd)
