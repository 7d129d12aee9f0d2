"""The mutable draft a space is lowered into before it is finalised into a `Space`.

A derived space (`extends`) patches what it inherits on the draft. Every value keeps the
Location it was written at (`Placed`), so the finaliser's diagnostics point there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from autobuild_dsl.lang.diagnostics import Location
from autobuild_dsl.lang.syntax import RestrictDecl
from autobuild_dsl.space.expr import Expr, Value
from autobuild_dsl.space.model import ArchitectureCode, Residual

T = TypeVar("T")


@dataclass
class Placed(Generic[T]):
    """A value and where it is written."""

    value: T
    loc: Location


def same_value(a: Value, b: Value) -> bool:
    """One value equals another of the same type only (3 is not 3.0, 1 is not true)."""
    return type(a) is type(b) and a == b


def values_of(placed: dict[str, Placed[T]]) -> dict[str, T]:
    return {name: item.value for name, item in placed.items()}


@dataclass
class DraftNode:
    op: str
    args: dict[str, Placed[Expr]]
    domains: dict[str, list[Value]]
    condition: Expr | None
    loc: Location


@dataclass
class DraftOption:
    label: str | None
    nodes: list[DraftNode]
    loc: Location
    residual: Residual | None = None


@dataclass
class Scope:
    """What a space or a stage declares: its `choice`s and `let`s, by name."""

    choices: dict[str, Placed[list[Value]]] = field(default_factory=dict)
    lets: dict[str, Placed[Expr]] = field(default_factory=dict)


@dataclass(kw_only=True)
class DraftStage(Scope):
    name: str
    section: str | None
    loc: Location
    depth: Placed[list[int]] | None = None
    options: list[DraftOption] = field(default_factory=list)
    before: list[DraftNode] = field(default_factory=list)
    after: list[DraftNode] = field(default_factory=list)
    depth_from_row: bool = False  # a family's `depth` column; the body's `depth` yields
    depth_error: bool = False  # its depth was wrong (said already; no "needs a depth")

    @property
    def depths(self) -> list[int] | None:
        return self.depth.value if self.depth is not None else None


@dataclass
class DraftFixed:
    kind: str
    name: str
    section: str | None
    nodes: list[DraftNode]
    loc: Location


@dataclass(kw_only=True)
class Draft(Scope):
    name: str
    loc: Location
    description: str = ""
    extends: str | None = None
    input: dict[str, Placed[Expr]] = field(default_factory=dict)
    parts: list[DraftStage | DraftFixed] = field(default_factory=list)
    skips: list[tuple[str, str, Location]] = field(default_factory=list)
    units: list[tuple[str, list[str], Location]] = field(default_factory=list)
    requires: list[tuple[Expr, Location]] = field(default_factory=list)
    # Restrictions are checked against the finished Space, from their located syntax.
    restrictions: list[RestrictDecl] = field(default_factory=list)
    codes: dict[str, ArchitectureCode] = field(default_factory=dict)
    # What the space being lowered declares in its own body (not what it inherits):
    # (namespace, name) -> (what it is, where). Declaring a name twice is an error.
    local: dict[tuple[str, str], tuple[str, Location]] = field(default_factory=dict)

    def stage(self, name: str) -> DraftStage | None:
        return next((p for p in self.parts if isinstance(p, DraftStage) and p.name == name), None)
