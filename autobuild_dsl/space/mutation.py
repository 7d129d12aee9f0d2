"""The neighbours the searches step to: one random change that keeps every rule."""

from __future__ import annotations

import random

from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.canonical import canonicalize
from autobuild_dsl.space.expr import Value
from autobuild_dsl.space.index import ArchitectureError, DecisionIndex, index_of
from autobuild_dsl.space.model import Space, Stage
from autobuild_dsl.space.values import same_value


def mutate(
    space: Space, arch: Architecture, rng: random.Random, mode: str = "stage"
) -> Architecture:
    """One random neighbour of `arch` that satisfies every rule.

    mode "stage" replaces one unit's whole module or one global choice (Stage-Full);
    mode "layer" changes one layer, or adds or removes one layer (Layer-Full).
    """
    index = index_of(space)
    for _ in range(64):
        if mode == "layer":
            candidate = _mutate_layer(index, arch, rng)
        else:
            candidate = _mutate_stage(index, arch, rng)
        if candidate is not None and candidate != arch:
            try:
                return canonicalize(space, candidate)
            except ArchitectureError:
                continue
    return arch


def _mutate_stage(
    index: DecisionIndex, arch: Architecture, rng: random.Random
) -> Architecture | None:
    space = index.space
    targets: list[str] = [u.name for u in index.units] + [
        f"@{g}" for g in space.choices if len(space.choices[g]) > 1
    ]
    target = targets[rng.randrange(len(targets))]
    if target.startswith("@"):
        name = target[1:]
        others = [v for v in space.choices[name] if not same_value(v, arch.globals[name])]
        if not others:
            return None
        globals_ = {**arch.globals, name: others[rng.randrange(len(others))]}
        return arch.model_copy(update={"globals": globals_})
    unit = next(u for u in index.units if u.name == target)
    return index.resample_unit(arch, unit, rng)


def _mutate_layer(
    index: DecisionIndex, arch: Architecture, rng: random.Random
) -> Architecture | None:
    space = index.space
    stage = space.stages[rng.randrange(len(space.stages))]
    if index.unit_of[stage.name].name in space.restrictions:
        return index.resample_unit(arch, index.unit_of[stage.name], rng)
    current = arch.stages[stage.name]
    layers = [dict(x) for x in current.layers]
    moves = ["change"] if layers else []
    if current.depth + 1 in stage.depths:
        moves.append("add")
    if current.depth - 1 in stage.depths:
        moves.append("remove")
    if not moves:
        return None
    move = moves[rng.randrange(len(moves))]
    if move == "change":
        position = rng.randrange(len(layers))
        configs = index.position_configs(stage.name, position)
        others = [c for c in configs if c != layers[position]]
        if not others:
            return None
        layers[position] = dict(others[rng.randrange(len(others))])
    elif move == "add":
        position = rng.randrange(len(layers) + 1)
        configs = index.position_configs(stage.name, position)
        layers.insert(position, dict(configs[rng.randrange(len(configs))]))
    else:
        layers.pop(rng.randrange(len(layers)))
    layers = _refit_positions(index, stage, layers, rng)
    choices = dict(current.choices)
    if not layers:
        choices = {}  # the stage becomes absent: its choices go with it
    elif current.depth == 0:
        # The stage appears: it draws its stage-level choices.
        choices = {c: d[rng.randrange(len(d))] for c, d in stage.choices.items()}
    new_stage = current.model_copy(
        update={"depth": len(layers), "layers": layers, "choices": choices}
    )
    return arch.model_copy(update={"stages": {**arch.stages, stage.name: new_stage}})


def _refit_positions(
    index: DecisionIndex, stage: Stage, layers: list[dict[str, Value]], rng: random.Random
) -> list[dict[str, Value]]:
    """After adding or removing a layer, give the (new) first layer its first-layer-only
    choices (drawn at random) and take them from the layers after it."""
    options = {o.label: o for o in stage.options}
    result = []
    for position, layer in enumerate(layers):
        option = options.get(str(layer.get("op"))) if len(stage.options) > 1 else stage.options[0]
        if option is None:
            result.append(layer)
            continue
        layer = dict(layer)
        for key in index.first_only(stage, option):
            if position > 0:
                layer.pop(key, None)
            elif key not in layer:
                domain = option.choices[key]
                layer[key] = domain[rng.randrange(len(domain))]
        result.append(layer)
    return result
