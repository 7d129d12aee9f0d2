"""The fused two-slot GATv2 path gives the generic path's numbers, forward and backward."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from autobuild_dsl.scorer import GATv2Layer, ModelConfig, ScorerModel, pack_graphs
from autobuild_dsl.scorer.loss import scorer_loss
from autobuild_dsl.scorer.model import GraphBatch, ScorerOutput
from autobuild_dsl.scorer.train import flatten_parameters, unflatten_parameters, unit_ranks


def graphs_of(kind: str, count: int, seed: int) -> list[Data]:
    """chain: 1-14 nodes in a row; tree: each node's one in-edge from any earlier node
    (not the row before); skips: chains plus extra forward edges (in-degree up to 3).
    Isolated nodes (graphs of one node, and a node without in-edges) are in every kind."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for g in range(count):
        n = 1 if g % 7 == 0 else int(torch.randint(2, 15, (1,), generator=gen))
        if kind == "tree":
            edges = [(int(torch.randint(0, i, (1,), generator=gen)), i) for i in range(1, n)]
        else:
            edges = [(i, i + 1) for i in range(n - 1)]
        if kind == "skips" and n > 3:
            edges += [(0, n - 1), (1, n - 1), (0, 2)]
        if n > 2 and g % 5 == 1:  # a second node without in-edges
            edges = [(a, b) for a, b in edges if b != 1]
        index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).T
        x = torch.stack([torch.randint(0, v + 1, (n,), generator=gen) for v in (3, 4, 6)], 1)
        graphs.append(Data(x=x, edge_index=index, num_nodes=n))
    return graphs


def generic_forward(model: ScorerModel, batch: GraphBatch) -> ScorerOutput:
    """ScorerModel.forward with every layer on the generic (unfused) GATv2 path."""
    h = model.features(batch.x)
    hops = [h]
    for layer, conv in enumerate(model.convs):
        out = torch.relu(conv(h, batch.nbr, batch.nbr_mask))
        h = out + h if layer > 0 else out
        hops.append(h)
    stacked = torch.cat(hops, dim=1)
    sums = torch.zeros(batch.num_graphs, stacked.shape[1], dtype=stacked.dtype)
    pooled = sums.index_add(0, batch.batch, stacked) / batch.counts[:, None].to(stacked.dtype)
    prediction = model.head(pooled[:, -model.config.hidden :]).squeeze(-1)
    return ScorerOutput(prediction, hops, pooled, model.hop_of_column)


def _loss(out: ScorerOutput, weights: torch.Tensor) -> torch.Tensor:
    # Weights every pooled value and the prediction, so each gradient path is checked.
    return (out.pooled * weights).sum() + out.prediction.square().sum()


@pytest.mark.parametrize("kind", ["chain", "tree", "skips"])
def test_fused_training_forward_matches_the_generic_path(kind: str) -> None:
    packed = pack_graphs(graphs_of(kind, 30, seed=len(kind)))
    assert packed.is_chain == (kind == "chain")
    batch = packed.select(torch.tensor([4, 0, 9, 1, 21, 7, 13, 2]))
    torch.manual_seed(0)
    model = ScorerModel(ModelConfig(vocab_sizes=[3, 4, 6], num_layers=3, hidden=16)).double()
    with torch.no_grad():  # non-zero biases, so no term can hide behind a zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    assert model.fusable(batch) == (kind != "skips")
    expected = generic_forward(model, batch)
    got = model.training_forward(batch)
    torch.testing.assert_close(got.pooled, expected.pooled)
    torch.testing.assert_close(got.prediction, expected.prediction)
    weights = torch.randn_like(expected.pooled)
    params = list(model.parameters())
    grads_expected = torch.autograd.grad(_loss(expected, weights), params)
    grads_got = torch.autograd.grad(_loss(got, weights), params)
    for p, a, b in zip(params, grads_got, grads_expected, strict=True):
        assert a.abs().sum() > 0 or b.abs().sum() == 0
        torch.testing.assert_close(a, b, msg=lambda m, p=p: f"{tuple(p.shape)}: {m}")


@pytest.mark.parametrize(("kind", "mode"), [("chain", "relu_residual"), ("tree", "plain")])
def test_two_slot_layer_matches_the_generic_layer(kind: str, mode: str) -> None:
    batch = pack_graphs(graphs_of(kind, 12, seed=3)).select(None)
    torch.manual_seed(1)
    conv = GATv2Layer(6, 6).double()
    with torch.no_grad():
        conv.bias.normal_()
        conv.lin_l.bias.normal_()
    h = torch.randn(batch.x.shape[0], 6, dtype=torch.float64, requires_grad=True)
    expected = conv(h, batch.nbr, batch.nbr_mask)
    if mode == "relu_residual":
        expected = torch.relu(expected) + h
    got = conv.two_slot(h, batch, mode)  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(got)
    inputs = [h, *conv.parameters()]
    grads_expected = torch.autograd.grad((expected * weights).sum(), inputs)
    grads_got = torch.autograd.grad((got * weights).sum(), inputs)
    for a, b in zip(grads_got, grads_expected, strict=True):
        torch.testing.assert_close(a, b)


def test_float32_fused_path_is_within_float_tolerance() -> None:
    batch = pack_graphs(graphs_of("chain", 64, seed=9)).select(None)
    torch.manual_seed(2)
    model = ScorerModel(ModelConfig(vocab_sizes=[3, 4, 6]))
    expected = generic_forward(model, batch)
    got = model.training_forward(batch)
    torch.testing.assert_close(got.pooled, expected.pooled, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(expected.pooled)
    params = list(model.parameters())
    for a, b in zip(
        torch.autograd.grad(_loss(got, weights), params),
        torch.autograd.grad(_loss(expected, weights), params),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_select_many_cuts_the_same_batches_as_select() -> None:
    packed = pack_graphs(graphs_of("tree", 20, seed=4))
    chunks = [torch.tensor([3, 1, 19]), torch.tensor([0]), torch.tensor([7, 8, 9, 2])]
    for got, chunk in zip(packed.select_many(chunks), chunks, strict=True):
        expected = packed.select(chunk)
        for name in ("x", "nbr", "nbr_mask", "batch", "counts"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name
        assert got.chain == expected.chain


def test_loss_with_precomputed_unit_ranks_equals_the_plain_loss() -> None:
    batch = pack_graphs(graphs_of("chain", 40, seed=6)).select(None)
    torch.manual_seed(3)
    model = ScorerModel(ModelConfig(vocab_sizes=[3, 4, 6]))
    target = torch.randn(batch.num_graphs).round()  # rounded: ties in the ranks
    plain = scorer_loss(model(batch), target, backend="torch")
    fast = scorer_loss(
        model(batch), target, backend="torch", target_unit=unit_ranks(target.double().numpy())
    )
    torch.testing.assert_close(fast.total, plain.total)
    assert fast.hop_srcc == pytest.approx(plain.hop_srcc, abs=1e-6)
    tied = unit_ranks(np.ones(5))
    assert torch.equal(tied, torch.zeros(5, dtype=torch.float64))


def test_flat_parameters_step_exactly_like_separate_ones() -> None:
    batch = pack_graphs(graphs_of("chain", 24, seed=8)).select(None)
    torch.manual_seed(4)
    flat_model = ScorerModel(ModelConfig(vocab_sizes=[3, 4, 6]))
    plain_model = copy.deepcopy(flat_model)
    flat = flatten_parameters(flat_model)
    optimizers = [
        torch.optim.AdamW([flat], lr=1e-2, fused=True),
        torch.optim.AdamW(plain_model.parameters(), lr=1e-2, fused=True),
    ]
    target = torch.randn(batch.num_graphs)
    for _ in range(3):
        flat.grad.zero_()  # type: ignore[union-attr]
        optimizers[1].zero_grad()
        for model, optimizer in zip((flat_model, plain_model), optimizers, strict=True):
            scorer_loss(model.training_forward(batch), target, backend="torch").total.backward()
            optimizer.step()
    grad_storage = flat.grad.untyped_storage().data_ptr()  # type: ignore[union-attr]
    for p in flat_model.parameters():  # gradients were accumulated in place, as views
        assert p.grad is not None and p.grad.untyped_storage().data_ptr() == grad_storage
    unflatten_parameters(flat_model)
    for a, b in zip(flat_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.untyped_storage().data_ptr() != flat.untyped_storage().data_ptr()


def test_an_epochs_unit_ranks_at_once_equal_each_batchs() -> None:
    from autobuild_dsl.scorer.train import unit_ranks_many

    rng = np.random.default_rng(3)
    values = rng.integers(0, 6, size=50).astype(np.float64)  # many ties
    values[10:15] = 2.0  # a batch that ties throughout
    sizes = [5, 5, 5, 5, 5, 5, 5, 5, 10]
    got = unit_ranks_many(values, sizes)
    starts = np.cumsum([0, *sizes[:-1]])
    assert len(got) == len(sizes)
    for start, size, ranks in zip(starts, sizes, got, strict=True):
        torch.testing.assert_close(ranks, unit_ranks(values[start : start + size]))
    assert float(got[2].abs().sum()) == 0.0


def test_flat_adamw_steps_as_torchs_fused_adamw() -> None:
    from autobuild_dsl.scorer.train import FlatAdamW

    gen = torch.Generator().manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(300, generator=gen))
    ours.grad = torch.zeros(300)
    theirs = torch.nn.Parameter(ours.detach().clone())
    theirs.grad = torch.zeros(300)
    optimizer = torch.optim.AdamW([theirs], lr=1e-3, weight_decay=1e-5, fused=True)
    flat_adamw = FlatAdamW(ours, lr=1e-3, weight_decay=1e-5)
    for _ in range(25):
        grad = torch.randn(300, generator=gen)
        ours.grad.copy_(grad)
        theirs.grad.copy_(grad)
        flat_adamw.step()
        optimizer.step()
    assert not torch.equal(
        ours.detach(), torch.randn(300, generator=torch.Generator().manual_seed(0))
    )
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=1e-7)
