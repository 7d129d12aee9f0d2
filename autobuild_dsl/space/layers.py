"""What one layer slot of a stage can hold: its alternatives' per-layer choices, and which
of them only the stage's first layer decides (a per-layer stride)."""

from __future__ import annotations

import itertools

from autobuild_dsl.space.expr import Binary, Call, Expr, LayerRef, Unary, Value
from autobuild_dsl.space.model import LayerOption, Stage


def first_layer_only(option: LayerOption) -> tuple[str, ...]:
    """The per-layer choices of an alternative that only its first layer in a stage uses.

    The stride rule gives every layer after a stage's first stride 1, so a per-layer
    choice that is only ever a `stride` value decides nothing in those layers: the
    canonical architecture leaves it out of them, and it is not counted there.
    (`DecisionIndex.first_only` holds the answer per alternative of a space.)
    """
    result: list[str] = []
    for key in option.choices:
        uses = [
            (attr, expr)
            for node in option.nodes
            for attr, expr in node.attrs.items()
            if key in layer_names(expr)
        ]
        conditions = [n for n in option.nodes if n.condition and key in layer_names(n.condition)]
        if (
            uses
            and not conditions
            and all(a == "stride" and isinstance(e, LayerRef) for a, e in uses)
        ):
            result.append(key)
    return tuple(result)


def layer_names(expr: Expr) -> set[str]:
    """The per-layer choices (`LayerRef`s) an expression reads."""
    if isinstance(expr, LayerRef):
        return {expr.name}
    if isinstance(expr, Unary):
        return layer_names(expr.operand)
    if isinstance(expr, Binary):
        return layer_names(expr.left) | layer_names(expr.right)
    if isinstance(expr, Call):
        return set().union(*(layer_names(a) for a in expr.args))
    return set()


def layer_configurations(stage: Stage, first: bool = True) -> list[dict[str, Value]]:
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
