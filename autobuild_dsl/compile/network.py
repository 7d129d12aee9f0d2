"""ResolvedNetwork -> PyTorch module, plus parameter and MAC counting.

Shapes flow node to node by the catalog's shape rules; each node's module is built by the
factory registered for its op (`registry`), from the shape it actually receives.

U-Net skips are wired here, generically, for each `SkipLink(source, target)`:
- in the source stage, the stage's input (the tensor entering the first node of layer 0)
  and the output of every layer (the output of its last node) are pushed onto the link's
  group;
- in the target stage, before the first node of each layer, the most recently pushed tensor
  still in the group (LIFO) is popped, if any, and concatenated after x on the channel dim.
This is the wiring of diffusers' UNet2DConditionModel when each decoder stage has one layer
more than its encoder stage, and the same rule as `space.resolve.flow_shapes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Generic, NamedTuple, TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autobuild_dsl.compile.registry import Cond, CondDims, full_attrs, get_factory, out_shape
from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.ops import Shape
from autobuild_dsl.space.resolved import AttrValue, ResolvedNetwork


class NetworkBuildError(AbcError, ValueError):
    """A node could not be built (the message names the node and its position)."""

    code = "network-build"


@dataclass(frozen=True)
class _Step:
    """What the forward pass does around one node (skip-group indices are link indices)."""

    push_in: tuple[int, ...] = ()  # push x (the stage input) before the node
    pop: tuple[int, ...] = ()  # pop and concatenate before the node
    push_out: tuple[int, ...] = ()  # push the node's output (end of a source layer)
    save: tuple[int, ...] = ()  # residual spans that start here: keep x before the node
    add: tuple[int, ...] = ()  # residual spans that end here: add their shortcut after it


@dataclass
class NodeInfo:
    """Build-time facts about one node, kept for reports and tests."""

    op: str
    block: str
    in_shape: Shape
    out_shape: Shape
    attrs: dict[str, object] = field(default_factory=dict)


def _describe(net: ResolvedNetwork, index: int) -> str:
    node = net.nodes[index]
    pos = node.position
    where = pos.block if pos.layer_index is None else f"{pos.block} layer {pos.layer_index}"
    return f"node {index} ({node.op} in {where})"


T = TypeVar("T")

# make(node index, op, in_shape, attrs with defaults, dims) -> the thing built for the node;
# an int attribute `provides_temb` on it sets dims.temb for the nodes after it.
Maker = Callable[[int, str, Shape, dict[str, AttrValue], CondDims], T]


# make_shortcut(span index, in_shape, out_shape, shortcut kind, act) -> the shortcut built.
ShortcutMaker = Callable[[int, Shape, Shape, str, str], object]


@dataclass
class _Plan(Generic[T]):
    built: list[T]
    steps: list[_Step]
    info: list[NodeInfo]
    out_shape: Shape
    shortcuts: list[object] = field(default_factory=list)


def _plan(
    net: ResolvedNetwork, make: Maker[T], make_shortcut: ShortcutMaker | None = None
) -> _Plan[T]:
    """Flow shapes through `net` (catalog shape rules, skip concatenations) and call `make`
    for every node with the shape it receives (and `make_shortcut` for every residual
    span, with the shapes entering and leaving it)."""
    by_source = {
        name: tuple(i for i, s in enumerate(net.skips) if s.source == name)
        for name in {s.source for s in net.skips}
    }
    by_target = {
        name: tuple(i for i, s in enumerate(net.skips) if s.target == name)
        for name in {s.target for s in net.skips}
    }
    groups: list[list[Shape]] = [[] for _ in net.skips]
    dims = CondDims(context=net.input.context_dim, timestep=net.input.timestep)
    shape = Shape(net.input.channels, net.input.size)
    previous: tuple[str, int | None] | None = None
    plan: _Plan[T] = _Plan([], [], [], shape)
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for number, span in enumerate(net.residuals):
        starts.setdefault(span.start, []).append(number)
        ends.setdefault(span.end - 1, []).append(number)
    span_in: dict[int, Shape] = {}

    for i, node in enumerate(net.nodes):
        pos = node.position
        key = (pos.block, pos.layer_index) if pos.role == "layer" else None
        first = key is not None and key != previous
        following = net.nodes[i + 1] if i + 1 < len(net.nodes) else None
        last = key is not None and (
            following is None
            or following.position.role != "layer"
            or (following.position.block, following.position.layer_index) != key
        )
        stage = pos.block if pos.part == "stage" else None
        push_in = by_source.get(stage, ()) if first and pos.layer_index == 0 else ()
        pop = by_target.get(stage, ()) if first else ()
        push_out = by_source.get(stage, ()) if last else ()

        for link in push_in:
            groups[link].append(shape)
        popped: list[int] = []
        for link in pop:
            if not groups[link]:
                continue
            skip = groups[link].pop()
            if skip.size != shape.size:
                src = net.skips[link].source
                raise NetworkBuildError(
                    f"{_describe(net, i)}: the skip from {src} is {skip.size}x{skip.size} "
                    f"but the feature map is {shape.size}x{shape.size}"
                )
            shape = Shape(shape.channels + skip.channels, shape.size)
            popped.append(link)

        for number in starts.get(i, ()):
            span_in[number] = shape
        attrs = full_attrs(node.op, node.attrs)
        try:
            new_shape = out_shape(node.op, shape, attrs)
            built = make(i, node.op, shape, attrs, dims)
        except NetworkBuildError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise NetworkBuildError(f"{_describe(net, i)}: {error}") from error
        if new_shape.channels < 1 or new_shape.size < 1:
            raise NetworkBuildError(f"{_describe(net, i)}: the feature map vanishes ({new_shape})")
        provides = getattr(built, "provides_temb", None)
        if isinstance(provides, int):
            dims = dims.with_temb(provides)

        plan.built.append(built)
        plan.info.append(NodeInfo(node.op, pos.block, shape, new_shape, dict(attrs)))
        added = tuple(ends.get(i, ()))
        plan.steps.append(_Step(push_in, tuple(popped), push_out, tuple(starts.get(i, ())), added))
        shape = new_shape
        for number in added:
            span = net.residuals[number]
            try:
                if make_shortcut is not None:
                    plan.shortcuts.append(
                        make_shortcut(number, span_in[number], shape, span.shortcut, span.act)
                    )
            except (ValueError, KeyError, TypeError) as error:
                raise NetworkBuildError(f"{_describe(net, i)}: {error}") from error
        for link in push_out:
            groups[link].append(shape)
        previous = key
    plan.out_shape = shape
    return plan


def _make_module(
    index: int, op: str, shape: Shape, attrs: dict[str, AttrValue], dims: CondDims
) -> nn.Module:
    return get_factory(op)(shape, attrs, dims)


def _make_shortcut(index: int, in_shape: Shape, out: Shape, kind: str, act: str) -> nn.Module:
    from autobuild_dsl.compile.torch_ops import Shortcut

    return Shortcut(in_shape, out, kind, act)


class CompiledNetwork(nn.Module):
    """The PyTorch module of one ResolvedNetwork: `forward(x, timestep=None, context=None)`.

    `nodes[i]` is the module of `net.nodes[i]`; `info[i]` its input/output shapes."""

    def __init__(self, net: ResolvedNetwork) -> None:
        super().__init__()
        plan = _plan(net, _make_module, _make_shortcut)
        self.spec = net
        self.nodes = nn.ModuleList(plan.built)
        # One per residual span, in the order the spans end (= net.residuals order).
        self.shortcuts = nn.ModuleList(plan.shortcuts)  # type: ignore[arg-type]
        self.info = plan.info
        self.out_shape = plan.out_shape
        self._steps = plan.steps
        self._links = len(net.skips)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cond = Cond(timestep=timestep, context=context)
        groups: list[list[torch.Tensor]] = [[] for _ in range(self._links)]
        saved: dict[int, torch.Tensor] = {}
        for module, step in zip(self.nodes, self._steps, strict=True):
            for link in step.push_in:
                groups[link].append(x)
            for link in step.pop:
                x = torch.cat([x, groups[link].pop()], dim=1)
            for span in step.save:
                saved[span] = x
            x = module(x, cond)
            for span in step.add:
                x = self.shortcuts[span](saved.pop(span), x)
            for link in step.push_out:
                groups[link].append(x)
        return x


def build_module(net: ResolvedNetwork, device: torch.device | str | None = None) -> CompiledNetwork:
    """Build the module of `net`; on `torch.device("meta")` nothing is allocated, so the
    parameters and MACs of huge models can be counted."""
    if device is None:
        return CompiledNetwork(net)
    with torch.device(device):
        return CompiledNetwork(net)


def example_inputs(
    net: ResolvedNetwork,
    batch: int = 1,
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """Keyword inputs of the network's forward: `x`, plus `timestep` and `context` when the
    input spec has them (in that order). Seeded when `seed` is given (ignored on meta)."""
    spec = net.input
    gen = None
    if seed is not None and torch.device(device or "cpu").type != "meta":
        gen = torch.Generator(device=device or "cpu").manual_seed(seed)
    inputs = {
        "x": torch.randn(batch, spec.channels, spec.size, spec.size, generator=gen, device=device)
    }
    if spec.timestep:
        inputs["timestep"] = torch.randint(0, 1000, (batch,), generator=gen, device=device)
    if spec.context_dim is not None:
        tokens = spec.context_tokens or 77
        inputs["context"] = torch.randn(
            batch, tokens, spec.context_dim, generator=gen, device=device
        )
    return inputs


def count_params(module: nn.Module) -> int:
    """Number of parameters (works on meta modules)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(
    module: CompiledNetwork | nn.Module,
    net: ResolvedNetwork | None = None,
    inputs: Mapping[str, torch.Tensor] | None = None,
) -> int:
    """Multiply-accumulates of one forward pass at batch 1: FlopCounterMode's total / 2.

    Runs on the module's own device, so a meta module is counted without memory."""
    if net is None:
        net = getattr(module, "spec", None)
    if inputs is None:
        if net is None:
            raise ValueError("count_macs needs the ResolvedNetwork or explicit inputs")
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        inputs = example_inputs(net, batch=1, device=device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(**inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def params_and_macs(net: ResolvedNetwork, device: torch.device | str = "meta") -> tuple[int, int]:
    """Both counts for `net`, from the whole module built on `device`: on meta (the default)
    nothing is allocated; on the CPU small networks count faster (real kernels instead of
    Python meta kernels)."""
    module = build_module(net, device=device)
    return count_params(module), count_macs(module, net)


class NodeCount(NamedTuple):
    params: int
    macs: int
    provides_temb: int | None


@lru_cache(maxsize=65536)
def _count_node(
    op: str,
    shape: Shape,
    attrs: tuple[tuple[str, AttrValue], ...],
    dims: CondDims,
    tokens: int,
) -> NodeCount:
    with torch.device("meta"):
        module = get_factory(op)(shape, dict(attrs), dims).eval()
    x = torch.empty(1, shape.channels, shape.size, shape.size, device="meta")
    cond = Cond(
        timestep=torch.zeros(1, dtype=torch.long, device="meta") if dims.timestep else None,
        temb=torch.empty(1, dims.temb, device="meta") if dims.temb else None,
        context=torch.empty(1, tokens, dims.context, device="meta") if dims.context else None,
    )
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x, cond)
    provides = getattr(module, "provides_temb", None)
    return NodeCount(
        count_params(module),
        counter.get_total_flops() // 2,
        provides if isinstance(provides, int) else None,
    )


def fast_params_and_macs(net: ResolvedNetwork) -> tuple[int, int]:
    """The same numbers as `params_and_macs`, summed node by node with a cache keyed by
    (op, input shape, attributes, side-input widths): FlopCounterMode's total is a sum over
    the ops, so a search that meets the same layer twice counts it once."""
    tokens = net.input.context_tokens or 77

    def make(
        index: int, op: str, shape: Shape, attrs: dict[str, AttrValue], dims: CondDims
    ) -> NodeCount:
        return _count_node(op, shape, tuple(sorted(attrs.items())), dims, tokens)

    plan = _plan(net, make, _count_shortcut)
    counts = [*plan.built, *plan.shortcuts]
    return sum(c.params for c in counts), sum(c.macs for c in counts)  # type: ignore[attr-defined]


@lru_cache(maxsize=4096)
def _count_shortcut_cached(in_shape: Shape, out: Shape, kind: str, act: str) -> NodeCount:
    from autobuild_dsl.compile.torch_ops import Shortcut

    with torch.device("meta"):
        module = Shortcut(in_shape, out, kind, act).eval()
    skip = torch.empty(1, in_shape.channels, in_shape.size, in_shape.size, device="meta")
    y = torch.empty(1, out.channels, out.size, out.size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(skip, y)
    return NodeCount(count_params(module), counter.get_total_flops() // 2, None)


def _count_shortcut(index: int, in_shape: Shape, out: Shape, kind: str, act: str) -> NodeCount:
    return _count_shortcut_cached(in_shape, out, kind, act)
