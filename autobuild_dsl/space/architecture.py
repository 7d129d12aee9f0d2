"""The canonical Architecture: one point of a space, as the decisions that pick it.

Per-layer choices live in `layers` (one dict per used layer: the alternative's label under
`op` when a stage has several alternatives, then each per-layer choice by name). Slots a
shallower stage does not use do not exist, and merged (tied) decisions are stored once,
under the key that holds them, so two equal networks are equal values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.expr import Value


class StageDecisions(BaseModel):
    """One stage's decisions: its depth, stage-level choices and per-layer choices."""

    model_config = ConfigDict(frozen=True)

    depth: int
    choices: dict[str, Value] = Field(default_factory=dict)
    layers: list[dict[str, Value]]


class StageArch(StageDecisions):
    """A stage of an architecture (tied choices stored once, under their keeper)."""


class Architecture(BaseModel):
    model_config = ConfigDict(frozen=True)

    space: str
    globals: dict[str, Value] = Field(default_factory=dict)
    stages: dict[str, StageArch]

    def key(self) -> str:
        """A canonical string: equal architectures, and only they, have equal keys."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        # By the key, as hashing is: 3 and 3.0 are different values (space/values.py),
        # which Python's == on the dicts would conflate.
        if not isinstance(other, Architecture):
            return NotImplemented
        # Python's == first (fast, and never False for equal values), the key to confirm.
        return self.__dict__ == other.__dict__ and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=False)


class ArchitectureFileError(AbcError, ValueError):
    """A file of architectures cannot be read; the message says which file and line."""

    code = "architecture-file"


def read_architecture_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """The raw architectures of a file: one JSON object, or JSON lines each holding one
    (bare, or under "arch" as `abc sample` and data sets write them).

    Returns (where, record) pairs, `where` being "FILE" or "FILE:LINE" for messages;
    records are not checked against a space (`decisions.canonicalize` does that).
    """
    file = Path(path)
    if not file.is_file():
        raise ArchitectureFileError(f"{path}: no such file")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ArchitectureFileError(f"{path}: cannot read: {error}") from None
    items: list[tuple[str, object]]
    try:
        items = [(str(path), json.loads(text))]
    except ValueError:  # JSONDecodeError, or an integer of more than 4300 digits
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"{path}:{number}", json.loads(line)))
            except ValueError as error:
                raise ArchitectureFileError(
                    f"{path}:{number}: not valid JSON: {getattr(error, 'msg', error)}"
                ) from None
    records: list[tuple[str, dict[str, Any]]] = []
    for where, item in items:
        if isinstance(item, dict) and "arch" in item:
            item = item["arch"]
        if not isinstance(item, dict):
            raise ArchitectureFileError(f"{where}: expected an architecture object")
        records.append((where, item))
    if not records:
        raise ArchitectureFileError(f"{path}: holds no architecture")
    return records
