"""The located syntax of a `.abs` file: what the parser's Transformer builds.

Every node carries one `Location`; the lowerer, the formatter and target expressions read
these nodes instead of walking Lark's tree. Leaf values are already converted (numbers,
unquoted strings, `Expr`s); the text a formatter must keep as written (a range's digits,
a string's quotes) is kept too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from autobuild_dsl.lang.diagnostics import Location
from autobuild_dsl.space.expr import FUNCTIONS, Binary, Call, Const, Expr, Unary, Value

Problem: TypeAlias = tuple[Location, str]


@dataclass(frozen=True, slots=True)
class LocatedExpr:
    """An expression and its located sub-expressions, as written."""

    expr: Expr  # calls of unknown functions are kept as written (the formatter prints them)
    loc: Location
    parts: tuple[LocatedExpr, ...] = ()
    # Its first logical or comparison operator (`<` in `a < b`), where a message points.
    op_loc: Location | None = None
    grouped: bool = False  # written in parentheses
    # Unknown functions and wrong argument counts, reported when the expression is lowered.
    problems: tuple[Problem, ...] = ()

    def strict(self) -> Expr:
        """The expression with every call of an unknown function replaced by 0."""
        return _drop_unknown_calls(self.expr) if self.problems else self.expr


def rebuild(node: Expr, walk: Callable[[Expr], Expr]) -> Expr:
    """`node` with `walk` applied to its direct sub-expressions (a leaf as it is)."""
    if isinstance(node, Unary):
        return Unary(op=node.op, operand=walk(node.operand))
    if isinstance(node, Binary):
        return Binary(op=node.op, left=walk(node.left), right=walk(node.right))
    if isinstance(node, Call):
        return Call(func=node.func, args=[walk(a) for a in node.args])
    return node


def _drop_unknown_calls(expr: Expr) -> Expr:
    if isinstance(expr, Call) and expr.func not in FUNCTIONS:
        return Const(value=0)
    return rebuild(expr, _drop_unknown_calls)


@dataclass(frozen=True, slots=True)
class ValueNode:
    """A literal value (a domain member, a pair's value, a code token)."""

    value: Value
    loc: Location
    quoted: bool = False  # a string written in double quotes (not a bare word)


@dataclass(frozen=True, slots=True)
class SetDomain:
    values: list[ValueNode]
    loc: Location


@dataclass(frozen=True, slots=True)
class RangeDomain:
    # The digits as written (the formatter keeps them); `low`, `high`, `step` as numbers.
    low_text: str
    high_text: str
    step_text: str | None
    loc: Location

    @property
    def low(self) -> int:
        return int(self.low_text)

    @property
    def high(self) -> int:
        return int(self.high_text)

    @property
    def step(self) -> int:
        return int(self.step_text) if self.step_text is not None else 1


Domain: TypeAlias = SetDomain | RangeDomain


@dataclass(frozen=True, slots=True)
class Name:
    text: str
    loc: Location

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Arg:
    name: Name
    value: LocatedExpr | Domain
    loc: Location


@dataclass(frozen=True, slots=True)
class CallNode:
    op: str
    args: list[Arg]
    loc: Location


@dataclass(frozen=True, slots=True)
class NodeItem:
    call: CallNode
    condition: LocatedExpr | None
    loc: Location


@dataclass(frozen=True, slots=True)
class NodeBlock:
    items: list[NodeItem]
    loc: Location


@dataclass(frozen=True, slots=True)
class ResidualClause:
    args: list[Arg]
    loc: Location


@dataclass(frozen=True, slots=True)
class Alternative:
    body: CallNode | NodeBlock
    residual: ResidualClause | None
    label: str | None
    loc: Location


@dataclass(frozen=True, slots=True)
class Pair:
    name: str
    value: ValueNode


@dataclass(frozen=True, slots=True)
class Assignment:
    pairs: list[Pair]
    loc: Location

    def values(self) -> dict[str, Value]:
        return {pair.name: pair.value.value for pair in self.pairs}


# ----- declarations -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Description:
    text: str  # as written, with its quotes
    loc: Location


@dataclass(frozen=True, slots=True)
class InputDecl:
    args: list[Arg]
    loc: Location


@dataclass(frozen=True, slots=True)
class ChoiceDecl:
    name: Name
    domain: Domain
    loc: Location


@dataclass(frozen=True, slots=True)
class LetDecl:
    name: Name
    value: LocatedExpr
    loc: Location


@dataclass(frozen=True, slots=True)
class FixedDecl:
    kind: str  # stem, head or fixed
    name: str | None
    nodes: list[NodeItem]
    loc: Location


@dataclass(frozen=True, slots=True)
class DepthDecl:
    low: Name  # the digits as written, located
    high: Name | None
    loc: Location


@dataclass(frozen=True, slots=True)
class LayerDecl:
    alternatives: list[Alternative]
    loc: Location


@dataclass(frozen=True, slots=True)
class EdgeDecl:
    """`before NODE` or `after NODE`."""

    word: str
    node: NodeItem
    loc: Location


StageItem: TypeAlias = "DepthDecl | LayerDecl | ChoiceDecl | LetDecl | EdgeDecl"


@dataclass(frozen=True, slots=True)
class StageDecl:
    name: Name
    items: list[StageItem]
    loc: Location


@dataclass(frozen=True, slots=True)
class StageRow:
    name: Name
    values: list[LocatedExpr]
    loc: Location


@dataclass(frozen=True, slots=True)
class StagesDecl:
    columns: list[Name]
    rows: list[StageRow]
    items: list[StageItem]
    loc: Location


@dataclass(frozen=True, slots=True)
class SectionDecl:
    name: Name
    items: list[FixedDecl | StageDecl | StagesDecl]
    loc: Location


@dataclass(frozen=True, slots=True)
class SkipDecl:
    source: str
    target: str
    loc: Location


@dataclass(frozen=True, slots=True)
class RequireDecl:
    expr: LocatedExpr
    loc: Location


@dataclass(frozen=True, slots=True)
class UnitDecl:
    name: str
    members: list[str]
    loc: Location


@dataclass(frozen=True, slots=True)
class StagePart:
    """One stage's part of a module: `(choices) [(layer), (layer)]`."""

    choices: Assignment | None
    layers: list[Assignment]
    loc: Location


@dataclass(frozen=True, slots=True)
class RestrictModule:
    parts: list[StagePart]
    loc: Location


@dataclass(frozen=True, slots=True)
class RestrictDecl:
    target: Name
    modules: list[RestrictModule]
    loc: Location


@dataclass(frozen=True, slots=True)
class CodeEntry:
    token: ValueNode
    assignment: Assignment
    loc: Location


@dataclass(frozen=True, slots=True)
class CodeDecl:
    name: Name
    kind: Name
    entries: list[CodeEntry]
    loc: Location


SpaceItem: TypeAlias = (
    "Description | InputDecl | ChoiceDecl | LetDecl | FixedDecl | StageDecl | StagesDecl"
    " | SectionDecl | SkipDecl | RequireDecl | UnitDecl | RestrictDecl | CodeDecl"
)


@dataclass(frozen=True, slots=True)
class ExtendsClause:
    name: Name
    path: Name | None  # the file, as written (with its quotes)
    loc: Location


@dataclass(frozen=True, slots=True)
class SpaceDecl:
    name: Name
    extends: ExtendsClause | None
    items: list[SpaceItem]
    loc: Location


@dataclass(frozen=True, slots=True)
class Module:
    """A parsed file: its spaces, and its comments as (line, text) for the formatter."""

    spaces: list[SpaceDecl]
    comments: list[tuple[int, str]] = field(default_factory=list)
