"""Weisfeiler-Lehman colours: equal colour at hop l means equal hop-l embedding."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Data

from autobuild_dsl.scorer import ModelConfig, ScorerModel, pack_graphs
from autobuild_dsl.scorer.dedup import unique_rows, wl_colours


def _graphs(skips: bool, count: int = 40) -> list[Data]:
    """Chains of 1-8 nodes over a small vocabulary (so receptive fields repeat), with a
    skip edge into the last node when `skips`."""
    gen = torch.Generator().manual_seed(3)
    graphs = []
    for _ in range(count):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        edges = [(i, i + 1) for i in range(n - 1)]
        if skips and n > 3:
            edges.append((0, n - 1))
        index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).T
        x = torch.randint(1, 3, (n, 2), generator=gen)
        graphs.append(Data(x=x, edge_index=index, num_nodes=n))
    return graphs


@pytest.mark.parametrize("skips", [False, True])
def test_equal_colours_have_equal_embeddings(skips: bool) -> None:
    packed = pack_graphs(_graphs(skips))
    torch.manual_seed(0)
    model = ScorerModel(ModelConfig(vocab_sizes=[2, 2], num_layers=3, hidden=8)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        hops = model.node_embeddings(packed.select())
    colours = wl_colours(packed, 3)
    total = int(packed.node_ptr[-1])
    for colour, h in zip(colours, hops, strict=True):
        # Every node's embedding equals its colour's first node's.
        first = torch.full((int(colour.max()) + 1,), total).scatter_reduce(
            0, colour, torch.arange(total), "amin"
        )
        torch.testing.assert_close(h, h[first[colour]])
    counts = unique_rows(packed, colours)
    # Repeats exist at every hop, and refining never merges colours.
    assert all(c < total for c in counts)
    assert counts == sorted(counts)
    # Hop 1 splits nodes that differ only in their predecessor.
    assert counts[1] > counts[0]


def test_unique_rows_of_a_batch_count_only_its_nodes() -> None:
    packed = pack_graphs(_graphs(False))
    colours = wl_colours(packed, 2)
    idx = torch.tensor([5, 1, 7])
    batch = packed.select(idx)
    nodes = torch.cat(
        [torch.arange(int(packed.node_ptr[i]), int(packed.node_ptr[i + 1])) for i in idx]
    )
    assert batch.x.shape[0] == nodes.shape[0]
    expected = [int(torch.unique(c[nodes]).numel()) for c in colours]
    assert unique_rows(packed, colours, idx) == expected
