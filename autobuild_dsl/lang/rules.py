"""`require`: rules over the decisions, and ties (`require a == b`) that merge two."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from autobuild_dsl.lang.diagnostics import DiagnosticSink, Location
from autobuild_dsl.lang.draft import same_value
from autobuild_dsl.lang.syntax import rebuild
from autobuild_dsl.space.expr import (
    Binary,
    Expr,
    ExprError,
    Ref,
    Value,
    evaluate,
    format_expr,
    format_value,
    names_in,
)
from autobuild_dsl.space.keys import DecisionKey
from autobuild_dsl.space.model import Rule

if TYPE_CHECKING:
    from autobuild_dsl.lang.draft import Draft, DraftStage


class RuleLowering:
    """The `require` half of the Finaliser (which supplies `_resolve` and `error`)."""

    draft: Draft
    sink: DiagnosticSink
    stages: list[DraftStage]
    stage_names: set[str]
    ties: dict[str, str]
    error: Callable[[Location, str], None]
    _resolve: Callable[..., Expr]

    def _rank(self, key: str) -> int:
        if "." not in key:
            return list(self.draft.choices).index(key) if key in self.draft.choices else -1
        order = [s.name for s in self.stages]
        stage = key.split(".", 1)[0]
        return len(self.draft.choices) + (order.index(stage) if stage in order else 0)

    def _requires(self, domains: dict[str, list[Value]]) -> tuple[dict[str, str], list[Rule]]:
        ties: dict[str, str] = {}
        rules: list[Rule] = []

        def find(key: str) -> str:
            while key in ties:
                key = ties[key]
            return key

        inline = self._rule_inliner(domains)
        for written, loc in self.draft.requires:
            expr = inline(written, loc)
            if expr is None:
                continue
            if not names_in(expr):
                # No decision in it (constants only): it holds for all or for none.
                try:
                    holds = bool(evaluate(expr, lambda name: 0))
                except ExprError:
                    holds = False
                if not holds:
                    self.error(
                        loc,
                        f"no architecture satisfies `{format_expr(written, source=True)}`: "
                        "it names no choice and is always false",
                    )
                    continue
            if (
                isinstance(expr, Binary)
                and expr.op == "=="
                and isinstance(expr.left, Ref)
                and isinstance(expr.right, Ref)
                and not DecisionKey.parse(expr.left.name).is_depth
                and not DecisionKey.parse(expr.right.name).is_depth
            ):
                a, b = find(expr.left.name), find(expr.right.name)
                if a == b:
                    continue
                # The decision declared first (globals, then stages in order) keeps the value.
                if self._rank(b) < self._rank(a):
                    a, b = b, a
                merged = [v for v in domains[a] if any(same_value(v, w) for w in domains[b])]
                if not merged:
                    self.error(
                        loc,
                        f"no architecture satisfies this rule: {a} takes {_show(domains[a])} and {b} takes {_show(domains[b])}, with no value in common",
                    )
                    continue
                domains[a] = merged
                ties[b] = a
                continue
            # The text is the rule as written (with its `let` names); the expr is inlined.
            rules.append(Rule(expr=expr, text=format_expr(written, source=True), where=str(loc)))
        # Flatten chains so every alias points straight at its keeper.
        ties = {alias: find(alias) for alias in ties}
        # Rules are stored over keeper keys.
        rules = [
            Rule(expr=_substitute_refs(rule.expr, ties), text=rule.text, where=rule.where)
            for rule in rules
        ]
        self.ties = ties
        return ties, rules

    def _rule_inliner(self, domains: dict[str, list[Value]]):  # type: ignore[no-untyped-def]
        """A function that inlines `let`s into a rule, or reports what the rule names wrongly.

        A top-level `let` is a shorthand for its expression, so a rule may name it
        (`require doubled > 32` with `let doubled = width * 2`); a stage's constants (its
        columns and `let`s) are named with the stage, `s1.hidden`. Returns None (after
        reporting) for a rule that names something a rule cannot see.
        """
        real_sink = self.sink
        self.sink = DiagnosticSink()  # the lets' own mistakes are reported where they are
        poisoned: set[str] = set()
        try:
            top: dict[str, Expr] = {}
            for name, let in self.draft.lets.items():
                expr = let.value
                before = len(self.sink.items)
                top[name] = self._resolve(expr, None, top, domains, self.draft.loc, context="let")
                if len(self.sink.items) > before or poisoned & set(names_in(expr)):
                    poisoned.add(name)
            per_stage: dict[str, dict[str, Expr]] = {}
            for stage in self.stages:
                own: dict[str, Expr] = dict(top)
                bad = set(poisoned)
                for name, let in stage.lets.items():
                    expr = let.value
                    before = len(self.sink.items)
                    own[name] = self._resolve(expr, stage, own, domains, stage.loc, "let")
                    if len(self.sink.items) > before or bad & set(names_in(expr)):
                        bad.add(name)
                        poisoned.add(DecisionKey.choice(stage.name, name))
                per_stage[stage.name] = {name: own[name] for name in stage.lets}
        finally:
            self.sink = real_sink

        def inline(expr: Expr, loc: Location) -> Expr | None:
            problems: list[str] = []
            skip = False

            def walk(node: Expr) -> Expr:
                nonlocal skip
                if isinstance(node, Ref):
                    name = node.name
                    if name in domains:
                        return node
                    owner, _, member = name.partition(".")
                    if not member and name in top:
                        skip = skip or name in poisoned
                        return top[name]
                    if member and member in per_stage.get(owner, {}):
                        skip = skip or name in poisoned
                        return per_stage[owner][member]
                    problems.append(self._rule_name_problem(name, domains))
                    return node
                return rebuild(node, walk)

            result = walk(expr)
            for problem in dict.fromkeys(problems):
                self.error(loc, problem)
            return None if problems or skip else result

        return inline

    def _rule_name_problem(self, name: str, domains: dict[str, list[Value]]) -> str:
        """Why a rule cannot name `name`, in the user's terms."""
        choices = ", ".join(sorted(domains)) or "none"
        owner, _, member = name.partition(".")
        if member:
            if owner not in self.stage_names:
                return f"rule names an unknown choice '{name}': there is no stage '{owner}' (choices: {choices})"
            return (
                f"rule names an unknown choice '{name}': stage '{owner}' has no choice or "
                f"constant '{member}' (choices: {choices})"
            )
        if name == "depth":
            return "a rule names a bare `depth`; in a rule write the stage's depth as STAGE.depth (e.g. s1.depth)"
        with_choice = [s.name for s in self.stages if name in s.choices]
        if with_choice:
            return (
                f"rule names '{name}', a choice of stage {', '.join(with_choice)}; in a rule "
                f"write it with its stage: {with_choice[0]}.{name}"
            )
        with_let = [s.name for s in self.stages if name in s.lets]
        if with_let:
            return (
                f"rule names '{name}', a constant (column or `let`) of stage "
                f"{', '.join(with_let)}; in a rule write it with its stage: {with_let[0]}.{name}"
            )
        return f"rule names an unknown choice '{name}'; choices: {choices}"


def _show(domain: list[Value]) -> str:
    return "{" + ", ".join(format_value(v) for v in domain) + "}"


def _substitute_refs(expr: Expr, ties: dict[str, str]) -> Expr:
    if isinstance(expr, Ref):
        return Ref(name=ties.get(expr.name, expr.name))
    return rebuild(expr, lambda e: _substitute_refs(e, ties))
