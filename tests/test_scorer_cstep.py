"""An epoch of training steps as one C call (scorer/cstep.py) gives the fused path's loss,
gradients and weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autobuild_dsl.scorer import ModelConfig, ScorerModel, ckernel, cstep, fused, pack_graphs
from autobuild_dsl.scorer.config import TrainConfig
from autobuild_dsl.scorer.loss import scorer_loss
from autobuild_dsl.scorer.softrank import available_backend
from autobuild_dsl.scorer.train import FlatAdamW, flatten_parameters, unit_ranks
from tests.test_scorer_ckernel import _chains, small_member
from tests.test_scorer_fused import _model

pytestmark = pytest.mark.skipif(
    cstep.library() is None or available_backend() != "torchsort",
    reason="needs a C compiler and torchsort",
)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("hidden", [32, 8])  # the specialised width and the generic loops
def test_one_step_gives_the_fused_paths_loss_and_gradient(residual: bool, hidden: int) -> None:
    packed = pack_graphs(_chains())
    # 13 graphs: blocks of rows and the rows past the last whole block both run.
    order = torch.tensor([3, 0, 11, 7, 1, 25, 18, 2, 30, 12, 5, 9, 33])
    batch = packed.select(order)
    torch.manual_seed(0)
    model = ScorerModel(
        ModelConfig(vocab_sizes=[3, 4, 6], num_layers=3, residual=residual, hidden=hidden)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    flat = flatten_parameters(model)
    layout = fused.FlatLayout.of(model)
    target = torch.randn(batch.num_graphs, generator=torch.Generator().manual_seed(1))
    unit = unit_ranks(np.random.default_rng(0).normal(size=batch.num_graphs)).float()
    flat.grad.zero_()
    out = fused.fused_forward(model, layout, flat, batch)
    loss = scorer_loss(out, target, backend="torchsort", target_unit=unit)
    loss.total.backward()
    grad_ref = flat.grad.clone()
    # lr 0: AdamW leaves the weights as they are, and the step's gradient stays in flat.grad
    config = TrainConfig.model_construct(**{**TrainConfig().model_dump(), "lr": 0.0})
    optimizer = FlatAdamW(flat, 0.0, 0.0)
    moments = (optimizer.exp_avg, optimizer.exp_avg_sq, optimizer.step_count)
    kernel = cstep.EpochKernel(model, layout, flat, moments, config)
    before = flat.detach().clone()
    result = kernel.run(packed, order, [batch.num_graphs], target, unit)[0]
    assert torch.equal(flat.detach(), before)
    assert float(result[0]) == pytest.approx(float(loss.total.detach()), rel=1e-5)
    assert float(result[1]) == pytest.approx(loss.mse, rel=1e-5)
    assert result[2:].tolist() == pytest.approx(loss.hop_srcc, abs=1e-5)
    sizes = [p.numel() for p in layout.params]
    for got, expected in zip(flat.grad.split(sizes), grad_ref.split(sizes), strict=True):
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * max(scale, 1e-3))
    assert optimizer.step_count == 1


def test_training_ends_where_the_fused_path_does(monkeypatch: pytest.MonkeyPatch) -> None:
    def member() -> tuple[list[float | None], list[torch.Tensor]]:
        trained = small_member()
        return trained.metrics.hop_srcc, [p.detach().clone() for p in trained.model.parameters()]

    made: list[cstep.EpochKernel] = []
    real = cstep.EpochKernel
    monkeypatch.setattr(cstep, "EpochKernel", lambda *a: made.append(real(*a)) or made[-1])
    hops, params = member()
    assert len(made) == 1  # the C epoch ran
    monkeypatch.setenv("ABC_NO_CSTEP", "1")
    hops_ref, params_ref = member()
    assert len(made) == 1
    # Both are float32, summed in other orders: the fused path's soft rank alone is ~1e-4
    # (relative) off float64's on these batches, and AdamW turns a near-zero gradient's
    # rounding into steps of up to lr: hence atol 1e-4 after 9 steps of lr 1e-3.
    for got, expected in zip(params, params_ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
    assert hops == pytest.approx(hops_ref, abs=0.02)


def test_the_c_epoch_is_deterministic() -> None:
    first, second = small_member(), small_member()
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_c_epoch_applies_only_to_the_default_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(True)
    batch = pack_graphs(_chains()).select(torch.tensor([1, 2, 3]))
    config = TrainConfig()
    assert cstep.applies(model, batch, config, "torchsort")
    assert not cstep.applies(model, batch, config, "torch")
    assert not cstep.applies(model, batch, TrainConfig(loss="mse"), "torchsort")
    assert not cstep.applies(model, batch, TrainConfig(norm_ord=2), "torchsort")
    monkeypatch.setenv("ABC_NO_CSTEP", "1")
    assert not cstep.applies(model, batch, config, "torchsort")
    monkeypatch.delenv("ABC_NO_CSTEP")
    monkeypatch.setattr(ckernel, "applies", lambda h, dim: False)  # as ABC_NO_CKERNEL=1
    assert not cstep.applies(model, batch, config, "torchsort")
