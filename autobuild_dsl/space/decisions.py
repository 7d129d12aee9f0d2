"""What a Space contains: exact size, module enumeration, uniform sampling, validation and
the mutations the searches use.

Decisions come in three kinds. Global choices (`resolution`) and per-stage scalars (a
stage's depth and its stage-level choices, keyed `stage.name`) are the *scalars*; rules
only ever name scalars. Per-layer choices (`kernel`, `expand`, the alternative) are free
within a stage once its depth is known. So the number of architectures is a sum over
scalar assignments that satisfy the rules of a product of per-stage layer counts, which is
computed exactly, component by component, without enumerating architectures.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.architecture import Architecture, StageArch
from autobuild_dsl.space.chain import RuleDP, TooManyStates
from autobuild_dsl.space.expr import (
    Binary,
    Call,
    Expr,
    ExprError,
    LayerRef,
    Ref,
    Unary,
    Value,
    evaluate,
    format_value,
    names_in,
)
from autobuild_dsl.space.model import LayerOption, Space, Stage, StageModule, Unit

# Above this many joint scalar assignments in one group of linked rules, counting refuses.
MAX_JOINT_ASSIGNMENTS = 2_000_000
# Above this many, linked rules are counted by dynamic programming over the variables
# (space/chain.py) instead of listing every joint assignment.
DP_THRESHOLD = 1_000
# The DP gives up (and the space is refused as before) above this many partial states.
MAX_DP_STATES = 50_000


class ArchitectureError(AbcError, ValueError):
    """An architecture does not belong to its space; the message says where and why."""

    code = "architecture"


class SpaceTooComplex(AbcError, ValueError):
    """Rules link so many decisions that counting them exactly would not finish."""

    code = "space-too-complex"

    def __init__(self, message: str, rules: list[int] | None = None) -> None:
        super().__init__(message)
        # Indices (into space.rules) of the rules that link the decisions, the culprit first.
        self.rules = rules or []


Assignment = tuple[tuple[str, Value], ...]


def same_value(a: Value, b: Value) -> bool:
    """Equal as decision values: 3 == 3 and 2.5 == 2.5, but True != 1 and 3 != 3.0."""
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
        and isinstance(a, float) == isinstance(b, float)
    )


def _find(domain: list[Value], value: object) -> Value | None:
    """The domain's own value equal to `value` (so 3 never silently matches 3.0 or True)."""
    for candidate in domain:
        if type(candidate) is type(value) and candidate == value:
            return candidate
    # JSON has one number type: accept 4.0 for an integer domain value 4, and 3 for 3.0.
    for candidate in domain:
        if (
            isinstance(candidate, int | float)
            and not isinstance(candidate, bool)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and candidate == value
        ):
            return candidate
    return None


def _show(domain: list[Value]) -> str:
    return "{" + ", ".join(format_value(v) for v in domain) + "}"


@dataclass
class _Variable:
    """A counting variable: one global choice, or one unit's scalar state."""

    name: str
    keys: list[str]
    states: list[Assignment]
    weights: list[int]
    unit: Unit | None = None


@dataclass
class _Component:
    variables: list[int]
    rules: list[int]
    # Satisfying joint states (index per variable) and their cumulative weights; for a
    # large component, `dp` counts and samples them instead, and `joint` is listed lazily.
    listed: list[tuple[int, ...]] = field(default_factory=list)
    cumulative: list[int] = field(default_factory=list)
    dp: RuleDP | None = None

    @property
    def total(self) -> int:
        if self.dp is not None:
            return self.dp.total
        return self.cumulative[-1] if self.cumulative else 0

    @property
    def joint(self) -> list[tuple[int, ...]]:
        if self.dp is not None and not self.listed and self.dp.total:
            self.listed = list(self.dp.joints())
        return self.listed

    def pick(self, rng: random.Random) -> tuple[int, ...]:
        """One satisfying joint state, uniform over the weighted total."""
        if self.dp is not None:
            return self.dp.sample(rng)
        pick = rng.randrange(self.total)
        return self.listed[bisect.bisect_right(self.cumulative, pick)]


class SpaceIndex:
    """Everything derived from a Space once: layer configurations, states, components."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.stages = {stage.name: stage for stage in space.stages}
        # What a stage's first layer can hold, and what every later layer can hold: a
        # per-layer stride choice is a decision of the first layer only (the stride rule).
        self.layer_configs = {s.name: _layer_configurations(s) for s in space.stages}
        self.later_configs = {s.name: _layer_configurations(s, first=False) for s in space.stages}
        self.units = space.module_units()
        self.unit_of = {s: u for u in self.units for s in u.stages}
        self.variables: list[_Variable] = []
        self.variable_of: dict[str, int] = {}
        # The space's rules, plus one equality per tied choice that a `restrict` list fixes
        # inside a unit (the module carries its own value of the tie, which must agree).
        self.rules: list[Any] = list(space.rules)
        for name, domain in space.choices.items():
            self._add(
                _Variable(
                    name=name,
                    keys=[name],
                    states=[((name, v),) for v in domain],
                    weights=[1] * len(domain),
                )
            )
        for unit in self.units:
            states, weights = self._unit_states(unit)
            keys = [k for s in unit.stages for k in self._stage_keys(self.stages[s])]
            tied = sorted({k for state in states for k, _ in state if k in space.ties})
            keys += tied
            for alias in tied:
                self.rules.append(_TieCheck(alias, space.ties[alias]))
            self._add(
                _Variable(name=unit.name, keys=keys, states=states, weights=weights, unit=unit)
            )
        self.components = self._components()

    def _add(self, variable: _Variable) -> None:
        index = len(self.variables)
        self.variables.append(variable)
        for key in variable.keys:
            self.variable_of[key] = index

    @staticmethod
    def _stage_keys(stage: Stage) -> list[str]:
        return [f"{stage.name}.depth"] + [f"{stage.name}.{c}" for c in stage.choices]

    def _unit_states(self, unit: Unit) -> tuple[list[Assignment], list[int]]:
        restricted = self.space.restrictions.get(unit.name)
        if restricted is not None:
            counts: dict[Assignment, int] = {}
            for module in restricted:
                state = tuple(
                    item
                    for stage_name, part in zip(unit.stages, module, strict=True)
                    for item in (
                        *_stage_state(self.stages[stage_name], part.depth, part.choices),
                        *_tied_items(self.space, stage_name, part),
                    )
                )
                counts[state] = counts.get(state, 0) + 1
            return list(counts), list(counts.values())
        per_stage = []
        for stage_name in unit.stages:
            stage = self.stages[stage_name]
            options = []
            for depth in stage.depths:
                fillings = self.layer_fillings(stage_name, depth)
                if depth == 0:
                    # An absent stage has no stage-level choices: one state, not one per value.
                    options.append((_stage_state(stage, 0, {}), fillings))
                    continue
                for values in itertools.product(*stage.choices.values()):
                    choices = dict(zip(stage.choices, values, strict=True))
                    options.append((_stage_state(stage, depth, choices), fillings))
            per_stage.append(options)
        states, weights = [], []
        for combo in itertools.product(*per_stage):
            states.append(tuple(item for state, _ in combo for item in state))
            weight = 1
            for _, w in combo:
                weight *= w
            weights.append(weight)
        return states, weights

    def layer_fillings(self, stage_name: str, depth: int) -> int:
        """How many different layer lists a stage of this depth can hold."""
        first = len(self.layer_configs[stage_name])
        later = len(self.later_configs[stage_name])
        return first * later ** (depth - 1) if depth >= 1 else 1

    def position_configs(self, stage_name: str, position: int) -> list[dict[str, Value]]:
        """The layers slot `position` (0-based) of a stage can hold."""
        return self.layer_configs[stage_name] if position == 0 else self.later_configs[stage_name]

    def _components(self) -> list[_Component]:
        parent = list(range(len(self.variables)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        rule_vars: list[list[int]] = []
        for rule in self.rules:
            indices = sorted({self.variable_of[n] for n in names_in(rule.expr)})
            rule_vars.append(indices)
            for a, b in itertools.pairwise(indices):
                parent[root(a)] = root(b)
        groups: dict[int, _Component] = {}
        for index in range(len(self.variables)):
            groups.setdefault(root(index), _Component(variables=[], rules=[])).variables.append(
                index
            )
        for rule_index, indices in enumerate(rule_vars):
            if indices:
                groups[root(indices[0])].rules.append(rule_index)
        components = list(groups.values())
        for component in components:
            self._enumerate(component)
        return components

    def _enumerate(self, component: _Component) -> None:
        variables = [self.variables[i] for i in component.variables]
        if not component.rules:
            # A lone free variable: its states are the joint states.
            assert len(variables) == 1
            total = 0
            for index, weight in enumerate(variables[0].weights):
                total += weight
                component.listed.append((index,))
                component.cumulative.append(total)
            return
        joint_size = 1
        for variable in variables:
            joint_size *= len(variable.states)
        if joint_size > DP_THRESHOLD:
            try:
                component.dp = RuleDP(
                    [v.states for v in variables],
                    [v.weights for v in variables],
                    [self.rules[i].expr for i in component.rules],
                    max_states=MAX_DP_STATES,
                )
                return
            except TooManyStates:
                pass  # the rules keep too much apart: say so below, as before
        if joint_size > MAX_JOINT_ASSIGNMENTS:
            names = ", ".join(v.name for v in variables)
            raise SpaceTooComplex(
                f"rules link {names} into {joint_size:,} joint choices; counting them exactly "
                f"is limited to {MAX_JOINT_ASSIGNMENTS:,}. Split the rule or narrow the choices.",
                rules=self._culprits(component),
            )
        rules = [self.rules[i] for i in component.rules]
        total = 0
        for indices in itertools.product(*(range(len(v.states)) for v in variables)):
            env: dict[str, Value] = {}
            weight = 1
            for variable, index in zip(variables, indices, strict=True):
                env.update(variable.states[index])
                weight *= variable.weights[index]
            if weight and all(_holds(rule.expr, env) for rule in rules):
                total += weight
                component.listed.append(indices)
                component.cumulative.append(total)

    def _culprits(self, component: _Component) -> list[int]:
        """The component's rules, the one linking the most joint choices on its own first."""

        def own_size(rule_index: int) -> int:
            variables = {self.variable_of[n] for n in names_in(self.rules[rule_index].expr)}
            size = 1
            for variable in variables:
                size *= len(self.variables[variable].states)
            return size

        real = [r for r in component.rules if r < len(self.space.rules)]
        return sorted(real, key=lambda r: (-own_size(r), r))

    # ----- queries ------------------------------------------------------------------

    def size(self) -> int:
        total = 1
        for component in self.components:
            total *= component.total
        return total

    def sample(self, rng: random.Random) -> Architecture:
        env: dict[str, Value] = {}
        chosen: dict[int, int] = {}
        for component in self.components:
            if component.total == 0:
                raise ArchitectureError("the space is empty: no architecture satisfies its rules")
            joint = component.pick(rng)
            for variable_index, state_index in zip(component.variables, joint, strict=True):
                chosen[variable_index] = state_index
                env.update(self.variables[variable_index].states[state_index])
        return self._build(env, rng)

    def _build(
        self,
        env: dict[str, Value],
        rng: random.Random,
        keep: Architecture | None = None,
        redo: set[str] | None = None,
    ) -> Architecture:
        globals_ = {name: env[name] for name in self.space.choices}
        stages: dict[str, StageArch] = {}
        for unit in self.units:
            if keep is not None and redo is not None and unit.name not in redo:
                for s in unit.stages:
                    stages[s] = keep.stages[s]
                continue
            restricted = self.space.restrictions.get(unit.name)
            if restricted is not None:
                matching = [
                    module
                    for module in restricted
                    if all(
                        _state_matches(self.stages[s], part, env)
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
                stage = self.stages[s]
                depth = int(env[f"{s}.depth"])  # type: ignore[arg-type]
                layers = []
                for position in range(depth):
                    configs = self.position_configs(s, position)
                    layers.append(dict(configs[rng.randrange(len(configs))]))
                choices = {c: env[f"{s}.{c}"] for c in stage.choices} if depth else {}
                stages[s] = StageArch(depth=depth, choices=choices, layers=layers)
        return Architecture(space=self.space.name, globals=globals_, stages=stages)

    def scalars(self, arch: Architecture) -> dict[str, Value]:
        env: dict[str, Value] = dict(arch.globals)
        for name, stage in arch.stages.items():
            env[f"{name}.depth"] = stage.depth
            if stage.depth == 0 and name in self.stages:
                env.update(absent_choices(self.stages[name]))
            for choice, value in stage.choices.items():
                env[f"{name}.{choice}"] = value
        return env

    def resample_unit(self, arch: Architecture, unit: Unit, rng: random.Random) -> Architecture:
        """Replace one unit's whole module, keeping every rule satisfied."""
        variable_index = self.variable_of[f"{unit.stages[0]}.depth"]
        variable = self.variables[variable_index]
        env = self.scalars(arch)
        component = next(c for c in self.components if variable_index in c.variables)
        rules = [self.rules[i] for i in component.rules]
        candidates, cumulative, total = [], [], 0
        for index, state in enumerate(variable.states):
            trial = {**env, **dict(state)}
            if all(_holds(rule.expr, trial) for rule in rules):
                total += variable.weights[index]
                candidates.append(state)
                cumulative.append(total)
        if total == 0:
            return arch
        state = candidates[bisect.bisect_right(cumulative, rng.randrange(total))]
        env.update(dict(state))
        return self._build(env, rng, keep=arch, redo={unit.name})


def absent_choices(stage: Stage) -> dict[str, Value]:
    """What a stage's own choices read as when the stage is absent (depth 0): their first
    values. They are not decisions then (not counted, not in the architecture); rules and
    expressions that name them still get a value."""
    return {f"{stage.name}.{c}": domain[0] for c, domain in stage.choices.items() if domain}


def _stage_state(stage: Stage, depth: int, choices: dict[str, Value]) -> Assignment:
    if depth == 0:
        return ((f"{stage.name}.depth", 0), *absent_choices(stage).items())
    return (
        (f"{stage.name}.depth", depth),
        *((f"{stage.name}.{c}", choices[c]) for c in stage.choices),
    )


def _state_matches(stage: Stage, part: StageModule, env: dict[str, Value]) -> bool:
    if env.get(f"{stage.name}.depth") != part.depth:
        return False
    if part.depth == 0:
        return True
    if not all(same_value(env[f"{stage.name}.{c}"], part.choices[c]) for c in stage.choices):
        return False
    # A tied choice the module carries must agree with the value the tie holds.
    return all(
        same_value(env[key], value)
        for c, value in part.choices.items()
        if c not in stage.choices and (key := f"{stage.name}.{c}") in env
    )


@dataclass(frozen=True)
class _TieCheck:
    """`alias == keeper` as a rule, for ties a restricted module fixes on its own."""

    alias: str
    keeper: str

    @property
    def expr(self) -> Binary:
        return Binary(op="==", left=Ref(name=self.alias), right=Ref(name=self.keeper))


def _tied_items(space: Space, stage_name: str, part: StageModule) -> Assignment:
    return tuple(
        (key, value)
        for c, value in part.choices.items()
        if (key := f"{stage_name}.{c}") in space.ties
    )


def _holds(expr, env: dict[str, Value]) -> bool:
    try:
        return bool(evaluate(expr, env.__getitem__))
    except (ExprError, KeyError):
        return False


_FIRST_ONLY: dict[int, tuple[LayerOption, tuple[str, ...]]] = {}


def first_layer_only(option: LayerOption) -> tuple[str, ...]:
    """The per-layer choices of an alternative that only its first layer in a stage uses.

    The stride rule gives every layer after a stage's first stride 1, so a per-layer
    choice that is only ever a `stride` value decides nothing in those layers: the
    canonical architecture leaves it out of them, and it is not counted there.
    """
    # Asked for every layer of every validation: cached by identity (the entry holds the
    # option, so its id is not reused while the entry lives; options are frozen).
    entry = _FIRST_ONLY.get(id(option))
    if entry is not None and entry[0] is option:
        return entry[1]
    result: list[str] = []
    for key in option.choices:
        uses = [
            (attr, expr)
            for node in option.nodes
            for attr, expr in node.attrs.items()
            if key in _layer_names(expr)
        ]
        conditions = [n for n in option.nodes if n.condition and key in _layer_names(n.condition)]
        if (
            uses
            and not conditions
            and all(a == "stride" and isinstance(e, LayerRef) for a, e in uses)
        ):
            result.append(key)
    if len(_FIRST_ONLY) >= 4096:
        _FIRST_ONLY.clear()
    _FIRST_ONLY[id(option)] = (option, tuple(result))
    return tuple(result)


def _layer_names(expr: Expr) -> set[str]:
    if isinstance(expr, LayerRef):
        return {expr.name}
    if isinstance(expr, Unary):
        return _layer_names(expr.operand)
    if isinstance(expr, Binary):
        return _layer_names(expr.left) | _layer_names(expr.right)
    if isinstance(expr, Call):
        return set().union(*(_layer_names(a) for a in expr.args))
    return set()


def _layer_configurations(stage: Stage, first: bool = True) -> list[dict[str, Value]]:
    """Every distinct layer a slot of this stage can hold, in a fixed order.

    `first=False`: a slot after the first, where first-layer-only choices do not exist.
    """
    configs: list[dict[str, Value]] = []
    several = len(stage.options) > 1
    for option in stage.options:
        dropped = set() if first else set(first_layer_only(option))
        keys = [k for k in option.choices if k not in dropped]
        for values in itertools.product(*(option.choices[k] for k in keys)):
            layer: dict[str, Value] = {"op": option.label} if several else {}
            layer.update(zip(keys, values, strict=True))
            configs.append(layer)
    return configs


_INDEX_CACHE: dict[int, tuple[Space, SpaceIndex]] = {}
_INDEX_CACHE_SIZE = 32


def index_of(space: Space) -> SpaceIndex:
    """The (cached) index of a space; building it validates that rules can be counted."""
    # Keyed by identity: the cache holds the space itself, so an id is never reused while
    # its entry lives. Spaces are frozen, so the index never goes stale.
    entry = _INDEX_CACHE.get(id(space))
    if entry is not None and entry[0] is space:
        return entry[1]
    index = SpaceIndex(space)
    if len(_INDEX_CACHE) >= _INDEX_CACHE_SIZE:
        _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
    _INDEX_CACHE[id(space)] = (space, index)
    return index


# ===== public operations ===============================================================


def space_size(space: Space) -> int:
    """The exact number of architectures (rules applied), as a Python int."""
    return index_of(space).size()


def stage_module_choices(space: Space, stage: Stage) -> dict[str, list[Value]]:
    """A stage's own stage-level choices plus those merged into another stage's (ties)."""
    choices = dict(stage.choices)
    for alias, keeper in space.ties.items():
        owner, _, name = alias.partition(".")
        if owner == stage.name and name:
            choices[name] = _domain_of(space, keeper)
    return choices


def _domain_of(space: Space, key: str) -> list[Value]:
    if "." in key:
        owner, name = key.split(".", 1)
        return list(space.stage(owner).choices[name])
    return list(space.choices[key])


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


def _layer_lists(index: SpaceIndex, stage_name: str, depth: int) -> Iterator[tuple]:
    """Every layer list of a stage at one depth (the first slot has its own choices)."""
    slots = [index.position_configs(stage_name, position) for position in range(depth)]
    return itertools.product(*slots)


def _stage_modules(space: Space, index: SpaceIndex, stage: Stage) -> list[StageModule]:
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


def sample(space: Space, n: int, seed: int = 0) -> list[Architecture]:
    """`n` architectures drawn uniformly (with replacement) from the constrained space."""
    rng = random.Random(seed)
    index = index_of(space)
    return [index.sample(rng) for _ in range(n)]


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
        found = _find(choices[name], value)
        if found is None:
            raise ArchitectureError(
                f"choice '{name}' = {format_value(value)} is not one of {_show(choices[name])}"
            )
        canonical_choices[name] = found
    missing = [c for c in choices if c not in part.choices]
    if missing:
        raise ArchitectureError(f"missing stage choice '{missing[0]}'")
    layers = [_check_layer(stage, i, layer) for i, layer in enumerate(part.layers[: part.depth])]
    return StageModule(depth=part.depth, choices=canonical_choices, layers=layers)


def _check_layer(stage: Stage, index: int, layer: dict[str, Value]) -> dict[str, Value]:
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
    dropped = first_layer_only(option) if index > 0 else ()
    for key, value in layer.items():
        if key == "op":
            continue
        if key not in option.choices:
            known = ", ".join(option.choices) or "none"
            raise ArchitectureError(
                f"{where}: unknown choice '{key}' (choices of {option.label}: {known})"
            )
        found = _find(option.choices[key], value)
        if found is None:
            raise ArchitectureError(
                f"{where}: {key} = {format_value(value)} is not one of {_show(option.choices[key])}"
            )
        if key not in dropped:
            result[key] = found
    missing = [k for k in option.choices if k not in layer and k not in dropped]
    if missing:
        raise ArchitectureError(f"{where}: missing choice '{missing[0]}'")
    return result


def canonicalize(space: Space, raw: Architecture | dict) -> Architecture:
    """Check an architecture against its space and return its canonical form.

    Layers beyond a stage's depth (unused slots) are dropped, and a merged choice given
    under both of its names must agree; anything else outside the space is an error.
    """
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
    raw_globals = data.get("globals") or {}
    raw_stages = data.get("stages")
    if not isinstance(raw_globals, dict):
        raise ArchitectureError("'globals' must be an object")
    if not isinstance(raw_stages, dict):
        raise ArchitectureError("'stages' must be an object with one entry per stage")
    globals_: dict[str, Value] = {}
    aliases: list[tuple[str, Value]] = []
    for name, value in raw_globals.items():
        if name in space.ties:
            # A merged global given under its alias name must agree with the keeper.
            aliases.append((name, value))
            continue
        if name not in space.choices:
            known = ", ".join(space.choices) or "none"
            raise ArchitectureError(f"globals.{name}: unknown choice (global choices: {known})")
        found = _find(space.choices[name], value)
        if found is None:
            raise ArchitectureError(
                f"globals.{name}: {format_value(value)} is not one of {_show(space.choices[name])}"
            )
        globals_[name] = found
    for name in space.choices:
        if name not in globals_:
            raise ArchitectureError(
                f"globals.{name}: missing (one of {_show(space.choices[name])})"
            )
    names = [s.name for s in space.stages]
    extra = [s for s in raw_stages if s not in names]
    if extra:
        raise ArchitectureError(f"stages.{extra[0]}: no such stage (stages: {', '.join(names)})")
    stages: dict[str, StageArch] = {}
    for stage in space.stages:
        raw_stage = raw_stages.get(stage.name)
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
        own = {k: v for k, v in raw_choices.items() if f"{stage.name}.{k}" not in space.ties}
        for k, v in raw_choices.items():
            if f"{stage.name}.{k}" in space.ties:
                aliases.append((f"{stage.name}.{k}", v))
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
                    raise ArchitectureError(
                        f"missing stage choice '{name}' (one of {_show(domain)})"
                    )
                found = _find(domain, own[name])
                if found is None:
                    raise ArchitectureError(
                        f"choice '{name}' = {format_value(own[name])} is not one of {_show(domain)}"
                    )
                choices[name] = found
            checked = [_check_layer(stage, i, layer) for i, layer in enumerate(layers[:depth])]
        except ArchitectureError as error:
            raise ArchitectureError(f"{where}: {error}") from None
        stages[stage.name] = StageArch(depth=depth, choices=choices, layers=checked)
    arch = Architecture(space=space.name, globals=globals_, stages=stages)
    env = index_of(space).scalars(arch)
    for alias, value in aliases:
        keeper = env[space.ties[alias]]
        if _find([keeper], value) is None:
            where = (
                f"stages.{alias.replace('.', '.choices.', 1)}"
                if "." in alias
                else f"globals.{alias}"
            )
            raise ArchitectureError(
                f"{where}: {format_value(value)} differs from "
                f"{space.ties[alias]} = {format_value(keeper)}, which it must equal"
            )
    for rule in space.rules:
        if not _holds(rule.expr, env):
            values = ", ".join(
                f"{n} = {format_value(env[n])}" for n in names_in(rule.expr) if n in env
            )
            where = f" (rule at {rule.where})" if rule.where else ""
            raise ArchitectureError(f"breaks the rule `{rule.text}`{where}: {values}")
    for unit_name, modules in space.restrictions.items():
        unit = next(u for u in space.module_units() if u.name == unit_name)
        mine = []
        for s in unit.stages:
            # A restricted module lists a stage's merged (tied) choices too: fill them in.
            choices = dict(stages[s].choices)
            for alias, keeper in space.ties.items():
                owner, _, name = alias.partition(".")
                if owner == s and name and keeper in env:
                    choices[name] = env[keeper]
            mine.append(
                StageModule(depth=stages[s].depth, choices=choices, layers=stages[s].layers)
            )
        if not any(mine == list(module) for module in modules):
            raise ArchitectureError(
                f"stages.{unit_name}: this module is not one the reduced space allows"
            )
    return arch


def validate(space: Space, raw: Architecture | dict) -> Architecture:
    """Alias of `canonicalize` for readability at call sites that only check."""
    return canonicalize(space, raw)


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
            candidate = _mutate_layer(space, index, arch, rng)
        else:
            candidate = _mutate_stage(space, index, arch, rng)
        if candidate is not None and candidate != arch:
            try:
                return canonicalize(space, candidate)
            except ArchitectureError:
                continue
    return arch


def _mutate_stage(
    space: Space, index: SpaceIndex, arch: Architecture, rng: random.Random
) -> Architecture | None:
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
    space: Space, index: SpaceIndex, arch: Architecture, rng: random.Random
) -> Architecture | None:
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
    layers = _refit_positions(stage, layers, rng)
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
    stage: Stage, layers: list[dict[str, Value]], rng: random.Random
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
        for key in first_layer_only(option):
            if position > 0:
                layer.pop(key, None)
            elif key not in layer:
                domain = option.choices[key]
                layer[key] = domain[rng.randrange(len(domain))]
        result.append(layer)
    return result


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
            env[f"{stage_name}.depth"] = part.depth
            if part.depth == 0:
                env.update(absent_choices(index.stages[stage_name]))
            for choice, value in part.choices.items():
                env[f"{stage_name}.{choice}"] = value
            own = {c: v for c, v in part.choices.items() if f"{stage_name}.{c}" not in space.ties}
            stages[stage_name] = StageArch(
                depth=part.depth, choices=own, layers=[dict(x) for x in part.layers]
            )
    for alias, keeper in space.ties.items():
        if alias in env and keeper in env and not same_value(env[alias], env[keeper]):
            return None
    if not all(_holds(rule.expr, env) for rule in space.rules):
        return None
    return Architecture(space=space.name, globals=dict(globals_), stages=stages)


def decision_value(arch: Architecture, name: str) -> Value | None:
    """An architecture's value of the stage decision `STAGE.depth` or `STAGE.CHOICE`."""
    stage, _, choice = name.partition(".")
    chosen = arch.stages.get(stage)
    if chosen is None:
        return None
    return chosen.depth if choice == "depth" else chosen.choices.get(choice)


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
                owner, _, choice = alias.partition(".")
                if owner == stage:
                    holder, _, key = keeper.partition(".")
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


def iter_architectures(space: Space) -> Iterator[Architecture]:
    """Every architecture of the space, in a deterministic order, streamed.

    Walks the rule-satisfying scalar assignments of each component (never the product of
    all modules), then every choice of layers for those scalars, so a tied U-Net space is
    enumerated at the speed of its valid architectures.
    """
    index = index_of(space)
    joints = [component.joint for component in index.components]
    for combo in itertools.product(*joints):
        env: dict[str, Value] = {}
        for component, joint in zip(index.components, combo, strict=True):
            for variable_index, state_index in zip(component.variables, joint, strict=True):
                env.update(index.variables[variable_index].states[state_index])
        globals_ = {name: env[name] for name in space.choices}
        per_unit = [list(_unit_layer_choices(space, index, unit, env)) for unit in index.units]
        for parts in itertools.product(*per_unit):
            stages = {name: stage for unit_parts in parts for name, stage in unit_parts}
            # Values come from the space itself: skip re-validation in this hot loop.
            yield Architecture.model_construct(space=space.name, globals=globals_, stages=stages)


def _unit_layer_choices(
    space: Space, index: SpaceIndex, unit: Unit, env: dict[str, Value]
) -> Iterator[list[tuple[str, StageArch]]]:
    restricted = space.restrictions.get(unit.name)
    if restricted is not None:
        for module in restricted:
            if all(
                _state_matches(index.stages[s], p, env)
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
        depth = int(env[f"{stage_name}.depth"])  # type: ignore[arg-type]
        choices = {c: env[f"{stage_name}.{c}"] for c in stage.choices} if depth else {}
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
