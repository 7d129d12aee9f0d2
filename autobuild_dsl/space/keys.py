"""How decisions are named: `STAGE.depth`, `STAGE.CHOICE` (a stage-level choice) or a
global choice's own `NAME`. Rules, ties, counting, ranking and the encoders all key
decisions this way; build and split the names here rather than with f-strings."""

from __future__ import annotations

from typing import NamedTuple

DEPTH = "depth"


class DecisionKey(NamedTuple):
    """A decision's name, split: `owner` is the stage (or the global choice), `member`
    `depth` or the stage choice, empty for a global choice."""

    owner: str
    member: str = ""

    @staticmethod
    def depth(stage: str) -> str:
        """The key of a stage's depth: `STAGE.depth`."""
        return f"{stage}.{DEPTH}"

    @staticmethod
    def choice(stage: str, name: str) -> str:
        """The key of a stage-level choice: `STAGE.NAME`."""
        return f"{stage}.{name}"

    @classmethod
    def parse(cls, key: str) -> DecisionKey:
        owner, _, member = key.partition(".")
        return cls(owner, member)

    @property
    def is_global(self) -> bool:
        return not self.member

    @property
    def is_depth(self) -> bool:
        return self.member == DEPTH

    def __str__(self) -> str:
        return f"{self.owner}.{self.member}" if self.member else self.owner
