"""The AutoBuild scorer: FE-MLP node embedding, GATv2 message passing, per-hop mean pooling.

Graphs are packed once into flat tensors (`PackedGraphs`) and batches are cut from them by
index, so an epoch never re-collates PyG `Data` objects. Message passing uses a padded
in-neighbour table (slot 0 is the node itself): sequence graphs have in-degree 1-3, so a
dense [nodes, slots, hidden] attention is much cheaper on CPU than scatter-based softmax.
`GATv2Layer` computes exactly what `torch_geometric.nn.GATv2Conv` (heads=1, self loops)
computes, with the same parameter names; a test checks the two agree.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# Torch-free (scorer.config): reading a run needs no torch; importable from here as before.
from autobuild_dsl.scorer.config import FeatureScore, ModelConfig
from autobuild_dsl.scorer.fastlayer import (
    GATv2Stack,
    Mode,
    Neighbours,
    TwoSlotGATv2,
    layer_params,
)

# Spread of the FE-MLP's initial value embeddings (see FeatureEmbedding).
FE_INIT_STD = 0.01


# --------------------------------------------------------------------------- graph packing


@dataclass(frozen=True)
class GraphBatch:
    """A batch of graphs as flat tensors, ready for `ScorerModel.forward`."""

    x: torch.Tensor  # [nodes, categories] long, 0 = n/a
    nbr: torch.Tensor  # [slots, nodes] long, local index of each in-neighbour
    nbr_mask: torch.Tensor  # [slots, nodes] bool, False = padding
    batch: torch.Tensor  # [nodes] long, graph of each node
    counts: torch.Tensor  # [graphs] long, nodes per graph
    chain: bool = False  # every in-edge comes from the row just before (see fastlayer)

    @property
    def num_graphs(self) -> int:
        return int(self.counts.shape[0])

    @functools.cached_property
    def has_other(self) -> torch.Tensor:
        """[nodes] float: 1 where slot 1 holds a real in-neighbour."""
        return self.nbr_mask[1].to(torch.float32)

    def neighbours(self, slope: float) -> Neighbours:
        """Slot 1 for the fused two-slot layer (a batch with at most one in-edge a node)."""
        return Neighbours(None if self.chain else self.nbr[1], self.has_other, slope)


@dataclass(frozen=True)
class PackedGraphs:
    """Many graphs packed once; `select(idx)` cuts a batch without touching PyG objects.

    Nodes of a graph are contiguous and neighbours are stored as offsets from the node
    itself, so a batch is one gather plus an add, whatever graphs it picks. The neighbour
    table is slot-major ([slots, nodes]): per-slot rows are contiguous, which makes the
    gathers and the softmax over slots several times faster than node-major on CPU.
    """

    x: torch.Tensor  # [total nodes, categories]
    rel_nbr: torch.Tensor  # [slots, total nodes] neighbour - node (0 for padding)
    nbr_mask: torch.Tensor  # [slots, total nodes]
    node_ptr: torch.Tensor  # [graphs + 1] first node of each graph
    stage_index: torch.Tensor | None = None  # [total nodes] when the graphs carry it
    layer_index: torch.Tensor | None = None

    @property
    def num_graphs(self) -> int:
        return int(self.node_ptr.shape[0] - 1)

    @property
    def counts(self) -> torch.Tensor:
        return self.node_ptr[1:] - self.node_ptr[:-1]

    @functools.cached_property
    def is_chain(self) -> bool:
        """Every node has at most one in-edge, from the node packed just before it: a
        batch of such graphs needs no neighbour gather (see fastlayer)."""
        if self.rel_nbr.shape[0] != 2:
            return False
        return bool((self.rel_nbr[1][self.nbr_mask[1]] == -1).all())

    def select(self, idx: torch.Tensor | Sequence[int] | None = None) -> GraphBatch:
        """The graphs `idx` (all, in order, when None) as one batch."""
        counts_all = self.counts
        if idx is None:
            counts = counts_all
            batch = torch.repeat_interleave(torch.arange(self.num_graphs), counts)
            total = int(self.node_ptr[-1])
            local = torch.arange(total)
            return GraphBatch(
                x=self.x,
                nbr=local[None, :] + self.rel_nbr,
                nbr_mask=self.nbr_mask,
                batch=batch,
                counts=counts,
                chain=self.is_chain,
            )
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.numel() and _is_range(idx):
            return self.slice(int(idx[0]), int(idx[-1]) + 1)
        counts = counts_all[idx]
        starts = self.node_ptr[:-1][idx]
        batch = torch.repeat_interleave(torch.arange(idx.shape[0]), counts)
        total = int(counts.sum())
        local = torch.arange(total)
        local_start = torch.cumsum(counts, 0) - counts
        nodes = starts[batch] + (local - local_start[batch])
        return GraphBatch(
            x=self.x[nodes],
            nbr=local[None, :] + self.rel_nbr[:, nodes],
            nbr_mask=self.nbr_mask[:, nodes],
            batch=batch,
            counts=counts,
            chain=self.is_chain,
        )

    def select_many(self, chunks: Sequence[torch.Tensor]) -> list[GraphBatch]:
        """One batch per chunk of graph indices, cut from ONE gather (an epoch's batches
        at once: per batch only a few slices are left)."""
        whole = self.select(torch.cat(list(chunks)))
        sizes = [int(c.shape[0]) for c in chunks]
        nodes = [int(n) for n in torch.stack([c.sum() for c in whole.counts.split(sizes)])]
        batches: list[GraphBatch] = []
        graph = node = 0
        for size, count in zip(sizes, nodes, strict=True):
            cut = slice(node, node + count)
            batches.append(
                GraphBatch(
                    x=whole.x[cut],
                    nbr=whole.nbr[:, cut] - node,
                    nbr_mask=whole.nbr_mask[:, cut],
                    batch=whole.batch[cut] - graph,
                    counts=whole.counts[graph : graph + size],
                    chain=whole.chain,
                )
            )
            graph, node = graph + size, node + count
        return batches

    def slice(self, start: int, stop: int) -> GraphBatch:
        """Graphs start..stop-1 as one batch: views of the packed tensors, no gather."""
        first, end = int(self.node_ptr[start]), int(self.node_ptr[stop])
        counts = self.node_ptr[start + 1 : stop + 1] - self.node_ptr[start:stop]
        local = torch.arange(end - first)
        return GraphBatch(
            x=self.x[first:end],
            nbr=local[None, :] + self.rel_nbr[:, first:end],
            nbr_mask=self.nbr_mask[:, first:end],
            batch=torch.repeat_interleave(torch.arange(stop - start), counts),
            counts=counts,
            chain=self.is_chain,
        )


def _is_range(idx: torch.Tensor) -> bool:
    """idx is first, first + 1, ..., last (a chunk of consecutive graphs)."""
    n = idx.shape[0]
    return int(idx[-1]) - int(idx[0]) == n - 1 and bool((idx[1:] - idx[:-1] == 1).all())


def check_codes(packed: PackedGraphs, vocab_sizes: Sequence[int]) -> None:
    """Refuse feature codes outside a category's vocabulary: the FE-MLP's flat table
    would silently read another category's entry."""
    if packed.x.shape[1] != len(vocab_sizes):
        raise ValueError(
            f"graphs have {packed.x.shape[1]} feature columns, the model {len(vocab_sizes)}"
        )
    if packed.x.numel() == 0:
        return
    low = packed.x.min(dim=0).values
    high = packed.x.max(dim=0).values
    for column, size in enumerate(vocab_sizes):
        if int(low[column]) < 0 or int(high[column]) > size:
            raise ValueError(
                f"feature column {column} holds code {int(high[column])}, outside 0..{size}"
            )


def pack_graphs(graphs: Sequence[object]) -> PackedGraphs:
    """Pack PyG `Data` objects (x: long [n, C], edge_index [2, E]) into flat tensors."""
    if not graphs:
        raise ValueError("no graphs to pack")
    xs: list[torch.Tensor] = []
    sizes: list[int] = []
    srcs: list[torch.Tensor] = []
    dsts: list[torch.Tensor] = []
    stages: list[torch.Tensor] = []
    layers: list[torch.Tensor] = []
    offset = 0
    for graph in graphs:
        x = torch.as_tensor(graph.x, dtype=torch.long)  # type: ignore[attr-defined]
        if x.dim() != 2:
            raise ValueError("graph.x must be a [nodes, categories] tensor")
        n = int(x.shape[0])
        edges = torch.as_tensor(graph.edge_index, dtype=torch.long)  # type: ignore[attr-defined]
        if edges.numel():
            if int(edges.min()) < 0 or int(edges.max()) >= n:
                raise ValueError("edge_index refers to a node outside the graph")
            # Self loops are added by the layer (as GATv2Conv does); drop explicit ones.
            keep = edges[0] != edges[1]
            srcs.append(edges[0, keep] + offset)
            dsts.append(edges[1, keep] + offset)
        xs.append(x)
        sizes.append(n)
        for name, out in (("stage_index", stages), ("layer_index", layers)):
            value = getattr(graph, name, None)
            if value is not None:
                out.append(torch.as_tensor(value, dtype=torch.long).reshape(-1))
        offset += n
    x_all = torch.cat(xs)
    total = x_all.shape[0]
    src = torch.cat(srcs) if srcs else torch.zeros(0, dtype=torch.long)
    dst = torch.cat(dsts) if dsts else torch.zeros(0, dtype=torch.long)
    indeg = torch.bincount(dst, minlength=total)
    slots = 1 + (int(indeg.max()) if total and dst.numel() else 0)
    rel = torch.zeros(total, slots, dtype=torch.long)
    mask = torch.zeros(total, slots, dtype=torch.bool)
    mask[:, 0] = True  # slot 0: the node itself
    if dst.numel():
        # Rank of each edge among the edges into the same node, stable in input order.
        order = torch.argsort(dst, stable=True)
        dst_sorted = dst[order]
        first = torch.cumsum(indeg, 0) - indeg
        slot = torch.arange(dst_sorted.shape[0]) - first[dst_sorted] + 1
        rel[dst_sorted, slot] = src[order] - dst_sorted
        mask[dst_sorted, slot] = True
    node_ptr = torch.zeros(len(sizes) + 1, dtype=torch.long)
    node_ptr[1:] = torch.cumsum(torch.tensor(sizes, dtype=torch.long), 0)
    return PackedGraphs(
        x=x_all,
        rel_nbr=rel.T.contiguous(),
        nbr_mask=mask.T.contiguous(),
        node_ptr=node_ptr,
        stage_index=torch.cat(stages) if len(stages) == len(graphs) else None,
        layer_index=torch.cat(layers) if len(layers) == len(graphs) else None,
    )


# --------------------------------------------------------------------------- layers


class FeatureEmbedding(nn.Module):
    """FE-MLP: per category, one-hot -> embedding -> linear -> one scalar; then `abs`.

    Each category's module is linear (the paper's only non-linearity is the final abs), so
    it maps every value to one scalar. All categories are evaluated as one table
    [categories, values] (an einsum over padded weights) and a single gather picks each
    node's scalars: no Python loop over categories.
    """

    def __init__(self, vocab_sizes: Sequence[int], dim: int = 8) -> None:
        super().__init__()
        if not vocab_sizes:
            raise ValueError("at least one feature category is needed")
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        slots = max(self.vocab_sizes) + 1  # + the n/a slot (index 0)
        count = len(self.vocab_sizes)
        # Every value of a category starts with (nearly) the same scalar. nn.Embedding's
        # N(0, 1) start gives the values scalars ~0.6 apart in a random order, and under
        # `abs` a random sign each: at the paper's learning rate 200 epochs cannot undo
        # that, so the FE-MLP kept a random order (HELP's 25 resolutions ended anti-ranked,
        # hop-0 SRCC -0.3). Starting together, the order is learned from the data.
        self.embed = nn.Parameter(torch.randn(count, slots, dim) * FE_INIT_STD)
        bound = 1.0 / math.sqrt(dim)  # as nn.Linear(dim, 1)
        self.weight = nn.Parameter(torch.empty(count, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(count).uniform_(-bound, bound))
        self.register_buffer("offsets", torch.arange(count) * slots, persistent=False)
        self.slots = slots

    @property
    def out_dim(self) -> int:
        return len(self.vocab_sizes)

    def table(self) -> torch.Tensor:
        """Raw scalar (before abs) of every value of every category: [categories, slots]."""
        # One batched matmul with the bias folded in: [c, v, d] @ [c, d, 1] + [c, 1, 1].
        return torch.baddbmm(self.bias[:, None, None], self.embed, self.weight[:, :, None])[..., 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.table().reshape(-1)
        # index_select, not advanced indexing: half the time forward and backward.
        codes = (x + self.offsets).reshape(-1)
        return flat.index_select(0, codes).view(x.shape).abs()


class GATv2Layer(nn.Module):
    """GATv2 attention (Brody et al., ICLR 2022), one head, self loops, padded neighbours."""

    def __init__(self, in_dim: int, out_dim: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.lin_l = nn.Linear(in_dim, out_dim)
        self.lin_r = nn.Linear(in_dim, out_dim)
        self.att = nn.Parameter(torch.empty(1, 1, out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.negative_slope = negative_slope
        # GATv2Conv's initialisation: glorot weights, zero biases.
        for lin in (self.lin_l, self.lin_r):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.att)

    def forward(self, h: torch.Tensor, nbr: torch.Tensor, nbr_mask: torch.Tensor) -> torch.Tensor:
        """h: [nodes, in]; nbr, nbr_mask: [slots, nodes] (slot 0 = the node itself)."""
        # Two matmuls, not one on concatenated weights: chunking the output costs a
        # concatenation and a copy of the gradient in backward, which is slower here.
        source = self.lin_l(h)
        target = self.lin_r(h)
        slots = nbr.shape[0]
        att = self.att.reshape(-1)
        # Slot 0 is the node itself: its message is `source` as is, no gather needed.
        self_logit = nn.functional.leaky_relu(source + target, self.negative_slope) @ att
        if slots == 1:
            return source + self.bias  # no in-edges anywhere: attention over one slot is 1
        if slots == 2:
            # Sequence graphs: softmax over (self, predecessor) is a sigmoid of the logit
            # difference. A padded slot points at the node itself, so its message equals
            # the self message and the output is exact whatever weight it gets.
            other = source.index_select(0, nbr[1])
            other_logit = nn.functional.leaky_relu(other + target, self.negative_slope) @ att
            weight_other = torch.sigmoid(other_logit - self_logit).unsqueeze(-1)
            return torch.addcmul(source, weight_other, other - source) + self.bias
        # More slots (skip links; IR graphs): slot 1 stays dense, as above, and the few
        # in-edges past it are a sparse edge list, so padding costs nothing. A node with
        # edges past slot 1 has a real slot 1 (slots fill in order); a padded slot 1
        # points at the node itself and, as above, cannot change its output.
        other = source.index_select(0, nbr[1])
        other_logit = nn.functional.leaky_relu(other + target, self.negative_slope) @ att
        extra_slot, extra_node = nbr_mask[2:].nonzero(as_tuple=True)
        extra_msg = source.index_select(0, nbr[2:][extra_slot, extra_node])
        extra_logit = (
            nn.functional.leaky_relu(
                extra_msg + target.index_select(0, extra_node), self.negative_slope
            )
            @ att
        )
        # Softmax over each node's (self, slot 1, extra edges), shifted by a per-node max
        # for stability; the shift cancels, so it carries no gradient.
        shift = torch.maximum(self_logit, other_logit).detach()
        shift = shift.scatter_reduce(0, extra_node, extra_logit.detach(), "amax")
        w_self = torch.exp(self_logit - shift)
        w_other = torch.exp(other_logit - shift)
        w_extra = torch.exp(extra_logit - shift.index_select(0, extra_node))
        denominator = (w_self + w_other).index_add(0, extra_node, w_extra)
        numerator = (w_self.unsqueeze(-1) * source + w_other.unsqueeze(-1) * other).index_add(
            0, extra_node, w_extra.unsqueeze(-1) * extra_msg
        )
        return numerator / denominator.unsqueeze(-1) + self.bias

    def two_slot(self, h: torch.Tensor, batch: GraphBatch, mode: Mode = "plain") -> torch.Tensor:
        """The layer (then ReLU, then + h, per `mode`) on a batch whose nodes have at most
        one in-edge: the fused path of fastlayer.py, same numbers as `forward`."""
        return TwoSlotGATv2.apply(
            h, batch.neighbours(self.negative_slope), mode, *layer_params(self)
        )


@dataclass
class ScorerOutput:
    prediction: torch.Tensor  # [graphs] standardised target
    node_embeddings: list[torch.Tensor]  # per hop 0..L: [nodes, dim_l]
    pooled: torch.Tensor  # [graphs, sum of dim_l]: every hop's graph embedding, side by side
    hop_of_column: torch.Tensor  # [hops, sum of dim_l] 0/1: which hop each column belongs to
    l1_norms: torch.Tensor | None = None  # graph_norms(1), when the forward computed it

    @property
    def graph_embeddings(self) -> list[torch.Tensor]:
        widths = [int(w) for w in self.hop_of_column.sum(dim=1)]
        return list(self.pooled.split(widths, dim=1))

    def graph_norms(self, ord: int = 1) -> torch.Tensor:
        """[hops, graphs]: the norm of each graph embedding at each hop."""
        # One matmul sums each hop's columns: fewer autograd nodes than a norm per hop.
        if ord == 1 and self.l1_norms is not None:
            return self.l1_norms
        if ord == 1:
            return (self.pooled.abs() @ self.hop_of_column.T).T
        if ord == 2:
            return (self.pooled.square() @ self.hop_of_column.T).T.clamp(min=1e-24).sqrt()
        raise ValueError(f"unsupported norm order {ord}")

    def node_norms(self, ord: int = 1) -> list[torch.Tensor]:
        return [torch.linalg.vector_norm(h, ord=ord, dim=-1) for h in self.node_embeddings]


class ScorerModel(nn.Module):
    """FE-MLP -> L x (GATv2, BatchNorm, ReLU, residual) -> mean pool per hop -> MLP head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.features = FeatureEmbedding(config.vocab_sizes, config.fe_dim)
        dims = [self.features.out_dim] + [config.hidden] * config.num_layers
        self.convs = nn.ModuleList(
            GATv2Layer(dims[i], dims[i + 1]) for i in range(config.num_layers)
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(config.hidden) if config.batch_norm else nn.Identity()
            for _ in range(config.num_layers)
        )
        widths = torch.tensor(dims)
        hop_of_column = (
            torch.repeat_interleave(torch.arange(len(dims)), widths)[None, :]
            == torch.arange(len(dims))[:, None]
        ).float()
        self.register_buffer("hop_of_column", hop_of_column, persistent=False)
        self.head = nn.Sequential(
            nn.Linear(config.hidden, config.head_hidden),
            nn.ReLU(),
            nn.Linear(config.head_hidden, config.head_hidden),
            nn.ReLU(),
            nn.Linear(config.head_hidden, 1),
        )

    @property
    def num_hops(self) -> int:
        """Hop levels with an embedding: 0..num_layers."""
        return self.config.num_layers + 1

    def hop(self, layer: int, h: torch.Tensor, batch: GraphBatch) -> torch.Tensor:
        """Hop `layer + 1`'s node embeddings from hop `layer`'s."""
        conv, norm = self.convs[layer], self.norms[layer]
        # Hop 0 has another width (one scalar per category): no skip into hop 1.
        skip = self.config.residual and layer > 0
        if batch.nbr.shape[0] == 2:  # at most one in-edge per node: the fused layer
            if isinstance(norm, nn.Identity):
                return conv.two_slot(h, batch, "relu_residual" if skip else "relu")
            out = torch.relu(norm(conv.two_slot(h, batch)))
        else:
            out = torch.relu(norm(conv(h, batch.nbr, batch.nbr_mask)))
        return out + h if skip else out

    def node_embeddings(self, batch: GraphBatch) -> list[torch.Tensor]:
        hops = [self.features(batch.x)]
        for layer in range(self.config.num_layers):
            hops.append(self.hop(layer, hops[-1], batch))
        return hops

    def predict(self, batch: GraphBatch) -> torch.Tensor:
        """[graphs]: the head's (standardised) prediction only. Pools the last hop alone,
        and keeps no per-hop embeddings: what exhaustive search and `predict` need."""
        h = self.features(batch.x)
        for layer in range(self.config.num_layers):
            h = self.hop(layer, h, batch)
        sums = torch.zeros(batch.num_graphs, h.shape[1], dtype=h.dtype).index_add_(
            0, batch.batch, h
        )
        pooled = sums / batch.counts.to(h.dtype).clamp(min=1)[:, None]
        return self.head(pooled).squeeze(-1)

    def fusable(self, batch: GraphBatch) -> bool:
        """Whether `training_forward` can run all layers as one fused node."""
        return batch.nbr.shape[0] == 2 and not self.config.batch_norm

    def training_forward(self, batch: GraphBatch) -> ScorerOutput:
        """What training needs (prediction and pooled hops; no per-node embeddings), with
        every GATv2 layer and the pooling as one autograd node when `fusable`."""
        if not self.fusable(batch):
            return self(batch)
        params = [p for conv in self.convs for p in layer_params(conv)]
        h0 = self.features(batch.x)
        pooled = GATv2Stack.apply(
            h0,
            batch.neighbours(self.convs[0].negative_slope),
            (batch.batch, 1.0 / batch.counts.to(h0.dtype).clamp(min=1)),
            self.config.residual,
            *params,
        )
        prediction = self.head(pooled[:, -self.config.hidden :]).squeeze(-1)
        return ScorerOutput(prediction, [], pooled, self.hop_of_column)

    def forward(self, batch: GraphBatch) -> ScorerOutput:
        hops = self.node_embeddings(batch)
        # Pool every hop at once: concatenate along features.
        stacked = torch.cat(hops, dim=1)
        sums = torch.zeros(batch.num_graphs, stacked.shape[1], dtype=stacked.dtype)
        sums = sums.index_add_(0, batch.batch, stacked)
        pooled = sums / batch.counts.to(stacked.dtype).clamp(min=1)[:, None]
        prediction = self.head(pooled[:, -self.config.hidden :]).squeeze(-1)
        return ScorerOutput(
            prediction=prediction,
            node_embeddings=hops,
            pooled=pooled,
            hop_of_column=self.hop_of_column,
        )


# --------------------------------------------------------------------------- importance


def feature_importance(model: ScorerModel, categories: Sequence[object]) -> list[FeatureScore]:
    """Every (category, value) with its FE-MLP score; the n/a slot is left out.

    `categories` are the encoder's `FeatureCategory` objects (name, group, vocab) in
    column order.
    """
    if len(categories) != len(model.features.vocab_sizes):
        raise ValueError(
            f"{len(categories)} categories given, the model has {len(model.features.vocab_sizes)}"
        )
    with torch.no_grad():
        table = model.features.table()
    rows: list[FeatureScore] = []
    for c, category in enumerate(categories):
        vocab = list(category.vocab)  # type: ignore[attr-defined]
        for v, value in enumerate(vocab):
            raw = float(table[c, v + 1])
            rows.append(
                FeatureScore(
                    category=category.name,  # type: ignore[attr-defined]
                    group=category.group,  # type: ignore[attr-defined]
                    value=value,
                    score=abs(raw),
                    raw=raw,
                )
            )
    return rows
