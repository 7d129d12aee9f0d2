"""The raw IR graph (`IrGraph`) and how it is read from an ONNX model: whole-network export
(`export_ir`, the reference) and the reader shared with per-layer fragments (`ir_fragments`).

Export settings (one place, used by both): TorchScript exporter, opset 17, eval mode,
constant folding (BatchNorm folds into its convolution), no weights, ONNX shape inference.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from autobuild_dsl.graphs.encode import EncodeError
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.model import Space

_KERNEL_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"})
_MODULE_NAME = re.compile(r"^/nodes\.(\d+)/")
COLUMNS = ("ops", "channels", "height", "width", "kernel", "stride", "groups")


class IrError(EncodeError):
    """An architecture cannot be turned into an IR graph (or encoded with these vocabularies)."""

    code = "ir"


class OpColumns(BaseModel):
    """Per op (parallel lists, in the ONNX graph's topological order): its type, output
    shape (channels, height, width) and attributes (kernel, stride, groups)."""

    ops: list[str]
    channels: list[int | None]
    height: list[int | None]
    width: list[int | None]
    kernel: list[int | None]
    stride: list[int | None]
    groups: list[str | None]


class IrGraph(OpColumns):
    """One exported network: per node its op, output shape and attributes; edges; places.

    `module` is the index of the compiled network node (layer) an op belongs to, and
    `places[m]` names that layer (`stem`, `s3.1` = stage s3 layer 1, `head`)."""

    model_config = ConfigDict(frozen=True)

    space: str
    module: list[int | None]
    places: list[str]
    edges: list[tuple[int, int]]

    @property
    def num_nodes(self) -> int:
        return len(self.ops)

    def place(self, node: int) -> str | None:
        m = self.module[node]
        return self.places[m] if m is not None and 0 <= m < len(self.places) else None


def place_label(position: Any) -> str:
    if position.layer_index is not None:
        return f"{position.block}.{position.layer_index}"
    if position.role in ("before", "after"):
        return f"{position.block}.{position.role}"
    return str(position.block)


def _dims(value_info: Any) -> list[int | None] | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def _shape_features(dims: list[int | None] | None) -> tuple[int | None, int | None, int | None]:
    """(channels, height, width) of an output tensor shape."""
    if not dims or len(dims) < 2:
        return None, None, None
    if len(dims) == 2:
        return dims[1], None, None
    if len(dims) == 3:  # [N, T, C]: tokens x features
        return dims[2], dims[1], None
    return dims[1], dims[2], dims[3]


@dataclass
class OnnxNodes:
    """The data-computing nodes of an ONNX model. `sources[i]`: the sorted producers of node
    i's inputs, where -1-k stands for data input k; `output`: the same for the model's
    first output."""

    columns: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in COLUMNS})
    module: list[int | None] = field(default_factory=list)
    sources: list[list[int]] = field(default_factory=list)
    output: int | None = None


def _kernel_stride(node: Any, attrs: dict[str, Any], shapes: dict) -> tuple[Any, Any]:
    if node.op_type not in _KERNEL_OPS:
        return None, None
    shape = attrs.get("kernel_shape")
    if shape is None and node.op_type.startswith("Conv") and len(node.input) > 1:
        weight = shapes.get(node.input[1])
        shape = weight[2:] if weight else None
    strides = attrs.get("strides")
    return (int(max(shape)) if shape else None), (int(max(strides)) if strides else 1)


def _group(node: Any, attrs: dict[str, Any], shapes: dict) -> str | None:
    if node.op_type not in ("Conv", "ConvTranspose"):
        return None
    count = int(attrs.get("group", 1))
    in_dims = shapes.get(node.input[0])
    in_channels = in_dims[1] if in_dims and len(in_dims) > 1 else None
    if count == 1:
        return "dense"
    return "depthwise" if in_channels is not None and count == in_channels else "grouped"


def read_nodes(model: Any, data_inputs: Sequence[str]) -> OnnxNodes:
    """The nodes downstream of `data_inputs` (weight plumbing such as Constant or the
    Identity of an initializer is dropped), with their features and producers."""
    import onnx

    graph = model.graph
    shapes: dict[str, list[int | None] | None] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        shapes[info.name] = _dims(info)
    producer = {name: -1 - k for k, name in enumerate(data_inputs)}
    out = OnnxNodes()
    for node in graph.node:
        if not any(name in producer for name in node.input):
            continue  # weight plumbing: Constant, Identity of an initializer, ...
        index = len(out.module)
        out.sources.append(sorted({producer[n] for n in node.input if n in producer}))
        for name in node.output:
            producer[name] = index
        channels, height, width = _shape_features(shapes.get(node.output[0]))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel, stride = _kernel_stride(node, attrs, shapes)
        values = (
            node.op_type,
            channels,
            height,
            width,
            kernel,
            stride,
            _group(node, attrs, shapes),
        )
        for name, value in zip(COLUMNS, values, strict=True):
            out.columns[name].append(value)
        match = _MODULE_NAME.match(node.name)
        out.module.append(int(match.group(1)) if match else None)
    out.output = producer.get(graph.output[0].name) if graph.output else None
    return out


def to_onnx(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    """`module(**inputs)` exported in memory (the settings above), shapes inferred."""
    import onnx

    from autobuild_dsl.compile.onnx_export import export_call

    buffer = io.BytesIO()
    # The graph only (`export_params=False`): no 20 MB of weights to write and parse.
    export_call(module, inputs, buffer, export_params=False)
    return onnx.shape_inference.infer_shapes(onnx.load_from_string(buffer.getvalue()))


def empty_weights(module: torch.nn.Module) -> torch.nn.Module:
    """A module built on meta, given zeroed CPU storage (only the graph matters; zeroed so
    no uninitialised NaN is traced), in eval mode."""
    module = module.to_empty(device="cpu").eval()
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.zero_()
    return module


def export_ir(space: Space, arch: Architecture) -> IrGraph:
    """Compile `arch`, export the whole network to ONNX in memory and read its IR graph."""
    from autobuild_dsl.compile.network import NetworkBuildError, build_module, example_inputs
    from autobuild_dsl.space.resolve import ResolveError, resolve

    try:
        net = resolve(space, arch)
        # Built on meta: no weight initialisation (the values do not matter, only the graph).
        module = empty_weights(build_module(net, device="meta"))
    except (ResolveError, NetworkBuildError, ValueError) as error:
        raise IrError(f"{space.name}: cannot compile the architecture: {error}") from None
    inputs = example_inputs(net, batch=1, device="cpu", seed=0)
    try:
        model = to_onnx(module, inputs)
    except Exception as error:  # the exporter raises many types; name the space
        raise IrError(f"{space.name}: ONNX export failed: {error}") from error
    nodes = read_nodes(model, list(inputs))
    if not nodes.module:
        raise IrError(f"{space.name}: the exported graph has no operation on the input")
    edges = [(s, i) for i, sources in enumerate(nodes.sources) for s in sources if s >= 0]
    places = [place_label(n.position) for n in net.nodes]
    return IrGraph(
        space=space.name, module=nodes.module, places=places, edges=edges, **nodes.columns
    )
