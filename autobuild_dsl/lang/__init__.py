"""The .abs language: parsing, lowering to a Space, formatting."""

from __future__ import annotations

from pathlib import Path

from autobuild_dsl.lang.diagnostics import CompileError, Diagnostic, DiagnosticSink
from autobuild_dsl.space.model import Space

__all__ = ["CompileError", "Diagnostic", "compile_file", "compile_text"]


def compile_text(text: str, path: str = "<text>", space: str | None = None) -> Space:
    """Compile `.abs` text to a Space, or raise CompileError with every diagnostic."""
    from autobuild_dsl.lang.checks import check_space
    from autobuild_dsl.lang.lower import Finaliser, Lowerer

    sink = DiagnosticSink()
    lowerer = Lowerer(sink)
    source, tree = lowerer.load_file(path, text)
    if tree is None:
        sink.raise_if_any()
    draft = lowerer.draft(source, tree, space)
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
    _check_siblings(lowerer, source, tree, result.name, sink)
    return result


def _check_siblings(lowerer, source, tree, chosen: str, sink: DiagnosticSink) -> None:  # type: ignore[no-untyped-def]
    """Every other space of the file is checked too: a file is right or wrong as a whole,
    whichever space a command picks from it."""
    from autobuild_dsl.lang.checks import check_space
    from autobuild_dsl.lang.lower import Finaliser

    for name, _ in lowerer.space_names(tree):
        if name == chosen:
            continue
        draft = lowerer.draft(source, tree, name)
        if draft is None:
            continue
        other = Finaliser(draft, sink).run()
        if other is not None and not sink.items:
            check_space(other, draft, sink)
    sink.raise_if_any()


def compile_file(path: str | Path, space: str | None = None) -> Space:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CompileError(
            [Diagnostic(path=str(path), line=1, column=1, message=f"cannot read the file: {error}")]
        ) from None
    return compile_text(text, str(path), space)
