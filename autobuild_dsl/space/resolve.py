"""Architecture -> ResolvedNetwork: evaluate every attribute for one point of the space."""

from __future__ import annotations

from collections.abc import Callable

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import index_of
from autobuild_dsl.space.expr import ExprError, Value, evaluate, names_in
from autobuild_dsl.space.flow import FlowError, flow
from autobuild_dsl.space.model import INPUT_NAMES, LayerOption, NodeTemplate, Space, Stage
from autobuild_dsl.space.ops import CATALOG, Shape
from autobuild_dsl.space.resolved import (
    InputSpec,
    NodePosition,
    ResidualSpan,
    ResolvedNetwork,
    ResolvedNode,
    SkipLink,
)


class ResolveError(AbcError, ValueError):
    """An attribute could not be evaluated for this architecture (the message says where)."""

    code = "resolve"


def _lookup(env: dict[str, Value], where: str | None):
    def lookup(name: str) -> Value:
        if name not in env:
            raise ExprError(f"'{name}' has no value{f' (at {where})' if where else ''}")
        return env[name]

    return lookup


def resolve_node(
    template: NodeTemplate,
    env: dict[str, Value],
    layer: dict[str, Value] | None,
    position: NodePosition,
    *,
    first_layer: bool,
    skip_input_attrs: bool = False,
) -> ResolvedNode | None:
    """One node template evaluated on its own: None when its condition is false.

    `env` maps scalar decisions (and globals) to values, `layer` a layer's own choices
    (None outside a layer). The graph encoder resolves templates one at a time, for
    single modules and for every value a feature can take, without a whole architecture.
    Raises ResolveError when an attribute cannot be evaluated. With `skip_input_attrs`, an
    attribute that reads `in_channels`/`in_size` (absent from `env`) is left out.
    """
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
            if skip_input_attrs and _reads_input(expr) and INPUT_NAMES[0] not in env:
                # Without the layer's input (a module alone, a vocabulary scan) an
                # attribute that follows the input is left out rather than guessed.
                attrs.pop(name, None)
                continue
            attrs[name] = evaluate(expr, lookup, layer_lookup)
    except (ExprError, KeyError) as error:
        raise ResolveError(f"{template.where}: {template.op}: {error}") from None
    if later_stride:
        attrs["stride"] = 1
    return ResolvedNode(op=template.op, attrs=attrs, position=position, where=template.where)


def _reads_input(expr) -> bool:  # type: ignore[no-untyped-def]
    return any(name in INPUT_NAMES for name in names_in(expr))


def reads_input(template: NodeTemplate) -> bool:
    """Whether an attribute of the template names the input (`in_channels`, `in_size`)."""
    return any(_reads_input(expr) for expr in template.attrs.values())


def resolve(space: Space, arch: Architecture) -> ResolvedNetwork:
    """The concrete network of a (canonical) architecture."""
    index = index_of(space)
    env = index.with_ties(index.scalars(arch))
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
    skips = [SkipLink(source=s.source, target=s.target) for s in space.skips]
    builder = _Builder(space.name, spec, skips)
    for part in space.parts:
        if isinstance(part, Stage):
            _stage_nodes(part, arch, env, builder)
            continue
        for template in part.nodes:
            position = NodePosition(part=part.kind, block=part.name, section=part.section)
            builder.add(template, env, None, position, first_layer=True)
    return builder.network()


class _Builder:
    """Collects a network's nodes; knows the shape entering the next one on demand."""

    def __init__(self, space: str, spec: InputSpec, skips: list[SkipLink]) -> None:
        self.space, self.spec, self.skips = space, spec, skips
        self.nodes: list[ResolvedNode] = []
        self.residuals: list[ResidualSpan] = []

    def input_env(self) -> dict[str, Value]:
        """`in_channels` and `in_size`: the shape the next node receives."""
        shape = Shape(self.spec.channels, self.spec.size)
        if self.nodes:
            partial = ResolvedNetwork.model_construct(**self._fields(residuals=[]))
            shape = flow_shapes(partial)[-1]
        return {INPUT_NAMES[0]: shape.channels, INPUT_NAMES[1]: shape.size}

    def add(
        self,
        template: NodeTemplate,
        env: dict[str, Value],
        layer: dict[str, Value] | None,
        position: NodePosition,
        *,
        first_layer: bool,
        layer_input: dict[str, Value] | None = None,
    ) -> None:
        if layer_input is None and reads_input(template):
            layer_input = self.input_env()
        if layer_input is not None:
            env = {**env, **layer_input}
        node = resolve_node(template, env, layer, position, first_layer=first_layer)
        if node is not None:
            self.nodes.append(node)

    def layer(
        self,
        option: LayerOption,
        env: dict[str, Value],
        layer: dict[str, Value],
        position: NodePosition,
        first_layer: bool,
    ) -> None:
        start = len(self.nodes)
        # Every node of a layer reads the same input: the one entering the layer.
        layer_input = self.input_env() if any(map(reads_input, option.nodes)) else None
        for template in option.nodes:
            self.add(
                template, env, layer, position, first_layer=first_layer, layer_input=layer_input
            )
        if option.residual is not None and len(self.nodes) > start:
            self.residuals.append(
                ResidualSpan(
                    start=start,
                    end=len(self.nodes),
                    shortcut=option.residual.shortcut,
                    act=option.residual.act,
                )
            )

    def _fields(self, residuals: list[ResidualSpan]) -> dict[str, object]:
        return {
            "space": self.space,
            "input": self.spec,
            "nodes": self.nodes,
            "skips": self.skips,
            "residuals": residuals,
        }

    def network(self) -> ResolvedNetwork:
        return ResolvedNetwork(**self._fields(self.residuals))  # type: ignore[arg-type]


def _stage_nodes(
    stage: Stage, arch: Architecture, env: dict[str, Value], builder: _Builder
) -> None:
    chosen = arch.stages[stage.name]
    if chosen.depth == 0:
        return  # an absent stage has no node at all, not even its before/after

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
        builder.add(template, env, None, position("before", None), first_layer=True)
    for layer_index, layer in enumerate(chosen.layers):
        option = stage.options[0]
        if len(stage.options) > 1:
            option = next(o for o in stage.options if o.label == layer["op"])
        builder.layer(option, env, layer, position("layer", layer_index), layer_index == 0)
    for template in stage.after:
        builder.add(template, env, None, position("after", None), first_layer=True)


def flow_shapes(
    net: ResolvedNetwork, check: Callable[[ResolvedNode, Shape], None] | None = None
) -> list[Shape]:
    """The output shape of every node, by the catalog's shape rules and the one skip plan
    the compiler wires (space/flow.py: skips concatenate). `check(node, input shape)` may
    add rules of its own (raising ValueError)."""

    def where(index: int) -> str:
        node = net.nodes[index]
        at = f"{node.where}: " if node.where else ""
        return f"{at}{node.op} in {node.position.block}"

    def node_shape(index: int, shape: Shape) -> Shape:
        node = net.nodes[index]
        try:
            if check is not None:
                check(node, shape)
            return CATALOG[node.op].shape(shape, node.attrs)
        except (ValueError, ArithmeticError) as error:
            raise ResolveError(f"{where(index)}: {error}") from None

    try:
        return flow(net, node_shape).out_shapes
    except FlowError as error:
        raise ResolveError(f"{where(error.index)}: {error}") from None
