"""The .abs language: parsing, lowering to a Space, formatting."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autobuild_dsl.lang.diagnostics import (
    CompileError,
    Diagnostic,
    DiagnosticSink,
    Location,
    SourceFile,
)
from autobuild_dsl.lang.syntax import LocatedExpr, Module
from autobuild_dsl.space.model import Space

if TYPE_CHECKING:
    from autobuild_dsl.lang.lower import Lowerer

__all__ = [
    "CompileError",
    "Diagnostic",
    "LocatedExpr",
    "Location",
    "compile_file",
    "compile_text",
    "parse_expression",
]


def compile_text(text: str, path: str = "<text>", space: str | None = None) -> Space:
    """Compile `.abs` text to a Space, or raise CompileError with every diagnostic."""
    from autobuild_dsl.lang.checks import check_space
    from autobuild_dsl.lang.finalise import Finaliser
    from autobuild_dsl.lang.lower import Lowerer

    sink = DiagnosticSink()
    lowerer = Lowerer(sink)
    source, module = lowerer.load_file(path, text)
    if module is None:
        sink.raise_if_any()
    assert module is not None
    draft = lowerer.draft(source, module, space)
    if draft is None:
        if not sink.items:
            sink.error(source, 1, 1, "the file holds no space (`space NAME { ... }`)")
        sink.raise_if_any()
    # Finalise even after lowering errors, so one run reports every mistake.
    result = Finaliser(draft, sink).run()
    sink.raise_if_any()
    assert result is not None
    check_space(result, draft, sink)
    sink.raise_if_any()
    _check_siblings(lowerer, source, module, result.name, sink)
    return result


def _check_siblings(
    lowerer: Lowerer, source: SourceFile, module: Module, chosen: str, sink: DiagnosticSink
) -> None:
    """Every other space of the file is checked too: a file is right or wrong as a whole,
    whichever space a command picks from it."""
    from autobuild_dsl.lang.checks import check_space
    from autobuild_dsl.lang.finalise import Finaliser

    for decl in module.spaces:
        name = decl.name.text
        if name == chosen:
            continue
        draft = lowerer.draft(source, module, name)
        if draft is None:
            continue
        other = Finaliser(draft, sink).run()
        if other is not None and not sink.items:
            check_space(other, draft, sink)
    sink.raise_if_any()


def parse_expression(
    text: str, path: str = "<expression>", sink: DiagnosticSink | None = None
) -> LocatedExpr | None:
    """One expression as located nodes; see `lang.transform.parse_expression`."""
    from autobuild_dsl.lang.transform import parse_expression as parse

    return parse(text, path, sink)


def compile_file(path: str | Path, space: str | None = None) -> Space:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CompileError(
            [Diagnostic(path=str(path), line=1, column=1, message=f"cannot read the file: {error}")]
        ) from None
    return compile_text(text, str(path), space)
