"""The whole-network autograd node (scorer/fused.py) gives the per-module path's numbers."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from autobuild_dsl.scorer import ModelConfig, ScorerModel, ckernel, fused, pack_graphs
from autobuild_dsl.scorer.loss import scorer_loss
from autobuild_dsl.scorer.train import flatten_parameters
from tests.test_scorer_ckernel import _chains, small_member

pytestmark = pytest.mark.skipif(ckernel.library() is None, reason="no C compiler here")


def _model(residual: bool = True) -> ScorerModel:
    torch.manual_seed(0)
    model = ScorerModel(ModelConfig(vocab_sizes=[3, 4, 6], num_layers=3, residual=residual))
    with torch.no_grad():  # non-zero biases and sizeable attention: every term counts
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize(("residual", "kind"), [(True, "ranked"), (False, "ranked"), (True, "mse")])
def test_whole_network_node_matches_the_per_module_path(residual: bool, kind: str) -> None:
    packed = pack_graphs(_chains())
    batch = packed.select(torch.tensor([3, 0, 11, 7, 1, 25, 18, 2, 30, 12]))
    model = _model(residual)
    flat = flatten_parameters(model)
    layout = fused.FlatLayout.of(model)
    assert fused.applies(model, batch)
    target = torch.linspace(-1.0, 1.0, batch.num_graphs)

    def run(output_of) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat.grad.zero_()
        out = output_of()
        # The training loss reads both outputs: the head's and every hop's pooled norm.
        # (mse: the prediction alone, no gradient reaches the pooled hops or their norms)
        scorer_loss(out, target, kind=kind, backend="torch").total.backward()  # type: ignore[arg-type]
        return out.prediction.detach(), out.pooled.detach(), flat.grad.clone()

    prediction, pooled, grad = run(lambda: fused.fused_forward(model, layout, flat, batch))
    prediction_ref, pooled_ref, grad_ref = run(lambda: model.training_forward(batch))
    torch.testing.assert_close(prediction, prediction_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, pooled_ref, rtol=1e-5, atol=1e-6)
    # Every parameter gets a gradient, so every one is compared.
    assert all(part.abs().sum() > 0 for part in grad_ref.split([p.numel() for p in layout.params]))
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6)


def test_the_node_needs_the_kernels_and_no_batch_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = pack_graphs(_chains()).select(torch.tensor([1, 2, 3]))
    config = ModelConfig(vocab_sizes=[3, 4, 6], num_layers=2, batch_norm=True)
    assert not fused.applies(ScorerModel(config), batch)
    monkeypatch.setattr(ckernel, "applies", lambda h, dim: False)
    assert not fused.applies(_model(), batch)


def test_training_through_the_node_ends_where_the_per_module_path_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def member() -> tuple[list[float | None], list[torch.Tensor]]:
        trained = small_member()
        return trained.metrics.hop_srcc, [p.detach().clone() for p in trained.model.parameters()]

    # The fused node itself (cstep's C epoch is compared in tests/test_scorer_cstep.py).
    monkeypatch.setenv("ABC_NO_CSTEP", "1")
    calls: list[bool] = []
    real = fused.applies
    monkeypatch.setattr(fused, "applies", lambda m, b: calls.append(real(m, b)) or calls[-1])
    hops, params = member()
    assert calls == [True]  # decided once, on the first batch
    monkeypatch.setattr(fused, "applies", lambda m, b: False)
    hops_ref, params_ref = member()
    for got, expected in zip(params, params_ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert hops == pytest.approx(hops_ref, abs=1e-4)


def test_a_steps_outputs_are_freed_without_the_garbage_collector() -> None:
    # Outputs kept on the node's ctx would make a cycle through their grad_fn: every
    # step's saved tensors would then outlive the step (a 200-epoch member grew by GBs).
    batch = pack_graphs(_chains()).select(torch.tensor([3, 0, 11, 7]))
    model = _model()
    flat = flatten_parameters(model)
    out = fused.fused_forward(model, fused.FlatLayout.of(model), flat, batch)
    alive = weakref.ref(out.pooled)
    gc.disable()
    try:
        scorer_loss(out, torch.linspace(-1.0, 1.0, 4), backend="torch").total.backward()
        del out
        assert alive() is None
    finally:
        gc.enable()
