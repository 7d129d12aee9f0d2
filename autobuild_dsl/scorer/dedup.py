"""Which nodes share a receptive field: Weisfeiler-Lehman colours of packed graphs.

A node's hop-l embedding is a function of its hop-(l-1) embedding and its in-neighbours'
(in slot order), whatever the weights; hop 0 is a function of its feature row. So nodes
whose l-hop receptive fields are equal (same feature rows, same in-neighbour structure,
l steps back) have equal hop-l embeddings, and a layer could be computed once per colour
and gathered. `unique_rows` measures how much that would save before anyone builds it
(benchmarks/bench_train.py --unique-rows).
"""

from __future__ import annotations

import torch

from autobuild_dsl.scorer.model import PackedGraphs


def _relabel(keys: torch.Tensor) -> torch.Tensor:
    """Dense colour ids 0..k-1 of the distinct rows of `keys`."""
    return torch.unique(keys, dim=0, return_inverse=True)[1]


def wl_colours(packed: PackedGraphs, hops: int) -> list[torch.Tensor]:
    """[hops + 1] tensors of [total nodes] long: each node's colour at hop 0..hops. Equal
    colour at hop l implies equal hop-l embedding (the converse need not hold)."""
    total = int(packed.node_ptr[-1])
    nbr = torch.arange(total)[None, :] + packed.rel_nbr  # [slots, nodes], absolute rows
    mask = packed.nbr_mask[1:]
    colours = [_relabel(packed.x)]
    for _ in range(hops):
        last = colours[-1]
        # A padded slot reads -1: "no neighbour here" differs from every real colour.
        slots = torch.where(mask, last[nbr[1:]], torch.full_like(nbr[1:], -1))
        colours.append(_relabel(torch.cat([last[None, :], slots]).T))
    return colours


def unique_rows(
    packed: PackedGraphs, colours: list[torch.Tensor], idx: torch.Tensor | None = None
) -> list[int]:
    """Distinct colours per hop among the nodes of graphs `idx` (all graphs when None):
    the rows each hop would need if computed once per colour."""
    if idx is None:
        return [int(c.max()) + 1 if c.numel() else 0 for c in colours]
    starts = packed.node_ptr[:-1][idx]
    counts = packed.counts[idx]
    first = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
    nodes = first + torch.arange(int(counts.sum()))
    return [int(torch.unique(c[nodes]).numel()) for c in colours]
