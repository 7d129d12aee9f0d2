"""What a run folder holds: its configuration, member records and metrics (pydantic), and
the progress events of training one. Split from run.py, which re-exports every name."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from autobuild_dsl.data.splits import LabelStats
from autobuild_dsl.errors import AbcError
from autobuild_dsl.scorer.model import ModelConfig
from autobuild_dsl.scorer.train import EpochProgress, MemberMetrics, Moments, TrainConfig
from autobuild_dsl.space.expr import Value

RUN_FORMAT = "autobuild-scorer-run"
RUN_VERSION = 1


class RunError(AbcError, ValueError):
    """A run folder cannot be created, resumed or read; the message says why."""

    code = "run"


class CategoryInfo(BaseModel):
    name: str
    group: str
    vocab: list[Any]


class GlobalCount(BaseModel):
    """One assignment of the space's global choices and how many labeled rows have it."""

    values: dict[str, Value]
    count: int


class EnsembleConfig(BaseModel):
    folds: int = Field(default=1, ge=1, description="1: one seeded train/test split")
    seeds: int = Field(default=1, ge=1)
    test_fraction: float = Field(default=0.1, gt=0, lt=1, description="used when folds = 1")
    seed: int = 0


class RunConfig(BaseModel):
    format: Literal["autobuild-scorer-run"] = RUN_FORMAT
    version: int = RUN_VERSION
    space_name: str
    space: dict[str, Any] = Field(description="the Space as JSON (no .abs file needed later)")
    target: str
    data: str = Field(default="", description="where the labels came from (informational)")
    space_file: str = Field(
        default="", description="the .abs file the space was compiled from (informational)"
    )
    globals_seen: list[GlobalCount] = Field(
        default_factory=list,
        description="global-choice assignments of the labeled rows, most frequent first "
        "(module ranking scores these by default); empty in runs written before it existed",
    )
    data_fingerprint: str
    rows: int = Field(description="labeled architectures used")
    train: TrainConfig
    ensemble: EnsembleConfig
    model: ModelConfig
    categories: list[CategoryInfo]
    softrank_backend: Literal["torchsort", "torch"]
    members: list[str]
    encoding: Literal["sequence", "ir"] = Field(
        default="sequence",
        description="graph format: sequence (graphs/encode.py), ir (graphs/ir.py)",
    )
    encoder_state: dict[str, Any] | None = Field(
        default=None, description="ir: the encoder's spaces and fitted vocabularies"
    )


class MemberRecord(BaseModel):
    name: str
    fold: int
    seed: int
    weights: str = Field(description="file of the state dict, relative to the run folder")
    train_rows: list[int]
    test_rows: list[int]
    metrics: MemberMetrics
    label: Moments = Field(description="training labels (the head predicts them standardised)")
    label_stats: LabelStats = Field(description="training labels overall, per (stage, depth)")
    hop_norms: list[Moments] = Field(description="node-embedding norms per hop, training graphs")
    graph_norms: list[Moments] | None = Field(
        default=None,
        description="mean-pooled graph-embedding norms per hop, training graphs (None: a run "
        "trained before they were recorded)",
    )


class SummaryMetrics(BaseModel):
    """Members' mean of the held-out metrics (what `abc train --json` prints)."""

    hop_srcc: list[float | None]
    pred_srcc: float | None
    mae: float | None
    seconds_per_epoch: float
    cpu_seconds_per_epoch: float | None = None  # absent in runs written before it existed


class RunMetrics(BaseModel):
    members: dict[str, MemberMetrics]
    mean: SummaryMetrics
    softrank_backend: str
    train_seconds: float = Field(description="sum of the members' training time")


# ----- progress events (rendered by the CLI) ---------------------------------------------


@dataclass
class MemberDone:
    name: str
    done: int
    total: int
    metrics: MemberMetrics
    skipped: bool = False  # finished by an earlier, interrupted run


ProgressEvent = EpochProgress | MemberDone
RunProgress = Callable[[ProgressEvent], None]


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def summarise(records: list[MemberRecord], softrank_backend: str) -> RunMetrics:
    """The run's metrics: every member's, and their mean."""
    metrics = [r.metrics for r in records]
    hops = max((len(m.hop_srcc) for m in metrics), default=0)
    mean = SummaryMetrics(
        hop_srcc=[
            _mean([m.hop_srcc[h] for m in metrics if h < len(m.hop_srcc)]) for h in range(hops)
        ],
        pred_srcc=_mean([m.pred_srcc for m in metrics]),
        mae=_mean([m.mae for m in metrics]),
        seconds_per_epoch=_mean([m.seconds_per_epoch for m in metrics]) or 0.0,
        cpu_seconds_per_epoch=_mean([m.cpu_seconds_per_epoch for m in metrics]),
    )
    return RunMetrics(
        members={r.name: r.metrics for r in records},
        mean=mean,
        softrank_backend=softrank_backend,
        train_seconds=sum(m.train_seconds for m in metrics),
    )


def summary_json(metrics: RunMetrics) -> dict[str, Any]:
    """The final test metrics as `abc train --json` prints them."""
    mean = metrics.mean
    return {
        "hop_srcc": mean.hop_srcc,
        "pred_srcc": mean.pred_srcc,
        "mae": mean.mae,
        "seconds_per_epoch": mean.seconds_per_epoch,
        "cpu_seconds_per_epoch": mean.cpu_seconds_per_epoch,
    }
