"""Lark tree -> located syntax nodes (`lang/syntax.py`), by one `lark.Transformer`.

The grammar names every terminal (so diagnostics can name them), so punctuation tokens
reach the rules' children too; each rule drops them before reading its parts.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from lark import Token, Transformer, Tree, v_args
from lark.exceptions import VisitError
from lark.tree import Meta

from autobuild_dsl.lang import syntax
from autobuild_dsl.lang.diagnostics import DiagnosticSink, Location, SourceFile
from autobuild_dsl.lang.parser import parse
from autobuild_dsl.space.expr import FUNCTIONS, Binary, Call, Const, Ref, Unary, Value

PUNCTUATION = frozenset({
    "LBRACE", "RBRACE", "LPAR", "RPAR", "LSQB", "RSQB", "COMMA", "EQUAL", "DOTDOT", "DOT",
    "BAR", "ARROW",
})  # fmt: skip
_OPERATORS = frozenset(("COMPARE_OP", "AND", "OR", "NOT"))
_COMMENT = re.compile(r"#[^\n]*")


def unquote(text: str) -> str:
    # One pass, so `\\"` is a backslash then a quote (the inverse of `quote_string`).
    return re.sub(r'\\(["\\])', r"\1", text[1:-1])


def _kids(children: list) -> list:
    return [c for c in children if not (isinstance(c, Token) and c.type in PUNCTUATION)]


def _value(node: syntax.LocatedExpr | syntax.ValueNode) -> syntax.ValueNode:
    """A literal in a value position: `true`, numbers and strings come as constants."""
    if isinstance(node, syntax.ValueNode):
        return node
    value = node.expr.value if isinstance(node.expr, Const) else 0
    return syntax.ValueNode(value=value, loc=node.loc, quoted=isinstance(value, str))


@v_args(meta=True)
class SyntaxBuilder(Transformer):
    """Builds the located nodes of one file (or one expression)."""

    def __init__(self, path: str) -> None:
        super().__init__(visit_tokens=False)
        self.path = path

    def _at(self, meta: Meta) -> Location:
        line = getattr(meta, "line", 1)
        return Location(
            self.path, line, getattr(meta, "column", 1), getattr(meta, "end_line", line)
        )

    def _name(self, token: Token) -> syntax.Name:
        line = token.line or 1
        loc = Location(self.path, line, token.column or 1, token.end_line or line)
        return syntax.Name(str(token), loc)

    # ----- spaces ---------------------------------------------------------------------

    def start(self, meta: Meta, children: list) -> syntax.Module:
        return syntax.Module(spaces=list(children))

    def space_decl(self, meta: Meta, children: list) -> syntax.SpaceDecl:
        kids = _kids(children)
        items = kids[2:]
        extends = None
        if items and isinstance(items[0], syntax.ExtendsClause):
            extends, items = items[0], items[1:]
        return syntax.SpaceDecl(self._name(kids[1]), extends, items, self._at(meta))

    def extends_clause(self, meta: Meta, children: list) -> syntax.ExtendsClause:
        kids = _kids(children)
        path = self._name(kids[3]) if len(kids) > 3 else None
        return syntax.ExtendsClause(self._name(kids[1]), path, self._at(meta))

    def description(self, meta: Meta, children: list) -> syntax.Description:
        return syntax.Description(str(_kids(children)[1]), self._at(meta))

    def input_decl(self, meta: Meta, children: list) -> syntax.InputDecl:
        return syntax.InputDecl(_kids(children)[1:], self._at(meta))

    def choice_decl(self, meta: Meta, children: list) -> syntax.ChoiceDecl:
        kids = _kids(children)
        return syntax.ChoiceDecl(self._name(kids[1]), kids[2], self._at(meta))

    def let_decl(self, meta: Meta, children: list) -> syntax.LetDecl:
        kids = _kids(children)
        return syntax.LetDecl(self._name(kids[1]), kids[2], self._at(meta))

    def set_domain(self, meta: Meta, children: list) -> syntax.SetDomain:
        return syntax.SetDomain([_value(k) for k in _kids(children)], self._at(meta))

    def range_domain(self, meta: Meta, children: list) -> syntax.RangeDomain:
        kids = _kids(children)
        step = str(kids[3]) if len(kids) > 3 else None
        return syntax.RangeDomain(str(kids[0]), str(kids[1]), step, self._at(meta))

    def signed_number(self, meta: Meta, children: list) -> syntax.ValueNode:
        number = children[-1].expr.value
        negative = isinstance(children[0], Token) and children[0].type == "MINUS"
        return syntax.ValueNode(-number if negative else number, self._at(meta))

    def symbol(self, meta: Meta, children: list) -> syntax.ValueNode:
        return syntax.ValueNode(str(children[0]), self._at(meta))

    # ----- parts and stages -----------------------------------------------------------

    def fixed_block(self, meta: Meta, children: list) -> syntax.FixedDecl:
        kids = _kids(children)
        name = None
        if len(kids) > 1 and isinstance(kids[1], Token) and kids[1].type == "NAME":
            name = str(kids[1])
        return syntax.FixedDecl(str(kids[0]), name, kids[2:] if name else kids[1:], self._at(meta))

    def stage_decl(self, meta: Meta, children: list) -> syntax.StageDecl:
        kids = _kids(children)
        return syntax.StageDecl(self._name(kids[1]), kids[2:], self._at(meta))

    def stages_decl(self, meta: Meta, children: list) -> syntax.StagesDecl:
        kids = _kids(children)[1:]
        columns = [self._name(k) for k in kids if isinstance(k, Token) and k.type == "NAME"]
        rows = [k for k in kids if isinstance(k, syntax.StageRow)]
        items = [k for k in kids if not isinstance(k, Token | syntax.StageRow)]
        return syntax.StagesDecl(columns, rows, items, self._at(meta))

    def stage_row(self, meta: Meta, children: list) -> syntax.StageRow:
        kids = _kids(children)
        return syntax.StageRow(self._name(kids[0]), kids[1:], self._at(meta))

    def depth_decl(self, meta: Meta, children: list) -> syntax.DepthDecl:
        kids = _kids(children)
        high = self._name(kids[2]) if len(kids) > 2 else None
        return syntax.DepthDecl(self._name(kids[1]), high, self._at(meta))

    def layer_decl(self, meta: Meta, children: list) -> syntax.LayerDecl:
        return syntax.LayerDecl(_kids(children)[1:], self._at(meta))

    def alternative(self, meta: Meta, children: list) -> syntax.Alternative:
        kids = _kids(children)
        label = None
        if len(kids) >= 3 and isinstance(kids[-2], Token) and kids[-2].type == "AS":
            label = str(kids[-1])
        residual = next((k for k in kids if isinstance(k, syntax.ResidualClause)), None)
        return syntax.Alternative(kids[0], residual, label, self._at(meta))

    def residual_clause(self, meta: Meta, children: list) -> syntax.ResidualClause:
        return syntax.ResidualClause(_kids(children)[1:], self._at(meta))

    def node_block(self, meta: Meta, children: list) -> syntax.NodeBlock:
        return syntax.NodeBlock(_kids(children), self._at(meta))

    def before_decl(self, meta: Meta, children: list) -> syntax.EdgeDecl:
        return syntax.EdgeDecl("before", _kids(children)[1], self._at(meta))

    def after_decl(self, meta: Meta, children: list) -> syntax.EdgeDecl:
        return syntax.EdgeDecl("after", _kids(children)[1], self._at(meta))

    def node_item(self, meta: Meta, children: list) -> syntax.NodeItem:
        kids = _kids(children)
        return syntax.NodeItem(kids[0], kids[2] if len(kids) > 2 else None, self._at(meta))

    def call(self, meta: Meta, children: list) -> syntax.CallNode:
        kids = _kids(children)
        return syntax.CallNode(str(kids[0]), kids[1:], self._at(meta))

    def arg(self, meta: Meta, children: list) -> syntax.Arg:
        kids = _kids(children)
        return syntax.Arg(self._name(kids[0]), kids[1], self._at(meta))

    # ----- the other space items ------------------------------------------------------

    def section_decl(self, meta: Meta, children: list) -> syntax.SectionDecl:
        kids = _kids(children)
        return syntax.SectionDecl(self._name(kids[1]), kids[2:], self._at(meta))

    def skip_decl(self, meta: Meta, children: list) -> syntax.SkipDecl:
        kids = _kids(children)
        return syntax.SkipDecl(str(kids[1]), str(kids[2]), self._at(meta))

    def require_decl(self, meta: Meta, children: list) -> syntax.RequireDecl:
        return syntax.RequireDecl(_kids(children)[1], self._at(meta))

    def unit_decl(self, meta: Meta, children: list) -> syntax.UnitDecl:
        kids = _kids(children)
        members = [str(k) for k in kids[2:] if k.type != "PLUS"]
        return syntax.UnitDecl(str(kids[1]), members, self._at(meta))

    def code_decl(self, meta: Meta, children: list) -> syntax.CodeDecl:
        kids = _kids(children)
        return syntax.CodeDecl(self._name(kids[1]), self._name(kids[2]), kids[3:], self._at(meta))

    def code_entry(self, meta: Meta, children: list) -> syntax.CodeEntry:
        kids = _kids(children)
        return syntax.CodeEntry(_value(kids[0]), kids[1], self._at(meta))

    def restrict_decl(self, meta: Meta, children: list) -> syntax.RestrictDecl:
        kids = _kids(children)
        return syntax.RestrictDecl(self._name(kids[1]), kids[3:], self._at(meta))

    def module(self, meta: Meta, children: list) -> syntax.RestrictModule:
        parts = [k for k in children if isinstance(k, syntax.StagePart)]
        return syntax.RestrictModule(parts, self._at(meta))

    def stage_module(self, meta: Meta, children: list) -> syntax.StagePart:
        # `(attn = true) [ ... ]`: an assignment before the bracket is the stage's choices.
        assignments = _kids(children)
        if isinstance(children[0], syntax.Assignment):
            return syntax.StagePart(assignments[0], assignments[1:], self._at(meta))
        return syntax.StagePart(None, assignments, self._at(meta))

    def assignment(self, meta: Meta, children: list) -> syntax.Assignment:
        return syntax.Assignment(_kids(children), self._at(meta))

    def pair(self, meta: Meta, children: list) -> syntax.Pair:
        kids = _kids(children)
        return syntax.Pair(str(kids[0]), _value(kids[1]))

    # ----- expressions ----------------------------------------------------------------

    def _const(self, meta: Meta, value: Value) -> syntax.LocatedExpr:
        return syntax.LocatedExpr(Const(value=value), self._at(meta))

    def int(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        return self._const(meta, int(children[0]))

    def float(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        return self._const(meta, float(children[0]))

    def true(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        return self._const(meta, True)

    def false(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        return self._const(meta, False)

    def string(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        return self._const(meta, unquote(str(children[0])))

    def ref(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        names = [str(k) for k in children if k.type == "NAME"]
        return syntax.LocatedExpr(Ref(name=".".join(names)), self._at(meta))

    def _unary(self, meta: Meta, op: str, children: list) -> syntax.LocatedExpr:
        operand = children[1]
        op_loc = self._name(children[0]).loc if op == "not" else None
        expr = Unary(op=op, operand=operand.expr)  # type: ignore[arg-type]
        return syntax.LocatedExpr(
            expr, self._at(meta), (operand,), op_loc, problems=operand.problems
        )

    def neg(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        return self._unary(meta, "-", children)

    def not_op(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        return self._unary(meta, "not", children)

    def _chain(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        """`a OP b OP c`, folded to the left."""
        parts = tuple(children[0::2])
        expr = parts[0].expr
        for op_token, operand in zip(children[1::2], parts[1:], strict=True):
            expr = Binary(op=str(op_token), left=expr, right=operand.expr)  # type: ignore[arg-type]
        op = next((k for k in children if isinstance(k, Token) and k.type in _OPERATORS), None)
        op_loc = self._name(op).loc if op is not None else None
        problems = tuple(p for part in parts for p in part.problems)
        return syntax.LocatedExpr(expr, self._at(meta), parts, op_loc, problems=problems)

    or_expr = and_expr = sum = product = comparison = _chain

    def func_call(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        kids = _kids(children)
        name, args = str(kids[0]), tuple(kids[1:])
        loc = self._at(meta)
        problems = [p for arg in args for p in arg.problems]
        if name not in FUNCTIONS:
            problems.append((loc, f"unknown function '{name}' (functions: {', '.join(FUNCTIONS)})"))
        else:
            low, high = FUNCTIONS[name]
            if len(args) < low or (high is not None and len(args) > high):
                takes = low if high == low else f"at least {low}"
                problems.append((loc, f"{name}() takes {takes} argument(s), got {len(args)}"))
        expr = Call(func=name, args=[a.expr for a in args])
        return syntax.LocatedExpr(expr, loc, args, problems=tuple(problems))

    def atom(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        inner = _kids(children)[0]
        return syntax.LocatedExpr(inner.expr, self._at(meta), (inner,), None, True, inner.problems)

    def target(self, meta: Meta, children: list) -> syntax.LocatedExpr:
        return children[0]


def _comments(tree: Tree, text: str) -> list[tuple[int, str]]:
    """The comments, as (line, text): they lie in the gaps between the tree's tokens."""
    tokens = sorted(tree.scan_values(lambda v: isinstance(v, Token)), key=lambda t: t.start_pos)
    comments: list[tuple[int, str]] = []
    position, line = 0, 1
    for token in [*tokens, None]:
        end = token.start_pos if token is not None else len(text)
        gap = text[position:end]
        for match in _COMMENT.finditer(gap):
            comments.append((line + gap.count("\n", 0, match.start()), match.group().rstrip()))
        if token is not None:
            position, line = token.end_pos, token.end_line or line
    return comments


def parse_module(
    source: SourceFile, sink: DiagnosticSink, comments: bool = False
) -> syntax.Module | None:
    """Parse a file into located nodes; None (with diagnostics in `sink`) on errors."""
    sink.add_source(source)
    tree = parse(source, sink)
    if tree is None:
        return None
    module = _build(source.path, tree)
    if comments:
        module = replace(module, comments=_comments(tree, source.text.removeprefix("\ufeff")))
    return module


def parse_expression(
    text: str, path: str = "<expression>", sink: DiagnosticSink | None = None
) -> syntax.LocatedExpr | None:
    """One expression (a rule, a target over metrics) as located nodes.

    Syntax errors go to `sink` (and None is returned); without a sink they are raised as
    a CompileError. Unknown functions are kept in `.problems`, not reported.
    """
    own = sink if sink is not None else DiagnosticSink()
    source = SourceFile(path=path, text=text)
    own.add_source(source)
    tree = parse(source, own, start="target")
    if tree is None or own.items:
        if sink is None:
            own.raise_if_any()
        return None
    return _build(path, tree)


def _build(path: str, tree: Tree) -> Any:
    try:
        return SyntaxBuilder(path).transform(tree)
    except VisitError as error:
        # Lark wraps what a rule raised (a RecursionError deep in an `extends` chain).
        raise error.orig_exc from None
