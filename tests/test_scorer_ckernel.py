"""The C kernels of the two-slot GATv2 layer give the tensor-op path's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from autobuild_dsl.scorer import ModelConfig, ScorerModel, ckernel, pack_graphs
from autobuild_dsl.scorer.train import TrainConfig, TrainedMember, train_member

pytestmark = pytest.mark.skipif(ckernel.library() is None, reason="no C compiler here")


def _chains(count: int = 40, seed: int = 1) -> list[Data]:
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for g in range(count):
        n = 1 if g % 9 == 0 else int(torch.randint(2, 16, (1,), generator=gen))
        edges = [(i, i + 1) for i in range(n - 1)]
        if n > 2 and g % 5 == 1:  # a node without in-edges inside the chain
            edges = [(a, b) for a, b in edges if b != 1]
        index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).T
        x = torch.stack([torch.randint(0, v + 1, (n,), generator=gen) for v in (3, 4, 6)], 1)
        graphs.append(Data(x=x, edge_index=index, num_nodes=n))
    return graphs


def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckernel, "applies", lambda h, dim: False)


@pytest.mark.parametrize("residual", [True, False])
def test_kernel_forward_and_gradients_match_the_tensor_ops(
    monkeypatch: pytest.MonkeyPatch, residual: bool
) -> None:
    packed = pack_graphs(_chains())
    assert packed.is_chain
    batch = packed.select(torch.tensor([3, 0, 11, 7, 1, 25, 18, 2, 30]))
    torch.manual_seed(0)
    config = ModelConfig(vocab_sizes=[3, 4, 6], num_layers=3, hidden=16, residual=residual)
    model = ScorerModel(config)
    with torch.no_grad():  # non-zero biases and sizeable attention: every term counts
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    params = list(model.parameters())

    def run() -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        out = model.training_forward(batch)
        weights = torch.linspace(-1.0, 1.0, out.pooled.shape[1])
        loss = (out.pooled * weights).sum() + out.prediction.square().sum()
        return out.pooled.detach(), out.prediction.detach(), torch.autograd.grad(loss, params)

    assert ckernel.applies(torch.zeros(1), 16)
    pooled, prediction, grads = run()
    _eager(monkeypatch)
    pooled_ref, prediction_ref, grads_ref = run()
    torch.testing.assert_close(pooled, pooled_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prediction, prediction_ref, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, grads_ref, strict=True):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def small_member() -> TrainedMember:
    """A small seeded member on chained graphs: 3 epochs of batches of 16."""
    packed = pack_graphs(_chains(60, seed=4))
    y = np.random.default_rng(0).normal(size=60)
    config = TrainConfig(epochs=3, batch_size=16, num_layers=2, hidden=8, eval_every=0)
    return train_member(packed, y, range(48), range(48, 60), [3, 4, 6], config, seed=2)


def test_training_with_the_kernel_ends_where_the_tensor_ops_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def member() -> tuple[list[float | None], torch.Tensor]:
        trained = small_member()
        return trained.metrics.hop_srcc, trained.model.convs[1].att.detach().clone()

    hops, att = member()
    _eager(monkeypatch)
    hops_ref, att_ref = member()
    torch.testing.assert_close(att, att_ref, rtol=1e-4, atol=1e-5)
    assert hops == pytest.approx(hops_ref, abs=0.02)
