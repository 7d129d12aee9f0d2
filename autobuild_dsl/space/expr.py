"""Expressions of the language as typed, JSON-serialisable values.

They appear in attribute values (`out = base * mult`), rules (`require a <= b`) and
target expressions over metrics (`acc - 0.5 * lat`). Evaluation never uses Python's eval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.errors import AbcError

Value = bool | int | float | str


class ExprError(AbcError, ValueError):
    """An expression could not be evaluated (unknown name, bad operand, non-finite result)."""

    code = "expression"


class _Node(BaseModel):
    """An expression node: frozen, told apart by `kind` in JSON."""

    model_config = ConfigDict(frozen=True)


class Const(_Node):
    kind: Literal["const"] = "const"
    value: Value


class Ref(_Node):
    """A name: a constant, a choice (`resolution`, `s1.mult`), a depth (`s1.depth`), a metric."""

    kind: Literal["ref"] = "ref"
    name: str


class LayerRef(_Node):
    """The per-layer choice written in place as a set, e.g. `kernel = {3, 5, 7}`."""

    kind: Literal["layer"] = "layer"
    name: str


class Unary(_Node):
    kind: Literal["unary"] = "unary"
    op: Literal["-", "not"]
    operand: Expr


class Binary(_Node):
    kind: Literal["binary"] = "binary"
    op: Literal["+", "-", "*", "/", "and", "or", "==", "!=", "<", "<=", ">", ">="]
    left: Expr
    right: Expr


class Call(_Node):
    kind: Literal["call"] = "call"
    func: str
    args: list[Expr]


Expr = Annotated[Const | Ref | LayerRef | Unary | Binary | Call, Field(discriminator="kind")]
for _model in (Unary, Binary, Call):
    _model.model_rebuild()

FUNCTIONS: dict[str, tuple[int, int | None]] = {
    # name: (fewest arguments, most arguments or None for any)
    "log": (1, 1),
    "exp": (1, 1),
    "sqrt": (1, 1),
    "abs": (1, 1),
    "min": (1, None),
    "max": (1, None),
}

_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4}
_PRECEDENCE.update({"+": 5, "-": 5, "*": 6, "/": 6})


def _number(value: Value, op: str) -> float | int:
    if isinstance(value, str):
        # Bare words are symbols (`relu`); in arithmetic one is a name nobody defined.
        raise ExprError(f"unknown name '{value}'")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExprError(f"'{op}' needs numbers, got {format_value(value)}")
    return value


def evaluate(
    expr: Expr, lookup: Callable[[str], Value], layer: Callable[[str], Value] | None = None
) -> Value:
    """Evaluate `expr`; names are resolved by `lookup` (which raises ExprError if unknown)."""
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Ref):
        return lookup(expr.name)
    if isinstance(expr, LayerRef):
        if layer is None:
            raise ExprError(f"the layer choice '{expr.name}' has no value here")
        return layer(expr.name)
    if isinstance(expr, Unary):
        value = evaluate(expr.operand, lookup, layer)
        if expr.op == "not":
            return not value
        return -_number(value, "-")
    if isinstance(expr, Binary):
        if expr.op == "and":
            return bool(evaluate(expr.left, lookup, layer)) and bool(
                evaluate(expr.right, lookup, layer)
            )
        if expr.op == "or":
            return bool(evaluate(expr.left, lookup, layer)) or bool(
                evaluate(expr.right, lookup, layer)
            )
        left = evaluate(expr.left, lookup, layer)
        right = evaluate(expr.right, lookup, layer)
        return _binary(expr.op, left, right)
    if isinstance(expr, Call):
        args = [_number(evaluate(a, lookup, layer), expr.func) for a in expr.args]
        return _call(expr.func, args)
    raise ExprError(f"cannot evaluate {expr!r}")


def _binary(op: str, left: Value, right: Value) -> Value:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    a, b = _number(left, op), _number(right, op)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            raise ExprError("division by zero")
        # Integer arithmetic stays integral when it divides exactly (channel counts).
        if isinstance(a, int) and isinstance(b, int) and a % b == 0:
            return a // b
        return a / b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    raise ExprError(f"unknown operator {op}")


def _call(func: str, args: list[float | int]) -> float | int:
    try:
        if func == "min":
            return min(args)
        if func == "max":
            return max(args)
        if func == "abs":
            return abs(args[0])
        if func == "log":
            return math.log(args[0])
        if func == "exp":
            return math.exp(args[0])
        if func == "sqrt":
            return math.sqrt(args[0])
    except (ValueError, OverflowError) as error:
        raise ExprError(f"{func}({', '.join(format_value(a) for a in args)}): {error}") from None
    raise ExprError(f"unknown function '{func}'")


def names_in(expr: Expr) -> list[str]:
    """Every name the expression refers to, in order of first appearance."""
    found: list[str] = []

    def walk(node: Expr) -> None:
        if isinstance(node, Ref) and node.name not in found:
            found.append(node.name)
        elif isinstance(node, Unary):
            walk(node.operand)
        elif isinstance(node, Binary):
            walk(node.left)
            walk(node.right)
        elif isinstance(node, Call):
            for arg in node.args:
                walk(arg)

    walk(expr)
    return found


def format_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def quote_string(text: str) -> str:
    """A string literal of the language that reads back as `text`.

    `"` is escaped; a backslash only where it would otherwise escape what follows it (a
    quote, a backslash, the closing quote), so `"a\\nb"` is written as it was typed.
    """
    out = []
    for index, char in enumerate(text):
        following = text[index + 1] if index + 1 < len(text) else '"'
        if char == '"' or (char == "\\" and following in '"\\'):
            out.append("\\")
        out.append(char)
    return '"' + "".join(out) + '"'


_COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}


def format_expr(expr: Expr, parent: int = 0, *, source: bool = False) -> str:
    """The canonical text of an expression, with only the parentheses it needs.

    With `source=True` the text is valid `.abs` source that parses back to the same
    expression: strings keep their quotes (a bare word would be read as a name) and
    an infinite number is written as a literal that overflows to it.
    """
    if isinstance(expr, Const):
        if isinstance(expr.value, str):
            return quote_string(expr.value) if source else expr.value
        if source and isinstance(expr.value, float) and math.isinf(expr.value):
            return "1e999" if expr.value > 0 else "(-1e999)"
        return format_value(expr.value)
    if isinstance(expr, Ref | LayerRef):
        return expr.name
    if isinstance(expr, Unary):
        inner = format_expr(expr.operand, 7 if expr.op == "-" else 3, source=source)
        text = f"-{inner}" if expr.op == "-" else f"not {inner}"
        return f"({text})" if parent > (7 if expr.op == "-" else 3) else text
    if isinstance(expr, Binary):
        level = _PRECEDENCE[expr.op]
        # Comparisons do not chain (`a < b == c` is a syntax error), so a comparison
        # inside a comparison keeps its parentheses on either side.
        left_level = level + 1 if expr.op in _COMPARISONS else level
        left = format_expr(expr.left, left_level, source=source)
        # Right operands of - and / bind tighter so `a - (b - c)` keeps its parentheses.
        right = format_expr(expr.right, level + 1, source=source)
        text = f"{left} {expr.op} {right}"
        return f"({text})" if parent > level else text
    if isinstance(expr, Call):
        args = ", ".join(format_expr(a, source=source) for a in expr.args)
        return f"{expr.func}({args})"
    raise ExprError(f"cannot format {expr!r}")
