"""Differentiable ranks (Blondel et al., ICML 2020) and a differentiable Spearman correlation.

The soft rank with L2 regularisation is the Euclidean projection of `values / strength`
onto the permutahedron of (1, ..., n). `torchsort` implements it in C++; when that package
is not importable the same projection runs in plain PyTorch:

* sort the scaled values in decreasing order (s), let w = (n, ..., 1);
* fit a non-increasing isotonic regression v to s - w;
* the soft ranks are s - v, put back in the input order.

The isotonic fit is pool-adjacent-violators over Python floats: s - w is nearly sorted
already, so PAV does little pooling and takes ~0.2 ms for 5 rows of 128 (a vectorised O(n^2)
closed form in torch measured ~10x slower on this machine). Its Jacobian is torchsort's:
within each pooled block the gradient is averaged.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Backend = Literal["torchsort", "torch"]

try:  # optional compiled backend
    import torchsort as _torchsort
    from torchsort.isotonic_cpu import isotonic_l2 as _isotonic_l2
    from torchsort.isotonic_cpu import isotonic_l2_backward as _isotonic_l2_backward
except ImportError:  # pragma: no cover - depends on the environment
    _torchsort = None


def available_backend() -> Backend:
    """The backend `soft_rank(..., backend="auto")` uses here."""
    return "torchsort" if _torchsort is not None else "torch"


def resolve_backend(name: str) -> Backend:
    """Map "auto" to the best available backend; refuse torchsort when it is missing."""
    if name == "auto":
        return available_backend()
    if name == "torchsort":
        if _torchsort is None:
            raise ValueError(
                "soft-rank backend 'torchsort' requested but torchsort is not installed"
            )
        return "torchsort"
    if name == "torch":
        return "torch"
    raise ValueError(f"unknown soft-rank backend '{name}' (auto, torchsort, torch)")


def _pav_nonincreasing(row: list[float]) -> tuple[list[float], list[int]]:
    """Pool-adjacent-violators fit of a non-increasing sequence: (fitted values, block ids)."""
    sums: list[float] = []
    counts: list[int] = []
    for value in row:
        total, count = value, 1
        # Merge while the previous block's mean is not above this one's.
        while sums and sums[-1] * count <= total * counts[-1]:
            total += sums.pop()
            count += counts.pop()
        sums.append(total)
        counts.append(count)
    fitted: list[float] = []
    blocks: list[int] = []
    for block, (total, count) in enumerate(zip(sums, counts, strict=True)):
        fitted.extend([total / count] * count)
        blocks.extend([block] * count)
    return fitted, blocks


class _IsotonicNonIncreasing(torch.autograd.Function):
    """Row-wise isotonic fit; backward averages the gradient over each pooled block."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rows = [_pav_nonincreasing(r) for r in y.detach().to(torch.float64).tolist()]
        fitted = torch.tensor([f for f, _ in rows], dtype=y.dtype, device=y.device)
        block = torch.tensor([b for _, b in rows], dtype=torch.int64, device=y.device)
        ctx.save_for_backward(block)
        return fitted.reshape(y.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (block,) = ctx.saved_tensors
        batch, n = grad.shape
        # Flatten (row, block) into one segment id so one scatter serves all rows.
        seg = (block + torch.arange(batch, device=grad.device)[:, None] * n).reshape(-1)
        flat = grad.reshape(-1)
        sums = torch.zeros(batch * n, dtype=grad.dtype, device=grad.device).index_add_(0, seg, flat)
        counts = torch.zeros_like(sums).index_add_(0, seg, torch.ones_like(flat))
        return (sums / counts.clamp(min=1))[seg].reshape(batch, n)


def soft_rank_torch(values: torch.Tensor, regularization_strength: float = 1.0) -> torch.Tensor:
    """Soft ranks (ascending, 1..n) of each row of a [B, n] tensor, in plain PyTorch."""
    if values.dim() != 2:
        raise ValueError("soft_rank expects a [batch, n] tensor")
    n = values.shape[1]
    z = values / regularization_strength
    s, perm = torch.sort(z, dim=1, descending=True)
    w = torch.arange(n, 0, -1, dtype=values.dtype, device=values.device)
    v = _IsotonicNonIncreasing.apply(s - w)
    ranks_sorted = s - v
    return torch.empty_like(ranks_sorted).scatter(1, perm, ranks_sorted)


def soft_rank(
    values: torch.Tensor, regularization_strength: float = 1.0, backend: str = "auto"
) -> torch.Tensor:
    """Soft ranks of each row of a [B, n] tensor; `backend` is auto, torchsort or torch."""
    chosen = resolve_backend(backend)
    if chosen == "torchsort":
        assert _torchsort is not None
        return _torchsort.soft_rank(
            values, regularization="l2", regularization_strength=regularization_strength
        )
    return soft_rank_torch(values, regularization_strength)


def hard_rank(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties sharing their average rank (no gradient)."""
    n = values.shape[0]
    order = torch.argsort(values, stable=True)
    sorted_vals = values[order]
    # Average ranks over runs of equal values.
    new_run = torch.ones(n, dtype=torch.bool, device=values.device)
    new_run[1:] = sorted_vals[1:] != sorted_vals[:-1]
    run = torch.cumsum(new_run.to(torch.int64), 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=values.device)
    sums = torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(0, run, positions)
    counts = torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(
        0, run, torch.ones(n, dtype=torch.float64, device=values.device)
    )
    ranks = torch.empty(n, dtype=torch.float64, device=values.device)
    ranks[order] = (sums / counts.clamp(min=1))[run]
    return ranks


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    return (a * b).sum(dim=-1) / denom.clamp(min=1e-12)


def soft_spearman(
    pred: torch.Tensor,
    target_ranks: torch.Tensor,
    regularization_strength: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Differentiable SRCC of each row of pred [H, n] against fixed target ranks [n].

    Only the prediction needs a gradient, so the target's ranks are exact (computed once
    per batch with `hard_rank`); the authors' code correlated soft ranks with raw targets.
    """
    ranks = soft_rank(pred, regularization_strength, backend)
    return _pearson(ranks, target_ranks.to(ranks.dtype)[None, :].expand_as(ranks))


class _UnitSpearman(torch.autograd.Function):
    """Soft SRCC of each row of [H, n] values against a fixed centred unit-norm rank vector,
    in one node: torchsort's L2 soft rank (its sort and isotonic fit, then its backward),
    the centring and the correlation worked in sorted order, with their gradient written
    out. `soft_rank` + centring + a dot over a norm as autograd ops is ~25 small nodes per
    batch, each costing more than its arithmetic on 5 x 128 values."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, values: torch.Tensor, unit: torch.Tensor, strength: float
    ) -> torch.Tensor:
        n = values.shape[1]
        s, perm = torch.sort(values * (1.0 / strength), dim=1, descending=True)
        dual = _isotonic_l2(s - torch.arange(n, 0, -1, dtype=s.dtype))
        centred = s - dual
        centred -= centred.mean(dim=1, keepdim=True)
        unit_sorted = unit.to(s.dtype)[perm]  # the fixed side, in each row's sorted order
        norm = centred.norm(dim=1).clamp_(min=1e-12)
        srcc = torch.linalg.vecdot(centred, unit_sorted) / norm
        ctx.strength = strength
        ctx.save_for_backward(s, dual, perm, centred, unit_sorted, norm, srcc)
        return srcc

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        s, dual, perm, centred, unit_sorted, norm, srcc = ctx.saved_tensors
        # d srcc / d centred = (unit - srcc * centred / norm) / norm; then the centring.
        grad_c = torch.addcmul(unit_sorted, centred, (srcc / norm)[:, None], value=-1.0)
        grad_c.mul_((grad / norm)[:, None])
        grad_c -= grad_c.mean(dim=1, keepdim=True)
        grad_s = grad_c - _isotonic_l2_backward(s, dual, grad_c)
        grad_values = torch.empty_like(grad_s).scatter_(1, perm, grad_s)
        return grad_values.mul_(1.0 / ctx.strength), None, None


def unit_spearman(values: torch.Tensor, unit: torch.Tensor, strength: float) -> torch.Tensor:
    """[H]: soft SRCC of each row of `values` [H, n] against `unit` [n] (ranks, centred,
    unit norm), with torchsort's soft rank; equal within rounding to `soft_rank`, centring
    and `unit @ centred / |centred|`. Needs torchsort (see `available_backend`)."""
    if _torchsort is None:
        raise ValueError("unit_spearman needs torchsort")
    return _UnitSpearman.apply(values, unit, strength)
