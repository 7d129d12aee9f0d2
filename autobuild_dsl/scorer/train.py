"""Training one scorer (one ensemble member) on packed graphs.

Nothing here prints: progress goes to an optional callback. A member is reproducible for a
fixed seed: the seed fixes the initial weights and the order of the batches, and every op
used is deterministic on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.parallel import thread_note, torch_threads  # noqa: F401 (re-exported)
from autobuild_dsl.scorer.loss import LossKind, scorer_loss
from autobuild_dsl.scorer.model import ModelConfig, PackedGraphs, ScorerModel, check_codes
from autobuild_dsl.scorer.softrank import resolve_backend

# Graphs per forward pass when evaluating (bounds memory, not a training setting).
EVAL_CHUNK = 4096
# Nodes per forward pass when only predicting: a chunk's activations (4096 x 32 floats,
# 512 KiB) stay in cache between the layers' ops; 4x larger chunks ran ~15% slower.
PREDICT_NODES = 4096


class TrainConfig(BaseModel):
    """Hyper-parameters of one predictor; the defaults are the paper's except the learning
    rate (see `lr`) and BatchNorm (see `batch_norm`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=200, ge=1)
    batch_size: int = Field(default=128, ge=2)
    # 10x the authors' 1e-4: at 1e-4 our network underfits in 200 epochs (train SRCC of
    # the predictions = test SRCC = 0.98 on DyNAS-T); at 1e-3 both reach 0.993.
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    loss: LossKind = "ranked"
    rank_lambda: float = Field(default=1.0, ge=0, description="weight of the ranking term")
    regularization_strength: float = Field(default=1.0, gt=0, description="soft-rank epsilon")
    norm_ord: Literal[1, 2] = Field(default=1, description="norm of the embeddings (L1: paper)")
    softrank_backend: Literal["auto", "torchsort", "torch"] = "auto"
    num_layers: int = Field(default=4, ge=1)
    hidden: int = Field(default=32, ge=1)
    fe_dim: int = Field(default=8, ge=1)
    # Off by default, unlike the authors' code: with it the HELP hop-0 SRCC (the feature
    # importances) fell from 0.95 to 0.4-0.6 and the predictions did not improve, at ~12%
    # more time per epoch; --batch-norm restores it.
    batch_norm: bool = False
    threads: int = Field(default=1, ge=1, description="torch threads while training")
    eval_every: int = Field(
        default=10, ge=0, description="epochs between held-out checks for progress (0: never)"
    )

    def model_config_for(self, vocab_sizes: Sequence[int]) -> ModelConfig:
        return ModelConfig(
            vocab_sizes=list(vocab_sizes),
            num_layers=self.num_layers,
            hidden=self.hidden,
            fe_dim=self.fe_dim,
            batch_norm=self.batch_norm,
            norm_ord=self.norm_ord,
        )


class Moments(BaseModel):
    mean: float
    sd: float
    count: int


class MemberMetrics(BaseModel):
    """Held-out metrics of one member (None where the test split is too small)."""

    hop_srcc: list[float | None] = Field(description="SRCC of hop-l graph-embedding norms")
    pred_srcc: float | None = Field(description="SRCC of the prediction head")
    mae: float | None = Field(description="mean absolute error, in target units")
    n_train: int
    n_test: int
    epochs: int
    train_seconds: float
    seconds_per_epoch: float
    cpu_seconds_per_epoch: float | None = Field(
        default=None,
        description="CPU time of the training process per epoch: what an epoch costs, "
        "unlike wall time not inflated by other jobs on a shared machine (absent in runs "
        "written before it existed)",
    )


@dataclass
class EpochProgress:
    """Sent after every epoch; `test_srcc` only on evaluation epochs."""

    member: str
    epoch: int
    epochs: int
    loss: float
    srcc: float | None  # mean soft SRCC over hops on the training batches
    test_srcc: float | None  # mean held-out SRCC over hops (ranked) or of the head (mse)


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
    backend = resolve_backend(config.softrank_backend)
    label = label_moments(y[train_idx])
    # Standardise with training-split statistics; a constant label keeps scale 1.
    scale = label.sd if label.sd > 0 else 1.0
    y_std = torch.tensor((y - label.mean) / scale, dtype=torch.float32)
    with torch_threads(config.threads):
        torch.manual_seed(seed)
        model = ScorerModel(config.model_config_for(vocab_sizes))
        # Fused AdamW: one kernel for all parameters instead of a loop over them.
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        order_gen = torch.Generator().manual_seed(seed)
        train_tensor = torch.tensor(train_idx, dtype=torch.long)
        train_seconds = 0.0
        train_cpu_seconds = 0.0
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            cpu_started = time.process_time()
            model.train()
            perm = train_tensor[torch.randperm(len(train_idx), generator=order_gen)]
            total, batches = 0.0, 0
            srcc_sum, srcc_count = 0.0, 0
            for batch_idx in _batches(perm, config.batch_size):
                out = model(packed.select(batch_idx))
                loss = scorer_loss(
                    out,
                    y_std[batch_idx],
                    kind=config.loss,
                    rank_lambda=config.rank_lambda,
                    regularization_strength=config.regularization_strength,
                    norm_ord=config.norm_ord,
                    backend=backend,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.total.backward()
                optimizer.step()
                total += float(loss.total.detach())
                batches += 1
                if loss.hop_srcc:
                    srcc_sum += sum(loss.hop_srcc) / len(loss.hop_srcc)
                    srcc_count += 1
            train_seconds += time.perf_counter() - started
            train_cpu_seconds += time.process_time() - cpu_started
            if progress is not None:
                test_srcc = None
                due = config.eval_every and (
                    epoch % config.eval_every == 0 or epoch == config.epochs
                )
                if due and test_idx:
                    hop, pred_srcc, _ = evaluate(model, packed, y, test_idx, label)
                    test_srcc = _summary_srcc(hop, pred_srcc, config.loss)
                progress(
                    EpochProgress(
                        member=name,
                        epoch=epoch,
                        epochs=config.epochs,
                        loss=total / max(batches, 1),
                        srcc=srcc_sum / srcc_count if srcc_count else None,
                        test_srcc=test_srcc,
                    )
                )
        hop, pred_srcc, mae = evaluate(model, packed, y, test_idx, label)
        hop_norms, graph_norms = norm_moments(model, packed, train_idx)
    metrics = MemberMetrics(
        hop_srcc=hop,
        pred_srcc=pred_srcc,
        mae=mae,
        n_train=len(train_idx),
        n_test=len(test_idx),
        epochs=config.epochs,
        train_seconds=train_seconds,
        seconds_per_epoch=train_seconds / config.epochs,
        cpu_seconds_per_epoch=train_cpu_seconds / config.epochs,
    )
    model.eval()
    return TrainedMember(
        name=name,
        model=model,
        metrics=metrics,
        label=label,
        hop_norms=hop_norms,
        graph_norms=graph_norms,
    )


def _summary_srcc(hop: list[float | None], pred: float | None, loss: LossKind) -> float | None:
    if loss == "mse":
        return pred
    values = [h for h in hop if h is not None]
    return sum(values) / len(values) if values else None
