"""Prediction that computes each distinct node context once (exhaustive search's hot path).

A node's hop-k embedding depends only on its own features and its k-hop in-neighbourhood.
Across a batch of architectures of one space most nodes share that context with many
others (the stem of every network with the same width, a stage whose inputs agree, ...):
on the first 2,048 networks of sd14_unet_fid, 69,632 nodes hold only 74-841 distinct
contexts per hop. So a batch is *planned* once (which nodes are alike at each hop: integer
work, shared by every ensemble member) and each member then runs its layers on the
distinct rows only, through the model's own `hop` (the same numbers as `predict`, up to
float summation order), and mean-pools by gathering each node's row.

Where nodes share little (IR graphs: hundreds of distinct nodes each) the plan says so
(`worthwhile`) and callers keep the plain path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from autobuild_dsl.scorer.model import GraphBatch, PackedGraphs, ScorerModel
from autobuild_dsl.scorer.numpy_predict import distinct_rows
from autobuild_dsl.scorer.train import predict_packed

# Below this ratio of (rows run with the plan) / (rows run without it), a plan pays; above
# it the concatenated rows it runs (see `_HopPlan`) cost more than they save.
WORTHWHILE = 0.5
# Nodes planned at once: more shares more contexts; the plan's sorts grow n log n.
PLAN_NODES = 1 << 18


@dataclass(frozen=True)
class _HopPlan:
    """One hop over the distinct contexts: rows 0..n-1 are the new contexts, rows n.. the
    previous hop's distinct rows; row i < n reads its own row `self_row` and neighbours."""

    batch: GraphBatch  # nbr / nbr_mask over the concatenated rows
    self_rows: torch.Tensor  # [n] each new context's own row at the previous hop
    size: int  # n
    previous: int  # the previous hop's distinct rows


@dataclass(frozen=True)
class SharedPlan:
    """Which nodes of a packed batch are alike at each hop; independent of the model."""

    x: torch.Tensor  # [distinct hop-0 rows, categories]
    hops: list[_HopPlan]
    last: torch.Tensor  # [nodes] each node's row at the last hop
    graph: torch.Tensor  # [nodes] graph of each node
    counts: torch.Tensor  # [graphs] nodes per graph
    nodes: int

    @property
    def rows(self) -> int:
        """Rows the layers run over (each hop's new and previous distinct rows)."""
        return sum(h.size + h.previous for h in self.hops)

    @property
    def worthwhile(self) -> bool:
        return self.rows <= WORTHWHILE * self.nodes * max(len(self.hops), 1)


def _distinct(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse [n]: a distinct id per distinct row, first [distinct]: one node of each)."""
    inverse, first = distinct_rows(rows.numpy())
    return torch.from_numpy(inverse), torch.from_numpy(first)


def plan(packed: PackedGraphs, num_layers: int) -> SharedPlan:
    """Plan `num_layers` hops over every graph of `packed`."""
    total = int(packed.node_ptr[-1])
    local = torch.arange(total)
    nbr = local[None, :] + packed.rel_nbr  # [slots, nodes] absolute in-neighbours
    mask = packed.nbr_mask
    ids, first = _distinct(packed.x)
    x = packed.x[first]
    hops: list[_HopPlan] = []
    for _ in range(num_layers):
        previous = int(first.shape[0])
        # A node's next context: its own id and each slot's neighbour id (0 = padding).
        key = torch.stack(
            [ids, *(torch.where(mask[s], ids[nbr[s]] + 1, 0) for s in range(1, nbr.shape[0]))],
            dim=1,
        )
        ids, first = _distinct(key)
        size = int(first.shape[0])
        hops.append(_hop_plan(ids_prev=key[first, 0], key=key[first], size=size, previous=previous))
    counts = packed.node_ptr[1:] - packed.node_ptr[:-1]
    graph = torch.repeat_interleave(torch.arange(packed.num_graphs), counts)
    return SharedPlan(x=x, hops=hops, last=ids, graph=graph, counts=counts, nodes=total)


def _hop_plan(ids_prev: torch.Tensor, key: torch.Tensor, size: int, previous: int) -> _HopPlan:
    """The concatenated rows of one hop: [new contexts (a copy of their own previous row),
    previous distinct rows]; a new row's slot s points at its neighbour's previous row."""
    slots = key.shape[1]
    rows = size + previous
    nbr = torch.arange(rows).repeat(slots, 1)  # padding points at the row itself
    mask = torch.zeros(slots, rows, dtype=torch.bool)
    mask[0] = True
    for s in range(1, slots):
        real = key[:, s] > 0
        nbr[s, :size] = torch.where(real, size + key[:, s] - 1, nbr[s, :size])
        mask[s, :size] = real
    empty = torch.zeros(0, dtype=torch.long)
    batch = GraphBatch(x=empty, nbr=nbr, nbr_mask=mask, batch=empty, counts=empty)
    return _HopPlan(batch=batch, self_rows=ids_prev, size=size, previous=previous)


def predict_planned(model: ScorerModel, planned: SharedPlan) -> torch.Tensor:
    """[graphs]: the model's standardised predictions (as `ScorerModel.predict`)."""
    with torch.inference_mode():
        h = model.features(planned.x)
        for layer, hop in enumerate(planned.hops):
            rows = torch.cat([h[hop.self_rows], h])
            h = model.hop(layer, rows, hop.batch)[: hop.size]
        sums = torch.zeros(planned.counts.shape[0], h.shape[1], dtype=h.dtype)
        sums.index_add_(0, planned.graph, h[planned.last])
        pooled = sums / planned.counts.to(h.dtype).clamp(min=1)[:, None]
        return model.head(pooled).squeeze(-1)


def _cut(packed: PackedGraphs, start: int, stop: int) -> PackedGraphs:
    """Graphs start..stop-1 as their own PackedGraphs (views; neighbours are relative)."""
    first, end = int(packed.node_ptr[start]), int(packed.node_ptr[stop])
    return PackedGraphs(
        x=packed.x[first:end],
        rel_nbr=packed.rel_nbr[:, first:end],
        nbr_mask=packed.nbr_mask[:, first:end],
        node_ptr=packed.node_ptr[start : stop + 1] - first,
    )


def predict_members(models: Sequence[ScorerModel], packed: PackedGraphs) -> list[torch.Tensor]:
    """Each model's standardised predictions [graphs], the graphs planned once for all of
    them (in chunks of about PLAN_NODES nodes); a chunk whose nodes share too little runs
    the plain `predict_packed` instead. The models must share their number of layers."""
    if not models:
        return []
    layers = models[0].config.num_layers
    mean_nodes = int(packed.node_ptr[-1]) / max(packed.num_graphs, 1)
    chunk = max(1, int(PLAN_NODES / max(mean_nodes, 1.0)))
    parts: list[list[torch.Tensor]] = [[] for _ in models]
    for start in range(0, packed.num_graphs, chunk):
        piece = _cut(packed, start, min(start + chunk, packed.num_graphs))
        planned = plan(piece, layers)
        for out, model in zip(parts, models, strict=True):
            if planned.worthwhile:
                out.append(predict_planned(model, planned))
            else:
                out.append(predict_packed(model, piece))
    return [torch.cat(p) if p else torch.zeros(0) for p in parts]
