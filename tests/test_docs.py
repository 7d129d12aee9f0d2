"""The documentation stays true: its `.abs` examples compile and are formatted, and the
operations reference matches the op catalog.

Every fenced block tagged ```abs in README.md and docs/*.md is written to a temporary folder
(next to copies of the seed spaces, so an example may `extends NAME from "mbv3.abs"`)
and every space in it is compiled. A block whose first line is `# expect-error: TEXT` must
instead fail with a diagnostic containing TEXT. Every block must already be in `abc fmt`
canonical form (a block that cannot be parsed, which only an expect-error block may be, is
exempt).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from autobuild_dsl.lang import CompileError, compile_file
from autobuild_dsl.lang.formatter import format_file

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXPECT_ERROR = re.compile(r"#\s*expect-error:\s*(.+?)\s*$")
SPACE_NAME = re.compile(r"^space\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # 1-based line of the opening fence
    text: str

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def expected_error(self) -> str | None:
        first = self.text.split("\n", 1)[0]
        match = EXPECT_ERROR.match(first.strip())
        return match.group(1) if match else None


def abs_blocks(document: Path) -> list[Block]:
    """The fenced ```abs blocks of a Markdown file (an unclosed block is an error)."""
    blocks: list[Block] = []
    lines = document.read_text(encoding="utf-8").split("\n")
    index = 0
    while index < len(lines):
        opening = re.match(r"^(\s*)(`{3,}|~{3,})\s*(\S*)", lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, tag = opening.groups()
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            line = lines[index]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            index += 1
        if index >= len(lines):
            raise AssertionError(f"{document.name}:{start + 1}: a code block is never closed")
        index += 1
        if tag == "abs":
            blocks.append(Block(document, start + 1, "\n".join(body) + "\n"))
    return blocks


BLOCKS = [block for document in DOCUMENTS for block in abs_blocks(document)]


def test_the_documents_have_abs_examples() -> None:
    documents = {block.document.name for block in BLOCKS}
    assert "README.md" in documents
    assert "language.md" in documents


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("doc_examples")
    for seed in (ROOT / "spaces").glob("*.abs"):
        shutil.copy(seed, folder / seed.name)
    return folder


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_abs_example_compiles_as_documented(block: Block, workdir: Path) -> None:
    path = workdir / f"example_{block.document.stem}_{block.line}.abs"
    path.write_text(block.text, encoding="utf-8")
    names = SPACE_NAME.findall(block.text) or [None]
    expected = block.expected_error
    messages: list[str] = []
    for name in names:
        try:
            compile_file(path, name)
        except CompileError as error:
            if expected is None:
                pytest.fail(f"{block.where}: the example does not compile:\n{error.render()}")
            messages += [d.message for d in error.diagnostics]
    if expected is not None:
        assert messages, f"{block.where}: expected an error containing {expected!r}, got none"
        assert any(expected in m for m in messages), (
            f"{block.where}: no diagnostic contains {expected!r}: {messages}"
        )


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_abs_example_is_in_canonical_form(block: Block) -> None:
    try:
        formatted = format_file(f"{block.where}.abs", block.text)
    except CompileError:
        assert block.expected_error is not None, f"{block.where}: the example does not parse"
        return
    assert formatted == block.text, (
        f"{block.where}: not in `abc fmt` form; it should read:\n{formatted}"
    )


def test_operations_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_op_reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr or result.stdout


def test_op_reference_check_detects_a_stale_section(tmp_path: Path) -> None:
    stale = tmp_path / "language.md"
    stale.write_text("# ops\n<!-- ops:begin -->\nold\n<!-- ops:end -->\n", encoding="utf-8")
    script = str(ROOT / "scripts" / "gen_op_reference.py")
    check = [sys.executable, script, "--check", "--file", str(stale)]
    assert subprocess.run(check, capture_output=True, check=False).returncode == 1
    write = [sys.executable, script, "--file", str(stale)]
    assert subprocess.run(write, capture_output=True, check=False).returncode == 0
    assert subprocess.run(check, capture_output=True, check=False).returncode == 0
    assert "`conv`" in stale.read_text(encoding="utf-8")


def test_cli_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr or result.stdout


def test_cli_reference_covers_every_command() -> None:
    from autobuild_dsl.cli import cli

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in cli.list_commands(None):  # type: ignore[arg-type]
        assert f"## abc {name}\n" in text
