"""The canonical form of an architecture: check one against its space, say where and why
it does not belong, and return the one spelling of its decisions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobuild_dsl.space.architecture import Architecture, StageArch
from autobuild_dsl.space.expr import Value, format_value, names_in
from autobuild_dsl.space.index import ArchitectureError, DecisionIndex, holds, index_of
from autobuild_dsl.space.keys import DecisionKey
from autobuild_dsl.space.layers import first_layer_only
from autobuild_dsl.space.model import LayerOption, Space, Stage, StageModule
from autobuild_dsl.space.values import find_value


def _show(domain: list[Value]) -> str:
    return "{" + ", ".join(format_value(v) for v in domain) + "}"


def _pick(domain: list[Value], value: Any, label: str) -> Value:
    """The domain's own value `value` spells, or the error `LABEL VALUE is not one of ...`."""
    found = find_value(domain, value)
    if found is None:
        raise ArchitectureError(f"{label}{format_value(value)} is not one of {_show(domain)}")
    return found


def stage_module_choices(space: Space, stage: Stage) -> dict[str, list[Value]]:
    """A stage's own stage-level choices plus those merged into another stage's (ties)."""
    choices = dict(stage.choices)
    for alias, keeper in space.ties.items():
        owner, name = DecisionKey.parse(alias)
        if owner == stage.name and name:
            choices[name] = _domain_of(space, keeper)
    return choices


def _domain_of(space: Space, key: str) -> list[Value]:
    owner, name = DecisionKey.parse(key)
    if name:
        return list(space.stage(owner).choices[name])
    return list(space.choices[owner])


def check_stage_module(space: Space, stage: Stage, part: StageModule) -> StageModule:
    """Validate one stage's module (depth, stage choices, layers) and return it canonical."""
    if part.depth not in stage.depths:
        raise ArchitectureError(f"depth {part.depth} is not one of {_show(list(stage.depths))}")
    if len(part.layers) < part.depth:
        raise ArchitectureError(
            f"depth {part.depth} needs {part.depth} layers, got {len(part.layers)}"
        )
    if part.depth == 0:
        return StageModule(depth=0, choices={}, layers=[])
    choices = stage_module_choices(space, stage)
    canonical_choices: dict[str, Value] = {}
    for name, value in part.choices.items():
        if name not in choices:
            known = ", ".join(choices) or "none"
            raise ArchitectureError(f"unknown stage choice '{name}' (choices: {known})")
        canonical_choices[name] = _pick(choices[name], value, f"choice '{name}' = ")
    missing = [c for c in choices if c not in part.choices]
    if missing:
        raise ArchitectureError(f"missing stage choice '{missing[0]}'")
    layers = [_check_layer(stage, i, layer) for i, layer in enumerate(part.layers[: part.depth])]
    return StageModule(depth=part.depth, choices=canonical_choices, layers=layers)


def _check_layer(
    stage: Stage,
    index: int,
    layer: dict[str, Value],
    first_only: Callable[[Stage, LayerOption], tuple[str, ...]] | None = None,
) -> dict[str, Value]:
    where = f"layer {index}"
    if not isinstance(layer, dict):
        raise ArchitectureError(f"{where}: expected an object of choices, got {layer!r}")
    if len(stage.options) > 1:
        labels = [o.label for o in stage.options]
        label = layer.get("op")
        if label is None:
            raise ArchitectureError(f"{where}: missing 'op' (one of {', '.join(labels)})")
        option = next((o for o in stage.options if o.label == label), None)
        if option is None:
            raise ArchitectureError(f"{where}: op '{label}' is not one of {', '.join(labels)}")
        result: dict[str, Value] = {"op": option.label}
    else:
        option = stage.options[0]
        result = {}
        if "op" in layer and layer["op"] != option.label:
            raise ArchitectureError(f"{where}: op '{layer['op']}' is not '{option.label}'")
    # After the first layer, a first-layer-only choice (a stride) may be given (it must be
    # valid) but is dropped: it does not change the network there.
    dropped: tuple[str, ...] = ()
    if index > 0:
        dropped = first_only(stage, option) if first_only else first_layer_only(option)
    for key, value in layer.items():
        if key == "op":
            continue
        if key not in option.choices:
            known = ", ".join(option.choices) or "none"
            raise ArchitectureError(
                f"{where}: unknown choice '{key}' (choices of {option.label}: {known})"
            )
        found = _pick(option.choices[key], value, f"{where}: {key} = ")
        if key not in dropped:
            result[key] = found
    missing = [k for k in option.choices if k not in layer and k not in dropped]
    if missing:
        raise ArchitectureError(f"{where}: missing choice '{missing[0]}'")
    return result


def _architecture_data(space: Space, raw: Architecture | dict) -> dict[str, Any]:
    """The raw fields of an architecture given as a model, a dict or a compact code."""
    if isinstance(raw, Architecture):
        data = raw.model_dump(mode="python")
    elif isinstance(raw, dict) and "code" in raw and "stages" not in raw:
        # {"code": "02012100", "scheme": NAME}: a compact code the space declares.
        from autobuild_dsl.space.codes import CodeError, decode

        unknown = set(raw) - {"code", "scheme", "globals", "space"}
        if unknown:
            raise ArchitectureError(
                f"unknown field '{sorted(unknown)[0]}' next to a code (fields: code, scheme, globals)"
            )
        try:
            data = decode(space, raw["code"], raw.get("scheme"), raw.get("globals"))
        except CodeError as error:
            raise ArchitectureError(str(error)) from None
    elif isinstance(raw, dict):
        data = raw
    else:
        raise ArchitectureError(f"expected an architecture object, got {type(raw).__name__}")
    unknown_top = set(data) - {"space", "globals", "stages"}
    if unknown_top:
        raise ArchitectureError(
            f"unknown field '{sorted(unknown_top)[0]}' (fields: space, globals, stages)"
        )
    if not isinstance(data.get("globals") or {}, dict):
        raise ArchitectureError("'globals' must be an object")
    if not isinstance(data.get("stages"), dict):
        raise ArchitectureError("'stages' must be an object with one entry per stage")
    return data


def _check_globals(
    space: Space, raw_globals: dict[str, Any], aliases: list[tuple[str, Value]]
) -> dict[str, Value]:
    globals_: dict[str, Value] = {}
    for name, value in raw_globals.items():
        if name in space.ties:
            # A merged global given under its alias name must agree with the keeper.
            aliases.append((name, value))
            continue
        if name not in space.choices:
            known = ", ".join(space.choices) or "none"
            raise ArchitectureError(f"globals.{name}: unknown choice (global choices: {known})")
        globals_[name] = _pick(space.choices[name], value, f"globals.{name}: ")
    for name in space.choices:
        if name not in globals_:
            raise ArchitectureError(
                f"globals.{name}: missing (one of {_show(space.choices[name])})"
            )
    return globals_


def _check_stage(
    index: DecisionIndex, stage: Stage, raw_stage: object, aliases: list[tuple[str, Value]]
) -> StageArch:
    where = f"stages.{stage.name}"
    if raw_stage is None:
        raise ArchitectureError(f"{where}: missing")
    if isinstance(raw_stage, StageArch):
        raw_stage = raw_stage.model_dump()
    if not isinstance(raw_stage, dict):
        raise ArchitectureError(f"{where}: expected an object with depth, choices, layers")
    depth = raw_stage.get("depth")
    layers = raw_stage.get("layers")
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ArchitectureError(f"{where}.depth: expected an integer, got {depth!r}")
    if not isinstance(layers, list):
        raise ArchitectureError(f"{where}.layers: expected a list")
    odd = sorted(str(k) for k in set(raw_stage) - {"depth", "choices", "layers"})
    if odd:
        raise ArchitectureError(
            f"{where}: unknown field '{odd[0]}' (fields: depth, choices, layers)"
        )
    if not isinstance(raw_stage.get("choices") or {}, dict):
        raise ArchitectureError(f"{where}.choices: expected an object of stage choices")
    raw_choices = dict(raw_stage.get("choices") or {})
    if depth == 0 and 0 in stage.depths:
        # An absent stage decides nothing: its choices, like unused layer slots, go.
        raw_choices = {}
    ties = index.space.ties
    own = {k: v for k, v in raw_choices.items() if DecisionKey.choice(stage.name, k) not in ties}
    aliases += [
        (key, v)
        for k, v in raw_choices.items()
        if (key := DecisionKey.choice(stage.name, k)) in ties
    ]
    try:
        if depth not in stage.depths:
            raise ArchitectureError(f"depth {depth} is not one of {_show(list(stage.depths))}")
        if len(layers) < depth:
            raise ArchitectureError(f"depth {depth} needs {depth} layers, got {len(layers)}")
        for name in own:
            if name not in stage.choices:
                known = ", ".join(stage.choices) or "none"
                raise ArchitectureError(f"unknown stage choice '{name}' (choices: {known})")
        choices = {}
        for name, domain in stage.choices.items() if depth else ():
            if name not in own:
                raise ArchitectureError(f"missing stage choice '{name}' (one of {_show(domain)})")
            choices[name] = _pick(domain, own[name], f"choice '{name}' = ")
        checked = [
            _check_layer(stage, i, layer, index.first_only)
            for i, layer in enumerate(layers[:depth])
        ]
    except ArchitectureError as error:
        raise ArchitectureError(f"{where}: {error}") from None
    return StageArch(depth=depth, choices=choices, layers=checked)


def _check_ties_and_rules(
    space: Space, env: dict[str, Value], aliases: list[tuple[str, Value]]
) -> None:
    for alias, value in aliases:
        keeper = env[space.ties[alias]]
        if find_value([keeper], value) is None:
            owner, member = DecisionKey.parse(alias)
            where = f"stages.{owner}.choices.{member}" if member else f"globals.{alias}"
            raise ArchitectureError(
                f"{where}: {format_value(value)} differs from "
                f"{space.ties[alias]} = {format_value(keeper)}, which it must equal"
            )
    for rule in space.rules:
        if not holds(rule.expr, env):
            values = ", ".join(
                f"{n} = {format_value(env[n])}" for n in names_in(rule.expr) if n in env
            )
            where = f" (rule at {rule.where})" if rule.where else ""
            raise ArchitectureError(f"breaks the rule `{rule.text}`{where}: {values}")


def _check_restrictions(
    index: DecisionIndex, stages: dict[str, StageArch], env: dict[str, Value]
) -> None:
    space = index.space
    for unit_name, modules in space.restrictions.items():
        unit = next(u for u in index.units if u.name == unit_name)
        mine = []
        for s in unit.stages:
            # A restricted module lists a stage's merged (tied) choices too: fill them in.
            choices = dict(stages[s].choices)
            for alias, keeper in space.ties.items():
                owner, name = DecisionKey.parse(alias)
                if owner == s and name and keeper in env:
                    choices[name] = env[keeper]
            mine.append(
                StageModule(depth=stages[s].depth, choices=choices, layers=stages[s].layers)
            )
        if not any(mine == list(module) for module in modules):
            raise ArchitectureError(
                f"stages.{unit_name}: this module is not one the reduced space allows"
            )


def canonicalize(space: Space, raw: Architecture | dict) -> Architecture:
    """Check an architecture against its space and return its canonical form.

    Layers beyond a stage's depth (unused slots) are dropped, and a merged choice given
    under both of its names must agree; anything else outside the space is an error.
    """
    data = _architecture_data(space, raw)
    index = index_of(space)
    aliases: list[tuple[str, Value]] = []
    globals_ = _check_globals(space, data.get("globals") or {}, aliases)
    raw_stages = data["stages"]
    extra = [s for s in raw_stages if s not in index.stages]
    if extra:
        names = ", ".join(index.stages)
        raise ArchitectureError(f"stages.{extra[0]}: no such stage (stages: {names})")
    stages = {
        name: _check_stage(index, stage, raw_stages.get(name), aliases)
        for name, stage in index.stages.items()
    }
    arch = Architecture(space=space.name, globals=globals_, stages=stages)
    env = index.scalars(arch)
    _check_ties_and_rules(space, env, aliases)
    _check_restrictions(index, stages, env)
    return arch


def validate(space: Space, raw: Architecture | dict) -> Architecture:
    """Alias of `canonicalize` for readability at call sites that only check."""
    return canonicalize(space, raw)
