"""Seeded splits and the label statistics the method needs (training split only).

Eq. 5 of the paper un-standardises a module's score with the mean/sd of the training
labels of architectures whose stage has the module's depth, so those statistics are
computed per (stage, depth), and per (unit, total layers) for multi-stage units.
Standard deviations are population ones (ddof = 0), as used to standardise the target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.data.dataset import LabeledDataset


class Split(BaseModel):
    """Row indices of a training and a held-out part (disjoint, each sorted)."""

    model_config = ConfigDict(frozen=True)

    train: list[int]
    test: list[int]


def train_test_split(n: int, test_fraction: float = 0.1, seed: int = 0) -> Split:
    """A seeded random split of n rows (default 90/10); both parts non-empty when n >= 2."""
    if n < 2:
        raise ValueError(f"cannot split {n} row(s): at least 2 are needed")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction {test_fraction} must lie strictly between 0 and 1")
    order = np.random.default_rng(seed).permutation(n)
    size = min(max(1, round(n * test_fraction)), n - 1)
    return Split(train=sorted(order[size:].tolist()), test=sorted(order[:size].tolist()))


def kfold_splits(n: int, k: int = 5, seed: int = 0) -> list[Split]:
    """K seeded folds: each row is held out exactly once; fold sizes differ by at most 1."""
    if k < 2:
        raise ValueError(f"k = {k}: K-fold needs at least 2 folds")
    if k > n:
        raise ValueError(f"k = {k} folds need at least {k} rows, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    splits = []
    for i, held in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != i])
        splits.append(Split(train=sorted(train.tolist()), test=sorted(held.tolist())))
    return splits


class GroupStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int
    mean: float | None = Field(description="None when the group is empty")
    sd: float | None


class LabelStats(BaseModel):
    """Mean/sd of training labels: overall, per (stage, depth) and per (unit, layers)."""

    model_config = ConfigDict(frozen=True)

    count: int
    mean: float
    sd: float
    by_stage: dict[str, dict[int, GroupStats]] = Field(
        description="stage -> depth -> stats of architectures whose stage has that depth"
    )
    by_unit: dict[str, dict[int, GroupStats]] = Field(
        description="unit -> total layers of its stages -> stats (= by_stage for 1-stage units)"
    )


def _group(values: np.ndarray) -> GroupStats:
    if values.size == 0:
        return GroupStats(count=0, mean=None, sd=None)
    return GroupStats(count=int(values.size), mean=float(values.mean()), sd=float(values.std()))


def label_stats(
    dataset: LabeledDataset, labels: np.ndarray, train: Sequence[int] | None = None
) -> LabelStats:
    """Statistics of `labels` (one per dataset row) over the `train` rows (all if None)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if labels.shape[0] != len(dataset):
        raise ValueError(f"{labels.shape[0]} labels for {len(dataset)} rows")
    rows = np.arange(len(dataset)) if train is None else np.asarray(train, dtype=np.int64)
    if rows.size == 0:
        raise ValueError("no training rows")
    picked = labels[rows]
    if not np.all(np.isfinite(picked)):
        raise ValueError("labels must be finite")
    space = dataset.space
    depth = {
        s.name: np.array([dataset.architectures[i].stages[s.name].depth for i in rows])
        for s in space.stages
    }
    by_stage = {
        s.name: {d: _group(picked[depth[s.name] == d]) for d in s.depths} for s in space.stages
    }
    by_unit: dict[str, dict[int, GroupStats]] = {}
    for unit in space.module_units():
        totals = sum(depth[name] for name in unit.stages)
        possible = {0}
        for name in unit.stages:
            possible = {p + d for p in possible for d in space.stage(name).depths}
        by_unit[unit.name] = {t: _group(picked[totals == t]) for t in sorted(possible)}
    return LabelStats(
        count=int(picked.size),
        mean=float(picked.mean()),
        sd=float(picked.std()),
        by_stage=by_stage,
        by_unit=by_unit,
    )


__all__ = ["GroupStats", "LabelStats", "Split", "kfold_splits", "label_stats", "train_test_split"]
