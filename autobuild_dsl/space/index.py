"""The decision index of a Space: its counting variables and rule components, built once.

Decisions come in three kinds. Global choices (`resolution`) and per-stage scalars (a
stage's depth and its stage-level choices, keyed `stage.name`) are the *scalars*; rules
only ever name scalars. Per-layer choices (`kernel`, `expand`, the alternative) are free
within a stage once its depth is known. So the number of architectures is a sum over
scalar assignments that satisfy the rules of a product of per-stage layer counts, which is
computed exactly, component by component, without enumerating architectures.

`index_of(space)` builds the index once and the Space holds it (spaces are frozen, so it
never goes stale); sampling, canonical form, mutation and enumeration all read it.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.chain import RuleDP, TooManyStates
from autobuild_dsl.space.expr import Binary, Expr, ExprError, Ref, Value, evaluate, names_in
from autobuild_dsl.space.keys import DecisionKey
from autobuild_dsl.space.layers import first_layer_only, layer_configurations
from autobuild_dsl.space.model import LayerOption, Space, Stage, StageModule, Unit
from autobuild_dsl.space.values import same_value

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


class DecisionIndex:
    """Everything derived from a Space once: layer configurations, states, components."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.stages = {stage.name: stage for stage in space.stages}
        # Per (stage, alternative): its first-layer-only choices (asked for every layer of
        # every validation, so computed once here).
        self._first_only: dict[tuple[str, str], tuple[str, ...]] = {}
        # What a stage's first layer can hold, and what every later layer can hold: a
        # per-layer stride choice is a decision of the first layer only (the stride rule).
        self.layer_configs = {s.name: layer_configurations(s) for s in space.stages}
        self.later_configs = {s.name: layer_configurations(s, first=False) for s in space.stages}
        self.units = space.module_units()
        self.unit_of = {s: u for u in self.units for s in u.stages}
        self.variables: list[_Variable] = []
        self.variable_of: dict[str, int] = {}
        # The space's rules, plus one equality per tied choice that a `restrict` list fixes
        # inside a unit (the module carries its own value of the tie, which must agree).
        self.rules: list[Any] = list(space.rules)
        for name, domain in space.choices.items():
            states = [((name, v),) for v in domain]
            self._add(_Variable(name=name, keys=[name], states=states, weights=[1] * len(domain)))
        for unit in self.units:
            states, weights = self._unit_states(unit)
            keys = [k for s in unit.stages for k in _stage_keys(self.stages[s])]
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

    def _unit_states(self, unit: Unit) -> tuple[list[Assignment], list[int]]:
        restricted = self.space.restrictions.get(unit.name)
        if restricted is not None:
            counts: dict[Assignment, int] = {}
            for module in restricted:
                state = tuple(
                    item
                    for stage_name, part in zip(unit.stages, module, strict=True)
                    for item in (
                        *stage_state(self.stages[stage_name], part.depth, part.choices),
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
                    options.append((stage_state(stage, 0, {}), fillings))
                    continue
                for values in itertools.product(*stage.choices.values()):
                    choices = dict(zip(stage.choices, values, strict=True))
                    options.append((stage_state(stage, depth, choices), fillings))
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

    def first_only(self, stage: Stage, option: LayerOption) -> tuple[str, ...]:
        """`first_layer_only(option)`, computed once per alternative of this space."""
        key = (stage.name, option.label)
        found = self._first_only.get(key)
        if found is None:
            found = self._first_only[key] = first_layer_only(option)
        return found

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
            if weight and all(holds(rule.expr, env) for rule in rules):
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

    def scalars(self, arch: Architecture) -> dict[str, Value]:
        """The scalar decisions of an architecture (globals, depths, stage choices)."""
        env: dict[str, Value] = dict(arch.globals)
        for name, stage in arch.stages.items():
            env[DecisionKey.depth(name)] = stage.depth
            if stage.depth == 0 and name in self.stages:
                env.update(absent_choices(self.stages[name]))
            for choice, value in stage.choices.items():
                env[DecisionKey.choice(name, choice)] = value
        return env

    def with_ties(self, scalars: dict[str, Value]) -> dict[str, Value]:
        """`scalars` plus every tied (merged) alias, holding its keeper's value: what
        expressions that name either side read."""
        env = dict(scalars)
        for alias, keeper in self.space.ties.items():
            if keeper in env:
                env[alias] = env[keeper]
        return env

    def sample(self, rng: random.Random) -> Architecture:
        """One architecture drawn uniformly (space/sampling.py)."""
        from autobuild_dsl.space.sampling import draw

        return draw(self, rng)

    def resample_unit(self, arch: Architecture, unit: Unit, rng: random.Random) -> Architecture:
        """Replace one unit's whole module, keeping every rule satisfied."""
        from autobuild_dsl.space.sampling import resample_unit

        return resample_unit(self, arch, unit, rng)


def index_of(space: Space) -> DecisionIndex:
    """The decision index of a space, built on first use and held by the space itself;
    building it validates that the rules can be counted."""
    index = space._decision_index
    # A copy of a space (model_copy) carries its original's index: rebuild for the copy.
    if index is None or index.space is not space:
        index = DecisionIndex(space)
        space._decision_index = index
    return index


def _stage_keys(stage: Stage) -> list[str]:
    return [DecisionKey.depth(stage.name)] + [
        DecisionKey.choice(stage.name, c) for c in stage.choices
    ]


def absent_choices(stage: Stage) -> dict[str, Value]:
    """What a stage's own choices read as when the stage is absent (depth 0): their first
    values. They are not decisions then (not counted, not in the architecture); rules and
    expressions that name them still get a value."""
    return {DecisionKey.choice(stage.name, c): d[0] for c, d in stage.choices.items() if d}


def stage_state(stage: Stage, depth: int, choices: dict[str, Value]) -> Assignment:
    if depth == 0:
        return ((DecisionKey.depth(stage.name), 0), *absent_choices(stage).items())
    return (
        (DecisionKey.depth(stage.name), depth),
        *((DecisionKey.choice(stage.name, c), choices[c]) for c in stage.choices),
    )


def state_matches(stage: Stage, part: StageModule, env: dict[str, Value]) -> bool:
    """Whether a restricted module's stage part has the scalar values `env` holds."""
    if env.get(DecisionKey.depth(stage.name)) != part.depth:
        return False
    if part.depth == 0:
        return True
    if not all(
        same_value(env[DecisionKey.choice(stage.name, c)], part.choices[c]) for c in stage.choices
    ):
        return False
    # A tied choice the module carries must agree with the value the tie holds.
    return all(
        same_value(env[key], value)
        for c, value in part.choices.items()
        if c not in stage.choices and (key := DecisionKey.choice(stage.name, c)) in env
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
        if (key := DecisionKey.choice(stage_name, c)) in space.ties
    )


def holds(expr: Expr, env: dict[str, Value]) -> bool:
    """Whether a rule holds under `env`; a rule that cannot be evaluated does not."""
    try:
        return bool(evaluate(expr, env.__getitem__))
    except (ExprError, KeyError):
        return False
