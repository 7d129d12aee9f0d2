"""Whole-architecture scores from a run's ranked embedding space (what the loop's guided
search orders candidates by)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autobuild_dsl.scorer.model import PackedGraphs
from autobuild_dsl.scorer.run import TrainedRun, _as_packed
from autobuild_dsl.scorer.train import embed


def member_weights(run: TrainedRun) -> np.ndarray:
    """Each member's weight: its held-out SRCC at the last hop, sign kept, over the sum of
    their sizes (uniform when no member has one).

    The sign is kept because a member whose norms order held-out networks backwards (a
    short training on few labels can end there) still orders them, in reverse; with the
    weights clipped at zero, an ensemble of such members fell back to uniform weights and
    ranked the worst networks first.
    """
    signed = [m.hop_srcc(run.num_hops - 1) for m in run.members]
    w = np.nan_to_num(np.array([np.nan if v is None else v for v in signed], dtype=float))
    size = float(np.abs(w).sum())
    return w / size if size > 0 else np.full(len(w), 1.0 / len(w))


def graph_scores(run: TrainedRun, graphs: Sequence[Any] | PackedGraphs) -> np.ndarray:
    """[graphs]: how well each graph should do by the ranked embedding space (higher is
    better; unitless, comparable within one call).

    Each member's last-hop graph-embedding norm, standardised over the graphs given and
    weighted by its held-out SRCC at that hop (`member_weights`): the quantity the ranked
    loss trains. Unlike the prediction head it holds up on small label sets: on NAS-Bench-Macro with 200
    labels and 30 epochs, every head of an ensemble anti-correlated on held-out data in 2
    of 10 seeds, while this score's SRCC over all networks was 0.943-0.947 in all 10.
    """
    packed = _as_packed(graphs, run.members[0].model)
    weights = member_weights(run)
    total = np.zeros(packed.num_graphs)
    for weight, member in zip(weights, run.members, strict=True):
        _, norms, _ = embed(member.model, packed, with_node_norms=False)
        last = norms[-1].double().numpy()
        spread = float(last.std())
        if spread > 0:
            total += weight * (last - last.mean()) / spread
    return total


def prediction_doubt(run: TrainedRun) -> str | None:
    """Why the run's prediction head should not be trusted, or None: every member was
    measured on held-out rows and none of their heads beat chance there. `predict` then
    weighs the members equally, and its mean can order networks backwards (it did in 2 of
    10 NAS-Bench-Macro seeds: 200 labels, 30 epochs)."""
    measured = [m.record.metrics.pred_srcc for m in run.members]
    values = [v for v in measured if v is not None and not np.isnan(v)]
    if not values or len(values) < len(measured) or max(values) > 0:
        return None
    return (
        f"no member's prediction head beats chance on its held-out rows (SRCC "
        f"{min(values):.2f} to {max(values):.2f}): its predictions may rank networks "
        "backwards; train longer or on more labels"
    )


__all__ = ["graph_scores", "member_weights", "prediction_doubt"]
