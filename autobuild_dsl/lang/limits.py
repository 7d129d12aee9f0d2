"""The language's limits, checked on the syntax tree before anything is lowered.

A hostile or mistaken file must end as located diagnostics, never as a hang, a memory
blow-up or a Python recursion error. Everything here walks the tree with an explicit
stack (no recursion), and runs on every parsed file (`.abs` files, `extends` targets,
target expressions), from `parser.parse`. The numbers are stated in docs/language.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lark import Token, Tree

from autobuild_dsl.lang.diagnostics import DiagnosticSink, SourceFile

# Values in one set or range (`choice w = 1..N`, `kernel = {3, 5, 7}`).
MAX_VALUES = 1000
# Layers of one stage (`depth 1..N`, a family's depth column).
MAX_LAYERS = 64
# Expression nesting: parentheses, unary operators and chained terms (`a + b + c` is 3).
MAX_NESTING = 100
# Integer literals: |n| < 10**18 (sizes, channels, steps are far below; anything larger is
# a typo that would cost gigabytes or turn into floating-point infinity downstream).
MAX_INT = 10**18
# Syntax-tree depth for anything else (blocks in blocks).
MAX_TREE_DEPTH = 200

_CHAINS = {"sum", "product", "or_expr", "and_expr", "comparison"}
_NESTERS = {"neg", "not_op", "func_call", "atom"}


def _first_token(tree: Tree | Token) -> Token | None:
    stack: list[Tree | Token] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, Token):
            return item
        stack.extend(reversed(item.children))
    return None


def _int(token: Token) -> int | None:
    text = str(token)
    if len(text) > 19:  # bigger than MAX_INT; never convert (Python refuses > 4300 digits)
        return None
    return int(text)


class _Checker:
    def __init__(self, source: SourceFile, sink: DiagnosticSink) -> None:
        self.source = source
        self.sink = sink
        self.count = 0

    def error(self, at: Tree | Token, message: str) -> None:
        token = at if isinstance(at, Token) else _first_token(at)
        line = (token.line if token is not None else None) or 1
        column = (token.column if token is not None else None) or 1
        self.sink.error(self.source, line, column, message)
        self.count += 1

    def number(self, token: Token) -> None:
        if token.type == "INT":
            value = _int(token)
            if value is None or value >= MAX_INT:
                self.error(token, f"the number {_short(token)} is too large (the limit is 10**18)")
        elif token.type == "FLOAT" and not math.isfinite(float(str(token))):
            self.error(token, f"the number {_short(token)} is too large (not a finite float)")

    def range_domain(self, tree: Tree) -> None:
        ints = [k for k in tree.children if isinstance(k, Token) and k.type == "INT"]
        values = [_int(k) for k in ints]
        if any(v is None or v >= MAX_INT for v in values) or len(values) < 2:
            return  # reported as a too-large number
        low, high = values[0], values[1]
        step = values[2] if len(values) > 2 else 1
        assert low is not None and high is not None and step is not None
        if step == 0:
            self.error(ints[2], "a range's step must be at least 1")
            return
        size = (high - low) // step + 1 if high >= low else 0
        if size > MAX_VALUES:
            self.error(
                tree, f"the range {low}..{high} holds {size} values; at most {MAX_VALUES} allowed"
            )

    def set_domain(self, tree: Tree) -> None:
        values = [k for k in tree.children if not (isinstance(k, Token) and k.type in _PUNCT)]
        if len(values) > MAX_VALUES:
            self.error(tree, f"the set holds {len(values)} values; at most {MAX_VALUES} allowed")

    def depth_decl(self, tree: Tree) -> None:
        ints = [k for k in tree.children if isinstance(k, Token) and k.type == "INT"]
        for token in ints:
            value = _int(token)
            if value is not None and value > MAX_LAYERS:
                self.error(token, f"depth {value}: a stage has at most {MAX_LAYERS} layers")
                return

    def stages_decl(self, tree: Tree) -> None:
        # A family's depth column: `stages (width, depth) { s1 = (64, 2) ... }`.
        names = []
        for kid in tree.children:
            if isinstance(kid, Token) and kid.type == "NAME":
                names.append(str(kid))
            if isinstance(kid, Tree):
                break
        if "depth" not in names:
            return
        column = names.index("depth")
        for row in tree.children:
            if not (isinstance(row, Tree) and row.data == "stage_row"):
                continue
            cells = [k for k in row.children if isinstance(k, Tree) or k.type not in _PUNCT]
            cells = cells[1:]  # the stage's name
            if column < len(cells):
                cell = cells[column]
                token = cell if isinstance(cell, Token) else None
                if isinstance(cell, Tree) and cell.data == "int":
                    token = cell.children[0]  # type: ignore[assignment]
                if isinstance(token, Token) and token.type == "INT":
                    value = _int(token)
                    if value is not None and value > MAX_LAYERS:
                        self.error(token, f"depth {value}: a stage has at most {MAX_LAYERS} layers")


_PUNCT = {"LBRACE", "RBRACE", "LPAR", "RPAR", "COMMA", "DOTDOT", "STEP", "EQUAL"}


def _short(token: Token) -> str:
    text = str(token)
    return text if len(text) <= 24 else f"{text[:10]}...{text[-6:]} ({len(text)} characters)"


def check_limits(tree: Tree, source: SourceFile, sink: DiagnosticSink) -> bool:
    """Report every limit `tree` breaks (located); True when it breaks none."""
    checker = _Checker(source, sink)
    # (node, expression nesting so far, tree depth so far)
    stack: list[tuple[Tree | Token, int, int]] = [(tree, 0, 0)]
    while stack:
        node, nesting, depth = stack.pop()
        if isinstance(node, Token):
            if node.type in ("INT", "FLOAT"):
                checker.number(node)
            continue
        if depth > MAX_TREE_DEPTH:
            checker.error(node, f"nested more than {MAX_TREE_DEPTH} levels deep")
            continue
        kind = node.data
        if kind in _CHAINS:
            nesting += max(1, len([k for k in node.children if isinstance(k, Tree)]) - 1)
        elif kind in _NESTERS or kind == "expr":
            nesting += 1
        if nesting > MAX_NESTING:
            checker.error(
                node,
                f"the expression is nested or chained more than {MAX_NESTING} levels deep "
                "(parentheses, operators or terms); split it with `let`",
            )
            continue
        handler = getattr(checker, kind, None) if kind in _HANDLED else None
        if handler is not None:
            handler(node)
        for kid in node.children:
            if isinstance(kid, Tree | Token):
                stack.append((kid, nesting, depth + 1))
        if checker.count >= 50:
            break
    return checker.count == 0


_HANDLED = {"range_domain", "set_domain", "depth_decl", "stages_decl"}


def is_boolean(expr: object, domain_of: Callable[[str], list[object] | None]) -> bool:
    """Whether a rule's expression is a truth value by its form: a comparison, `and`,
    `or`, `not`, true/false, or a choice whose every value is a boolean. Arithmetic
    (`s1.depth - 1`) and strings (`"no"`) are not: their truthiness is no rule."""
    from autobuild_dsl.space.expr import Binary, Const, Ref, Unary

    stack = [expr]
    while stack:
        item = stack.pop()
        if isinstance(item, Const):
            if not isinstance(item.value, bool):
                return False
        elif isinstance(item, Ref):
            values = domain_of(item.name)
            if values is not None and not all(isinstance(v, bool) for v in values):
                return False
        elif isinstance(item, Unary):
            if item.op != "not":
                return False
            stack.append(item.operand)
        elif isinstance(item, Binary):
            if item.op in ("and", "or"):
                stack.extend((item.left, item.right))
            elif item.op not in ("==", "!=", "<", "<=", ">", ">="):
                return False
        else:
            return False
    return True


__all__ = ["MAX_INT", "MAX_LAYERS", "MAX_NESTING", "MAX_VALUES", "check_limits", "is_boolean"]
