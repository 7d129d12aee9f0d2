"""A training step's whole network (FE-MLP, every GATv2 hop with its pooling, MLP head) as
ONE autograd node over the flat parameter tensor, with a hand-written backward.

An epoch on DyNAS-T is ~16 batches of ~2000 nodes; what `ScorerModel.training_forward`
leaves to autograd (the FE-MLP's table, gather and abs, the head's three linears and two
ReLUs, one AccumulateGrad per parameter into its view of the flat gradient) is a few dozen
small nodes per step whose bookkeeping costs more than their arithmetic. Here they are
plain tensor ops in one forward and one backward, and the backward hands autograd one
gradient, already laid out as the flat parameter (see `train.flatten_parameters`).

Same numbers as `ScorerModel.training_forward` within float rounding (the stack part is
the same code, fastlayer.py); tests/test_scorer_fused.py compares outputs and gradients.
Only for what `applies` accepts (chained graphs, no BatchNorm, the C kernels present);
everything else keeps the per-module autograd path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._utils import _flatten_dense_tensors

from autobuild_dsl.scorer import ckernel
from autobuild_dsl.scorer.fastlayer import (
    PARAMS_PER_LAYER,
    _pooling_kernels,
    _pooling_kernels_backward,
    layer_params,
)
from autobuild_dsl.scorer.model import GraphBatch, ScorerModel, ScorerOutput

_threshold_backward = torch.ops.aten.threshold_backward


@dataclass(frozen=True)
class FlatLayout:
    """Where each parameter of a model lives in its flat tensor: the order the fused
    backward concatenates the gradients in."""

    params: tuple[torch.Tensor, ...]  # model.parameters(), the flat tensor's order
    conv: tuple[torch.Tensor, ...]  # every GATv2 layer's, in PARAMS_PER_LAYER order
    linears: tuple[nn.Linear, ...]  # the head's, input side first

    @classmethod
    def of(cls, model: ScorerModel) -> FlatLayout:
        linears = tuple(m for m in model.head if isinstance(m, nn.Linear))
        conv = tuple(p for layer in model.convs for p in layer_params(layer))
        return cls(tuple(model.parameters()), conv, linears)


def applies(model: ScorerModel, batch: GraphBatch) -> bool:
    """Whether `fused_forward` can run this model on this batch."""
    head = list(model.head)
    return (
        model.fusable(batch)
        and batch.chain
        and ckernel.applies(torch.zeros(1), model.config.hidden)
        and len(head) == 5
        and all(isinstance(m, nn.ReLU) for m in head[1::2])
    )


def fused_forward(
    model: ScorerModel, layout: FlatLayout, flat: torch.Tensor, batch: GraphBatch
) -> ScorerOutput:
    """`model.training_forward(batch)` as one autograd node whose only input is `flat`
    (the pooled hops' L1 norms, what the ranked loss reads, computed inside it too)."""
    prediction, pooled, l1_norms = _WholeNetwork.apply(flat, model, layout, batch)
    return ScorerOutput(prediction, [], pooled, model.hop_of_column, l1_norms)


class _WholeNetwork(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, flat: torch.Tensor, model: ScorerModel, layout: FlatLayout, batch: GraphBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = model.features
        # The parameters are views of `flat` (no autograd here: forward runs without it).
        table = torch.baddbmm(
            features.bias[:, None, None], features.embed, features.weight[:, :, None]
        )[..., 0]
        codes = (batch.x + features.offsets).reshape(-1)
        raw = table.reshape(-1).index_select(0, codes).view(batch.x.shape)
        h0 = raw.abs()
        nbrs = batch.neighbours(model.convs[0].negative_slope)
        pool = (batch.batch, 1.0 / batch.counts.to(h0.dtype).clamp(min=1))
        widths = [int(h0.shape[1])] + [int(p.shape[0]) for p in layout.conv[5::PARAMS_PER_LAYER]]
        pooled, saved = _pooling_kernels(h0, nbrs, pool, model.config.residual, layout.conv, widths)
        # The head, keeping each layer's input for the weight gradients.
        inputs = [pooled[:, -model.config.hidden :]]
        for i, linear in enumerate(layout.linears):
            out = torch.addmm(linear.bias, inputs[-1], linear.weight.t())
            inputs.append(out.relu_() if i < len(layout.linears) - 1 else out)
        ctx.nbrs, ctx.pool, ctx.widths, ctx.saved = nbrs, pool, widths, saved
        ctx.model, ctx.layout, ctx.raw, ctx.codes = model, layout, raw, codes
        # Outputs (pooled, and the head's first input, a view of it) go through
        # save_for_backward: kept on ctx they would make a reference cycle with the
        # output's grad_fn, and every step's saved tensors would leak.
        ctx.hidden = inputs[1:-1]
        ctx.save_for_backward(pooled)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no work
        # As ScorerOutput.graph_norms(1) computes them: [hops, graphs].
        l1_norms = (pooled.abs() @ model.hop_of_column.T).T
        return inputs[-1].squeeze(-1), pooled, l1_norms

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_prediction: torch.Tensor | None,
        grad_pooled: torch.Tensor | None,
        grad_norms: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        model: ScorerModel = ctx.model
        layout: FlatLayout = ctx.layout
        grads: dict[int, torch.Tensor] = {}
        (pooled,) = ctx.saved_tensors
        # The head's gradient is added to it below: a fresh tensor, not the caller's.
        grad_pooled = pooled.new_zeros(pooled.shape) if grad_pooled is None else grad_pooled.clone()
        if grad_norms is not None:  # d |pooled| summed per hop
            spread = grad_norms.T @ model.hop_of_column
            grad_pooled.addcmul_(pooled.sign(), spread)
        if grad_prediction is not None:
            inputs = [pooled[:, -model.config.hidden :], *ctx.hidden]
            grad_head = _head_backward(layout.linears, inputs, grad_prediction, grads)
            grad_pooled[:, -model.config.hidden :] += grad_head
        else:
            for linear in layout.linears:
                grads[id(linear.weight)] = torch.zeros_like(linear.weight)
                grads[id(linear.bias)] = torch.zeros_like(linear.bias)
        # fastlayer's stack backward reads nbrs, pool, widths and saved from ctx.
        stack = _pooling_kernels_backward(ctx, grad_pooled)
        del ctx.saved
        for param, grad in zip(layout.conv, stack[1:], strict=True):
            grads[id(param)] = grad
        _features_backward(model, ctx.raw, ctx.codes, stack[0], grads)
        # One C++ call flattens and concatenates (a Python reshape per parameter cost more).
        flat_grad = _flatten_dense_tensors([grads[id(p)] for p in layout.params])
        return flat_grad, None, None, None


def _head_backward(
    linears: tuple[nn.Linear, ...],
    inputs: list[torch.Tensor],
    grad_prediction: torch.Tensor,
    grads: dict[int, torch.Tensor],
) -> torch.Tensor:
    """Gradient of the head's input; the linears' gradients go into `grads`."""
    grad = grad_prediction[:, None]
    for i in range(len(linears) - 1, -1, -1):
        linear, x = linears[i], inputs[i]
        grads[id(linear.weight)] = grad.t() @ x
        grads[id(linear.bias)] = grad.sum(0)
        grad = grad @ linear.weight
        if i > 0:  # through the ReLU that made this layer's input
            grad = _threshold_backward(grad, x, 0)
    return grad


def _features_backward(
    model: ScorerModel,
    raw: torch.Tensor,
    codes: torch.Tensor,
    grad_h0: torch.Tensor,
    grads: dict[int, torch.Tensor],
) -> None:
    """The FE-MLP's parameter gradients (abs, gather from the value table, the table's
    batched matmul) into `grads`."""
    features = model.features
    grad_raw = grad_h0 * raw.sign()
    grad_table = torch.zeros(features.embed.shape[0] * features.slots, dtype=raw.dtype)
    grad_table.index_add_(0, codes, grad_raw.reshape(-1))
    grad_table = grad_table.view(features.embed.shape[0], features.slots)
    grads[id(features.embed)] = grad_table[:, :, None] * features.weight[:, None, :]
    grads[id(features.weight)] = torch.bmm(grad_table[:, None, :], features.embed)[:, 0]
    grads[id(features.bias)] = grad_table.sum(1)
