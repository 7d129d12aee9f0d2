"""Scoring every module of every unit with a trained run (paper Sec. 4.2, supp. 7.3, 7.9, 7.10).

A module is one unit's part of an architecture (a stage's depth, stage choices and layers;
ProxylessNAS's stages 5 and 6 together). It is built alone, with its stages' real
positions, run through every member of the run's ensemble, and read at hop
h = min(nodes - 1, L), the hop whose receptive field is the whole module. Two readings:

  pooled (default)  the norm of the mean of the module's node embeddings at hop h: the
                    module-graph embedding, which is what the hop-level ranking loss trains
                    (a graph's pooled norm must rank like the target);
  last              the norm of the module's last node embedding at hop h, as the paper and
                    its authors' code do. It favours modules that end in a big layer: on
                    NAS-Bench-Macro its Spearman against the true module means is 0.66-0.84
                    in the 3-layer stages, against 0.96-0.98 for the pooled reading
                    (docs/ranking.md, benchmarks/bench_build_quality.py).

Context: when a unit's layers read another unit's choice (a width chain
`out = s1.width * 2`), the unit's modules are scored once per value of what they read
(their context), each in the graph it would really have there; builds then use the score
of each module in the context the rest of the architecture gives it.

Norms at different hops have different distributions, so scores of modules of different
sizes are made comparable (Eq. 5):

    z       = (norm - mu_h) / sd_h            node-embedding norms at hop h, training graphs
    shifted = z * sd_(u,d) + mu_(u,d)         labels of training architectures whose unit u
                                              has d layers (the module's size)

or, with little data, left as z (`standardize=True`, supplementary 7.9). Members are
combined by a weighted mean whose weights are their held-out SRCC at the module's hop.

Speed: a module's node rows depend only on its unit's scalar state (depths and stage
choices), the layer position and that layer's choices, so a few probe modules per state
give every row block, and all modules of a unit are packed into one `PackedGraphs` with
numpy indexing; each member then runs one batched forward over all of them.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.design.builder import ModuleTable, ScoredModule, assignment_text
from autobuild_dsl.errors import AbcError
from autobuild_dsl.scorer.model import PackedGraphs, ScorerModel, check_codes, pack_graphs
from autobuild_dsl.scorer.run import TrainedRun
from autobuild_dsl.scorer.train import torch_threads
from autobuild_dsl.space.decisions import index_of, stage_module_choices, unit_modules
from autobuild_dsl.space.expr import Value, format_value
from autobuild_dsl.space.keys import DEPTH, DecisionKey
from autobuild_dsl.space.model import Space, Stage, StageModule, Unit
from autobuild_dsl.space.values import find_value
from autobuild_dsl.space.values import value_key as _vkey

Mode = Literal["shift", "standardize"]
ScoreKind = Literal["pooled", "last"]
SCORE_KINDS: tuple[str, ...] = ("pooled", "last")

# A (unit, size) label group needs this many training labels for Eq. 5; smaller groups
# fall back to the overall label statistics (and the result says so).
MIN_GROUP = 2
# Graphs per forward pass (bounds memory: ProxylessNAS's s5+s6 unit alone has 66,339).
GRAPH_CHUNK = 65_536
# Above this many contexts (values of other units' choices a unit's layers read), one unit
# is not scored context by context: ranking refuses and says which choices are read.
MAX_CONTEXTS = 4_096


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


# ----- the maths (vectorised over members and modules) ------------------------------------


def standardize(norms: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """(norm - mu_h) / sd_h; a zero sd counts as 1 (a constant hop carries no spread)."""
    sd = np.where(np.asarray(sd) > 0, sd, 1.0)
    return (np.asarray(norms, dtype=np.float64) - mean) / sd


def shift(z: np.ndarray, label_mean: np.ndarray, label_sd: np.ndarray) -> np.ndarray:
    """Eq. 5's second half: a standardised score in the label units of its size group."""
    return np.asarray(z, dtype=np.float64) * label_sd + label_mean


def hop_weights(srcc: np.ndarray) -> np.ndarray:
    """[members, hops] held-out SRCCs -> weights that sum to 1 over members at each hop.

    Negative or missing (NaN) SRCCs weigh 0; a hop where no member beats chance falls back
    to equal weights.
    """
    w = np.nan_to_num(np.asarray(srcc, dtype=np.float64), nan=0.0).clip(min=0.0)
    totals = w.sum(axis=0, keepdims=True)
    equal = np.full_like(w, 1.0 / w.shape[0])
    return np.where(totals > 0, w / np.where(totals > 0, totals, 1.0), equal)


def ensemble(values: np.ndarray, weights: np.ndarray, hops: np.ndarray) -> np.ndarray:
    """values [members, M], weights [members, hops], hops [M] -> weighted mean [M]."""
    return np.einsum("mi,mi->i", values, weights[:, hops])


# ----- which global assignments ------------------------------------------------------------


def _globals_key(values: dict[str, Value]) -> tuple:
    return tuple(sorted((k, _vkey(v)) for k, v in values.items()))


def _canonical_globals(space: Space, values: dict[str, Any]) -> dict[str, Value]:
    unknown = [k for k in values if k not in space.choices]
    if unknown:
        known = ", ".join(space.choices) or "none"
        raise RankError(f"unknown global choice '{unknown[0]}' (global choices: {known})")
    result: dict[str, Value] = {}
    for name, domain in space.choices.items():
        if name not in values:
            if len(domain) == 1:
                result[name] = domain[0]
                continue
            shown = ", ".join(format_value(v) for v in domain)
            raise RankError(f"no value for the global choice '{name}' (one of {shown})")
        match = find_value(domain, values[name])
        if match is None:
            shown = ", ".join(format_value(v) for v in domain)
            raise RankError(f"global {name} = {values[name]!r} is not one of {shown}")
        result[name] = match
    return result


def global_assignments(
    run: TrainedRun, given: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Value]]:
    """The assignments to score: the given ones, else those of the run's labeled data
    (most frequent first), else (older runs) every assignment of the space."""
    space = run.space
    if given:
        raw = list(given)
    elif run.config.globals_seen:
        raw = [g.values for g in run.config.globals_seen]
    else:
        names = list(space.choices)
        raw = [
            dict(zip(names, values, strict=True))
            for values in itertools.product(*space.choices.values())
        ]
    out: dict[tuple, dict[str, Value]] = {}
    for values in raw:
        canonical = _canonical_globals(space, values)
        out.setdefault(_globals_key(canonical), canonical)
    return list(out.values())


# ----- enumerating a unit's modules as index arrays ---------------------------------------


@dataclass
class _Modules:
    unit: Unit
    stages: list[Stage]
    configs: list[list[list[dict[str, Value]]]]  # per stage, per position
    stage_states: list[list[StageState]]
    unit_states: list[tuple[int, ...]]
    state: np.ndarray  # [M]
    layers: list[np.ndarray]  # per stage [M, max depth]
    ids: np.ndarray | None = None  # [M] index in the full enumeration (None: 0..M-1)

    def module_ids(self) -> np.ndarray:
        return self.ids if self.ids is not None else np.arange(self.count, dtype=np.int64)

    def subset(self, keep: np.ndarray) -> _Modules:
        return _Modules(
            unit=self.unit,
            stages=self.stages,
            configs=self.configs,
            stage_states=self.stage_states,
            unit_states=self.unit_states,
            state=self.state[keep],
            layers=[layer[keep] for layer in self.layers],
            ids=self.module_ids()[keep],
        )

    @property
    def count(self) -> int:
        return int(self.state.shape[0])

    def size(self) -> np.ndarray:
        depth = np.array(
            [
                sum(self.stage_states[j][s].depth for j, s in enumerate(state))
                for state in self.unit_states
            ],
            dtype=np.int64,
        )
        return depth[self.state] if self.count else np.zeros(0, dtype=np.int64)

    def parts(self, i: int) -> list[StageModule]:
        return _parts(self, i)


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


def _product_indices(widths: Sequence[int]) -> np.ndarray:
    """Every tuple of indices below `widths[p]` at position p, in itertools.product order."""
    if not widths:
        return np.zeros((1, 0), dtype=np.int64)
    return np.indices(tuple(widths)).reshape(len(widths), -1).T.astype(np.int64)


def _position_configs(index: Any, stage: Stage) -> list[list[dict[str, Value]]]:
    """The layers each slot of the stage can hold (a stage's first slot may differ)."""
    deepest = max(max(stage.depths), 1)
    by_position = getattr(index, "position_configs", None)
    if by_position is None:  # every slot holds the same layers
        return [list(index.layer_configs[stage.name])] * deepest
    return [list(by_position(stage.name, p)) for p in range(deepest)]


def _state_key(state: StageState) -> tuple:
    return (state.depth, tuple(sorted((k, _vkey(v)) for k, v in state.choices.items())))


def _layer_key(layer: dict[str, Value]) -> tuple:
    return tuple(sorted((k, _vkey(v)) for k, v in layer.items()))


def enumerate_modules(space: Space, unit: Unit) -> _Modules:
    """Every module of the unit (in `unit_modules` order) as index arrays."""
    index = index_of(space)
    stages = [index.stages[s] for s in unit.stages]
    configs = [_position_configs(index, stage) for stage in stages]
    stage_states: list[list[StageState]] = []
    for stage in stages:
        choices = stage_module_choices(space, stage)
        stage_states.append(
            [
                StageState(depth=depth, choices=dict(zip(choices, values, strict=True)))
                for depth in stage.depths
                for values in itertools.product(*choices.values())
            ]
        )
    max_depth = [max(stage.depths) for stage in stages]
    restricted = space.restrictions.get(unit.name)
    if restricted is None:
        per_stage: list[tuple[np.ndarray, np.ndarray]] = []
        for j in range(len(stages)):
            widths = [len(slot) for slot in configs[j]]
            states, layers = [], []
            for s_index, s in enumerate(stage_states[j]):
                combos = _product_indices(widths[: s.depth])
                padded = np.full((combos.shape[0], max_depth[j]), -1, dtype=np.int64)
                padded[:, : s.depth] = combos
                states.append(np.full(combos.shape[0], s_index, dtype=np.int64))
                layers.append(padded)
            per_stage.append((np.concatenate(states), np.concatenate(layers)))
        sizes = [p[0].shape[0] for p in per_stage]
        chosen = []
        for j, (states_j, layers_j) in enumerate(per_stage):
            # The first stage varies slowest, as in itertools.product.
            inner = math.prod(sizes[j + 1 :])
            outer = math.prod(sizes[:j])
            pick = np.tile(np.repeat(np.arange(sizes[j]), inner), outer)
            chosen.append((states_j[pick], layers_j[pick]))
        stage_index = np.stack([c[0] for c in chosen], axis=1)
        layer_arrays = [c[1] for c in chosen]
    else:
        lookup = [{_state_key(s): i for i, s in enumerate(states)} for states in stage_states]
        config_lookup = [
            [{_layer_key(c): i for i, c in enumerate(slot)} for slot in slots] for slots in configs
        ]
        modules = list(unit_modules(space, unit))
        stage_index = np.zeros((len(modules), len(stages)), dtype=np.int64)
        layer_arrays = [np.full((len(modules), d), -1, dtype=np.int64) for d in max_depth]
        for m, parts in enumerate(modules):
            for j, part in enumerate(parts):
                key = _state_key(StageState(depth=part.depth, choices=dict(part.choices)))
                stage_index[m, j] = lookup[j][key]
                for p, layer in enumerate(part.layers[: part.depth]):
                    layer_arrays[j][m, p] = config_lookup[j][p][_layer_key(layer)]
    if stage_index.shape[0]:
        unique, inverse = np.unique(stage_index, axis=0, return_inverse=True)
    else:
        unique, inverse = np.zeros((0, len(stages)), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return _Modules(
        unit=unit,
        stages=stages,
        configs=configs,
        stage_states=stage_states,
        unit_states=[tuple(int(v) for v in row) for row in unique],
        state=np.asarray(inverse, dtype=np.int64).reshape(-1),
        layers=layer_arrays,
    )


# ----- which modules an architecture can use with these globals ---------------------------


def _feasible(space: Space, modules: _Modules, values: dict[str, Value]) -> np.ndarray:
    """[unit states] True where some architecture with these globals can use the state.

    A state's own decisions must appear in a rule-satisfying joint assignment with these
    globals, and each tied choice's value must be one its keeper can take with them.
    """
    index = index_of(space)
    want = {k: _vkey(v) for k, v in values.items()}
    feasible_states: dict[int, set[int]] = {}
    keeper_values: dict[str, set[tuple[str, object]]] = {}
    for component in index.components:
        for joint in component.joint:
            env: dict[str, Value] = {}
            for variable_index, state_index in zip(component.variables, joint, strict=True):
                env.update(index.variables[variable_index].states[state_index])
            if any(k in env and _vkey(env[k]) != v for k, v in want.items()):
                continue
            for variable_index, state_index in zip(component.variables, joint, strict=True):
                feasible_states.setdefault(variable_index, set()).add(state_index)
            for key, value in env.items():
                keeper_values.setdefault(key, set()).add(_vkey(value))
    unit_var = index.variable_of[DecisionKey.depth(modules.unit.stages[0])]
    variable = index.variables[unit_var]
    own_index = {
        tuple(sorted((k, _vkey(v)) for k, v in state)): i for i, state in enumerate(variable.states)
    }
    allowed = feasible_states.get(unit_var, set())
    result = np.zeros(len(modules.unit_states), dtype=bool)
    for u, state in enumerate(modules.unit_states):
        own: list[tuple[str, tuple[str, object]]] = []
        ok = True
        for j, s_index in enumerate(state):
            stage = modules.stages[j]
            s = modules.stage_states[j][s_index]
            own.append((DecisionKey.depth(stage.name), _vkey(s.depth)))
            for name, value in s.choices.items():
                key = DecisionKey.choice(stage.name, name)
                keeper = space.ties.get(key)
                if keeper is None:
                    own.append((key, _vkey(value)))
                elif _vkey(value) not in keeper_values.get(keeper, set()):
                    ok = False
        found = own_index.get(tuple(sorted(own)))
        result[u] = ok and found is not None and found in allowed
    return result


# ----- packing a unit's modules into one batch ---------------------------------------------


def _fast_path(space: Space, unit: Unit) -> bool:
    """Row blocks can be cut from probe graphs when the unit's stages have distinct
    positions and no skip link joins two of its stages (then edges are a plain chain)."""
    stages = [space.stage(s) for s in unit.stages]
    if len({s.index for s in stages}) != len(stages):
        return False
    inside = set(unit.stages)
    return not any(s.source in inside and s.target in inside for s in space.skips)


def _pack_slow(
    encoder: Any,
    modules: _Modules,
    values: dict[str, Value],
    context: dict[str, Value] | None = None,
) -> PackedGraphs:
    graphs = [
        encoder.encode_module(modules.unit.name, modules.parts(i), values, context=context)
        for i in range(modules.count)
    ]
    return pack_graphs(graphs)


def _module_rows(
    encoder: Any,
    modules: _Modules,
    values: dict[str, Value],
    context: dict[str, Value] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every module's node rows without building its graph: (row table, row index of each
    node, module by module, nodes per module). Row blocks per (unit state, position, layer
    choice) are cut out of probe graphs. None if a probe does not split as expected."""
    stages = modules.stages
    width = len(encoder.categories)
    blocks: list[np.ndarray] = [np.zeros((0, width), dtype=np.int64)]  # block 0: empty

    def add(rows: np.ndarray) -> int:
        blocks.append(np.asarray(rows, dtype=np.int64).reshape(-1, width))
        return len(blocks) - 1

    n_states = len(modules.unit_states)
    before = np.zeros((n_states, len(stages)), dtype=np.int64)
    after = np.zeros((n_states, len(stages)), dtype=np.int64)
    layer_block = [
        np.zeros(
            (n_states, len(modules.configs[j]), max(len(slot) for slot in modules.configs[j])),
            dtype=np.int64,
        )
        for j in range(len(stages))
    ]
    widest = max(len(slot) for slots in modules.configs for slot in slots)
    for u, state in enumerate(modules.unit_states):
        # Per stage: its extras before the first layer node and after the last one. They do
        # not depend on the layers, so any probe with a layer node tells; when no layer
        # choice gives a node, all extras go first (the order is then the same either way).
        split: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(stages)
        extras: list[np.ndarray | None] = [None] * len(stages)
        for k in range(widest):
            parts = []
            for j, s_index in enumerate(state):
                s = modules.stage_states[j][s_index]
                slots = modules.configs[j]
                layers = [dict(slots[p][min(k, len(slots[p]) - 1)]) for p in range(s.depth)]
                parts.append(
                    StageModule.model_construct(
                        depth=s.depth, choices=dict(s.choices), layers=layers
                    )
                )
            graph = encoder.encode_module(modules.unit.name, parts, values, context=context)
            x = graph.x.numpy()
            stage_of = graph.stage_index.numpy()
            layer_of = graph.layer_index.numpy()
            pos = 0
            for j, stage in enumerate(stages):
                end = pos
                while end < len(stage_of) and stage_of[end] == stage.index:
                    end += 1
                seg_x, seg_layer = x[pos:end], layer_of[pos:end]
                at = np.flatnonzero(seg_layer >= 0)
                if split[j] is None and len(at):
                    split[j] = (seg_x[: at[0]], seg_x[at[-1] + 1 :])
                if extras[j] is None:
                    extras[j] = seg_x[seg_layer < 0]
                depth = modules.stage_states[j][state[j]].depth
                for p in range(depth):
                    if k < len(modules.configs[j][p]):
                        layer_block[j][u, p, k] = add(seg_x[seg_layer == p])
                pos = end
            if pos != len(stage_of):
                return None
        for j in range(len(stages)):
            first, rest = split[j] or (extras[j], np.zeros((0, width), dtype=np.int64))
            before[u, j] = add(first)  # type: ignore[arg-type]
            after[u, j] = add(rest)
    table = np.concatenate(blocks)
    lengths = np.array([b.shape[0] for b in blocks], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    columns = []
    m_state = modules.state
    for j in range(len(stages)):
        columns.append(before[m_state, j])
        grid = modules.layers[j]
        for p in range(grid.shape[1]):
            choice = grid[:, p]
            ids = layer_block[j][m_state, p, np.clip(choice, 0, None)]
            columns.append(np.where(choice >= 0, ids, 0))
        columns.append(after[m_state, j])
    block_ids = np.stack(columns, axis=1)
    sequence = block_ids.reshape(-1)  # row-major: module by module, in node order
    owner = np.repeat(np.arange(modules.count), block_ids.shape[1])
    seq_len = lengths[sequence]
    counts = np.bincount(owner, weights=seq_len, minlength=modules.count).astype(np.int64)
    total = int(seq_len.sum())
    offsets = np.cumsum(seq_len) - seq_len
    rows = np.repeat(starts[sequence] - offsets, seq_len) + np.arange(total)
    return table, rows, counts


def _chain_packed(x: np.ndarray, counts: np.ndarray) -> PackedGraphs:
    """Graphs that are plain chains (node i -> i + 1), as `pack_graphs` would pack them."""
    total = int(counts.sum())
    node_ptr = torch.zeros(len(counts) + 1, dtype=torch.long)
    node_ptr[1:] = torch.from_numpy(np.cumsum(counts))
    follow = np.ones(total, dtype=bool)
    follow[(np.cumsum(counts) - counts)[counts > 0]] = False
    return _packed(x, np.where(follow, -1, 0), follow, node_ptr)


def _packed(
    x: np.ndarray, rel: np.ndarray, has_input: np.ndarray, node_ptr: torch.Tensor
) -> PackedGraphs:
    """Nodes with at most one in-neighbour (at offset `rel` where `has_input`)."""
    total = x.shape[0]
    if has_input.any():
        rel_nbr = torch.zeros(2, total, dtype=torch.long)
        mask = torch.zeros(2, total, dtype=torch.bool)
        mask[0] = True
        rel_nbr[1] = torch.from_numpy(np.where(has_input, rel, 0).astype(np.int64))
        mask[1] = torch.from_numpy(has_input)
    else:
        rel_nbr = torch.zeros(1, total, dtype=torch.long)
        mask = torch.ones(1, total, dtype=torch.bool)
    return PackedGraphs(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)),
        rel_nbr=rel_nbr,
        nbr_mask=mask,
        node_ptr=node_ptr,
    )


def _prefix_forest(
    table: np.ndarray, rows: np.ndarray, counts: np.ndarray
) -> tuple[PackedGraphs, np.ndarray, np.ndarray]:
    """Chain graphs merged along shared prefixes: (one forest graph, last node per module).

    In a chain, a node's embedding at every hop depends only on the nodes before it, so
    modules that start with the same node rows share those nodes' embeddings. The forest
    holds each distinct prefix once (OFA: 36,855 modules, 143k chain nodes, 37k forest
    nodes); a node's one in-neighbour is its prefix's last node, as in the chain.
    """
    unique, canonical = np.unique(table, axis=0, return_inverse=True)
    content = np.asarray(canonical, dtype=np.int64).reshape(-1)[rows]
    width = max(len(unique), 1)
    starts = np.cumsum(counts) - counts
    parent = np.full(len(counts), -1, dtype=np.int64)
    node_content: list[np.ndarray] = []
    node_parent: list[np.ndarray] = []
    total = 0
    for position in range(int(counts.max()) if len(counts) else 0):
        active = np.flatnonzero(counts > position)
        key = (parent[active] + 1) * width + content[starts[active] + position]
        keys, inverse = np.unique(key, return_inverse=True)
        node_content.append(keys % width)
        node_parent.append(keys // width - 1)
        parent[active] = total + np.asarray(inverse, dtype=np.int64).reshape(-1)
        total += len(keys)
    contents = np.concatenate(node_content) if node_content else np.zeros(0, dtype=np.int64)
    parents = np.concatenate(node_parent) if node_parent else np.zeros(0, dtype=np.int64)
    x = unique[contents] if total else np.zeros((0, table.shape[1]), dtype=np.int64)
    has_input = parents >= 0
    node_ptr = torch.tensor([0, total], dtype=torch.long)
    return _packed(x, parents - np.arange(total), has_input, node_ptr), parent, parents


@dataclass
class ModuleBatch:
    """Graphs holding every module's nodes, and where each module's last node is.

    `previous[v]` is the node before v in its module's own node list (-1 for a first
    node): following it from a module's last node visits exactly that module's nodes,
    so sums along it pool a module even when modules share prefix nodes (the forest).
    """

    packed: PackedGraphs
    last: np.ndarray  # [M] node index in `packed` (-1: the module has no node)
    nodes: np.ndarray  # [M] nodes of the module's own graph
    previous: np.ndarray | None = None  # [nodes of `packed`]; None: graph order


def _graph_previous(packed: PackedGraphs) -> np.ndarray:
    """Each node's predecessor in its own graph's node order (-1 at a graph's first node)."""
    total = int(packed.node_ptr[-1])
    previous = np.arange(total, dtype=np.int64) - 1
    starts = packed.node_ptr[:-1].numpy()
    previous[starts[starts < total]] = -1
    return previous


def pack_modules(
    encoder: Any,
    modules: _Modules,
    values: dict[str, Value],
    context: dict[str, Value] | None = None,
) -> ModuleBatch:
    """Every module's graph (as `encoder.encode_module` builds it), ready for one forward.

    Chain-shaped units become one prefix forest; others are packed graph by graph.
    `context`: values of other units' choices that the unit's layers read.
    """
    width = len(encoder.categories)
    if not modules.count:
        empty = np.zeros(0, dtype=np.int64)
        return ModuleBatch(
            _chain_packed(np.zeros((0, width), dtype=np.int64), empty), empty, empty, empty
        )
    if _fast_path(encoder.space, modules.unit):
        cut = _module_rows(encoder, modules, values, context)
        if cut is not None:
            table, rows, counts = cut
            packed, last, parents = _prefix_forest(table, rows, counts)
            return ModuleBatch(packed, np.where(counts > 0, last, -1), counts, parents)
    packed = _pack_slow(encoder, modules, values, context)
    counts = packed.counts.numpy()
    return ModuleBatch(
        packed,
        np.where(counts > 0, packed.node_ptr[1:].numpy() - 1, -1),
        counts,
        _graph_previous(packed),
    )


# ----- ranking -----------------------------------------------------------------------------


def _encoding(run: TrainedRun) -> str:
    return str(getattr(run.config, "encoding", "sequence") or "sequence")


def _label_groups(
    run: TrainedRun, unit: str, sizes: np.ndarray, notes: set[str]
) -> tuple[np.ndarray, np.ndarray]:
    """[members, len(sizes)] label mean and sd of each size's group (Eq. 5's mu_(u,d))."""
    means = np.zeros((len(run.members), len(sizes)))
    sds = np.zeros((len(run.members), len(sizes)))
    for m, member in enumerate(run.members):
        stats = member.record.label_stats
        groups = stats.by_unit.get(unit, {})
        for i, size in enumerate(sizes.tolist()):
            group = groups.get(int(size))
            if group is None or group.count < MIN_GROUP or group.mean is None or group.sd is None:
                count = 0 if group is None else group.count
                notes.add(
                    f"unit {unit}, {size} layer(s): {count} training label(s); "
                    "the overall label statistics stand in (the standardize option needs none)"
                )
                means[m, i], sds[m, i] = stats.mean, stats.sd
            else:
                means[m, i], sds[m, i] = group.mean, group.sd
    return means, sds


def context_domain(space: Space, name: str) -> list[Value]:
    """The values a stage decision (`STAGE.depth`, `STAGE.CHOICE`) can take."""
    owner, choice = DecisionKey.parse(name)
    stage = space.stage(owner)
    if choice == DEPTH:
        return list(stage.depths)
    return list(stage_module_choices(space, stage).get(choice, []))


def context_names(space: Space, encoder: Any, unit: Unit) -> list[str]:
    """Other units' choices that this unit's layers read (tied aliases as their keeper)."""
    own: set[str] = set()
    for name in unit.stages:
        stage = space.stage(name)
        own.add(DecisionKey.depth(name))
        own.update(DecisionKey.choice(name, c) for c in stage_module_choices(space, stage))
    own |= {space.ties.get(n, n) for n in own}
    names: dict[str, None] = {}
    for name in unit.stages:
        for ref in encoder.stage_refs(name):
            keeper = space.ties.get(ref, ref)
            if ref in space.choices or ref in own or keeper in own:
                continue
            names[keeper] = None
    return sorted(names)


def unit_contexts(space: Space, encoder: Any, unit: Unit) -> list[dict[str, Value]]:
    """Every assignment of the unit's context (one empty one for a context-free unit)."""
    names = context_names(space, encoder, unit)
    domains = [context_domain(space, n) for n in names]
    total = math.prod(len(d) for d in domains)
    if total > MAX_CONTEXTS:
        raise RankError(
            f"unit {unit.name} reads {', '.join(names)} of other stages: {total:,} contexts "
            f"to score it in (more than {MAX_CONTEXTS:,}). Narrow those choices, or score "
            "a reduced space"
        )
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*domains)]


def rank_modules(
    run: TrainedRun,
    *,
    standardize: bool = False,
    score: ScoreKind = "pooled",
    globals: Sequence[dict[str, Any]] | None = None,
    units: Sequence[str] | None = None,
    threads: int = 1,
    progress: ProgressFn | None = None,
) -> RankResult:
    """Score every module of every unit of the run's space with the run's ensemble.

    `score`: how a module is read (pooled module-graph embedding, or its last node);
    `globals`: the global assignments to score (default: those of the labeled data);
    `units`: only these units (default: all); `threads`: torch threads for the forward
    passes (one is fastest on a shared machine). A unit whose layers read other units'
    choices is scored in every context it can be built into.
    """
    if _encoding(run) != "sequence":
        raise RankError(
            f"{run.path}: this run uses the '{_encoding(run)}' graph encoding; module scoring "
            "needs sequence-graph runs (one node per layer). Train with the sequence encoding "
            "to rank and build modules"
        )
    if score not in SCORE_KINDS:
        raise RankError(f"unknown module score '{score}' (one of {', '.join(SCORE_KINDS)})")
    started = time.perf_counter()
    space = run.space
    encoder = run.encoder()
    assignments = global_assignments(run, globals)
    all_units = index_of(space).units
    if units:
        known = {u.name for u in all_units}
        missing = [u for u in units if u not in known]
        if missing:
            raise RankError(f"no unit '{missing[0]}' (units: {', '.join(sorted(known))})")
        all_units = [u for u in all_units if u.name in set(units)]
    num_layers = run.config.model.num_layers
    hops = num_layers + 1
    srcc = np.array(
        [
            [
                m.record.metrics.hop_srcc[h]
                if h < len(m.record.metrics.hop_srcc) and m.record.metrics.hop_srcc[h] is not None
                else np.nan
                for h in range(hops)
            ]
            for m in run.members
        ],
        dtype=np.float64,
    )
    weights = hop_weights(srcc)
    if score == "pooled":
        if any(m.record.graph_norms is None for m in run.members):
            raise RankError(
                f"{run.path}: this run was trained before pooled norm statistics were "
                "recorded; retrain it, or score modules by their last node (score 'last')"
            )
        moments = [m.record.graph_norms or [] for m in run.members]
    else:
        moments = [m.record.hop_norms for m in run.members]
    mu = np.array([[hm.mean for hm in ms] for ms in moments])
    sd = np.array([[hm.sd for hm in ms] for ms in moments])
    if mu.shape[1] < hops:
        raise RankError(f"{run.path}: members record {mu.shape[1]} hop statistics, need {hops}")

    # Pack every (assignment, unit, context) first: one forward per member over all of them.
    enumerated = {u.name: enumerate_modules(space, u) for u in all_units}
    contexts = {u.name: unit_contexts(space, encoder, u) for u in all_units}
    jobs: list[tuple[dict[str, Value], dict[str, Value], _Modules, int]] = []
    batches: list[ModuleBatch] = []
    total_jobs = len(assignments) * sum(len(c) for c in contexts.values())
    for values in assignments:
        for unit in all_units:
            modules = enumerated[unit.name]
            for context in contexts[unit.name]:
                feasible = _feasible(space, modules, {**values, **context})
                keep = feasible[modules.state] if modules.count else np.zeros(0, dtype=bool)
                if context and not keep.any():
                    continue  # no architecture with these globals has this context
                kept = modules.subset(keep)
                jobs.append((values, context, kept, int(modules.count - kept.count)))
                batches.append(pack_modules(encoder, kept, values, context or None))
                if progress is not None:
                    progress(RankProgress("encode", len(batches), total_jobs, unit.name))
    batch = _concat(batches)
    counts = batch.nodes
    hop = np.clip(np.minimum(counts - 1, num_layers), 0, None)
    empty = batch.last < 0
    raw = np.zeros((len(run.members), len(counts)))
    with torch_threads(threads):
        for m, member in enumerate(run.members):
            raw[m] = module_norms(member.model, batch, hop, score=score)
            if progress is not None:
                progress(RankProgress("score", m + 1, len(run.members), member.name))
    z = standardize_members(raw, mu, sd, hop)
    # A module with no node (a depth-0 stage without extras) is average: z = 0.
    z[:, empty] = 0.0
    notes: set[str] = set()
    tables: list[UnitScores] = []
    offset = 0
    for values, context, modules, excluded in jobs:
        span = slice(offset, offset + modules.count)
        offset += modules.count
        size = modules.size()
        h = hop[span]
        zm = z[:, span]
        if standardize:
            member_scores = zm
        else:
            unique_sizes, where = np.unique(size, return_inverse=True)
            means, sds = _label_groups(run, modules.unit.name, unique_sizes, notes)
            member_scores = shift(zm, means[:, where], sds[:, where])
        tables.append(
            UnitScores(
                unit=modules.unit.name,
                stages=list(modules.unit.stages),
                globals=dict(values),
                context=dict(context),
                configs=modules.configs,
                stage_states=modules.stage_states,
                unit_states=modules.unit_states,
                state=modules.state,
                module_id=modules.module_ids(),
                member_scores=member_scores,
                layers=modules.layers,
                size=size,
                nodes=counts[span],
                hop=h,
                z=ensemble(zm, weights, h),
                score=ensemble(member_scores, weights, h),
                excluded=excluded,
            )
        )
    low = [
        f"hop {h}: no member has a positive held-out SRCC; members weigh equally there"
        for h in sorted({int(v) for v in hop.tolist()})
        if not np.any(np.nan_to_num(srcc[:, h]) > 0)
    ]
    if not globals and not run.config.globals_seen and len(assignments) > 1:
        low.append(
            f"the run does not record the global choices of its data (trained by an older "
            f"version): scored all {len(assignments)} assignments; the globals option picks some"
        )
    for unit in all_units:
        names = context_names(space, encoder, unit)
        if names:
            low.append(
                f"unit {unit.name} reads {', '.join(names)}: its modules are scored in each "
                f"of {len(contexts[unit.name])} context(s), and builds use the score of the "
                "context they are built into"
            )
    return RankResult(
        run=str(run.path),
        target=run.config.target,
        mode="standardize" if standardize else "shift",
        score_kind=score,
        members=len(run.members),
        num_layers=num_layers,
        tables=tables,
        notes=sorted(notes) + low,
        seconds=time.perf_counter() - started,
    )


def module_norms(
    model: ScorerModel,
    batch: ModuleBatch,
    hops: np.ndarray,
    chunk: int = GRAPH_CHUNK,
    *,
    score: ScoreKind = "last",
) -> np.ndarray:
    """[modules]: each module's norm at hop `hops[m]`, read as `score` says.

    last: the norm of the module's last node embedding, the same numbers as
    `scorer.node_norms(model, graphs)[hop, last node]`; pooled: the norm of the mean of
    the module's node embeddings, the same numbers as the model's graph norm of the module
    built alone. No prediction head, and no norm that no score reads. 0 for a module with
    no node.
    """
    if score not in SCORE_KINDS:
        raise RankError(f"unknown module score '{score}' (one of {', '.join(SCORE_KINDS)})")
    packed = batch.packed
    check_codes(packed, model.config.vocab_sizes)
    hops = np.asarray(hops, dtype=np.int64)
    out = np.zeros(len(batch.last), dtype=np.float64)
    node_ptr = packed.node_ptr.numpy()
    previous = batch.previous if batch.previous is not None else _graph_previous(packed)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, packed.num_graphs, chunk):
                stop = min(start + chunk, packed.num_graphs)
                first, end = int(node_ptr[start]), int(node_ptr[stop])
                mine = np.flatnonzero((batch.last >= first) & (batch.last < end))
                if not len(mine):
                    continue
                embeddings = model.node_embeddings(packed.select(torch.arange(start, stop)))
                local = batch.last[mine] - first
                local_previous = np.where(previous[first:end] >= 0, previous[first:end] - first, -1)
                needed = [int(h) for h in np.unique(hops[mine])]
                if score == "pooled":
                    # Every needed hop side by side: one pass of path sums for all of them.
                    widths = [embeddings[h].shape[1] for h in needed]
                    sums = _path_sums(torch.cat([embeddings[h] for h in needed], 1), local_previous)
                    pooled = dict(zip(needed, sums.split(widths, dim=1), strict=True))
                for h in needed:
                    pick = hops[mine] == h
                    at = torch.from_numpy(local[pick])
                    if score == "last":
                        rows = embeddings[h][at]
                    else:
                        sizes = torch.from_numpy(batch.nodes[mine[pick]]).to(pooled[h].dtype)
                        rows = pooled[h][at] / sizes.clamp(min=1)[:, None]
                    norms = torch.linalg.vector_norm(rows, ord=model.config.norm_ord, dim=-1)
                    out[mine[pick]] = norms.double().numpy()
    finally:
        model.train(was_training)
    return out


def _path_sums(values: torch.Tensor, previous: np.ndarray) -> torch.Tensor:
    """values [nodes, d] -> for every node, the sum of `values` over it and every node
    reached by following `previous` (pointer jumping: log2(longest path) steps, each over
    the nodes whose path is not yet summed to its start)."""
    sums = values.clone()
    pointer = torch.from_numpy(np.asarray(previous, dtype=np.int64))
    active = torch.nonzero(pointer >= 0).squeeze(1)
    while len(active):
        target = pointer[active]
        sums[active] = sums[active] + sums[target]  # the right side reads the old sums
        pointer[active] = pointer[target]
        active = active[pointer[active] >= 0]
    return sums


def standardize_members(
    raw: np.ndarray, mean: np.ndarray, sd: np.ndarray, hops: np.ndarray
) -> np.ndarray:
    """raw [members, M] norms, mean/sd [members, hops], hops [M] -> z [members, M]."""
    return standardize(raw, mean[:, hops], sd[:, hops])


def _concat(batches: list[ModuleBatch]) -> ModuleBatch:
    """Several batches as one (neighbour offsets are relative, so they carry over)."""
    if len(batches) == 1:
        return batches[0]
    slots = max(int(b.packed.rel_nbr.shape[0]) for b in batches)
    xs, rels, masks, ptrs, lasts, previous = [], [], [], [torch.zeros(1, dtype=torch.long)], [], []
    offset = 0
    for b in batches:
        p = b.packed
        n = int(p.node_ptr[-1])
        pad = slots - int(p.rel_nbr.shape[0])
        rel, mask = p.rel_nbr, p.nbr_mask
        if pad:
            rel = torch.cat([rel, torch.zeros(pad, n, dtype=torch.long)])
            mask = torch.cat([mask, torch.zeros(pad, n, dtype=torch.bool)])
        xs.append(p.x)
        rels.append(rel)
        masks.append(mask)
        ptrs.append(p.node_ptr[1:] + offset)
        lasts.append(np.where(b.last >= 0, b.last + offset, -1))
        before = b.previous if b.previous is not None else _graph_previous(p)
        previous.append(np.where(before >= 0, before + offset, -1))
        offset += n
    packed = PackedGraphs(
        x=torch.cat(xs),
        rel_nbr=torch.cat(rels, dim=1),
        nbr_mask=torch.cat(masks, dim=1),
        node_ptr=torch.cat(ptrs),
    )
    return ModuleBatch(
        packed,
        np.concatenate(lasts),
        np.concatenate([b.nodes for b in batches]),
        np.concatenate(previous),
    )


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


__all__ = [
    "MIN_GROUP",
    "SCORE_KINDS",
    "ModuleBatch",
    "RankError",
    "RankProgress",
    "RankResult",
    "RankedModule",
    "ScoreKind",
    "StageState",
    "UnitScores",
    "context_domain",
    "context_names",
    "ensemble",
    "enumerate_modules",
    "global_assignments",
    "hop_weights",
    "layer_text",
    "module_description",
    "module_norms",
    "pack_modules",
    "rank_modules",
    "shift",
    "standardize",
    "standardize_members",
    "unit_contexts",
]
