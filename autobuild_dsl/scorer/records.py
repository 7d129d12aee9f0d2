"""What a run folder holds: its configuration, member records and metrics (pydantic), the
progress events of training one, and reading a folder back (`load_run`). Split from
run.py, which re-exports every name. Nothing here imports torch: a member's model is
loaded from its weight file on first use (`LoadedMember.model`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from autobuild_dsl import io as abc_io
from autobuild_dsl.data.splits import LabelStats
from autobuild_dsl.errors import AbcError
from autobuild_dsl.scorer.config import (
    EpochProgress,
    MemberMetrics,
    ModelConfig,
    Moments,
    TrainConfig,
)
from autobuild_dsl.space.expr import Value
from autobuild_dsl.space.model import Space

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


# ----- reading a run folder (no torch until a member's model is used) ---------------------


class LoadedMember:
    """One finished member of a run: its record, and its model, which is loaded (with
    torch) from the weight file on first use: reading a run and answering from RUN/cache/
    needs neither."""

    def __init__(
        self,
        record: MemberRecord,
        model: Any = None,
        *,
        weights: Path | None = None,
        model_config: ModelConfig | None = None,
    ) -> None:
        if model is None and (weights is None or model_config is None):
            raise ValueError("a member needs its model, or its weight file and model config")
        self.record = record
        self._model = model
        self._weights = weights
        self._model_config = model_config
        self._loaded_bytes: str | None = None  # SHA-256 of the file the model came from
        self._loaded_state: str | None = None  # ... and of its state right after loading

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def model(self) -> Any:
        """The member's ScorerModel (eval mode), loaded on first use."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self) -> Any:
        import io

        import torch

        from autobuild_dsl.scorer.model import ScorerModel

        assert self._weights is not None and self._model_config is not None
        model = ScorerModel(self._model_config)
        try:
            # The bytes hashed are the bytes loaded: a file replaced meanwhile cannot be
            # computed with under the old file's name.
            data = self._weights.read_bytes()
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError, ValueError, EOFError) as error:
            raise RunError(f"{self._weights}: cannot load weights: {error}") from None
        model.eval()
        self._loaded_bytes = hashlib.sha256(data).hexdigest()
        self._loaded_state = _state_digest(model)
        return model

    def numpy_state(self) -> dict[str, np.ndarray] | None:
        """The member's weights as numpy arrays, for scorer.numpy_predict: read from its
        file without torch while the model is not loaded (None where the file holds
        anything but plain tensors: scorer.state_file), else the loaded model's state
        (what it computes with, even if changed in memory after loading)."""
        if self._model is not None:
            state = self._model.state_dict().items()
            return {name: t.detach().cpu().numpy() for name, t in state}
        from autobuild_dsl.scorer.state_file import read_state

        assert self._weights is not None
        try:
            return read_state(self._weights.read_bytes())
        except OSError:
            return None  # loading with torch reports it

    def weights_digest(self) -> str:
        """What names the weights this member computes with, read without torch while the
        model is not loaded: the SHA-256 of its weight file (of the bytes it was loaded
        from, once loaded). A model changed in memory after loading, or given without a
        file, is named by its state (torch is loaded then anyway)."""
        if self._model is None:
            assert self._weights is not None
            try:
                return f"file:{abc_io.file_digest(self._weights)}"
            except OSError as error:
                raise RunError(f"{self._weights}: cannot read weights: {error}") from None
        state = _state_digest(self._model)
        if self._loaded_bytes is not None and state == self._loaded_state:
            return f"file:{self._loaded_bytes}"
        return f"state:{state}"

    def hop_srcc(self, hop: int) -> float | None:
        """This member's held-out SRCC at `hop` (None where it was not measured)."""
        values = self.record.metrics.hop_srcc
        return values[hop] if hop < len(values) else None

    def hop_weight(self, hop: int) -> float:
        """This member's weight for scores at `hop`: its held-out SRCC there (>= 0)."""
        value = self.hop_srcc(hop)
        return max(value, 0.0) if value is not None else 0.0

    @property
    def prediction_weight(self) -> float:
        """Weight in `predict`: the held-out SRCC of the prediction head (>= 0)."""
        value = self.record.metrics.pred_srcc
        return max(value, 0.0) if value is not None else 0.0

    def __repr__(self) -> str:
        return f"LoadedMember({self.name!r}, loaded={self._model is not None})"


def normalised_weights(values: Sequence[float]) -> np.ndarray:
    """Member weights (held-out SRCCs, >= 0) scaled to sum to 1."""
    w = np.asarray(values, dtype=np.float64)
    # No member beats chance: fall back to an unweighted ensemble.
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))


def in_target_units(member: LoadedMember, standardised: np.ndarray) -> np.ndarray:
    """A member's head output (standardised with its training labels' moments) in target
    units, as float64."""
    label = member.record.label
    return standardised.astype(np.float64) * (label.sd if label.sd > 0 else 1.0) + label.mean


def ensemble_moments(
    members: Sequence[LoadedMember], preds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, spread) of the members' predictions [members, graphs] in target units:
    weighted by each member's held-out SRCC of its predictions (the paper's weighting of
    Exhaustive-Search predictors); the spread is the weighted standard deviation."""
    w = normalised_weights([m.prediction_weight for m in members])
    mean = w @ preds
    return mean, np.sqrt(np.maximum(w @ (preds - mean) ** 2, 0.0))


def _state_digest(model: Any) -> str:
    """SHA-256 of a model's parameters and buffers (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TrainedRun:
    path: Path
    config: RunConfig
    members: list[LoadedMember]
    metrics: RunMetrics | None = None
    _encoder: Any = field(default=None, repr=False)

    @cached_property
    def space(self) -> Space:
        return Space.model_validate(self.config.space)

    @property
    def target(self) -> str:
        return self.config.target

    @property
    def target_name(self) -> str:
        """The target's text: a metric name for plain targets (`top1`)."""
        return self.config.target

    @property
    def categories(self) -> list[CategoryInfo]:
        return self.config.categories

    @property
    def num_hops(self) -> int:
        return self.config.model.num_layers + 1

    def encoder(self) -> Any:
        """The run's graph encoder (built once): a GraphEncoder for the run's space, or for
        `encoding: ir` an IrEncoder with the run's fitted vocabularies."""
        if self._encoder is None and self.config.encoding == "ir":
            from autobuild_dsl.graphs.ir import IrEncoder

            if self.config.encoder_state is None:
                raise RunError(f"{self.path}: an ir run without its encoder state")
            self._encoder = IrEncoder.from_state(self.config.encoder_state)
        if self._encoder is None:
            from autobuild_dsl.graphs.encode import GraphEncoder

            self._encoder = GraphEncoder(self.space)
            names = [c.name for c in self._encoder.categories]
            if names != [c.name for c in self.config.categories]:
                raise RunError(
                    f"{self.path}: the encoder's features ({', '.join(names)}) differ from "
                    "the run's; it was trained with another version of the encoder"
                )
        return self._encoder


def _read_record(path: Path, name: str) -> MemberRecord:
    file = path / "members" / f"{name}.json"
    try:
        return MemberRecord.model_validate_json(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunError(f"{file}: cannot read member record: {error}") from None


def load_run(path: str | Path, *, partial: bool = False) -> TrainedRun:
    """A trained run folder: its config and every finished member (models load on first
    use, in eval mode).
    A run with unfinished members (interrupted) is refused unless `partial`: its ensemble
    would silently be smaller (one member: no spread, `std` 0)."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise RunError(f"{path}: not a run folder (no config.json)")
    try:
        config = RunConfig.model_validate_json(config_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise RunError(f"{config_path}: not a run configuration: {error}") from None
    members: list[LoadedMember] = []
    for name in config.members:
        if not (path / "members" / f"{name}.json").exists():
            continue  # not finished (an interrupted run)
        record = _read_record(path, name)
        weights = path / record.weights
        if not weights.is_file():
            raise RunError(f"{weights}: cannot load weights: no such file")
        # The model itself is loaded (with torch) when first used: LoadedMember.model.
        members.append(LoadedMember(record, weights=weights, model_config=config.model))
    if not members:
        raise RunError(f"{path}: no finished member (resume the training to finish it)")
    if len(members) < len(config.members) and not partial:
        missing = [n for n in config.members if n not in {m.record.name for m in members}]
        raise RunError(
            f"{path}: only {len(members)} of {len(config.members)} members finished (the run "
            f"was interrupted; missing {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}); resume the training to finish it"
        )
    metrics = None
    metrics_path = path / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = RunMetrics.model_validate_json(metrics_path.read_text(encoding="utf-8"))
        except ValueError:
            metrics = None
    return TrainedRun(path=path, config=config, members=members, metrics=metrics)
