"""Text -> Lark syntax tree, with every syntax error turned into a located diagnostic."""

from __future__ import annotations

from functools import cache
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from autobuild_dsl.lang.diagnostics import DiagnosticSink, SourceFile

# How each terminal is named in messages: in the language's own words, never Lark's names.
_NAMED_TERMINALS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": 'a string in double quotes ("...")',
    "COMPARE_OP": "a comparison (==, !=, <, <=, >, >=)",
    "$END": "the end of the file",
}
_TOKEN_KINDS = {"NAME": "name", "INT": "integer", "FLOAT": "number", "STRING": "string"}
_MAX_SYNTAX_ERRORS = 20


@cache
def grammar_text() -> str:
    return resources.files("autobuild_dsl").joinpath("grammar/abs.lark").read_text()


@cache
def _parser() -> Lark:
    # cache=True: the LALR tables (~60 ms to build) are kept in the temp folder under a
    # name that hashes the grammar, the options and Lark's version, so a changed grammar
    # never loads stale tables; an unreadable or unwritable cache is silently rebuilt.
    return Lark(
        grammar_text(),
        parser="lalr",
        start=["start", "target"],
        propagate_positions=True,
        maybe_placeholders=False,
        cache=True,
    )


@cache
def _display_names() -> dict[str, str]:
    names = dict(_NAMED_TERMINALS)
    for terminal in _parser().terminals:
        if terminal.name in names:
            continue
        pattern = terminal.pattern
        if pattern.type == "str":
            names[terminal.name] = f"'{pattern.value}'"
    return names


def describe_terminal(name: str) -> str:
    return _display_names().get(name, name.lower())


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of the file"
    if token.type in ("NAME", "INT", "FLOAT", "STRING"):
        return f"{_TOKEN_KINDS[token.type]} '{token.value}'"
    return f"'{token.value}'"


def _expected(names: set[str]) -> str:
    shown = sorted({describe_terminal(n) for n in names})
    if not shown:
        return ""
    if len(shown) == 1:
        return f"; expected {shown[0]}"
    if len(shown) > 12:
        return "; expected one of " + ", ".join(shown[:12]) + ", ..."
    return "; expected one of " + ", ".join(shown)


def _message(error: UnexpectedInput) -> str:
    if isinstance(error, UnexpectedToken):
        hint = _hint(error)
        return f"unexpected {_describe_token(error.token)}{_expected(set(error.expected))}{hint}"
    if isinstance(error, UnexpectedCharacters):
        return f"unexpected character {error.char!r}{_expected(set(error.allowed or ()))}"
    if isinstance(error, UnexpectedEOF):
        return f"unexpected end of the file{_expected(set(error.expected))}"
    return str(error)


def _hint(error: UnexpectedToken) -> str:
    """A friendlier word for the mistakes people make most often."""
    token = error.token
    if token.type == "NAME" and "EQUAL" in error.expected and token.value in ("in", "is"):
        return " (a choice is written `choice kernel = {3, 5, 7}`)"
    if token.type == "$END" and "RBRACE" in error.expected:
        return " (a '{' was never closed)"
    return ""


def parse(source: SourceFile, sink: DiagnosticSink, start: str = "start") -> Tree | None:
    """Parse the text; every syntax error goes to `sink`. Returns None when any was found.

    Lark stops at the first error. To report more in one run, the offending line is blanked
    (only when its braces balance, so the structure around it survives) and the text is
    parsed again; a later error on a later line is then a real one of the user's.
    """
    # A UTF-8 byte-order mark (some editors write one) is not part of the language; it
    # is invisible, so columns on line 1 still match what the editor shows.
    text = source.text.removeprefix("\ufeff")
    last_line = 0
    for _ in range(_MAX_SYNTAX_ERRORS):
        try:
            tree = _parser().parse(text, start=start)
        except UnexpectedInput as error:
            line = getattr(error, "line", 0) or 0
            column = getattr(error, "column", 0) or 0
            if error_is_eof(error) or line < 1:
                line, column = _end_position(text)
            if line <= last_line:
                break
            sink.error(source, line, column, _message(error))
            last_line = line
            text = _blank_line(text, line)
            if text is None:
                break
            continue
        if last_line != 0:
            return None
        # Sizes, magnitudes and nesting, before anything expands or recurses on them.
        from autobuild_dsl.lang.limits import check_limits

        return tree if check_limits(tree, source, sink) else None
    return None


def _blank_line(text: str, line: int) -> str | None:
    lines = text.split("\n")
    if line > len(lines):
        return None
    bad = lines[line - 1]
    code = bad.split("#", 1)[0]
    if code.count("{") != code.count("}") or code.count("(") != code.count(")"):
        return None
    lines[line - 1] = " " * len(bad)
    return "\n".join(lines)


def error_is_eof(error: UnexpectedInput) -> bool:
    token = getattr(error, "token", None)
    return isinstance(error, UnexpectedEOF) or (token is not None and token.type == "$END")


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    # Point just past the last non-blank line, where the missing text belongs.
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].strip():
            return index + 1, len(lines[index]) + 1
    return 1, 1
