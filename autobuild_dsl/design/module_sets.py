"""A unit's modules as index arrays (design.rank): every module enumerated once, and which
of them an architecture can use with given global choices.

A module i is its unit state `state[i]` (the stages' depths and stage choices) and a layer
choice `layers[j][i, p]` at position p of stage j; tens of thousands fit in a few arrays.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autobuild_dsl.design.rank_model import StageState, _parts, _vkey
from autobuild_dsl.space.decisions import index_of, stage_module_choices, unit_modules
from autobuild_dsl.space.expr import Value
from autobuild_dsl.space.keys import DecisionKey
from autobuild_dsl.space.model import Space, Stage, StageModule, Unit

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
