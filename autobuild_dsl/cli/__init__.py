"""The `abc` command: a thin click layer over the library.

Each command parses options, calls one library function and renders the result with rich.
Errors a user can cause end as a clear message and a non-zero exit, never a traceback:
`.abs` diagnostics exit with 2, other bad input with 1.

Command modules are imported only when one of their commands runs, so `abc compile` does
not pay for importing PyTorch.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from autobuild_dsl.cli.common import GuardedGroup, console, err_console, run_guarded

# command name -> module under autobuild_dsl.cli that defines it (via `register(group)`).
COMMAND_MODULES: dict[str, str] = {
    "compile": "space_cmds",
    "sample": "space_cmds",
    "validate": "space_cmds",
    "fmt": "space_cmds",
    "data": "data_cmds",
    "graph": "graph_cmds",
    "train": "train_cmds",
    "predict": "train_cmds",
    "rank": "rank_cmds",
    "build": "build_cmds",
    "emit": "compile_cmds",
    "measure": "compile_cmds",
    "search": "search_cmds",
    "plot": "search_cmds",
    "improve": "loop_cmds",
}


class LazyGroup(GuardedGroup):
    """A group whose subcommands are imported on first use."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._loaded: set[str] = set()

    def _load(self, module_name: str) -> None:
        if module_name in self._loaded:
            return
        self._loaded.add(module_name)
        module = importlib.import_module(f"autobuild_dsl.cli.{module_name}")
        holder = click.Group()
        module.register(holder)
        for name, command in holder.commands.items():
            self.add_command(command, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is not None:
            self._load(module_name)
        return self.commands.get(cmd_name)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="autobuild-dsl", prog_name="abc")
def cli() -> None:
    """autobuild-dsl: macro search spaces in, interpretable scores and built networks out."""


def main() -> None:
    code = run_guarded(cli)
    # Everything is written and closed by now (outputs are atomic renames; worker pools
    # and Ray are shut down by the commands). Skip the interpreter's teardown, which
    # with torch loaded takes ~0.7 s of garbage collection and module finalisers.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe (`abc ... | head`): nothing to keep
        pass
    os._exit(code if isinstance(code, int) else 1)


__all__ = ["COMMAND_MODULES", "cli", "console", "err_console", "main"]
