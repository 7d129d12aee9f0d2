"""A concrete network: one architecture of a space with every choice filled in.

This is the hand-over point between the Space (which knows choices and rules) and the
consumers that need a concrete network: the PyTorch compiler and the graph encoders.
Nothing here knows about decisions any more; every attribute is a plain value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AttrValue = int | float | bool | str

PartKind = Literal["stem", "fixed", "stage", "head"]
NodeRole = Literal["fixed", "layer", "before", "after"]


class NodePosition(BaseModel):
    """Where a node sits in the network; the positional features come from here."""

    model_config = ConfigDict(frozen=True)

    part: PartKind
    block: str = Field(description="name of the stem/fixed/head block or of the stage")
    section: str | None = None
    stage_index: int | None = Field(default=None, description="0-based among all stages")
    layer_index: int | None = Field(
        default=None, description="0-based layer within its stage; None for extras"
    )
    role: NodeRole = "fixed"


class ResolvedNode(BaseModel):
    """One operation instance with fully resolved attributes.

    `attrs` holds the operation's attributes as written in the space (after choices and
    expressions are evaluated). Input channels are not stored: the compiler derives them
    by flowing shapes through the network. Inside a stage, `stride` is already applied only
    to the stage's first layer (later layers carry stride 1), as timm's builder does.
    """

    model_config = ConfigDict(frozen=True)

    op: str
    attrs: dict[str, AttrValue]
    position: NodePosition
    # file:line:col of the `.abs` node it came from, for diagnostics; not part of its value
    # (not serialised, not compared: a reloaded network equals the one resolved here).
    where: str | None = Field(default=None, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResolvedNode):
            return NotImplemented
        return (self.op, self.attrs, self.position) == (other.op, other.attrs, other.position)

    def __hash__(self) -> int:
        return hash((self.op, repr(self.attrs), repr(self.position)))


class InputSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    channels: int
    size: int = Field(description="spatial height = width of the input")
    context_dim: int | None = Field(default=None, description="cross-attention context width")
    context_tokens: int | None = None
    timestep: bool = Field(default=False, description="the network takes a diffusion timestep")


class SkipLink(BaseModel):
    """A skip connection from an encoder stage to its mirrored decoder stage."""

    model_config = ConfigDict(frozen=True)

    source: str
    target: str


class ResidualSpan(BaseModel):
    """A shortcut around nodes[start:end] (one layer written with `residual(...)`): the
    span's input is added to its output (through a 1x1 conv + BN where the shape changes
    or `shortcut` is `conv`), then `act` is applied."""

    model_config = ConfigDict(frozen=True)

    start: int
    end: int
    shortcut: Literal["auto", "conv", "identity"] = "auto"
    act: str = "none"


class ResolvedNetwork(BaseModel):
    model_config = ConfigDict(frozen=True)

    space: str
    input: InputSpec
    nodes: list[ResolvedNode]
    skips: list[SkipLink] = Field(default_factory=list)
    residuals: list[ResidualSpan] = Field(default_factory=list)
