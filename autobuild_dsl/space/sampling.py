"""Uniform sampling from a space's decision index, and resampling one unit in place."""

from __future__ import annotations

import bisect
import random

from autobuild_dsl.space.architecture import Architecture, StageArch
from autobuild_dsl.space.expr import Value
from autobuild_dsl.space.index import (
    ArchitectureError,
    DecisionIndex,
    holds,
    index_of,
    state_matches,
)
from autobuild_dsl.space.keys import DecisionKey
from autobuild_dsl.space.model import Space, Unit


def sample(space: Space, n: int, seed: int = 0) -> list[Architecture]:
    """`n` architectures drawn uniformly (with replacement) from the constrained space."""
    rng = random.Random(seed)
    index = index_of(space)
    return [draw(index, rng) for _ in range(n)]


def draw(index: DecisionIndex, rng: random.Random) -> Architecture:
    """One architecture, uniform over the space: a joint scalar state per component
    (weighted by how many layer lists it admits), then the layers."""
    env: dict[str, Value] = {}
    for component in index.components:
        if component.total == 0:
            raise ArchitectureError("the space is empty: no architecture satisfies its rules")
        joint = component.pick(rng)
        for variable_index, state_index in zip(component.variables, joint, strict=True):
            env.update(index.variables[variable_index].states[state_index])
    return build(index, env, rng)


def build(
    index: DecisionIndex,
    env: dict[str, Value],
    rng: random.Random,
    keep: Architecture | None = None,
    redo: set[str] | None = None,
) -> Architecture:
    """The architecture of the scalar values `env`, its layers drawn at random; with `keep`,
    only the units named in `redo` are drawn anew, the others kept from `keep`."""
    space = index.space
    globals_ = {name: env[name] for name in space.choices}
    stages: dict[str, StageArch] = {}
    for unit in index.units:
        if keep is not None and redo is not None and unit.name not in redo:
            for s in unit.stages:
                stages[s] = keep.stages[s]
            continue
        restricted = space.restrictions.get(unit.name)
        if restricted is not None:
            matching = [
                module
                for module in restricted
                if all(
                    state_matches(index.stages[s], part, env)
                    for s, part in zip(unit.stages, module, strict=True)
                )
            ]
            module = matching[rng.randrange(len(matching))]
            for s, part in zip(unit.stages, module, strict=True):
                stages[s] = StageArch(
                    depth=part.depth,
                    choices=dict(part.choices),
                    layers=[dict(x) for x in part.layers],
                )
            continue
        for s in unit.stages:
            stage = index.stages[s]
            depth = int(env[DecisionKey.depth(s)])  # type: ignore[arg-type]
            layers = []
            for position in range(depth):
                configs = index.position_configs(s, position)
                layers.append(dict(configs[rng.randrange(len(configs))]))
            choices = {c: env[DecisionKey.choice(s, c)] for c in stage.choices} if depth else {}
            stages[s] = StageArch(depth=depth, choices=choices, layers=layers)
    return Architecture(space=space.name, globals=globals_, stages=stages)


def resample_unit(
    index: DecisionIndex, arch: Architecture, unit: Unit, rng: random.Random
) -> Architecture:
    """Replace one unit's whole module, keeping every rule satisfied."""
    variable_index = index.variable_of[DecisionKey.depth(unit.stages[0])]
    variable = index.variables[variable_index]
    env = index.scalars(arch)
    component = next(c for c in index.components if variable_index in c.variables)
    rules = [index.rules[i] for i in component.rules]
    candidates, cumulative, total = [], [], 0
    for number, state in enumerate(variable.states):
        trial = {**env, **dict(state)}
        if all(holds(rule.expr, trial) for rule in rules):
            total += variable.weights[number]
            candidates.append(state)
            cumulative.append(total)
    if total == 0:
        return arch
    state = candidates[bisect.bisect_right(cumulative, rng.randrange(total))]
    env.update(dict(state))
    return build(index, env, rng, keep=arch, redo={unit.name})
