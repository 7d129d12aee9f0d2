"""Checks that need the whole Space: countable rules, a non-empty space, consistent shapes."""

from __future__ import annotations

import random

from autobuild_dsl.lang.diagnostics import DiagnosticSink, SourceFile
from autobuild_dsl.space.decisions import SpaceTooComplex, index_of
from autobuild_dsl.space.model import Space


def _at(where: str | None) -> tuple[str, int, int]:
    if not where:
        return ("<space>", 1, 1)
    path, line, column = where.rsplit(":", 2)
    return path, int(line), int(column)


def check_space(space: Space, draft, sink: DiagnosticSink) -> None:
    sources: dict[str, SourceFile] = {}

    def report(where: str | None, message: str) -> None:
        path, line, column = _at(where)
        if path not in sources:
            source = _find_source(draft, path, sink.sources)
            sources[path] = source
        sink.error(sources[path], line, column, message)

    if not _check_rules_are_booleans(space, report):
        return
    try:
        index = index_of(space)
    except SpaceTooComplex as error:
        # Blame the rule that links the most joint choices on its own; name the others.
        culprits = [space.rules[i] for i in error.rules if i < len(space.rules)]
        blame = culprits[0] if culprits else (space.rules[0] if space.rules else None)
        others = [r.where for r in culprits[1:] if r.where]
        also = f" (linked with the rules at {', '.join(others)})" if others else ""
        report(blame.where if blame else None, f"{error}{also}")
        return
    if index.size() == 0:
        # Find the rule that empties the space on its own, else blame the last one.
        blame = space.rules[-1] if space.rules else None
        for rule in space.rules:
            alone = space.model_copy(update={"rules": [rule]})
            if index_of(alone).size() == 0:
                blame = rule
                break
        text = f"`{blame.text}`" if blame else "the rules"
        report(
            blame.where if blame else None, f"no architecture satisfies {text}: the space is empty"
        )
        return
    _check_shapes(space, index, report)


def _check_rules_are_booleans(space: Space, report) -> bool:
    from autobuild_dsl.lang.limits import is_boolean

    def domain_of(name: str) -> list | None:
        owner, _, choice = name.partition(".")
        if not choice:
            return space.choices.get(name)
        if choice == "depth":
            return [0]  # a number
        for stage in space.stages:
            if stage.name == owner:
                return stage.choices.get(choice)
        return None

    ok = True
    for rule in space.rules:
        if not is_boolean(rule.expr, domain_of):
            report(
                rule.where,
                f"`require {rule.text}` is not a truth value; a rule must be a comparison, "
                "`and`/`or`/`not`, or a boolean choice",
            )
            ok = False
    return ok


def _check_shapes(space: Space, index, report) -> None:
    from autobuild_dsl.space.resolve import ResolveError, flow_shapes, resolve

    rng = random.Random(0)
    # A few sampled architectures catch shape mistakes without enumerating the space.
    for _ in range(8):
        arch = index.sample(rng)
        try:
            flow_shapes(resolve(space, arch), check_op)
        except (ResolveError, ArithmeticError, ValueError) as error:
            message = str(error)
            where = None
            head = message.split(": ", 1)[0]
            if head.count(":") >= 2:
                where, message = head, message.split(": ", 1)[1]
            report(where or (space.stages[0].where if space.stages else None), message)
            return


# Feature maps beyond these cannot be built on any machine: a typo, not a design.
MAX_CHANNELS = 1 << 20
MAX_SIZE = 1 << 15


def check_op(node, shape) -> None:  # type: ignore[no-untyped-def]
    """The build rules of an op that its shape rule does not state (the PyTorch modules
    would refuse them): raises ValueError with the reason. Runs on sampled architectures
    of every space at compile time, so a space none of whose networks builds is refused."""
    attrs = node.attrs
    if shape.channels < 1 or shape.size < 1:
        raise ValueError(
            f"its input has {shape.channels} channels of {shape.size}x{shape.size}: nothing to compute"
        )
    if shape.channels > MAX_CHANNELS or shape.size > MAX_SIZE:
        raise ValueError(
            f"its input ({shape.channels} channels of {shape.size}x{shape.size}) exceeds "
            f"{MAX_CHANNELS} channels or {MAX_SIZE} pixels a side"
        )
    out = attrs.get("out")
    if isinstance(out, int) and not isinstance(out, bool) and out > MAX_CHANNELS:
        raise ValueError(f"out = {out} exceeds {MAX_CHANNELS} channels")
    if node.op == "upsample" and shape.size * 2 > MAX_SIZE:
        raise ValueError(f"it would make {shape.size * 2} pixels a side, more than {MAX_SIZE}")
    if node.op == "dropout":
        p = attrs.get("p", 0.0)
        if not isinstance(p, int | float) or not 0 <= p <= 1:
            raise ValueError(f"p = {p}: a drop probability is between 0 and 1")
    if node.op == "conv":
        groups = int(attrs.get("groups", 1) or 1)
        cout = int(attrs.get("out", 1))
        if shape.channels % groups or cout % groups:
            raise ValueError(
                f"{shape.channels} -> {cout} channels are not divisible into {groups} groups"
            )
    if node.op in ("conv", "dwconv") and attrs.get("norm") == "gn":
        channels = int(attrs.get("out", shape.channels)) if node.op == "conv" else shape.channels
        if channels % 32:
            raise ValueError(f"group norm (32 groups) on {channels} channels: not divisible")
    if node.op == "norm" and attrs.get("kind") == "gn":
        groups = int(attrs.get("groups", 32) or 1)
        if shape.channels % groups:
            raise ValueError(
                f"group norm: {shape.channels} channels are not divisible into {groups} groups"
            )


def _find_source(draft, path: str, sources: dict[str, SourceFile]) -> SourceFile:
    from pathlib import Path

    if draft is not None and draft.loc.path == path and path in sources:
        return sources[path]
    try:
        return SourceFile(path=path, text=Path(path).read_text(encoding="utf-8-sig"))
    except OSError:
        return SourceFile(path=path, text="")
