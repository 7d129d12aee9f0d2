"""The canonical Architecture: one point of a space, as the decisions that pick it.

Per-layer choices live in `layers` (one dict per used layer: the alternative's label under
`op` when a stage has several alternatives, then each per-layer choice by name). Slots a
shallower stage does not use do not exist, and merged (tied) decisions are stored once,
under the key that holds them, so two equal networks are equal values.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.space.expr import Value


class StageArch(BaseModel):
    model_config = ConfigDict(frozen=True)

    depth: int
    choices: dict[str, Value] = Field(default_factory=dict)
    layers: list[dict[str, Value]]


class Architecture(BaseModel):
    model_config = ConfigDict(frozen=True)

    space: str
    globals: dict[str, Value] = Field(default_factory=dict)
    stages: dict[str, StageArch]

    def key(self) -> str:
        """A canonical string: equal architectures, and only they, have equal keys."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def __hash__(self) -> int:
        return hash(self.key())

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=False)
