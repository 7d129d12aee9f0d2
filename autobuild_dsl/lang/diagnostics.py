"""Located diagnostics: every user-facing error points at a file, line and column."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from autobuild_dsl.errors import EXIT_COMPILE_ERROR, AbcError


class SourceFile(BaseModel):
    """A named piece of source text, kept so diagnostics can quote the offending line."""

    path: str
    text: str

    def line(self, number: int) -> str:
        # Lark counts lines by "\n" only, so the quoted line must be found the same way.
        lines = self.text.split("\n")
        if 1 <= number <= len(lines):
            return lines[number - 1]
        return ""


@dataclass(frozen=True, slots=True)
class Location:
    """Where something is written. `parent` is where it was reached from: the space that
    `extends` an inherited one, or the stage family a stage's body item is shared by."""

    path: str
    line: int
    column: int
    # The last line of the construct (the formatter keeps comments inside it).
    end_line: int = 0
    parent: Location | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class Diagnostic(BaseModel):
    """One error with its place in the source and the line it points into."""

    path: str
    line: int
    column: int
    message: str
    source_line: str = ""

    def render(self) -> str:
        head = f"{self.path}:{self.line}:{self.column}: error: {self.message}"
        if not self.source_line:
            return head
        # Tabs keep their width so the caret lines up under the spot.
        prefix = "".join("\t" if ch == "\t" else " " for ch in self.source_line[: self.column - 1])
        caret = prefix + "^"
        return f"{head}\n    {self.source_line}\n    {caret}"


class CompileError(AbcError):
    """Raised with every diagnostic found; the CLI prints them and exits with status 2."""

    code = "abs"
    exit_code = EXIT_COMPILE_ERROR

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.path, d.line, d.column))
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)


class DiagnosticSink:
    """Collects diagnostics against one source file (or several, for `extends`)."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []
        # The files read so far, so a Location (a path) can quote its line.
        self.sources: dict[str, SourceFile] = {}

    def add_source(self, source: SourceFile) -> None:
        self.sources.setdefault(source.path, source)

    def at(self, loc: Location, message: str) -> None:
        """An error at a Location of a file this sink has seen (see `add_source`)."""
        source = self.sources.get(loc.path) or SourceFile(path=loc.path, text="")
        self.error(source, loc.line, loc.column, message)

    def error(self, source: SourceFile, line: int, column: int, message: str) -> None:
        line = max(line, 1)
        column = max(column, 1)
        diagnostic = Diagnostic(
            path=source.path,
            line=line,
            column=column,
            message=message,
            source_line=source.line(line),
        )
        # A stage family's body is checked once per stage: say each mistake once.
        if diagnostic not in self.items:
            self.items.append(diagnostic)

    def raise_if_any(self) -> None:
        if self.items:
            raise CompileError(self.items)
