"""Options several commands share, declared once: `@opt.force("Overwrite ...")`.

Each takes the command's own help line: the meaning is shared, the wording names the
command's outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def force(help: str) -> Decorator:
    return click.option("--force", is_flag=True, help=help)


def as_json(help: str) -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=help)


def resume(help: str) -> Decorator:
    return click.option("--resume", is_flag=True, help=help)


def quiet(help: str = "No progress bars.") -> Decorator:
    return click.option("--quiet", is_flag=True, help=help)


def seed(help: str | None = None) -> Decorator:
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def output_file(help: str) -> Decorator:
    """An optional `-o/--output FILE`."""
    return click.option("-o", "--output", type=click.Path(dir_okay=False), help=help)


def global_choices(help: str) -> Decorator:
    """`--globals NAME=VALUE[,...]` (repeatable): global choices to score with."""
    return click.option(
        "--globals", "globals_", multiple=True, metavar="NAME=VALUE[,...]", help=help
    )


def _count(*decls: str, help: str) -> Decorator:
    return click.option(*decls, type=click.IntRange(min=1), default=1, show_default=True, help=help)


def jobs(help: str, short: bool = False) -> Decorator:
    return _count(*(("-j", "--jobs") if short else ("--jobs",)), help=help)


def threads(help: str = "Torch threads.") -> Decorator:
    return _count("--threads", help=help)


def space_name(help: str = "Which space of the file (default: the first one).") -> Decorator:
    return click.option("--space", "space_name", help=help)


def space_file(help: str = "SPACE.abs") -> Decorator:
    return click.option(
        "--space", "space_file", required=True, type=click.Path(dir_okay=False), help=help
    )


evaluator = click.option(
    "-e",
    "--evaluator",
    "evaluator_spec",
    required=True,
    help="lookup:DATA.jsonl | predictor:RUN | measure[:M,...] | python:MOD:FUNC | "
    "command:'CMD {arch}' | @config.json (see docs/search.md).",
)

score = click.option(
    "--score",
    type=click.Choice(["pooled", "last"]),
    default="pooled",
    show_default=True,
    help="How a module is read: its pooled module-graph embedding, or its last node (the "
    "paper's reading; see docs/ranking.md).",
)
