"""Draft -> Space: resolve names, merge ties, check against the op catalog, freeze.

The rules and ties (`require`) are lowered by `lang/rules.py`; a reduced space's modules
(`restrict`) are checked against the finished Space at the end.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from autobuild_dsl.lang.diagnostics import DiagnosticSink, Location
from autobuild_dsl.lang.draft import Draft, DraftNode, DraftStage, values_of
from autobuild_dsl.lang.lower import INPUT_KEYS
from autobuild_dsl.lang.rules import RuleLowering
from autobuild_dsl.lang.syntax import RestrictModule, rebuild
from autobuild_dsl.space.expr import (
    Const,
    Expr,
    ExprError,
    LayerRef,
    Ref,
    Value,
    evaluate,
    format_value,
    names_in,
)
from autobuild_dsl.space.keys import DEPTH, DecisionKey
from autobuild_dsl.space.model import (
    INPUT_NAMES,
    FixedBlock,
    LayerOption,
    NodeTemplate,
    SkipSpec,
    Space,
    Stage,
    StageModule,
    Unit,
)
from autobuild_dsl.space.ops import CATALOG

_MAX_TYPECHECK_COMBINATIONS = 4096


class Finaliser(RuleLowering):
    def __init__(self, draft: Draft, sink: DiagnosticSink) -> None:
        self.draft = draft
        self.sink = sink
        self.stages = [p for p in draft.parts if isinstance(p, DraftStage)]
        self.stage_names = {s.name for s in self.stages}
        self.ties: dict[str, str] = {}  # set by `_requires`, used once the rules are in

    def error(self, loc: Location, message: str) -> None:
        self.sink.at(loc, message)

    # Decisions are named by keys: `name` (global), `stage.name` (stage choice), `stage.depth`.
    def decision_domains(self) -> dict[str, list[Value]]:
        domains: dict[str, list[Value]] = values_of(self.draft.choices)
        for stage in self.stages:
            for name, domain in stage.choices.items():
                domains[DecisionKey.choice(stage.name, name)] = domain.value
            if stage.depths:
                domains[DecisionKey.depth(stage.name)] = list(stage.depths)
        return domains

    def run(self) -> Space | None:
        draft = self.draft
        before = len(self.sink.items)
        self._check_complete()
        domains = self.decision_domains()
        ties, rules = self._requires(domains)
        space_lets = self._resolve_lets(None, domains)
        input_exprs = {
            k: self._resolve(v.value, None, space_lets, domains, v.loc, context="input")
            for k, v in draft.input.items()
        }
        for key, expr in input_exprs.items():
            loc = draft.input[key].loc
            self._check_typed(expr, INPUT_KEYS[key], domains, loc, f"input {key}")
        parts = self._parts(space_lets, domains)
        skips = self._skips()
        units = self._units()
        # Merged decisions: the representative's domain is the intersection of both.
        choices = values_of(draft.choices)
        stage_choices = {s.name: values_of(s.choices) for s in self.stages}
        for alias, keeper in ties.items():
            keeper_domain = domains[keeper]
            _set_domain(choices, stage_choices, keeper, keeper_domain)
            _drop_domain(choices, stage_choices, alias)
        parts = [
            p.model_copy(update={"choices": stage_choices[p.name]}) if isinstance(p, Stage) else p
            for p in parts
        ]
        if len(self.sink.items) > before:
            return None
        space = Space(
            name=draft.name,
            description=draft.description,
            extends=draft.extends,
            input=input_exprs,
            lets={},
            choices=choices,
            parts=parts,
            skips=skips,
            units=units,
            ties=ties,
            rules=rules,
        )
        restrictions = self._restrictions(space)
        if restrictions:
            space = space.model_copy(update={"restrictions": restrictions})
        if draft.codes:
            space = space.model_copy(update={"codes": dict(draft.codes)})
        if len(self.sink.items) > before:
            return None
        return space

    def _check_complete(self) -> None:
        """A space needs a stage and an input; a stage needs a depth and a layer."""
        draft = self.draft
        if not self.stages:
            self.error(draft.loc, f"space '{draft.name}' has no stage: nothing to search")
        for stage in self.stages:
            if not stage.depths and not stage.depth_error:
                self.error(
                    stage.loc, f"stage '{stage.name}' needs a depth (`depth 2..4` or `depth 3`)"
                )
            if not stage.options:
                self.error(stage.loc, f"stage '{stage.name}' needs a layer (`layer OP(...)`)")
        for key in ("channels", "size"):
            if key not in draft.input:
                self.error(draft.loc, f"space '{draft.name}' needs `input({key} = ...)`")

    def _parts(
        self, space_lets: dict[str, Expr], domains: dict[str, list[Value]]
    ) -> list[Stage | FixedBlock]:
        parts: list[Stage | FixedBlock] = []
        stage_index = 0
        for part in self.draft.parts:
            if isinstance(part, DraftStage):
                parts.append(self._stage(part, stage_index, space_lets, domains))
                stage_index += 1
                continue
            nodes = [self._node(n, None, space_lets, domains) for n in part.nodes]
            block = FixedBlock(
                kind=part.kind,  # type: ignore[arg-type]
                name=part.name,
                section=part.section,
                nodes=nodes,
                where=str(part.loc),
            )
            parts.append(block)
        return parts

    def _canonical_key(
        self, name: str, stage: DraftStage | None, domains: dict[str, list[Value]]
    ) -> str | None:
        if "." in name:
            return name if name in domains else None
        if stage is not None and name == DEPTH and DecisionKey.depth(stage.name) in domains:
            # A bare `depth` inside a stage (or a family's body) is that stage's depth.
            return DecisionKey.depth(stage.name)
        if (
            stage is not None
            and DecisionKey.choice(stage.name, name) in domains
            and name in stage.choices
        ):
            return DecisionKey.choice(stage.name, name)
        if name in self.draft.choices:
            return name
        return None

    # ----- names --------------------------------------------------------------------

    def _resolve_lets(
        self,
        stage: DraftStage | None,
        domains: dict[str, list[Value]],
        outer: dict[str, Expr] | None = None,
    ) -> dict[str, Expr]:
        resolved: dict[str, Expr] = dict(outer or {})
        lets = stage.lets if stage is not None else self.draft.lets
        for name, let in lets.items():
            resolved[name] = self._resolve(let.value, stage, resolved, domains, let.loc, "let")
        return resolved

    def _resolve(
        self,
        expr: Expr,
        stage: DraftStage | None,
        lets: dict[str, Expr],
        domains: dict[str, list[Value]],
        loc: Location,
        context: str,
    ) -> Expr:
        """Inline constants, turn names into decision keys, and unknown bare names into symbols."""
        ties = self.ties

        def walk(node: Expr) -> Expr:
            if isinstance(node, Ref):
                name = node.name
                if name in lets:
                    return lets[name]
                key = self._canonical_key(name, stage, domains)
                if key is not None:
                    return Ref(name=ties.get(key, key))
                if "." in name:
                    stage_name = name.split(".", 1)[0]
                    if stage_name not in self.stage_names:
                        self.error(loc, f"unknown stage '{stage_name}' in '{name}'")
                    else:
                        self.error(
                            loc, f"stage '{stage_name}' has no choice '{name.split('.', 1)[1]}'"
                        )
                    return Const(value=0)
                if name in INPUT_NAMES and context in ("attr", "let"):
                    # What enters the layer: known when the network is built.
                    return Ref(name=name)
                if name == "depth" and stage is None:
                    self.error(
                        loc,
                        "a bare `depth` is the depth of the stage it is written in; "
                        "outside a stage write STAGE.depth (e.g. s1.depth)",
                    )
                    return Const(value=0)
                if context == "condition":
                    self.error(loc, f"unknown name '{name}' in a condition")
                    return Const(value=False)
                # A bare word such as `relu` is a symbol value; attribute checks catch typos.
                return Const(value=name)
            return rebuild(node, walk)

        return walk(expr)

    # ----- stages and nodes ---------------------------------------------------------

    def _stage(
        self,
        stage: DraftStage,
        index: int,
        space_lets: dict[str, Expr],
        domains: dict[str, list[Value]],
    ) -> Stage:
        lets = self._resolve_lets(stage, domains, outer=space_lets)
        options = []
        labels_seen: dict[str, Location] = {}
        ops = [o.nodes[0].op for o in stage.options]
        for number, option in enumerate(stage.options, start=1):
            label = option.label
            if label is None:
                first = option.nodes[0].op
                label = first if ops.count(first) == 1 else f"{first}{number}"
            if label in labels_seen:
                self.error(
                    option.loc,
                    f"two layer alternatives are labelled '{label}'; name them with `as NAME`",
                )
            labels_seen[label] = option.loc
            layer_domains: dict[str, list[Value]] = {}
            for node in option.nodes:
                for key, domain in node.domains.items():
                    if key in layer_domains:
                        self.error(
                            node.args[key].loc, f"two per-layer choices named '{key}' in one layer"
                        )
                    layer_domains[key] = domain
            nodes = [self._node(n, stage, lets, domains, layer_domains) for n in option.nodes]
            options.append(
                LayerOption(
                    label=label, nodes=nodes, choices=layer_domains, residual=option.residual
                )
            )
        before = [self._node(n, stage, lets, domains) for n in stage.before]
        after = [self._node(n, stage, lets, domains) for n in stage.after]
        for name, domain in stage.choices.items():
            if not domain.value:
                self.error(domain.loc, f"choice '{name}' has no value")
        return Stage(
            name=stage.name,
            section=stage.section,
            index=index,
            depths=list(stage.depths or [1]),
            options=options,
            choices=values_of(stage.choices),
            lets={},
            before=before,
            after=after,
            where=str(stage.loc),
        )

    def _node(
        self,
        node: DraftNode,
        stage: DraftStage | None,
        lets: dict[str, Expr],
        domains: dict[str, list[Value]],
        layer_domains: dict[str, list[Value]] | None = None,
    ) -> NodeTemplate:
        spec = CATALOG.get(node.op)
        attrs: dict[str, Expr] = {}
        if spec is None:
            known = ", ".join(sorted(CATALOG))
            self.error(node.loc, f"unknown operation '{node.op}' (operations: {known})")
        for key, arg in node.args.items():
            expr, loc = arg.value, arg.loc
            resolved = self._resolve(expr, stage, lets, domains, loc, context="attr")
            attrs[key] = resolved
            if spec is None:
                continue
            attr = spec.attrs.get(key)
            if attr is None:
                known = ", ".join(spec.attrs)
                self.error(loc, f"'{node.op}' has no attribute '{key}' (attributes: {known})")
                continue
            if isinstance(resolved, LayerRef):
                for value in (layer_domains or {}).get(key, []):
                    if not attr.accepts(value):
                        self.error(
                            loc,
                            f"{node.op}.{key} must be {attr.type_name()}, got {format_value(value)}",
                        )
                        break
                continue
            self._check_typed(resolved, attr.kind, domains, loc, f"{node.op}.{key}", attr)
        if spec is not None:
            for key, attr in spec.attrs.items():
                if attr.required and key not in node.args:
                    self.error(node.loc, f"'{node.op}' needs the attribute '{key}' ({attr.doc})")
        condition = None
        if node.condition is not None:
            condition = self._resolve(
                node.condition, stage, lets, domains, node.loc, context="condition"
            )
            self._check_typed(condition, "bool", domains, node.loc, "the condition")
        return NodeTemplate(op=node.op, attrs=attrs, condition=condition, where=str(node.loc))

    def _check_typed(
        self,
        expr: Expr,
        kind: str,
        domains: dict[str, list[Value]],
        loc: Location,
        what: str,
        attr: Any = None,
    ) -> None:
        """Evaluate the expression for the choices it uses and check every result's type."""
        names = names_in(expr)
        # The layer's input is known only when a network is built: check with a typical one.
        domains = {**domains, "in_channels": [64], "in_size": [32]}
        combos = 1
        for name in names:
            combos *= len(domains.get(name, [0]))
        if combos > _MAX_TYPECHECK_COMBINATIONS:
            return
        spaces = [domains.get(name, [0]) for name in names]
        for values in itertools.product(*spaces):
            env = dict(zip(names, values, strict=True))
            try:
                value = evaluate(expr, env.__getitem__)
            except (ExprError, KeyError) as error:
                self.error(loc, f"{what}: {error}")
                return
            ok = attr.accepts(value) if attr is not None else _kind_accepts(kind, value)
            if not ok:
                expected = (
                    attr.type_name()
                    if attr is not None
                    else {"int": "an integer", "bool": "true or false"}.get(kind, kind)
                )
                if isinstance(value, str) and (attr is None or attr.kind != "enum"):
                    self.error(
                        loc,
                        f"{what}: unknown name '{value}' (not a choice, a constant or a stage value here)",
                    )
                else:
                    when = ", ".join(f"{n} = {format_value(v)}" for n, v in env.items())
                    suffix = f" (when {when})" if when else ""
                    self.error(loc, f"{what} must be {expected}, got {format_value(value)}{suffix}")
                return

    # ----- skips, units, restrictions -----------------------------------------------

    def _skips(self) -> list[SkipSpec]:
        result = []
        for source, target, loc in self.draft.skips:
            ok = True
            for name in (source, target):
                if name not in self.stage_names:
                    self.error(loc, f"skip names an unknown stage '{name}'")
                    ok = False
            if ok and source == target:
                self.error(loc, "a skip connects two different stages")
                ok = False
            if ok:
                order = [s.name for s in self.stages]
                if order.index(source) > order.index(target):
                    self.error(loc, f"a skip runs forward: '{source}' comes after '{target}'")
                    ok = False
            if ok:
                result.append(SkipSpec(source=source, target=target))
        return result

    def _units(self) -> list[Unit]:
        result = []
        taken: dict[str, str] = {}
        order = [s.name for s in self.stages]
        for name, members, loc in self.draft.units:
            if name in self.stage_names and name not in members:
                self.error(loc, f"unit '{name}' has the name of a stage")
                continue
            bad = [m for m in members if m not in self.stage_names]
            if bad:
                self.error(loc, f"unit '{name}' names an unknown stage '{bad[0]}'")
                continue
            positions = [order.index(m) for m in members]
            if positions != list(range(positions[0], positions[0] + len(positions))):
                self.error(loc, f"unit '{name}' must list consecutive stages in order")
                continue
            clash = [m for m in members if m in taken]
            if clash:
                self.error(loc, f"stage '{clash[0]}' is already in unit '{taken[clash[0]]}'")
                continue
            for m in members:
                taken[m] = name
            result.append(Unit(name=name, stages=members))
        return result

    def _restrictions(self, space: Space) -> dict[str, list[list[StageModule]]]:
        result: dict[str, list[list[StageModule]]] = {}
        first_at: dict[str, Location] = {}
        units = {u.name: u for u in space.module_units()}
        for restriction in self.draft.restrictions:
            target, loc = restriction.target.text, restriction.target.loc
            unit = units.get(target)
            if unit is None:
                self.error(
                    loc,
                    f"restrict names an unknown stage or unit '{target}' (units: {', '.join(units)})",
                )
                continue
            modules: list[list[StageModule]] = []
            seen: dict[str, int] = {}
            for number, module in enumerate(restriction.modules, start=1):
                parts = self._module(space, unit, number, module)
                if parts is None:
                    continue
                key = repr([p.model_dump() for p in parts])
                if key in seen:
                    self.error(
                        module.loc,
                        f"module {number} of '{unit.name}' is listed twice (first as module {seen[key]})",
                    )
                    continue
                seen[key] = number
                modules.append(parts)
            if target in result:
                self.error(loc, f"'{target}' is restricted twice (first at {first_at[target]})")
            first_at.setdefault(unit.name, loc)
            result[unit.name] = modules
        return result

    def _module(
        self, space: Space, unit: Unit, number: int, module: RestrictModule
    ) -> list[StageModule] | None:
        """One module of a restriction, checked; None (reported) when it is wrong."""
        from autobuild_dsl.space.decisions import ArchitectureError, check_stage_module

        if len(module.parts) != len(unit.stages):
            self.error(
                module.loc,
                f"module {number} has {len(module.parts)} stage part(s); unit '{unit.name}' has {len(unit.stages)} ({' + '.join(unit.stages)})",
            )
            return None
        parts: list[StageModule | None] = []
        for stage_name, written in zip(unit.stages, module.parts, strict=True):
            choices = written.choices.values() if written.choices is not None else {}
            layers = [layer.values() for layer in written.layers]
            part: StageModule | None = StageModule(
                depth=len(layers), choices=choices, layers=layers
            )
            try:
                part = check_stage_module(space, space.stage(stage_name), part)
            except ArchitectureError as error:
                where = f"module {number} of '{unit.name}'"
                if len(unit.stages) > 1:
                    where += f", stage '{stage_name}'"
                # Point at the stage part that is wrong, or at its wrong layer.
                at = written.loc
                layer = re.match(r"layer (\d+):", str(error))
                if layer and int(layer.group(1)) < len(written.layers):
                    at = written.layers[int(layer.group(1))].loc
                self.error(at, f"{where}: {error}")
                part = None
            parts.append(part)
        if any(p is None for p in parts):
            return None
        return parts  # type: ignore[return-value]


def _kind_accepts(kind: str, value: Value) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    return True


def _set_domain(choices: dict, stage_choices: dict, key: str, domain: list[Value]) -> None:
    if "." in key:
        stage, name = key.split(".", 1)
        if name != "depth":
            stage_choices[stage][name] = domain
    else:
        choices[key] = domain


def _drop_domain(choices: dict, stage_choices: dict, key: str) -> None:
    if "." in key:
        stage, name = key.split(".", 1)
        stage_choices[stage].pop(name, None)
    else:
        choices.pop(key, None)
