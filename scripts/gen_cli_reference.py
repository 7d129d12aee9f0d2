"""Write docs/cli.md, the command-line reference, from the click commands themselves.

Each command's section is its `--help` text rendered at a fixed width, so the reference
cannot drift from the code: `--check` exits with 1 when docs/cli.md is stale, and the test
suite runs it.

    python scripts/gen_cli_reference.py            # rewrite docs/cli.md
    python scripts/gen_cli_reference.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from autobuild_dsl.cli import cli  # noqa: E402

DOC = ROOT / "docs" / "cli.md"
WIDTH = 100

HEADER = """# Command-line reference

Generated from the `abc` commands by `scripts/gen_cli_reference.py`; do not edit by hand
(the test suite fails when this file and the code disagree). Every command exits with 0 on
success, 1 on bad input (data, targets, architectures, files), 2 on a `.abs` diagnostic and
3 on an internal error (set `ABC_DEBUG=1` to see its traceback).
"""


def _help(command: click.Command, path: list[str], parent: click.Context | None) -> str:
    context = click.Context(
        command, info_name=path[-1], parent=parent, max_content_width=WIDTH, terminal_width=WIDTH
    )
    return command.get_help(context)


def _walk(
    command: click.Command, path: list[str], parent: click.Context | None
) -> list[tuple[list[str], str]]:
    sections = [(path, _help(command, path, parent))]
    if isinstance(command, click.Group):
        context = click.Context(command, info_name=path[-1], parent=parent)
        for name in sorted(command.list_commands(context)):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                sections.extend(_walk(sub, [*path, name], context))
    return sections


def render() -> str:
    sections = _walk(cli, ["abc"], None)
    lines = [HEADER, "## Commands", ""]
    for path, _ in sections[1:]:
        name = " ".join(path)
        anchor = "-".join(path)
        lines.append(f"- [`{name}`](#{anchor})")
    lines.append("")
    for path, text in sections:
        lines.append(f"## {' '.join(path)}")
        lines.append("")
        lines.append("```text")
        lines.extend(line.rstrip() for line in text.rstrip().splitlines())
        lines.append("```")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run python scripts/gen_cli_reference.py")
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
