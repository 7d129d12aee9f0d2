"""The soft rank: the pure-PyTorch fallback agrees with torchsort (values and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr

from autobuild_dsl.scorer import softrank
from autobuild_dsl.scorer.softrank import (
    hard_rank,
    resolve_backend,
    soft_rank,
    soft_rank_torch,
    soft_spearman,
)

try:
    import torchsort
except ImportError:  # pragma: no cover - depends on the environment
    torchsort = None

needs_torchsort = pytest.mark.skipif(torchsort is None, reason="torchsort is not installed")


@needs_torchsort
@pytest.mark.parametrize("strength", [0.01, 0.3, 1.0, 5.0])
@pytest.mark.parametrize("n", [1, 2, 7, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_backend_matches_torchsort(strength: float, n: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(n * 1000 + int(strength * 100))
    values = torch.randn(3, n, generator=generator, dtype=dtype) * 2
    upstream = torch.randn(3, n, generator=generator, dtype=dtype)
    a = values.clone().requires_grad_(True)
    b = values.clone().requires_grad_(True)
    expected = torchsort.soft_rank(a, regularization_strength=strength)
    got = soft_rank_torch(b, strength)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, expected, atol=tol * n, rtol=tol)
    (grad_expected,) = torch.autograd.grad((expected * upstream).sum(), a)
    (grad_got,) = torch.autograd.grad((got * upstream).sum(), b)
    torch.testing.assert_close(grad_got, grad_expected, atol=tol * 10, rtol=tol)


@needs_torchsort
def test_torch_backend_matches_torchsort_with_ties() -> None:
    values = torch.tensor([[1.0, 1.0, 1.0, 2.0, 2.0, 0.0, 5.0]], dtype=torch.float64)
    for strength in (0.1, 1.0):
        a = values.clone().requires_grad_(True)
        b = values.clone().requires_grad_(True)
        expected = torchsort.soft_rank(a, regularization_strength=strength)
        got = soft_rank_torch(b, strength)
        torch.testing.assert_close(got, expected)
        weights = torch.arange(7, dtype=torch.float64)[None, :]
        (ga,) = torch.autograd.grad((expected * weights).sum(), a)
        (gb,) = torch.autograd.grad((got * weights).sum(), b)
        torch.testing.assert_close(gb, ga)


def test_small_strength_gives_exact_ranks() -> None:
    values = torch.tensor([[3.0, -1.0, 2.0, 10.0, 0.5]])
    ranks = soft_rank(values, regularization_strength=1e-3, backend="torch")
    assert ranks.tolist() == [[4.0, 1.0, 3.0, 5.0, 2.0]]


def test_large_strength_flattens_ranks_to_their_mean() -> None:
    values = torch.randn(1, 9)
    ranks = soft_rank(values, regularization_strength=1e6, backend="torch")
    torch.testing.assert_close(ranks, torch.full_like(ranks, 5.0), atol=1e-3, rtol=0)


def test_gradient_check_of_the_torch_backend() -> None:
    values = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: soft_rank_torch(v, 0.5), (values,))


def test_hard_rank_averages_ties_like_scipy() -> None:
    values = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 7.0])
    assert hard_rank(values).tolist() == rankdata(values.numpy()).tolist()


def test_soft_spearman_approaches_spearman() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(size=64)
    pred = target + rng.normal(scale=0.8, size=64)
    exact = spearmanr(pred, target).statistic
    soft = soft_spearman(
        torch.tensor(pred)[None, :],
        hard_rank(torch.tensor(target)),
        regularization_strength=1e-4,
        backend="torch",
    )
    assert float(soft[0]) == pytest.approx(exact, abs=1e-6)


def test_backend_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="unknown soft-rank backend"):
        resolve_backend("numpy")
    # Without torchsort, auto falls back to the pure-PyTorch projection.
    monkeypatch.setattr(softrank, "_torchsort", None)
    assert resolve_backend("auto") == "torch"
    with pytest.raises(ValueError, match="not installed"):
        resolve_backend("torchsort")
    values = torch.randn(2, 5)
    torch.testing.assert_close(soft_rank(values), soft_rank_torch(values))


@needs_torchsort
@pytest.mark.parametrize("strength", [0.1, 1.0])
def test_one_node_unit_spearman_matches_soft_rank_then_pearson(strength: float) -> None:
    from autobuild_dsl.scorer.softrank import unit_spearman
    from autobuild_dsl.scorer.train import unit_ranks

    gen = torch.Generator().manual_seed(0)
    values = torch.randn(5, 64, generator=gen, dtype=torch.float64)
    values[2, :8] = values[2, 8]  # tied values in one row
    labels = np.round(np.random.default_rng(1).normal(size=64), 1)  # tied labels
    unit = unit_ranks(labels)
    weights = torch.randn(5, generator=gen, dtype=torch.float64)

    def run(fn) -> tuple[torch.Tensor, torch.Tensor]:
        x = values.clone().requires_grad_()
        srcc = fn(x)
        (srcc * weights).sum().backward()
        return srcc.detach(), x.grad

    got, grad = run(lambda x: unit_spearman(x, unit, strength))

    def reference(x: torch.Tensor) -> torch.Tensor:
        ranks = soft_rank(x, strength, "torchsort")
        centred = ranks - ranks.mean(dim=1, keepdim=True)
        return (centred @ unit) / centred.norm(dim=1).clamp(min=1e-12)

    expected, grad_ref = run(reference)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert grad_ref.abs().sum() > 0
    torch.testing.assert_close(grad, grad_ref, rtol=1e-8, atol=1e-12)
