"""The one shape/skip plan of a resolved network, shared by the shape checks
(`space.resolve.flow_shapes`) and the PyTorch compiler (`compile.network`).

U-Net skips are wired generically, for each `SkipLink(source, target)`:
- in the source stage, the stage's input (the tensor entering the first node of layer 0)
  and the output of every layer (the output of its last node) are pushed onto the link's
  group;
- in the target stage, before the first node of each layer, the most recently pushed tensor
  still in the group (LIFO) is popped, if any, and concatenated after x on the channel dim.
This is the wiring of diffusers' UNet2DConditionModel when each decoder stage has one layer
more than its encoder stage. Residual spans (a layer written with `residual(...)`) keep the
input of their first node and add it after their last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.ops import Shape
from autobuild_dsl.space.resolved import ResolvedNetwork


class FlowError(AbcError, ValueError):
    """The shapes do not flow at node `index` (a skip of another size, a vanishing map);
    the shape checks and the compiler each say it in their own terms."""

    code = "shape-flow"

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Step:
    """What the forward pass does around one node (skip-group indices are link indices)."""

    push_in: tuple[int, ...] = ()  # push x (the stage input) before the node
    pop: tuple[int, ...] = ()  # pop and concatenate before the node
    push_out: tuple[int, ...] = ()  # push the node's output (end of a source layer)
    save: tuple[int, ...] = ()  # residual spans that start here: keep x before the node
    add: tuple[int, ...] = ()  # residual spans that end here: add their shortcut after it


@dataclass(frozen=True)
class Flow:
    """The plan of a network: per node its step, the shape it receives (after skip
    concatenations) and the shape it gives; and the network's output shape."""

    steps: list[Step]
    in_shapes: list[Shape]
    out_shapes: list[Shape]
    out_shape: Shape


def _links(net: ResolvedNetwork, end: str) -> dict[str, tuple[int, ...]]:
    names = {getattr(s, end) for s in net.skips}
    return {n: tuple(i for i, s in enumerate(net.skips) if getattr(s, end) == n) for n in names}


def plan_steps(net: ResolvedNetwork) -> list[Step]:
    """The skip and residual wiring, node by node (it does not depend on shapes)."""
    by_source, by_target = _links(net, "source"), _links(net, "target")
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for number, span in enumerate(net.residuals):
        starts.setdefault(span.start, []).append(number)
        ends.setdefault(span.end - 1, []).append(number)
    held = [0] * len(net.skips)  # tensors waiting in each link's group
    steps: list[Step] = []
    previous: tuple[str, int | None] | None = None
    for i, node in enumerate(net.nodes):
        pos = node.position
        key = (pos.block, pos.layer_index) if pos.role == "layer" else None
        following = net.nodes[i + 1].position if i + 1 < len(net.nodes) else None
        first = key is not None and key != previous
        last = key is not None and (
            following is None
            or following.role != "layer"
            or (following.block, following.layer_index) != key
        )
        stage = pos.block if pos.part == "stage" else None
        push_in = by_source.get(stage, ()) if first and pos.layer_index == 0 else ()
        push_out = by_source.get(stage, ()) if last else ()
        for link in push_in:
            held[link] += 1
        pop = tuple(link for link in by_target.get(stage, ()) if first and held[link])
        for link in pop:
            held[link] -= 1
        for link in push_out:
            held[link] += 1
        save, add = tuple(starts.get(i, ())), tuple(ends.get(i, ()))
        steps.append(Step(push_in, pop, push_out, save, add))
        previous = key
    return steps


def flow(net: ResolvedNetwork, node_shape: Callable[[int, Shape], Shape]) -> Flow:
    """Flow shapes through `net`: `node_shape(i, shape in)` gives node i's output shape
    (by the catalog's rules, and whatever else the caller does there); skips concatenate.
    Raises FlowError where a skip's size differs or a feature map vanishes."""
    steps = plan_steps(net)
    groups: list[list[Shape]] = [[] for _ in net.skips]
    shape = Shape(net.input.channels, net.input.size)
    ins: list[Shape] = []
    outs: list[Shape] = []
    for i, step in enumerate(steps):
        for link in step.push_in:
            groups[link].append(shape)
        for link in step.pop:
            skip = groups[link].pop()
            if skip.size != shape.size:
                raise FlowError(
                    i,
                    f"the skip from {net.skips[link].source} is {skip.size}x{skip.size} "
                    f"but the feature map is {shape.size}x{shape.size}",
                )
            shape = Shape(shape.channels + skip.channels, shape.size)
        new = node_shape(i, shape)
        if new.channels < 1 or new.size < 1:
            raise FlowError(i, f"the feature map vanishes ({new})")
        ins.append(shape)
        outs.append(new)
        shape = new
        for link in step.push_out:
            groups[link].append(shape)
    return Flow(steps, ins, outs, shape)
