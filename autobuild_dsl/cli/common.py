"""Shared pieces of the CLI: consoles, error rendering, atomic output, loading inputs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from autobuild_dsl import io
from autobuild_dsl.errors import (
    EXIT_COMPILE_ERROR,
    EXIT_INTERNAL_ERROR,
    EXIT_USER_ERROR,
    AbcError,
    Remedy,
)
from autobuild_dsl.lang import CompileError, compile_file
from autobuild_dsl.space.model import Space


class _Console(Console):
    """rich's Console, but a closed pipe (`abc rank RUN | head -1`) ends the command
    quietly with exit 0 (rich's own handling exits 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


# emoji=False: user text such as `n.json:smile:` is printed as written.
console = _Console(highlight=False, emoji=False)
err_console = _Console(stderr=True, highlight=False, emoji=False)


# A working example per command, shown when the command is missing one of its inputs: a
# new user learns more from a line that runs than from the name of a missing argument.
# Each runs as typed in a checkout (the example data ships in examples/).
_SAMPLE = "examples/nas_bench_macro/sample_lat.jsonl"
EXAMPLES = {
    "compile": "abc compile spaces/mbv3.abs",
    "sample": "abc sample spaces/mbv3.abs -n 5 -o picks.jsonl",
    "validate": f"abc validate spaces/nas_bench_macro.abs {_SAMPLE}",
    "emit": f"abc emit spaces/nas_bench_macro.abs {_SAMPLE} --line 1 --format onnx -o net.onnx",
    "measure": (
        f"abc measure spaces/nas_bench_macro.abs {_SAMPLE} -o measured.jsonl --metrics lat=latency"
    ),
    "train": (
        f'abc train spaces/nas_bench_macro.abs {_SAMPLE} --target "acc - 0.5*lat" -o runs/acc_lat'
    ),
    "rank": (
        f'abc rank spaces/nas_bench_macro.abs {_SAMPLE} --target "acc - 0.5*lat"    '
        "(or: abc rank runs/acc_lat)"
    ),
    "build": "abc build runs/acc_lat -o out/built",
    "describe": (
        f'abc data describe {_SAMPLE} --space spaces/nas_bench_macro.abs --target "acc - 0.5*lat"'
    ),
    "import": (
        "abc data import --from nas-bench-macro examples/nas_bench_macro/nas_bench_macro.json "
        "--space spaces/nas_bench_macro.abs -o table.jsonl"
    ),
    "merge": (
        f"abc data merge {_SAMPLE} table.jsonl --space spaces/nas_bench_macro.abs -o joined.jsonl"
    ),
}


class UserError(click.ClickException):
    """A mistake in what the user gave us; printed as `error: ...`, exit status 1."""

    exit_code = EXIT_USER_ERROR

    def show(self, file=None) -> None:
        # soft_wrap: a long message (paths, rules) stays on one line; escape: a message
        # may hold `[...]` (restrict modules, layer lists) that is not rich markup.
        err_console.print(
            f"[bold red]error:[/] {escape(self.format_message())}",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )


class LibraryError(UserError):
    """A library error (`AbcError`) as the CLI shows it: its message, then the flags that
    fix it; the exit code is the error kind's."""

    def __init__(self, error: AbcError) -> None:
        super().__init__(error_text(error))
        self.exit_code = error.exit_code


class GuardedGroup(click.Group):
    """A click group that turns library errors into CLI messages inside click itself, so
    `abc`, `CliRunner` and `run_guarded` all print the same `error: ...` line. `.abs`
    diagnostics pass through: `run_guarded` renders them with their source lines."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except CompileError:
            raise
        except AbcError as error:
            raise LibraryError(error) from None


def run_guarded(group: click.Group) -> int:
    """Run the click group; turn every expected failure into a message and an exit code."""
    try:
        # Without standalone mode click returns (not raises) the code of an Exit.
        result = group.main(standalone_mode=False)
        if isinstance(result, int) and not isinstance(result, bool):
            return result
    except CompileError as error:
        # Plain echo: rich would wrap long source lines and misplace the caret.
        click.echo(error.render(), err=True)
        count = len(error.diagnostics)
        err_console.print(f"{count} error{'s' if count != 1 else ''}", style="bold red")
        return EXIT_COMPILE_ERROR
    except click.MissingParameter as error:
        # Usage mistakes are bad input like any other: exit 1; 2 is for `.abs` diagnostics.
        error.show()
        example = EXAMPLES.get(error.ctx.command.name) if error.ctx is not None else None
        if example:
            err_console.print(f"example: {escape(example)}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except click.UsageError as error:
        error.show()
        return EXIT_USER_ERROR
    except click.exceptions.Abort:
        err_console.print("aborted", style="red")
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Exit as error:
        return error.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted", style="red")
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except AbcError as error:
        # Every library error a user can cause (io's output errors among them); the
        # remedies it carries name workflow parameters, shown here as the flags to type.
        _show_error(error_text(error))
        return error.exit_code
    except RecursionError:
        _show_error("the input is nested too deeply to process")
        return EXIT_USER_ERROR
    except OSError as error:
        # The system refused a file operation (read-only folder, disk full, no such
        # folder, permission): the user's environment, not a bug.
        if error.errno == errno.EPIPE:
            _quiet_stdout()
            return 0
        _show_error(_os_message(error))
        return EXIT_USER_ERROR
    except Exception as error:
        if os.environ.get("ABC_DEBUG"):
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(error).__name__}: {escape(str(error))}\n"
            "This is a bug in autobuild-dsl; rerun with ABC_DEBUG=1 to see the traceback.",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_INTERNAL_ERROR
    return 0


def remedy_text(remedy: Remedy) -> str:
    """A library remedy as the flag a user types: `force` -> "pass --force to overwrite it"."""
    flag = flag_of(remedy.parameter)
    value = f" {remedy.value}" if remedy.value is not None else ""
    return f"pass {flag}{value} {remedy.action}".rstrip()


def error_text(error: BaseException) -> str:
    """A library error's message with its remedies as the flags to type."""
    message = str(error)
    hints = ", or ".join(remedy_text(remedy) for remedy in getattr(error, "remedies", ()))
    if not hints:
        return message
    return message + ("\n" if "\n" in message else "; ") + hints


def plain_error(error: BaseException) -> str:
    """An exception as one line for a user: a pydantic error as `where: what` (its first
    problem and how many more), not the raw multi-line dump with Python reprs."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        try:
            items = errors()
        except Exception:  # not pydantic's errors(): fall back to the text
            items = None
        if items:
            first = items[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "(top level)"
            more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
            return f"{where}: {first.get('msg', 'invalid')}{more}"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


# Workflow parameter -> the option a user types, where the two are not spelled alike (the
# rest: `export_jobs` -> `--export-jobs`).
FLAG_NAMES: dict[str, str] = {
    "space_file": "--space",
    "space_path": "--space",
    "overwrite": "--force",
    "num_layers": "--layers",
    "ray_address": "--ray",
    "ir_cache": "--cache",
    "extra_spaces": "--add-space",
}


def flag_of(parameter: str) -> str:
    """The CLI option for a workflow parameter (`force` -> `--force`)."""
    return FLAG_NAMES.get(parameter, "--" + parameter.replace("_", "-"))


def _show_error(message: str) -> None:
    err_console.print(
        f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True
    )


def _os_message(error: OSError) -> str:
    reason = error.strerror or type(error).__name__
    if error.errno == errno.EEXIST and error.filename is not None:
        reason = "exists and is not a folder"
    if error.filename is None:
        return reason
    where = os.fsdecode(error.filename)
    if error.filename2 is not None:
        where += f" -> {os.fsdecode(error.filename2)}"
    return f"{where}: {reason}"


def _quiet_stdout() -> None:
    """After a broken pipe (`abc rank RUN | head -1`): point stdout at /dev/null so the
    interpreter's final flush does not fail again and turn exit 0 into exit 1."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def load_space(path: str, name: str | None = None) -> Space:
    """Compile a `.abs` file, or read a Space saved as JSON (`abc compile --spec`)."""
    if path.endswith(".json"):
        try:
            return Space.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: not a saved space: {plain_error(error)}") from None
    _check_readable(path)
    return compile_file(path, name)


def _check_readable(path: str) -> None:
    """A space file that cannot be read is a plain user error (exit 1), not an `.abs`
    diagnostic with a made-up position: name it, and list the `.abs` files that do exist
    next to it, closest names first."""
    import difflib

    file = Path(path)
    if file.is_file():
        try:
            with file.open("rb"):
                return
        except OSError as error:
            raise UserError(f"{path}: cannot read: {error.strerror}") from None
    why = "is a folder, not a .abs file" if file.is_dir() else "no such file"
    folder = file if file.is_dir() else file.parent
    try:
        nearby = sorted(p.name for p in folder.glob("*.abs")) if folder.is_dir() else []
    except OSError:
        nearby = []
    shown = str(folder) if str(folder) not in ("", ".") else "the current folder"
    if nearby:
        close = difflib.get_close_matches(file.name, nearby, n=3, cutoff=0.5)
        ordered = close + [n for n in nearby if n not in close]
        listing = ", ".join(str(folder / n) if str(folder) != "." else n for n in ordered)
        hint = f"; .abs files in {shown}: {listing}"
    else:
        hint = f"; {shown} holds no .abs files" if folder.is_dir() else f"; {shown} does not exist"
    raise UserError(f"{path}: {why}{hint}")


def write_atomic(path: Path, text: str, force: bool = False) -> None:
    """Write a whole file or nothing: a temporary file renamed into place."""
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it")
    io.write_atomic(path, text)


def read_json_file(path: str) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}"
        ) from None
    except ValueError as error:  # not UTF-8, or an integer of more than 4300 digits
        raise UserError(f"{path}: not valid JSON: {error}") from None


# ----- options shared by several commands (declared once) ---------------------------------
# Each takes the command's own help line: the meaning is shared, the wording names the
# command's outputs.

# ----- inputs shared by `abc rank` and `abc build` ------------------------------------------


def parse_globals(items: Sequence[str]) -> list[dict[str, Any]] | None:
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


def load_run(path: str) -> Any:
    """A trained run folder (scorer.records.load_run), named when it does not exist."""
    from autobuild_dsl.scorer.records import load_run as load

    if not Path(path).exists():
        raise UserError(f"{path}: no such run folder")
    return load(path)


def globals_text(values: dict[str, Any]) -> str:
    """`resolution = 224, act = "relu"`: global choices as a reader sees them."""
    from autobuild_dsl.design.importance import value_text

    return ", ".join(f"{k} = {value_text(v)}" for k, v in values.items())
