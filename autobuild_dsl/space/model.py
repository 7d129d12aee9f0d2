"""The typed specification of a search space: what `.abs` text lowers to.

The Space is the hub of the tool: everything downstream (counting, sampling, graphs,
compilation, building) asks the Space and never re-reads the text. It round-trips
through JSON exactly (`Space.model_validate_json(space.model_dump_json()) == space`).

A space's identity is its meaning: the source positions (`where`) that parts carry for
diagnostics take no part in equality, hashing or `Space.digest()`, so a comment or a
reformatting of the `.abs` file leaves the space the same space.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    model_serializer,
)

from autobuild_dsl.space.architecture import StageDecisions
from autobuild_dsl.space.expr import Expr, Value

# Serialisation context that leaves source positions out (for equality and digests).
MEANING_ONLY = {"meaning_only": True}

# Names an attribute value may use for what enters its layer (in a fixed part, its node):
# the channel count and the spatial size. They are not decisions: the builder knows them.
INPUT_NAMES = ("in_channels", "in_size")


class _Located(BaseModel):
    """A part that records where it was written (`where`), which is not part of its value."""

    model_config = ConfigDict(frozen=True)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        data = handler(self)
        if isinstance(info.context, dict) and info.context.get("meaning_only"):
            data.pop("where", None)
        return data

    def _meaning(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "where"}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(other) is type(self) and self._meaning() == other._meaning()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.model_dump_json(context=MEANING_ONLY))


class NodeTemplate(_Located):
    """One operation as written in the space; attribute values may depend on choices."""

    model_config = ConfigDict(frozen=True)

    op: str
    attrs: dict[str, Expr] = Field(default_factory=dict)
    condition: Expr | None = Field(default=None, description="the node exists only when true")
    where: str | None = Field(default=None, description="file:line:col of the node", exclude=False)


class Residual(BaseModel):
    """A shortcut around a whole layer alternative: `residual(shortcut = auto, act = relu)`.

    shortcut `auto`: identity when the layer keeps the shape, else a 1x1 conv + batch norm
    (stride as the layer's); `conv`: always the 1x1 conv + batch norm; `identity`: always
    the identity (an error where the shape changes). `act` runs after the add (ResNet's
    post-activation); `none` leaves the sum as it is.
    """

    model_config = ConfigDict(frozen=True)

    shortcut: Literal["auto", "conv", "identity"] = "auto"
    act: str = "none"


class LayerOption(BaseModel):
    """One alternative for a layer: a sequence of nodes and its own per-layer choices."""

    model_config = ConfigDict(frozen=True)

    label: str
    nodes: list[NodeTemplate]
    residual: Residual | None = None
    choices: dict[str, list[Value]] = Field(
        default_factory=dict, description="per-layer decisions of this alternative, by name"
    )

    def size(self) -> int:
        total = 1
        for domain in self.choices.values():
            total *= len(domain)
        return total


class Stage(_Located):
    """A searchable stage: a depth range and the layer alternatives each layer picks from."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["stage"] = "stage"
    name: str
    section: str | None = None
    index: int = Field(description="0-based position among all stages of the space")
    depths: list[int]
    options: list[LayerOption]
    choices: dict[str, list[Value]] = Field(
        default_factory=dict, description="stage-level decisions (one value for the stage)"
    )
    lets: dict[str, Expr] = Field(default_factory=dict, description="stage constants")
    before: list[NodeTemplate] = Field(default_factory=list)
    after: list[NodeTemplate] = Field(default_factory=list)
    where: str | None = None

    def layer_configurations(self) -> int:
        """How many distinct layers one slot of this stage can hold."""
        return sum(option.size() for option in self.options)


class FixedBlock(_Located):
    """A fixed part of the network: the stem, the head, or a named block (a U-Net middle)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["stem", "fixed", "head"]
    name: str
    section: str | None = None
    nodes: list[NodeTemplate]
    where: str | None = None


Part = Annotated[Stage | FixedBlock, Field(discriminator="kind")]


class SkipSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    target: str


class Unit(BaseModel):
    """Stages whose modules are enumerated and scored together (ProxylessNAS's last two)."""

    model_config = ConfigDict(frozen=True)

    name: str
    stages: list[str]


class Rule(_Located):
    """A `require` rule kept as a filter (equalities of two choices are merged instead)."""

    model_config = ConfigDict(frozen=True)

    expr: Expr
    text: str
    where: str | None = None


class StageModule(StageDecisions):
    """One stage's part of a module (its tied choices included, as ranked modules hold
    them); not an architecture's stage: the two never compare equal."""


class ArchitectureCode(BaseModel):
    """How a data set writes an architecture compactly: a sequence of tokens (the
    characters of a string, or the items of a list), each standing for a layer (`layers`:
    in layer order over all stages, every stage at its fixed or largest depth) or for a
    present stage (`stages`: in stage order; the stages after the last token are absent)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["layers", "stages"]
    tokens: dict[str, dict[str, Value]] = Field(
        description="token (as text) -> a layer's `op` and per-layer choices, or a "
        "stage's stage-level choices"
    )


class Space(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    extends: str | None = None
    input: dict[str, Expr] = Field(default_factory=dict)
    lets: dict[str, Expr] = Field(default_factory=dict)
    choices: dict[str, list[Value]] = Field(default_factory=dict, description="global decisions")
    parts: list[Part]
    skips: list[SkipSpec] = Field(default_factory=list)
    units: list[Unit] = Field(default_factory=list)
    ties: dict[str, str] = Field(
        default_factory=dict,
        description="merged decisions: alias key -> the key that holds the value",
    )
    rules: list[Rule] = Field(default_factory=list)
    restrictions: dict[str, list[list[StageModule]]] = Field(
        default_factory=dict,
        description="unit or stage name -> the modules it may use (each a list, one per stage)",
    )
    codes: dict[str, ArchitectureCode] = Field(
        default_factory=dict, description="compact architecture codes, by name"
    )
    # The decision index (space/index.py), built on first use by `index_of`: derived
    # from the fields, so it takes no part in equality, copies for pickling or JSON.
    _decision_index: Any = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Space):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # lists inside: not hashable, as before

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["__pydantic_private__"] = {"_decision_index": None}  # rebuilt where needed
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # A space pickled before it held an index has no private state: give it an empty one.
        if not state.get("__pydantic_private__"):
            state = {**state, "__pydantic_private__": {"_decision_index": None}}
        super().__setstate__(state)

    @property
    def stages(self) -> list[Stage]:
        return [part for part in self.parts if isinstance(part, Stage)]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def module_units(self) -> list[Unit]:
        """Units in stage order: declared units plus one unit per remaining stage."""
        declared = {s: unit for unit in self.units for s in unit.stages}
        result: list[Unit] = []
        for stage in self.stages:
            unit = declared.get(stage.name)
            if unit is None:
                result.append(Unit(name=stage.name, stages=[stage.name]))
            elif unit.stages[0] == stage.name:
                result.append(unit)
        return result

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def digest(self) -> str:
        """SHA-256 (hex) of the space's meaning: its canonical JSON without source positions.

        The one space hash of the project (emitted files, caches, search resume): editing
        comments or the layout of the `.abs` file keeps it, any real change alters it.
        """
        data = self.model_dump(mode="json", context=MEANING_ONLY)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> Space:
        return cls.model_validate_json(text)
