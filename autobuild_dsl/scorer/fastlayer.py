"""GATv2 for graphs whose nodes have at most one in-edge, with hand-written backward.

Sequence graphs (a chain of layers per network) are the common case: every node attends
over itself and at most one predecessor, and the softmax over two slots is a sigmoid of the
logit difference. An epoch on DyNAS-T is chains of small ops on ~2000 nodes x 32, so the
cost is the number of tensor passes and of autograd nodes, not arithmetic. Written out by
hand, a layer is ~12 forward and ~14 backward tensor ops, and `GATv2Stack` runs every layer
plus the mean pooling of every hop as ONE autograd node (instead of ~150). When every
node's predecessor is the row just before it (chains packed in order), the predecessor's
message is a shifted view of the same tensor: no gather forward, no scatter backward.

For chained float32 batches the element-wise work between a layer's matmuls runs as one C
loop each way (ckernel.py), when a C compiler is at hand; the tensor ops below are the
fallback and the reference (tests/test_scorer_ckernel.py).

Same numbers as `GATv2Layer`'s generic path (and so PyG's GATv2Conv) within float rounding;
tests/test_scorer_fast.py compares outputs and gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from autobuild_dsl.scorer import ckernel

Mode = Literal["plain", "relu", "relu_residual"]

_leaky_relu_backward = torch.ops.aten.leaky_relu_backward
_threshold_backward = torch.ops.aten.threshold_backward
_leaky_relu = torch.nn.functional.leaky_relu

# Parameters of one layer, in this order: lin_l.weight, lin_l.bias, lin_r.weight,
# lin_r.bias, att (any shape: flattened inside), bias.
PARAMS_PER_LAYER = 6


@dataclass
class _Saved:
    """What one layer's backward needs from its forward."""

    h: torch.Tensor
    weight: torch.Tensor  # [2 out, in]: lin_l's rows, then lin_r's
    att: torch.Tensor  # flat
    att_shape: torch.Size
    diff: torch.Tensor  # predecessor's message - own message
    w: torch.Tensor  # attention weight of the predecessor (0 where there is none)
    act_self: torch.Tensor
    act_other: torch.Tensor
    act_diff: torch.Tensor
    relu: torch.Tensor | None
    mode: Mode


@dataclass
class _KernelSaved:
    """What one layer's backward needs when the C kernels ran it (ckernel.py)."""

    h: torch.Tensor
    weight: torch.Tensor
    both: torch.Tensor  # [nodes, 2 out]: source | target
    att: torch.Tensor
    att_shape: torch.Size
    has_other: torch.Tensor
    w: torch.Tensor
    relu: torch.Tensor
    mode: Mode


def _messages(
    source: torch.Tensor, target: torch.Tensor, other: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predecessor's message + target, predecessor's message - own message) per node.
    Rows without a predecessor hold finite filler: their attention weight is 0."""
    if other is not None:
        message = source.index_select(0, other)
        return message + target, message - source
    pre_target = torch.empty_like(target)
    diff = torch.empty_like(source)
    torch.add(target[1:], source[:-1], out=pre_target[1:])
    torch.sub(source[:-1], source[1:], out=diff[1:])
    pre_target[:1] = target[:1] + source[:1]
    diff[:1] = 0
    return pre_target, diff


def layer_forward(
    h: torch.Tensor,
    params: Sequence[torch.Tensor],
    other: torch.Tensor | None,
    has_other: torch.Tensor,
    mode: Mode,
    slope: float,
    pool: ckernel.Pool | None = None,
) -> tuple[torch.Tensor, _Saved | _KernelSaved]:
    """(output, what backward needs). `pool` (C kernels only): also sum the output per
    graph into the pool's table."""
    weight_l, bias_l, weight_r, bias_r, att_param, bias = params
    dim = bias.shape[0]
    att = att_param.reshape(-1)
    weight = torch.cat([weight_l, weight_r])
    bias_both = torch.cat([bias_l, bias_r])
    if other is None and ckernel.applies(h, dim):
        # The kernel adds the biases as it reads each row: mm, not addmm.
        both = torch.mm(h, weight.t())
        out, relu_out, w = ckernel.forward(
            both, h, att, has_other, bias, bias_both, slope, mode, pool
        )
        kept = _KernelSaved(h, weight, both, att, att_param.shape, has_other, w, relu_out, mode)
        return out, kept
    if pool is not None:
        raise ValueError("pooling inside the layer needs the C kernels")
    both = torch.addmm(bias_both, h, weight.t())
    source, target = both[:, :dim], both[:, dim:]
    pre_target, diff = _messages(source, target, other)
    act_self = _leaky_relu(source + target, slope)
    act_other = _leaky_relu(pre_target, slope)
    act_diff = act_other - act_self
    w = torch.sigmoid(act_diff @ att).mul_(has_other)
    out = torch.addcmul(source, w[:, None], diff).add_(bias)
    relu = None
    if mode != "plain":
        out = relu = torch.relu(out)
        if mode == "relu_residual":
            out = relu + h
    saved = _Saved(
        h, weight, att, att_param.shape, diff, w, act_self, act_other, act_diff, relu, mode
    )
    return out, saved


def layer_backward(
    s: _Saved | _KernelSaved,
    grad: torch.Tensor | None,
    other: torch.Tensor | None,
    slope: float,
    pool: ckernel.Pool | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(gradient of h, gradients of the layer's parameters in PARAMS order). With the C
    kernels, the output's gradient is `grad` (None: zero) plus the pool's rows."""
    dim = s.att.shape[0]
    if isinstance(s, _KernelSaved):
        return _kernel_backward(s, grad, slope, pool)
    assert grad is not None and pool is None
    grad_pre = grad if s.relu is None else _threshold_backward(grad, s.relu, 0)
    grad_bias = grad_pre.sum(0)
    # d out / d w = diff; d w / d logit difference = w (1 - w), 0 where no predecessor
    grad_logit = torch.linalg.vecdot(grad_pre, s.diff).mul_(s.w - s.w * s.w)
    grad_att = s.act_diff.t() @ grad_logit
    grad_act = torch.outer(grad_logit, s.att)
    grad_self = _leaky_relu_backward(grad_act, s.act_self, slope, True)
    grad_other = _leaky_relu_backward(grad_act, s.act_other, slope, True)
    grad_both = torch.empty(grad.shape[0], 2 * dim, dtype=grad.dtype)
    grad_source, grad_target = grad_both[:, :dim], grad_both[:, dim:]
    # target feeds both logits (+ other, - self); the predecessor's message gets the
    # attention-weighted output gradient plus its logit's, the own message the rest.
    torch.sub(grad_other, grad_self, out=grad_target)
    grad_message = torch.addcmul(grad_other, grad_pre, s.w[:, None])
    torch.sub(grad_pre, grad_message, out=grad_source)
    grad_source.add_(grad_target)
    if other is None:
        grad_source[:-1].add_(grad_message[1:])
    else:
        grad_source.index_add_(0, other, grad_message)
    return _through_matmul(s, grad, grad_both, grad_att, grad_bias)


def _kernel_backward(
    s: _KernelSaved, grad: torch.Tensor | None, slope: float, pool: ckernel.Pool | None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    grad_both, grad_att, grad_bias, grad_out, grad_bias_both = ckernel.backward(
        s.both, s.w, s.relu, grad, s.att, s.has_other, slope, s.mode, pool
    )
    return _through_matmul(s, grad_out, grad_both, grad_att, grad_bias, grad_bias_both)


def _through_matmul(
    s: _Saved | _KernelSaved,
    grad: torch.Tensor,
    grad_both: torch.Tensor,
    grad_att: torch.Tensor,
    grad_bias: torch.Tensor,
    grad_bias_both: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """From the gradient of [source | target] back through the layer's matmul: (gradient
    of h, the parameters' gradients in PARAMS order). `grad_bias_both`: the column sums
    of `grad_both` when the caller has them (the C kernel does)."""
    dim = s.att.shape[0]
    grad_weight = grad_both.t() @ s.h
    if grad_bias_both is None:
        grad_bias_both = grad_both.sum(0)
    if s.mode == "relu_residual":
        grad_h = torch.addmm(grad, grad_both, s.weight)
    else:
        grad_h = grad_both @ s.weight
    params = [
        grad_weight[:dim],
        grad_bias_both[:dim],
        grad_weight[dim:],
        grad_bias_both[dim:],
        grad_att.reshape(s.att_shape),
        grad_bias,
    ]
    return grad_h, params


@dataclass(frozen=True)
class Neighbours:
    """Who each node attends to besides itself (no gradient flows into these)."""

    other: torch.Tensor | None  # [nodes] predecessor's row; None: the row just before
    has_other: torch.Tensor  # [nodes] float, 0 where a node has no in-edge
    slope: float  # leaky ReLU negative slope of the attention


class TwoSlotGATv2(torch.autograd.Function):
    """One layer (heads=1, self loops) over self + at most one predecessor, with the ReLU
    and the residual skip that follow it fused in (`mode`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: torch.Tensor, nbrs: Neighbours, mode: Mode, *params: torch.Tensor
    ) -> torch.Tensor:
        out, ctx.saved = layer_forward(h, params, nbrs.other, nbrs.has_other, mode, nbrs.slope)
        ctx.nbrs = nbrs
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grad_h, grads = layer_backward(ctx.saved, grad, ctx.nbrs.other, ctx.nbrs.slope)
        del ctx.saved
        return (grad_h, None, None, *grads)


class GATv2Stack(torch.autograd.Function):
    """Every layer (ReLU after each, residual skips from hop 2 on) and the mean pooling of
    every hop, as one autograd node: returns [graphs, sum of hop widths]. `pool` is
    (graph of each node, 1 / nodes per graph)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h0: torch.Tensor,
        nbrs: Neighbours,
        pool: tuple[torch.Tensor, torch.Tensor],
        residual: bool,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        ctx.nbrs, ctx.pool = nbrs, pool
        ctx.widths = [int(h0.shape[1])] + [int(p.shape[0]) for p in params[5::PARAMS_PER_LAYER]]
        if nbrs.other is None and ckernel.applies(h0, max(ctx.widths[1:])):
            pooled, ctx.saved = _pooling_kernels(h0, nbrs, pool, residual, params, ctx.widths)
            return pooled
        hops, saved = [h0], []
        for first in range(0, len(params), PARAMS_PER_LAYER):
            mode: Mode = "relu_residual" if residual and first else "relu"
            layer = params[first : first + PARAMS_PER_LAYER]
            out, s = layer_forward(hops[-1], layer, nbrs.other, nbrs.has_other, mode, nbrs.slope)
            hops.append(out)
            saved.append(s)
        batch, inv_counts = pool
        stacked = torch.cat(hops, dim=1)
        pooled = torch.zeros(inv_counts.shape[0], stacked.shape[1], dtype=stacked.dtype)
        pooled.index_add_(0, batch, stacked).mul_(inv_counts[:, None])
        ctx.saved = saved
        return pooled

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        batch, inv_counts = ctx.pool
        if isinstance(ctx.saved[0], _KernelSaved):
            grads = _pooling_kernels_backward(ctx, grad)
            del ctx.saved
            return (grads[0], None, None, None, *grads[1:])
        # Each node gets its graph's pooled gradient / node count, at every hop.
        per_node = (grad * inv_counts[:, None]).index_select(0, batch)
        node_grads = per_node.split(ctx.widths, dim=1)
        grads: list[torch.Tensor] = []
        flowing = node_grads[-1]
        for layer in range(len(ctx.saved) - 1, -1, -1):
            flowing, layer_grads = layer_backward(
                ctx.saved[layer], flowing, ctx.nbrs.other, ctx.nbrs.slope
            )
            flowing = flowing + node_grads[layer]
            grads[:0] = layer_grads
        del ctx.saved
        return (flowing, None, None, None, *grads)


def _pooling_kernels(
    h0: torch.Tensor,
    nbrs: Neighbours,
    pool: tuple[torch.Tensor, torch.Tensor],
    residual: bool,
    params: Sequence[torch.Tensor],
    widths: list[int],
) -> tuple[torch.Tensor, list[_Saved | _KernelSaved]]:
    """GATv2Stack's forward on the C kernels, each layer adding its output to the graph
    sums as it goes (no per-node copy of every hop)."""
    batch, inv_counts = pool
    batch = batch.contiguous()
    pooled = torch.zeros(inv_counts.shape[0], sum(widths))
    pooled[:, : widths[0]].index_add_(0, batch, h0)
    h, saved = h0, []
    for layer, first in enumerate(range(0, len(params), PARAMS_PER_LAYER)):
        mode: Mode = "relu_residual" if residual and first else "relu"
        into = ckernel.Pool(batch, pooled, sum(widths[: layer + 1]))
        layer_params_ = params[first : first + PARAMS_PER_LAYER]
        h, s = layer_forward(h, layer_params_, None, nbrs.has_other, mode, nbrs.slope, into)
        saved.append(s)
    return pooled.mul_(inv_counts[:, None]), saved


def _pooling_kernels_backward(ctx: Any, grad: torch.Tensor) -> list[torch.Tensor]:
    """[gradient of h0, the parameters' gradients] for `_pooling_kernels`."""
    batch, inv_counts = ctx.pool
    batch = batch.contiguous()
    # Each node gets its graph's pooled gradient / node count, at every hop.
    table = (grad * inv_counts[:, None]).contiguous()
    widths = ctx.widths
    grads: list[torch.Tensor] = []
    flowing: torch.Tensor | None = None
    for layer in range(len(ctx.saved) - 1, -1, -1):
        rows = ckernel.Pool(batch, table, sum(widths[: layer + 1]))
        flowing, layer_grads = layer_backward(ctx.saved[layer], flowing, None, ctx.nbrs.slope, rows)
        grads[:0] = layer_grads
    assert flowing is not None
    return [flowing + table[:, : widths[0]].index_select(0, batch), *grads]


def layer_params(conv: torch.nn.Module) -> list[torch.Tensor]:
    """A GATv2Layer's parameters in PARAMS_PER_LAYER order."""
    return [
        conv.lin_l.weight,  # type: ignore[union-attr]
        conv.lin_l.bias,  # type: ignore[union-attr]
        conv.lin_r.weight,  # type: ignore[union-attr]
        conv.lin_r.bias,  # type: ignore[union-attr]
        conv.att,  # type: ignore[union-attr]
        conv.bias,  # type: ignore[union-attr]
    ]
