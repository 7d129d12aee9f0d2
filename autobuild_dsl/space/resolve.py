"""Architecture -> ResolvedNetwork: evaluate every attribute for one point of the space."""

from __future__ import annotations

from collections.abc import Callable

from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import index_of
from autobuild_dsl.space.expr import ExprError, Value, evaluate
from autobuild_dsl.space.model import NodeTemplate, Space, Stage
from autobuild_dsl.space.ops import CATALOG, Shape
from autobuild_dsl.space.resolved import (
    InputSpec,
    NodePosition,
    ResolvedNetwork,
    ResolvedNode,
    SkipLink,
)


class ResolveError(ValueError):
    """An attribute could not be evaluated for this architecture (the message says where)."""


def _env(space: Space, arch: Architecture) -> dict[str, Value]:
    env = index_of(space).scalars(arch)
    for alias, keeper in space.ties.items():
        if keeper in env:
            env[alias] = env[keeper]
    return env


def _lookup(env: dict[str, Value], where: str | None):
    def lookup(name: str) -> Value:
        if name not in env:
            raise ExprError(f"'{name}' has no value{f' (at {where})' if where else ''}")
        return env[name]

    return lookup


def _node(
    template: NodeTemplate,
    env: dict[str, Value],
    layer: dict[str, Value] | None,
    position: NodePosition,
    first_layer: bool,
) -> ResolvedNode | None:
    lookup = _lookup(env, template.where)
    layer_lookup = (lambda name: layer[name]) if layer is not None else None
    # A stage's stride applies to its first layer only (timm's rule). A later layer's
    # stride is not even evaluated: a per-layer stride choice is not stored there.
    later_stride = position.role == "layer" and not first_layer and "stride" in template.attrs
    try:
        if template.condition is not None and not evaluate(
            template.condition, lookup, layer_lookup
        ):
            return None
        spec = CATALOG[template.op]
        attrs: dict[str, Value] = {
            name: attr.default for name, attr in spec.attrs.items() if attr.default is not None
        }
        for name, expr in template.attrs.items():
            if later_stride and name == "stride":
                continue
            attrs[name] = evaluate(expr, lookup, layer_lookup)
    except (ExprError, KeyError) as error:
        raise ResolveError(f"{template.where}: {template.op}: {error}") from None
    if later_stride:
        attrs["stride"] = 1
    return ResolvedNode(op=template.op, attrs=attrs, position=position, where=template.where)


def resolve_node(
    template: NodeTemplate,
    env: dict[str, Value],
    layer: dict[str, Value] | None,
    position: NodePosition,
    *,
    first_layer: bool,
) -> ResolvedNode | None:
    """One node template evaluated on its own: None when its condition is false.

    `env` maps scalar decisions (and globals) to values, `layer` a layer's own choices
    (None outside a layer). The graph encoder resolves templates one at a time, for
    single modules and for every value a feature can take, without a whole architecture.
    Raises ResolveError when an attribute cannot be evaluated.
    """
    return _node(template, env, layer, position, first_layer)


def resolve(space: Space, arch: Architecture) -> ResolvedNetwork:
    """The concrete network of a (canonical) architecture."""
    env = _env(space, arch)
    lookup = _lookup(env, None)
    try:
        values = {key: evaluate(expr, lookup) for key, expr in space.input.items()}
    except ExprError as error:
        raise ResolveError(f"input: {error}") from None
    spec = InputSpec(
        channels=int(values["channels"]),
        size=int(values["size"]),
        context_dim=int(values["context"]) if "context" in values else None,
        context_tokens=int(values["tokens"]) if "tokens" in values else None,
        timestep=bool(values.get("timestep", False)),
    )
    nodes: list[ResolvedNode] = []
    for part in space.parts:
        if isinstance(part, Stage):
            nodes.extend(_stage_nodes(part, arch, env))
            continue
        for template in part.nodes:
            position = NodePosition(part=part.kind, block=part.name, section=part.section)
            node = _node(template, env, None, position, first_layer=True)
            if node is not None:
                nodes.append(node)
    skips = [SkipLink(source=s.source, target=s.target) for s in space.skips]
    return ResolvedNetwork(space=space.name, input=spec, nodes=nodes, skips=skips)


def _stage_nodes(stage: Stage, arch: Architecture, env: dict[str, Value]) -> list[ResolvedNode]:
    chosen = arch.stages[stage.name]
    nodes: list[ResolvedNode] = []

    def position(role: str, layer_index: int | None) -> NodePosition:
        return NodePosition(
            part="stage",
            block=stage.name,
            section=stage.section,
            stage_index=stage.index,
            layer_index=layer_index,
            role=role,  # type: ignore[arg-type]
        )

    for template in stage.before:
        node = _node(template, env, None, position("before", None), first_layer=True)
        if node is not None:
            nodes.append(node)
    for layer_index, layer in enumerate(chosen.layers):
        option = stage.options[0]
        if len(stage.options) > 1:
            option = next(o for o in stage.options if o.label == layer["op"])
        for template in option.nodes:
            node = _node(
                template, env, layer, position("layer", layer_index), first_layer=layer_index == 0
            )
            if node is not None:
                nodes.append(node)
    for template in stage.after:
        node = _node(template, env, None, position("after", None), first_layer=True)
        if node is not None:
            nodes.append(node)
    return nodes


def flow_shapes(
    net: ResolvedNetwork, check: Callable[[ResolvedNode, Shape], None] | None = None
) -> list[Shape]:
    """The output shape of every node, by the catalog's shape rules (skips concatenate).
    `check(node, input shape)` may add rules of its own (raising ValueError)."""
    shape = Shape(net.input.channels, net.input.size)
    shapes: list[Shape] = []
    groups: dict[str, list[Shape]] = {}
    sources = {link.source: link for link in net.skips}
    targets = {link.target: link for link in net.skips}
    previous: tuple[str, int | None] | None = None
    for node in net.nodes:
        pos = node.position
        stage = pos.block if pos.part == "stage" else None
        layer_key = (pos.block, pos.layer_index) if pos.role == "layer" else None
        if stage in sources and pos.role == "layer" and layer_key != previous:
            group = groups.setdefault(sources[stage].source, [])
            if pos.layer_index == 0:
                group.append(shape)
        if stage in targets and pos.role == "layer" and layer_key != previous:
            group = groups.get(targets[stage].source, [])
            if group:
                skip = group.pop()
                if skip.size != shape.size:
                    raise ResolveError(
                        f"skip {targets[stage].source} -> {stage}: spatial size {skip.size} "
                        f"does not match {shape.size} at layer {pos.layer_index} of {stage}"
                    )
                shape = Shape(shape.channels + skip.channels, shape.size)
        at = f"{node.where}: " if node.where else ""
        try:
            if check is not None:
                check(node, shape)
            shape = CATALOG[node.op].shape(shape, node.attrs)
        except (ValueError, ArithmeticError) as error:
            raise ResolveError(f"{at}{node.op} in {pos.block}: {error}") from None
        if shape.size < 1 or shape.channels < 1:
            raise ResolveError(f"{at}{node.op} in {pos.block}: the feature map vanishes ({shape})")
        shapes.append(shape)
        previous = layer_key
        # After the last node of a source layer, its output joins the skip group.
        index = len(shapes) - 1
        following = net.nodes[index + 1] if index + 1 < len(net.nodes) else None
        if (
            stage in sources
            and pos.role == "layer"
            and (
                following is None
                or (following.position.block, following.position.layer_index) != layer_key
                or following.position.role != "layer"
            )
        ):
            groups.setdefault(stage, []).append(shape)
    return shapes
