"""The `abc` command: a thin click layer over the library.

Each command parses options, calls one library function and renders the result with rich.
Errors a user can cause end as a clear message and a non-zero exit, never a traceback:
`.abs` diagnostics exit with 2, other bad input with 1.
"""

from __future__ import annotations

import sys

import click

from autobuild_dsl.cli.common import console, err_console, run_guarded


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="autobuild-dsl", prog_name="abc")
def cli() -> None:
    """autobuild-dsl: macro search spaces in, interpretable scores and built networks out."""


def _register() -> None:
    from autobuild_dsl.cli import space_cmds

    space_cmds.register(cli)
    # Later command groups register themselves here when their modules exist.
    import importlib

    for module in (
        "data_cmds",
        "graph_cmds",
        "train_cmds",
        "build_cmds",
        "compile_cmds",
        "search_cmds",
    ):
        try:
            loaded = importlib.import_module(f"autobuild_dsl.cli.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"autobuild_dsl.cli.{module}":
                raise
            continue
        loaded.register(cli)


_register()


def main() -> None:
    sys.exit(run_guarded(cli))


__all__ = ["cli", "console", "err_console", "main"]
