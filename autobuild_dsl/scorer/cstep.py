"""An epoch of training steps (forward, loss, backward, AdamW) as ONE C call.

With the whole network as one autograd node (fused.py) a step still costs ~2.6 ms of
fixed work (Python, ~150 torch op dispatches, autograd, ctypes calls) on top of its
arithmetic, and each op streams [nodes, hidden] tensors through memory. Here the step is
C loops over the rows (cstep_source.py): every layer of a row while its data is in cache,
the ranked loss with torchsort's soft rank (sort + pool-adjacent-violators, the same maths
as softrank._UnitSpearman), the backward in reverse row order, and torch's AdamW, on the
trainer's flat parameter, gradient and moment tensors in place. Python selects the epoch's
batches once and makes one call.

Only for what `applies` accepts: the fused path's cases (chained graphs, no BatchNorm, a C
compiler) with the default loss (ranked, L1 norms, torchsort backend) and small widths.
ABC_NO_CSTEP=1 keeps the fused path (for side-by-side timing); ABC_NO_CKERNEL=1 the torch
one. tests/test_scorer_cstep.py checks loss, gradients and weights against the fused path.
"""

from __future__ import annotations

import ctypes
import math
import os

import numpy as np
import torch

from autobuild_dsl.scorer import ckernel, fused
from autobuild_dsl.scorer.config import TrainConfig
from autobuild_dsl.scorer.cstep_source import SOURCE
from autobuild_dsl.scorer.model import GraphBatch, PackedGraphs, ScorerModel

# The C loops keep rows of these widths on the stack.
MAX_DIM = 64
MAX_HEAD = 256
MAX_LAYERS = 16
# Adam's betas and eps, as torch's defaults (train.FlatAdamW uses the same).
BETAS = (0.9, 0.999)
EPS = 1e-8


def _build() -> ctypes.CDLL | None:
    lib = ckernel.compile_library(SOURCE, "cstep")
    if lib is not None:
        vp, i64 = ctypes.c_void_p, ctypes.c_long
        lib.cstep_work_floats.argtypes = [vp]
        lib.cstep_work_floats.restype = i64
        lib.cstep_epoch.argtypes = [vp, vp, vp, i64, *[vp] * 5, i64, *[vp] * 9]
        lib.cstep_epoch.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The C epoch, compiled once per machine and loaded once per process; None when it
    cannot be (no compiler, ABC_NO_CKERNEL)."""
    return ckernel.load_once("cstep", _build)


def applies(model: ScorerModel, batch: GraphBatch, config: TrainConfig, backend: str) -> bool:
    """Whether `EpochKernel` can train this model on batches like `batch`."""
    if os.environ.get("ABC_NO_CSTEP"):
        return False
    mc = model.config
    return (
        config.loss == "ranked"
        and config.rank_lambda > 0
        and config.norm_ord == 1
        and backend == "torchsort"
        and mc.hidden <= MAX_DIM
        and len(mc.vocab_sizes) <= MAX_DIM
        and mc.head_hidden <= MAX_HEAD
        and mc.num_layers <= MAX_LAYERS
        and fused.applies(model, batch)
        and library() is not None
    )


class EpochKernel:
    """One member's C training state: where each parameter lives in the flat tensor, the
    fixed settings, and a workspace grown to the largest batch seen."""

    def __init__(
        self,
        model: ScorerModel,
        layout: fused.FlatLayout,
        flat: torch.nn.Parameter,
        moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        config: TrainConfig,
    ) -> None:
        features = model.features
        tensors = [features.embed, features.weight, features.bias, *layout.conv]
        for linear in layout.linears:
            tensors += [linear.weight, linear.bias]
        base = flat.data_ptr()
        self.offsets = torch.tensor([(t.data_ptr() - base) // 4 for t in tensors])
        self.flat, self.moments = flat, moments  # (exp_avg, exp_avg_sq, step count)
        slope = model.convs[0].negative_slope
        self.scalars = torch.tensor(
            [slope, config.regularization_strength, config.rank_lambda, config.lr,
             config.weight_decay, *BETAS, EPS],
            dtype=torch.float64,
        )  # fmt: skip
        mc = model.config
        self.shape = [len(mc.vocab_sizes), features.slots, features.embed.shape[2]]
        self.shape += [mc.num_layers, mc.hidden, layout.linears[0].out_features, mc.residual]
        self.hops = mc.num_layers + 1
        self.capacity = (0, 0)
        self.work = torch.empty(0)

    def _workspace(self, nodes: int, graphs: int) -> torch.Tensor:
        """The dims the C call reads; grows the workspace when a batch is larger."""
        if nodes > self.capacity[0] or graphs > self.capacity[1]:
            self.capacity = (max(nodes, self.capacity[0]), max(graphs, self.capacity[1]))
            dims = torch.tensor([*self.shape, *self.capacity])
            lib = library()
            assert lib is not None
            self.work = torch.empty(int(lib.cstep_work_floats(dims.data_ptr())))
        return torch.tensor([*self.shape, *self.capacity])

    def run(
        self,
        packed: PackedGraphs,
        order: torch.Tensor,
        sizes: list[int],
        y: torch.Tensor,
        unit: torch.Tensor,
    ) -> torch.Tensor:
        """Train on the graphs `order` of `packed` in batches of `sizes` graphs (the C side
        cuts them: no gather here); y and unit are [graphs] in that order (standardised
        label; centred unit-norm ranks within each batch). Returns [batches, 2 + hops]:
        total loss, MSE, soft SRCC per hop (NaN: none)."""
        lib = library()
        assert lib is not None
        order = order.contiguous()
        graph_off = np.concatenate([[0], np.cumsum(sizes)])
        counts = np.diff(packed.node_ptr.numpy())[order.numpy()]
        dims = self._workspace(int(np.add.reduceat(counts, graph_off[:-1]).max()), max(sizes))
        graph_off_t = torch.from_numpy(graph_off)
        x, has, node_ptr = (t.contiguous() for t in (packed.x, packed.nbr_mask[1], packed.node_ptr))
        y, unit = y.contiguous().float(), unit.contiguous().float()
        exp_avg, exp_avg_sq, step = self.moments
        grad = self.flat.grad
        assert grad is not None and x.dtype == order.dtype == node_ptr.dtype == torch.int64
        out = torch.empty(len(sizes), 2 + self.hops)
        rc = lib.cstep_epoch(
            dims.data_ptr(), self.scalars.data_ptr(), self.offsets.data_ptr(), self.flat.numel(),
            self.flat.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
            step.data_ptr(), len(sizes), graph_off_t.data_ptr(), order.data_ptr(),
            node_ptr.data_ptr(), x.data_ptr(), has.data_ptr(), y.data_ptr(), unit.data_ptr(),
            self.work.data_ptr(), out.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError("cstep_epoch refused a batch larger than its workspace")
        return out


def summary(out: torch.Tensor) -> tuple[float, float | None]:
    """(mean loss, mean over batches of the mean soft SRCC over hops) of `run`'s output."""
    rows = out.double().numpy()
    srcc = [float(r[2:].mean()) for r in rows if not math.isnan(float(r[2]))]
    return float(rows[:, 0].mean()), (sum(srcc) / len(srcc) if srcc else None)
