"""The AutoBuild loss: MSE on the standardised target + lambda * mean_l (1 - SRCC_l).

SRCC_l is the differentiable Spearman correlation between the norms of the hop-l graph
embeddings and the target over a batch (Eq. 4 of the paper). With `kind="mse"` only the
regression term is used (the paper's Exhaustive-Search predictor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autobuild_dsl.scorer.config import LossKind
from autobuild_dsl.scorer.model import ScorerOutput
from autobuild_dsl.scorer.softrank import (
    hard_rank,
    resolve_backend,
    soft_rank,
    soft_spearman,
    unit_spearman,
)


@dataclass
class LossValue:
    total: torch.Tensor
    mse: float
    hop_srcc: list[float] | None  # soft SRCC per hop on this batch (ranked loss only)


def scorer_loss(
    output: ScorerOutput,
    target: torch.Tensor,
    *,
    kind: LossKind = "ranked",
    rank_lambda: float = 1.0,
    regularization_strength: float = 1.0,
    norm_ord: int = 1,
    backend: str = "auto",
    target_unit: torch.Tensor | None = None,
) -> LossValue:
    """Loss of one batch; `target` is the standardised label of each graph.
    `target_unit`: the target's ranks, centred and scaled to unit norm, when the caller
    has them (the trainer computes an epoch's at once, in numpy)."""
    # One op (and one backward node), the same mean of squared differences.
    mse = torch.nn.functional.mse_loss(output.prediction, target)
    # A correlation needs at least two graphs (a trailing batch of one has none).
    if kind == "mse" or rank_lambda == 0 or target.shape[0] < 2:
        return LossValue(total=mse, mse=float(mse.detach()), hop_srcc=None)
    norms = output.graph_norms(norm_ord)  # [hops, graphs]
    if target_unit is None:
        srcc = soft_spearman(norms, hard_rank(target), regularization_strength, backend)
    elif resolve_backend(backend) == "torchsort":
        srcc = unit_spearman(norms, target_unit, regularization_strength)
    else:
        ranks = soft_rank(norms, regularization_strength, backend)
        centred = ranks - ranks.mean(dim=1, keepdim=True)
        # Pearson with a centred unit-norm side: one dot product over one norm.
        srcc = (centred @ target_unit.to(centred.dtype)) / centred.norm(dim=1).clamp(min=1e-12)
    total = mse + rank_lambda * torch.mean(1.0 - srcc)
    return LossValue(total=total, mse=float(mse.detach()), hop_srcc=srcc.detach().tolist())
