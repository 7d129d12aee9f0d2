"""ResolvedNetwork -> PyTorch module, plus parameter and MAC counting.

Shapes flow node to node by the catalog's shape rules; each node's module is built by the
factory registered for its op (`registry`), from the shape it actually receives.

Skips and residual spans are wired by the one shape/skip plan of space/flow.py (the
same plan `space.resolve.flow_shapes` checks shapes with).
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
from autobuild_dsl.space.flow import FlowError, Step, flow
from autobuild_dsl.space.ops import Shape
from autobuild_dsl.space.resolved import AttrValue, ResolvedNetwork


class NetworkBuildError(AbcError, ValueError):
    """A node could not be built (the message names the node and its position)."""

    code = "network-build"


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
    steps: list[Step]
    info: list[NodeInfo]
    out_shape: Shape
    shortcuts: list[object] = field(default_factory=list)


def _plan(
    net: ResolvedNetwork, make: Maker[T], make_shortcut: ShortcutMaker | None = None
) -> _Plan[T]:
    """Flow shapes through `net` (space/flow.py: catalog shape rules, skip concatenations)
    and call `make` for every node with the shape it receives (and `make_shortcut` for every
    residual span, with the shapes entering and leaving it)."""
    dims = CondDims(context=net.input.context_dim, timestep=net.input.timestep)
    built: list[T] = []
    info: list[NodeInfo] = []

    def node_shape(i: int, shape: Shape) -> Shape:
        nonlocal dims
        node = net.nodes[i]
        attrs = full_attrs(node.op, node.attrs)
        try:
            new_shape = out_shape(node.op, shape, attrs)
            thing = make(i, node.op, shape, attrs, dims)
        except NetworkBuildError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise NetworkBuildError(f"{_describe(net, i)}: {error}") from error
        provides = getattr(thing, "provides_temb", None)
        if isinstance(provides, int):
            dims = dims.with_temb(provides)
        built.append(thing)
        info.append(NodeInfo(node.op, node.position.block, shape, new_shape, dict(attrs)))
        return new_shape

    try:
        flowed = flow(net, node_shape)
    except FlowError as error:
        raise NetworkBuildError(f"{_describe(net, error.index)}: {error}") from None
    plan: _Plan[T] = _Plan(built, flowed.steps, info, flowed.out_shape)
    for i, step in enumerate(flowed.steps):
        for number in step.add if make_shortcut is not None else ():
            span = net.residuals[number]
            ins, out = flowed.in_shapes[span.start], flowed.out_shapes[i]
            try:
                plan.shortcuts.append(make_shortcut(number, ins, out, span.shortcut, span.act))
            except (ValueError, KeyError, TypeError) as error:
                raise NetworkBuildError(f"{_describe(net, i)}: {error}") from error
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
