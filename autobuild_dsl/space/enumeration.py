"""Enumeration: every architecture of a space, every module of a unit, and the two-way
mapping between an architecture and its modules (one per unit)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from autobuild_dsl.space.architecture import Architecture, StageArch
from autobuild_dsl.space.canonical import stage_module_choices
from autobuild_dsl.space.expr import Value
from autobuild_dsl.space.index import (
    DecisionIndex,
    absent_choices,
    holds,
    index_of,
    state_matches,
)
from autobuild_dsl.space.keys import DecisionKey
from autobuild_dsl.space.model import Space, Stage, StageModule, Unit
from autobuild_dsl.space.values import same_value


def space_size(space: Space) -> int:
    """The exact number of architectures (rules applied), as a Python int."""
    return index_of(space).size()


def unit_module_count(space: Space, unit: Unit) -> int:
    index = index_of(space)
    restricted = space.restrictions.get(unit.name)
    if restricted is not None:
        return len(restricted)
    total = 1
    for stage_name in unit.stages:
        stage = index.stages[stage_name]
        combos = 1
        for domain in stage_module_choices(space, stage).values():
            combos *= len(domain)
        # An absent stage (depth 0) is one module: no choices, no layers.
        total *= sum(
            (combos if d else 1) * index.layer_fillings(stage_name, d) for d in stage.depths
        )
    return total


def unit_modules(space: Space, unit: Unit) -> Iterator[list[StageModule]]:
    """Every module of a unit, in a deterministic order (depth, stage choices, layers)."""
    restricted = space.restrictions.get(unit.name)
    if restricted is not None:
        yield from ([StageModule.model_validate(p.model_dump()) for p in m] for m in restricted)
        return
    index = index_of(space)
    per_stage = [_stage_modules(space, index, index.stages[s]) for s in unit.stages]
    for combo in itertools.product(*per_stage):
        yield list(combo)


def _layer_lists(index: DecisionIndex, stage_name: str, depth: int) -> Iterator[tuple]:
    """Every layer list of a stage at one depth (the first slot has its own choices)."""
    slots = [index.position_configs(stage_name, position) for position in range(depth)]
    return itertools.product(*slots)


def _stage_modules(space: Space, index: DecisionIndex, stage: Stage) -> list[StageModule]:
    choices = stage_module_choices(space, stage)
    modules = []
    for depth in stage.depths:
        if depth == 0:
            modules.append(StageModule(depth=0, choices={}, layers=[]))
            continue
        for values in itertools.product(*choices.values()):
            chosen = dict(zip(choices, values, strict=True))
            for layers in _layer_lists(index, stage.name, depth):
                modules.append(
                    StageModule(depth=depth, choices=chosen, layers=[dict(x) for x in layers])
                )
    return modules


def architecture_from_modules(
    space: Space, globals_: dict[str, Value], modules: dict[str, list[StageModule]]
) -> Architecture | None:
    """Assemble an architecture from one module per unit; None when a tie or rule fails.

    Module choices include merged (tied) choices, so a combination whose tied values
    disagree is not an architecture of the space.
    """
    stages: dict[str, StageArch] = {}
    env: dict[str, Value] = dict(globals_)
    index = index_of(space)
    for unit in index.units:
        for stage_name, part in zip(unit.stages, modules[unit.name], strict=True):
            env[DecisionKey.depth(stage_name)] = part.depth
            if part.depth == 0:
                env.update(absent_choices(index.stages[stage_name]))
            own = {}
            for choice, value in part.choices.items():
                key = DecisionKey.choice(stage_name, choice)
                env[key] = value
                if key not in space.ties:
                    own[choice] = value
            stages[stage_name] = StageArch(
                depth=part.depth, choices=own, layers=[dict(x) for x in part.layers]
            )
    for alias, keeper in space.ties.items():
        if alias in env and keeper in env and not same_value(env[alias], env[keeper]):
            return None
    if not all(holds(rule.expr, env) for rule in space.rules):
        return None
    return Architecture(space=space.name, globals=dict(globals_), stages=stages)


def decision_value(arch: Architecture, name: str) -> Value | None:
    """An architecture's value of the stage decision `STAGE.depth` or `STAGE.CHOICE`."""
    key = DecisionKey.parse(name)
    chosen = arch.stages.get(key.owner)
    if chosen is None:
        return None
    return chosen.depth if key.is_depth else chosen.choices.get(key.member)


def architecture_modules(space: Space, arch: Architecture) -> dict[str, list[StageModule]]:
    """The inverse of `architecture_from_modules`: one module per unit, each stage's tied
    choices filled in from their keepers (as ranked modules carry them)."""
    out: dict[str, list[StageModule]] = {}
    for unit in index_of(space).units:
        parts = []
        for stage in unit.stages:
            chosen = arch.stages[stage]
            choices = dict(chosen.choices)
            for alias, keeper in space.ties.items():
                owner, choice = DecisionKey.parse(alias)
                if owner == stage:
                    holder, key = DecisionKey.parse(keeper)
                    source = arch.stages[holder].choices if key else arch.globals
                    choices[choice] = source.get(key or holder)
            parts.append(
                StageModule.model_construct(
                    depth=chosen.depth,
                    choices=choices,
                    layers=[dict(x) for x in chosen.layers[: chosen.depth]],
                )
            )
        out[unit.name] = parts
    return out


def iter_architectures(
    space: Space, start: int = 0, stop: int | None = None
) -> Iterator[Architecture]:
    """Every architecture of the space, in a deterministic order, streamed; with `start` /
    `stop`, only positions start..stop-1 of that order (as `islice`, without walking the
    ones before `start`: workers of an exhaustive search each enumerate their own ranges).

    Walks the rule-satisfying scalar assignments of each component (never the product of
    all modules), then every choice of layers for those scalars, so a tied U-Net space is
    enumerated at the speed of its valid architectures.
    """
    index = index_of(space)
    joints = [component.joint for component in index.components]
    left = None if stop is None else stop - start
    if left is not None and left <= 0:
        return
    combos: Iterator[tuple] = itertools.product(*joints)
    skip = 0
    if start > 0:
        found = _locate(index, joints, start)
        if found is None:
            return
        begin, skip = found
        combos = product_from(joints, begin)
    # Where each unit's variable sits in a combination: (component, position in its joint).
    spot = {
        v: (c, i) for c, comp in enumerate(index.components) for i, v in enumerate(comp.variables)
    }
    unit_at = [spot[index.variable_of[DecisionKey.depth(unit.stages[0])]] for unit in index.units]
    fillings_of: dict[tuple[int, int, int], list] = {}
    for combo in combos:
        env: dict[str, Value] = {}
        for component, joint in zip(index.components, combo, strict=True):
            for variable_index, state_index in zip(component.variables, joint, strict=True):
                env.update(index.variables[variable_index].states[state_index])
        globals_ = {name: env[name] for name in space.choices}
        per_unit = []
        for unit, (c, v) in zip(index.units, unit_at, strict=True):
            # A unit's layer choices depend on its own variable's state alone: built once
            # per state (the stages are frozen, so architectures may share them).
            state = (c, v, combo[c][v])
            found = fillings_of.get(state)
            if found is None:
                found = fillings_of[state] = list(_unit_layer_choices(index, unit, env))
            per_unit.append(found)
        if skip:
            fillings = product_from(per_unit, _digits(skip, [len(p) for p in per_unit]))
            skip = 0
        else:
            fillings = itertools.product(*per_unit)
        for parts in fillings:
            stages = {name: stage for unit_parts in parts for name, stage in unit_parts}
            # Values come from the space itself: skip re-validation in this hot loop.
            yield Architecture.model_construct(space=space.name, globals=globals_, stages=stages)
            if left is not None:
                left -= 1
                if not left:
                    return


def product_from(lists: Sequence[Sequence[Any]], begin: Sequence[int]) -> Iterator[tuple]:
    """`itertools.product(*lists)` from the tuple of indices `begin` on, without walking
    the tuples before it: one C-level product per position where the suffix restarts."""
    if not lists:
        yield ()
        return
    last = len(lists) - 1
    for k in range(last, -1, -1):
        first = begin[k] + (0 if k == last else 1)
        fixed = [[lists[i][begin[i]]] for i in range(k)]
        yield from itertools.product(*fixed, lists[k][first:], *lists[k + 1 :])


def _digits(offset: int, radices: list[int]) -> list[int]:
    """`offset` in the mixed radix `radices` (the last digit changes fastest)."""
    digits = [0] * len(radices)
    for position in range(len(radices) - 1, -1, -1):
        offset, digits[position] = divmod(offset, radices[position])
    return digits


def _locate(
    index: DecisionIndex, joints: list[list[tuple]], start: int
) -> tuple[list[int], int] | None:
    """Where position `start` of the enumeration lies: (the index of each component's
    joint state, the offset among that combination's layer fillings); None past the end.
    A combination of joint states holds the product of their weights."""
    weights = [
        [_joint_weight(index, component.variables, joint) for joint in joint_list]
        for component, joint_list in zip(index.components, joints, strict=True)
    ]
    rest, held, begin = start, 1, []
    for position, row in enumerate(weights):
        below = 1  # architectures per unit of weight, over the components after this one
        for later in weights[position + 1 :]:
            below *= sum(later)
        picked = 0
        while picked < len(row):
            count = held * row[picked] * below
            if rest < count:
                break
            rest -= count
            picked += 1
        else:
            return None
        begin.append(picked)
        held *= row[picked]
    return begin, rest


def _joint_weight(index: DecisionIndex, variables: list[int], joint: tuple) -> int:
    weight = 1
    for variable_index, state_index in zip(variables, joint, strict=True):
        weight *= index.variables[variable_index].weights[state_index]
    return weight


def _unit_layer_choices(
    index: DecisionIndex, unit: Unit, env: dict[str, Value]
) -> Iterator[list[tuple[str, StageArch]]]:
    restricted = index.space.restrictions.get(unit.name)
    if restricted is not None:
        for module in restricted:
            if all(
                state_matches(index.stages[s], p, env)
                for s, p in zip(unit.stages, module, strict=True)
            ):
                yield [
                    (
                        s,
                        StageArch.model_construct(
                            depth=p.depth,
                            choices=dict(p.choices),
                            layers=[dict(x) for x in p.layers],
                        ),
                    )
                    for s, p in zip(unit.stages, module, strict=True)
                ]
        return
    per_stage = []
    for stage_name in unit.stages:
        stage = index.stages[stage_name]
        depth = int(env[DecisionKey.depth(stage_name)])  # type: ignore[arg-type]
        choices = (
            {c: env[DecisionKey.choice(stage_name, c)] for c in stage.choices} if depth else {}
        )
        per_stage.append(
            [
                (
                    stage_name,
                    StageArch.model_construct(
                        depth=depth, choices=choices, layers=[dict(x) for x in layers]
                    ),
                )
                for layers in _layer_lists(index, stage_name, depth)
            ]
        )
    for combo in itertools.product(*per_stage):
        yield list(combo)
