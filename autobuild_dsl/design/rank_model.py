"""What module ranking produces (design.rank): scored units as index arrays, the result of
ranking a run, and modules as text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.design.builder import ModuleTable, ScoredModule, assignment_text
from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.expr import Value, format_value
from autobuild_dsl.space.model import StageModule
from autobuild_dsl.space.values import value_key as _vkey

if TYPE_CHECKING:  # module_sets imports this module
    from autobuild_dsl.design.module_sets import _Modules

Mode = Literal["shift", "standardize"]
ScoreKind = Literal["pooled", "last"]
SCORE_KINDS: tuple[str, ...] = ("pooled", "last")


def _globals_key(values: dict[str, Value]) -> tuple:
    return tuple(sorted((k, _vkey(v)) for k, v in values.items()))


class RankError(AbcError, ValueError):
    """Modules cannot be ranked as asked (an IR run, an unknown global value, ...)."""

    code = "rank"


@dataclass
class RankProgress:
    """Sent after each unit is packed and after each member's forward pass."""

    step: Literal["encode", "score"]
    done: int
    total: int
    detail: str = ""


ProgressFn = Callable[[RankProgress], None]


class StageState(BaseModel):
    """A stage's scalar part of a module: its depth and stage-level choices (tied included)."""

    model_config = ConfigDict(frozen=True)

    depth: int
    choices: dict[str, Value] = Field(default_factory=dict)


class RankedModule(ScoredModule):
    """A scored module with what its score came from."""

    module_id: int | None = Field(
        default=None, description="index in the unit's full enumeration (same in every context)"
    )
    hop: int = Field(description="hop level of the score: min(nodes - 1, GNN layers)")
    nodes: int = Field(description="graph nodes of the module built alone")
    z: float = Field(description="ensemble mean of the standardised norm (before the shift)")
    rank: int = Field(description="1 = best of its unit for these globals")


class UnitScores(BaseModel):
    """Every module of one unit, for one assignment of the global choices, with its score.

    Modules are held as index arrays (module i: unit state `state[i]`, layer choice
    `layers[j][i, p]` at position p of stage j) and built as `RankedModule` on demand:
    a unit can have tens of thousands of modules.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    unit: str
    stages: list[str]
    globals: dict[str, Value]
    context: dict[str, Value] = Field(
        default_factory=dict,
        description="other units' choices this unit's layers read, as scored here",
    )
    configs: list[list[list[dict[str, Value]]]] = Field(
        description="per stage, per layer position: the layers that slot can hold"
    )
    stage_states: list[list[StageState]] = Field(description="per stage: its scalar states")
    unit_states: list[tuple[int, ...]] = Field(description="one stage-state index per stage")
    state: Any = Field(description="np.ndarray [M]: index into unit_states")
    module_id: Any = Field(
        default=None,
        description="np.ndarray [M]: index of each module in the unit's full enumeration "
        "(the same module has the same id in every context)",
    )
    member_scores: Any = Field(
        default=None, description="np.ndarray [members, M]: each member's comparable score"
    )
    layers: list[Any] = Field(description="per stage np.ndarray [M, max depth], -1 unused")
    size: Any = Field(description="np.ndarray [M]: layers of the module (all its stages)")
    nodes: Any = Field(description="np.ndarray [M]: graph nodes")
    hop: Any = Field(description="np.ndarray [M]: hop of the score")
    z: Any = Field(description="np.ndarray [M]: weighted mean standardised norm")
    score: Any = Field(description="np.ndarray [M]: the comparable score (higher is better)")
    excluded: int = Field(
        default=0, description="modules left out: no architecture can use them with these globals"
    )

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def order(self) -> np.ndarray:
        """Module indices, best first (ties keep enumeration order)."""
        return np.argsort(-self.score, kind="stable")

    def ranks(self) -> np.ndarray:
        """Rank of every module (1 = best)."""
        ranks = np.empty(len(self), dtype=np.int64)
        ranks[self.order()] = np.arange(1, len(self) + 1)
        return ranks

    def parts(self, i: int) -> list[StageModule]:
        return _parts(self, i)

    def module(self, i: int, rank: int | None = None) -> RankedModule:
        return RankedModule.model_construct(
            unit=self.unit,
            module_id=int(self.module_id[i]) if self.module_id is not None else None,
            parts=self.parts(i),
            score=float(self.score[i]),
            members=(
                [float(v) for v in self.member_scores[:, i]]
                if self.member_scores is not None
                else None
            ),
            size=int(self.size[i]),
            hop=int(self.hop[i]),
            nodes=int(self.nodes[i]),
            z=float(self.z[i]),
            rank=int(rank if rank is not None else self.ranks()[i]),
        )

    def top(self, n: int | None = None, *, per_size: bool = False) -> list[RankedModule]:
        """The best n modules (all when None); per_size: the best n of every size."""
        order = self.order()
        ranks = np.empty(len(self), dtype=np.int64)
        ranks[order] = np.arange(1, len(self) + 1)
        if n is None:
            picked = order
        elif per_size:
            sizes = self.size[order]
            keep = np.zeros(len(order), dtype=bool)
            for size in np.unique(sizes):
                keep[np.flatnonzero(sizes == size)[:n]] = True
            picked = order[keep]
        else:
            picked = order[:n]
        return [self.module(int(i), rank=int(ranks[i])) for i in picked]

    def texts(self) -> list[str]:
        """Every module in the `restrict` syntax: `(choices) [(layer), ...] + ...`."""
        config_text = [
            [[assignment_text(c) for c in slot] for slot in slots] for slots in self.configs
        ]
        prefix = [
            [f"{assignment_text(s.choices)} " if s.choices else "" for s in states]
            for states in self.stage_states
        ]
        depth = [[s.depth for s in states] for states in self.stage_states]
        states = self.state.tolist()
        layers = [grid.tolist() for grid in self.layers]
        out = []
        for i, u in enumerate(states):
            pieces = []
            for j, s in enumerate(self.unit_states[u]):
                chosen = ", ".join(
                    config_text[j][p][k] for p, k in enumerate(layers[j][i][: depth[j][s]])
                )
                pieces.append(f"{prefix[j][s]}[{chosen}]")
            out.append(" + ".join(pieces))
        return out

    def bottom(self, n: int) -> list[RankedModule]:
        order = self.order()
        picked = order[::-1][: max(n, 0)]
        return [self.module(int(i), rank=len(self) - k) for k, i in enumerate(picked)]


class RankResult(BaseModel):
    """Scores of every module of every unit, per scored assignment of the global choices."""

    run: str
    target: str
    mode: Mode
    score_kind: ScoreKind = "pooled"
    members: int
    num_layers: int = Field(description="GNN layers: the highest hop a score can use")
    tables: list[UnitScores] = Field(description="one per (global assignment, unit)")
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def modules(self) -> int:
        return sum(len(t) for t in self.tables)

    def assignments(self) -> list[dict[str, Value]]:
        """The scored global assignments, in order."""
        seen: dict[tuple, dict[str, Value]] = {}
        for table in self.tables:
            seen.setdefault(_globals_key(table.globals), table.globals)
        return list(seen.values())

    def for_globals(self, values: dict[str, Value]) -> list[UnitScores]:
        key = _globals_key(values)
        return [t for t in self.tables if _globals_key(t.globals) == key]

    def context_names(self) -> list[str]:
        """Every other-unit choice some unit's scores depend on (empty: no contexts)."""
        names: dict[str, None] = {}
        for table in self.tables:
            names.update(dict.fromkeys(table.context))
        return list(names)

    def module_table(
        self, values: dict[str, Value], keep: int | None = None, *, per_size: bool = False
    ) -> ModuleTable:
        """A builder table for one global assignment: each unit's best `keep` modules
        (of every size with per_size; all when None). Context-free rankings only (with
        contexts, `build.construct` picks each module's score per context)."""
        if self.context_names():
            raise RankError("scores depend on context: build with build.construct")
        return ModuleTable(
            globals=dict(values),
            units={t.unit: list(t.top(keep, per_size=per_size)) for t in self.for_globals(values)},
        )


def _parts(modules: _Modules | UnitScores, i: int) -> list[StageModule]:
    """Module i of an index-array table as one StageModule per stage."""
    parts = []
    for j, s_index in enumerate(modules.unit_states[int(modules.state[i])]):
        s = modules.stage_states[j][s_index]
        slots = modules.configs[j]
        layers = [dict(slots[p][int(k)]) for p, k in enumerate(modules.layers[j][i, : s.depth])]
        # Values come from the space itself: skip re-validation (tens of thousands).
        parts.append(
            StageModule.model_construct(depth=s.depth, choices=dict(s.choices), layers=layers)
        )
    return parts


# ----- text --------------------------------------------------------------------------------


def layer_text(layer: dict[str, Value]) -> str:
    """`mb_e6k5` / `kernel 5, expand 4` / `-` for a layer with no choice."""
    op = layer.get("op")
    rest = ", ".join(f"{k} {format_value(v)}" for k, v in layer.items() if k != "op")
    if op is not None and rest:
        return f"{op}({rest})"
    return str(op) if op is not None else (rest or "-")


def module_description(stages: Sequence[str], parts: Sequence[StageModule]) -> str:
    """A module with its layers spelled out, e.g. `s1: [kernel 3, expand 4] [kernel 7, ...]`."""
    texts = []
    for name, part in zip(stages, parts, strict=True):
        head = f"{name}" + (
            " (" + ", ".join(f"{k} {format_value(v)}" for k, v in part.choices.items()) + ")"
            if part.choices
            else ""
        )
        layers = " ".join(f"[{layer_text(layer)}]" for layer in part.layers[: part.depth])
        texts.append(f"{head}: {layers}" if layers else f"{head}: (no layer)")
    return " + ".join(texts)
