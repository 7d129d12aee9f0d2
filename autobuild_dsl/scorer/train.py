"""Training one scorer (one ensemble member) on packed graphs.

Nothing here prints: progress goes to an optional callback. A member is reproducible for a
fixed seed: the seed fixes the initial weights and the order of the batches, and every op
used is deterministic on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from autobuild_dsl.parallel import thread_note, torch_threads  # noqa: F401 (re-exported)
from autobuild_dsl.scorer import cstep, fused
from autobuild_dsl.scorer.config import (  # noqa: F401  (re-exported: train.py was their home)
    EpochProgress,
    MemberMetrics,
    ModelConfig,
    Moments,
    TrainConfig,
)
from autobuild_dsl.scorer.loss import LossKind, scorer_loss
from autobuild_dsl.scorer.model import (
    GraphBatch,
    PackedGraphs,
    ScorerModel,
    ScorerOutput,
    check_codes,
)
from autobuild_dsl.scorer.softrank import resolve_backend

# Graphs per forward pass when evaluating (bounds memory, not a training setting).
EVAL_CHUNK = 4096
# Nodes per forward pass when only predicting: a chunk's activations (4096 x 32 floats,
# 512 KiB) stay in cache between the layers' ops; 4x larger chunks ran ~15% slower.
PREDICT_NODES = 4096


ProgressFn = Callable[[EpochProgress], None]


@dataclass
class TrainedMember:
    name: str
    model: ScorerModel
    metrics: MemberMetrics
    label: Moments  # training-split label mean/sd (the head predicts standardised labels)
    hop_norms: list[Moments]  # node-embedding norms at each hop over the training graphs
    graph_norms: list[Moments]  # mean-pooled graph-embedding norms at each hop, same graphs


def _batches(order: torch.Tensor, size: int) -> list[torch.Tensor]:
    chunks = list(order.split(size))
    # A last batch of one graph has no ranking signal: fold it into the previous one.
    if len(chunks) > 1 and chunks[-1].shape[0] < 2:
        last = chunks.pop()
        chunks[-1] = torch.cat([chunks[-1], last])
    return chunks


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (scipy's `rankdata`, without importing
    scipy.stats: half a second at the start of every `abc rank` / `abc build`)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.empty(len(values), dtype=bool)
    starts_group[:1] = True
    starts_group[1:] = ordered[1:] != ordered[:-1]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((starts + ends - 1) / 2.0 + 1.0)[group]
    return ranks


def unit_ranks(values: np.ndarray) -> torch.Tensor:
    """Average ranks of `values`, centred and scaled to unit norm (zeros when all tie): the
    fixed side of a batch's soft Spearman correlation."""
    ranks = average_ranks(values)
    ranks -= ranks.mean()
    norm = float(np.sqrt(ranks @ ranks))
    return torch.from_numpy(ranks / norm if norm > 0 else ranks)


def unit_ranks_many(
    values: np.ndarray, sizes: Sequence[int], dtype: torch.dtype = torch.float64
) -> list[torch.Tensor]:
    """`unit_ranks` of consecutive slices of `values` (`sizes` long each), as `dtype`: an
    epoch's batches at once, the batches of the common size as rows of one matrix."""
    common = sizes[0] if sizes else 0
    rows = 0
    while rows < len(sizes) and sizes[rows] == common:
        rows += 1
    out: list[torch.Tensor] = []
    if rows and common > 1:
        block = np.asarray(values[: rows * common], dtype=np.float64).reshape(rows, common)
        order = np.argsort(block, axis=1, kind="mergesort")
        ordered = np.take_along_axis(block, order, axis=1)
        position = np.broadcast_to(np.arange(common), block.shape)
        starts = np.ones(block.shape, dtype=bool)
        starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        ends = np.ones(block.shape, dtype=bool)
        ends[:, :-1] = starts[:, 1:]
        # Each tie group's first and last position, spread over the group.
        first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
        last = np.minimum.accumulate(np.where(ends, position, common)[:, ::-1], axis=1)[:, ::-1]
        ranks = np.empty(block.shape)
        np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
        ranks -= ranks.mean(axis=1, keepdims=True)
        norm = np.sqrt(np.einsum("ij,ij->i", ranks, ranks))[:, None]
        ranks = np.divide(ranks, norm, out=ranks, where=norm > 0)
        out = list(torch.from_numpy(ranks).to(dtype).unbind(0))
    else:
        rows = 0
    offset = rows * common
    for size in sizes[rows:]:
        out.append(unit_ranks(values[offset : offset + size]).to(dtype))
        offset += size
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (NaN when either side is constant or holds NaN)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    ra = average_ranks(a) - (len(a) + 1) / 2.0
    rb = average_ranks(b) - (len(b) + 1) / 2.0
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator > 0 else math.nan


def _srcc(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape[0] < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    value = spearman(a, b)
    return None if math.isnan(value) else value


def predict_packed(
    model: ScorerModel,
    packed: PackedGraphs,
    idx: Sequence[int] | torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """[graphs]: standardised predictions in eval mode, nothing else computed; `chunk`
    graphs per pass (default: about PREDICT_NODES nodes)."""
    if chunk is None:
        mean_nodes = int(packed.node_ptr[-1]) / max(packed.num_graphs, 1)
        chunk = max(1, int(PREDICT_NODES / max(mean_nodes, 1.0)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if idx is None:
                n = packed.num_graphs
                parts = [
                    model.predict(packed.slice(start, min(start + chunk, n)))
                    for start in range(0, n, chunk)
                ]
            else:
                all_idx = torch.as_tensor(idx, dtype=torch.long)
                parts = [model.predict(packed.select(c)) for c in all_idx.split(chunk)]
        return torch.cat(parts) if parts else torch.zeros(0)
    finally:
        model.train(was_training)


@torch.no_grad()
def embed(
    model: ScorerModel,
    packed: PackedGraphs,
    idx: Sequence[int] | torch.Tensor | None = None,
    *,
    with_node_norms: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(standardised predictions, graph norms [hops, graphs], node norms per hop) in eval
    mode; without `with_node_norms` the node norms are empty lists (they cost a quarter of
    the forward pass and only Eq. 5's statistics read them)."""
    was_training = model.training
    model.eval()
    try:
        all_idx = (
            torch.arange(packed.num_graphs)
            if idx is None
            else torch.as_tensor(idx, dtype=torch.long)
        )
        preds: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        nodes: list[list[torch.Tensor]] = []
        for chunk in all_idx.split(EVAL_CHUNK):
            out = model(packed.select(chunk))
            preds.append(out.prediction)
            norms.append(out.graph_norms(model.config.norm_ord))
            if with_node_norms:
                nodes.append(out.node_norms(model.config.norm_ord))
        node_norms = (
            [torch.cat([n[h] for n in nodes]) for h in range(model.num_hops)]
            if with_node_norms
            else []
        )
        return torch.cat(preds), torch.cat(norms, dim=1), node_norms
    finally:
        model.train(was_training)


def evaluate(
    model: ScorerModel,
    packed: PackedGraphs,
    y: np.ndarray,
    idx: Sequence[int],
    label: Moments,
) -> tuple[list[float | None], float | None, float | None]:
    """Held-out (hop SRCCs, prediction SRCC, MAE in target units) on graphs `idx`."""
    if len(idx) == 0:
        return [None] * model.num_hops, None, None
    pred, norms, _ = embed(model, packed, idx, with_node_norms=False)
    truth = y[np.asarray(idx)]
    hop = [_srcc(norms[h].numpy(), truth) for h in range(model.num_hops)]
    pred_units = pred.numpy().astype(np.float64) * label.sd + label.mean
    return hop, _srcc(pred_units, truth), float(np.mean(np.abs(pred_units - truth)))


def _moments(values: torch.Tensor) -> Moments:
    v = values.double()
    sd = float(v.std()) if v.numel() > 1 else 0.0
    return Moments(mean=float(v.mean()), sd=sd, count=int(v.numel()))


def norm_moments(
    model: ScorerModel, packed: PackedGraphs, idx: Sequence[int]
) -> tuple[list[Moments], list[Moments]]:
    """Eq. 5's mu_h, sd_h over the graphs `idx`, per hop: (node-embedding norms,
    mean-pooled graph-embedding norms). Module scores standardise with the one that
    matches how they read a module (its last node, or its pooled graph)."""
    _, graph_norms, node_norms = embed(model, packed, idx)
    nodes = [_moments(values) for values in node_norms]
    graphs = [_moments(graph_norms[h]) for h in range(graph_norms.shape[0])]
    return nodes, graphs


def label_moments(values: np.ndarray) -> Moments:
    # Population sd (ddof 0), as `data.splits.label_stats` uses for Eq. 5.
    values = np.asarray(values, dtype=np.float64)
    sd = float(values.std())
    return Moments(mean=float(values.mean()), sd=sd, count=int(values.shape[0]))


def flatten_parameters(model: torch.nn.Module) -> torch.nn.Parameter:
    """Make every parameter of `model` a view of one flat tensor, and its gradient a view
    of one flat gradient (accumulated in place by autograd); returns the flat parameter
    for the optimizer. `unflatten_parameters` gives each its own storage back."""
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        p.grad = grad[offset : offset + n].view_as(p)
        offset += n
    flat_param = torch.nn.Parameter(flat)
    flat_param.grad = grad
    return flat_param


def unflatten_parameters(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.data = p.data.clone()
        p.grad = None


class FlatAdamW:
    """AdamW (torch's fused CPU kernel) on one flat parameter. The kernel is called directly:
    `torch.optim.AdamW.step` spends ~0.1 ms a step on bookkeeping around a ~20 us kernel,
    a few % of an epoch. Falls back to the optimizer where the op is missing."""

    def __init__(self, flat: torch.nn.Parameter, lr: float, weight_decay: float) -> None:
        self.flat, self.lr, self.weight_decay = flat, lr, weight_decay
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.step_count = torch.zeros((), dtype=torch.float32)
        self.kernel = getattr(torch, "_fused_adamw_", None)
        self.fallback = (
            None
            if self.kernel is not None
            else torch.optim.AdamW([flat], lr=lr, weight_decay=weight_decay, fused=True)
        )

    def step(self) -> None:
        if self.fallback is not None:
            self.fallback.step()
            return
        self.step_count.add_(1)
        self.kernel(  # type: ignore[misc]
            [self.flat.data], [self.flat.grad], [self.exp_avg], [self.exp_avg_sq], [],
            [self.step_count], amsgrad=False, lr=self.lr, beta1=0.9, beta2=0.999,
            weight_decay=self.weight_decay, eps=1e-8, maximize=False, grad_scale=None,
            found_inf=None,
        )  # fmt: skip


@dataclass
class _Epochs:
    """One member's training state: runs epochs of shuffled batches."""

    model: ScorerModel
    packed: PackedGraphs
    y: np.ndarray  # raw labels: the per-batch target ranks come from them
    y_std: torch.Tensor  # standardised labels: the head's target
    train: torch.Tensor
    config: TrainConfig
    backend: str
    order: torch.Generator
    flat: torch.nn.Parameter = field(init=False)
    optimizer: FlatAdamW = field(init=False)
    layout: fused.FlatLayout = field(init=False)
    whole: bool | None = field(init=False, default=None)  # fused.applies, once known
    # The epoch as one C call (cstep.applies, decided on the first epoch); False: not here.
    c_epoch: cstep.EpochKernel | bool | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # Fused AdamW on one flat tensor: one kernel, no per-parameter Python loop.
        self.flat = flatten_parameters(self.model)
        self.layout = fused.FlatLayout.of(self.model)
        self.optimizer = FlatAdamW(self.flat, self.config.lr, self.config.weight_decay)

    def run(self) -> tuple[float, float | None]:
        """One epoch: (mean loss, mean soft SRCC over hops on the batches)."""
        config = self.config
        self.model.train()
        perm = self.train[torch.randperm(self.train.shape[0], generator=self.order)]
        chunks = _batches(perm, config.batch_size)
        sizes = [int(c.shape[0]) for c in chunks]
        # float32: the loss's side of the correlation; converted once, not per batch.
        units = unit_ranks_many(self.y[perm.numpy()], sizes, torch.float32)
        kernel = self._epoch_kernel(chunks[0])
        if kernel is not None:
            out = kernel.run(self.packed, perm, sizes, self.y_std[perm], torch.cat(units))
            return cstep.summary(out)
        total, srcc_sum, srcc_count = 0.0, 0.0, 0
        batches = self.packed.select_many(chunks)
        for batch_idx, batch, unit in zip(chunks, batches, units, strict=True):
            loss = scorer_loss(
                self._forward(batch),
                self.y_std[batch_idx],
                kind=config.loss,
                rank_lambda=config.rank_lambda,
                regularization_strength=config.regularization_strength,
                norm_ord=config.norm_ord,
                backend=self.backend,
                target_unit=unit,
            )
            self.flat.grad.zero_()  # type: ignore[union-attr]
            loss.total.backward()
            self.optimizer.step()
            total += float(loss.total.detach())
            if loss.hop_srcc:
                srcc_sum += sum(loss.hop_srcc) / len(loss.hop_srcc)
                srcc_count += 1
        return total / max(len(chunks), 1), srcc_sum / srcc_count if srcc_count else None

    def _epoch_kernel(self, first: torch.Tensor) -> cstep.EpochKernel | None:
        """The C epoch when it applies here (decided on the first batch's graphs)."""
        if self.c_epoch is None:
            opt = self.optimizer
            usable = opt.fallback is None and cstep.applies(
                self.model, self.packed.select(first), self.config, self.backend
            )
            moments = (opt.exp_avg, opt.exp_avg_sq, opt.step_count)
            self.c_epoch = usable and cstep.EpochKernel(
                self.model, self.layout, self.flat, moments, self.config
            )
        return self.c_epoch or None

    def _forward(self, batch: GraphBatch) -> ScorerOutput:
        # Every batch of one packed set takes the same path: decide on the first.
        if self.whole is None:
            self.whole = fused.applies(self.model, batch)
        if self.whole:
            return fused.fused_forward(self.model, self.layout, self.flat, batch)
        return self.model.training_forward(batch)


def train_member(
    packed: PackedGraphs,
    y: np.ndarray,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    vocab_sizes: Sequence[int],
    config: TrainConfig,
    *,
    seed: int,
    name: str = "member",
    progress: ProgressFn | None = None,
) -> TrainedMember:
    """Train one predictor on graphs `train_idx` of `packed` and evaluate it on `test_idx`."""
    y = np.asarray(y, dtype=np.float64)
    train_idx = [int(i) for i in train_idx]
    test_idx = [int(i) for i in test_idx]
    if len(train_idx) < 2:
        raise ValueError("a predictor needs at least 2 training graphs")
    check_codes(packed, vocab_sizes)
    label = label_moments(y[train_idx])
    # Standardise with training-split statistics; a constant label keeps scale 1.
    scale = label.sd if label.sd > 0 else 1.0
    y_std = torch.tensor((y - label.mean) / scale, dtype=torch.float32)
    with torch_threads(config.threads):
        torch.manual_seed(seed)
        model = ScorerModel(config.model_config_for(vocab_sizes))
        epochs = _Epochs(
            model, packed, y, y_std, torch.tensor(train_idx, dtype=torch.long), config,
            resolve_backend(config.softrank_backend), torch.Generator().manual_seed(seed),
        )  # fmt: skip
        seconds = cpu_seconds = 0.0
        for epoch in range(1, config.epochs + 1):
            started, cpu_started = time.perf_counter(), time.process_time()
            loss, srcc = epochs.run()
            seconds += time.perf_counter() - started
            cpu_seconds += time.process_time() - cpu_started
            if progress is None:
                continue
            test_srcc = None
            due = config.eval_every and (epoch % config.eval_every == 0 or epoch == config.epochs)
            if due and test_idx:
                hop, pred_srcc, _ = evaluate(model, packed, y, test_idx, label)
                test_srcc = _summary_srcc(hop, pred_srcc, config.loss)
            progress(EpochProgress(name, epoch, config.epochs, loss, srcc, test_srcc))
        unflatten_parameters(model)
        hop, pred_srcc, mae = evaluate(model, packed, y, test_idx, label)
        hop_norms, graph_norms = norm_moments(model, packed, train_idx)
    metrics = MemberMetrics(
        hop_srcc=hop,
        pred_srcc=pred_srcc,
        mae=mae,
        n_train=len(train_idx),
        n_test=len(test_idx),
        epochs=config.epochs,
        train_seconds=seconds,
        seconds_per_epoch=seconds / config.epochs,
        cpu_seconds_per_epoch=cpu_seconds / config.epochs,
    )
    model.eval()
    return TrainedMember(name, model, metrics, label, hop_norms, graph_norms)


def _summary_srcc(hop: list[float | None], pred: float | None, loss: LossKind) -> float | None:
    if loss == "mse":
        return pred
    values = [h for h in hop if h is not None]
    return sum(values) / len(values) if values else None
