"""Options several commands share, declared once: `@opt.force("Overwrite ...")`.

Each takes the command's own help line: the meaning is shared, the wording names the
command's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def jobs(help: str, short: bool = False) -> Decorator:
    return count(*(("-j", "--jobs") if short else ("--jobs",)), default=1, help=help)


def threads(help: str = "Torch threads.") -> Decorator:
    return count("--threads", default=1, help=help)


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


def count(*decls: str, default: int, help: str | None = None, minimum: int = 1) -> Decorator:
    """An integer option of at least `minimum` with a shown default."""
    return click.option(
        *decls, type=click.IntRange(min=minimum), default=default, show_default=True, help=help
    )


def choice(*decls: str, choices: Sequence[str], default: str, help: str) -> Decorator:
    """One of `choices`, with a shown default."""
    return click.option(
        *decls, type=click.Choice(list(choices)), default=default, show_default=True, help=help
    )


def file_argument(name: str) -> Decorator:
    """A positional input file (SPACE.abs, DATA.jsonl, ...)."""
    return click.argument(name, type=click.Path(dir_okay=False))


def path(*decls: str, help: str, folder: bool = False, **extra: Any) -> Decorator:
    """A file option (a folder with `folder=True`); `extra`: required, multiple, ..."""
    kind = click.Path(file_okay=False) if folder else click.Path(dir_okay=False)
    return click.option(*decls, type=kind, help=help, **extra)


def real(*decls: str, default: float, help: str | None = None, above: bool = False) -> Decorator:
    """A number of at least 0 (above 0 with `above=True`) with a shown default."""
    kind = click.FloatRange(min=0, min_open=True) if above else click.FloatRange(min=0)
    return click.option(*decls, type=kind, default=default, show_default=True, help=help)
