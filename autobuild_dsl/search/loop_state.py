"""The AutoBuild-NAS loop's settings, results and files (see `search.loop`).

`loop.json` (the checkpoint, replaced atomically after each round), `evaluations.jsonl`
and `labels.jsonl` (appended and fsync'd as each evaluation finishes).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.data.dataset import LabeledDataset, write_text_atomic
from autobuild_dsl.errors import START_OVER, AbcError, Remedy
from autobuild_dsl.search.evolution import read_checkpoint
from autobuild_dsl.search.pareto import Objective
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.model import Space

STATE_FILE = "loop.json"
RECORDS_FILE = "evaluations.jsonl"
LABELS_FILE = "labels.jsonl"
REPORT_FILE = "report.md"
PLOT_FILE = "progress.png"
ROUNDS_DIR = "rounds"
STATE_VERSION = 1
# Automatic k: the first reduced space holds this many times the budget. Small enough that
# the evaluations cover a good part of it, large enough to hold what the scores misplace
# (on NAS-Bench-Macro the best network uses a stage module of true marginal rank 5).
AUTO_K_FACTOR = 1.5


class LoopError(AbcError, ValueError):
    """The loop cannot start or resume (bad settings, a different loop in the folder)."""

    code = "loop"


class LoopConfig(BaseModel):
    """Everything a loop's result depends on (with the space, labels and evaluator)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    targets: list[str] = Field(min_length=1, description="one scorer per target expression")
    objectives: list[Objective] = Field(
        default_factory=list,
        description="what the search optimises; empty: maximise the single target",
    )
    budget: int = Field(ge=1, description="real evaluations to pay for")
    top_k: int | None = Field(
        default=None,
        ge=1,
        description="modules kept per unit at the start; None: the smallest k whose reduced "
        f"space holds {AUTO_K_FACTOR:g} x the budget (the guided search with several "
        "objectives: every module)",
    )
    per_round: int = Field(default=8, ge=1, description="evaluations between retrainings")
    per_generation: int = Field(
        default=8, ge=1, description="several objectives: mutants evaluated per batch"
    )
    widen_on_stall: bool = Field(
        default=True,
        description="also keep one more module per unit after a round that "
        "found nothing better (not only when the reduced space is exhausted)",
    )
    inner: Literal["guided", "evolution", "tpe"] = Field(
        default="guided",
        description="the search inside the reduced space: 'guided' pays for the networks "
        "the round's scorers place best (targets taking turns); with one objective, "
        "'evolution' (regularized evolution, Stage-Full mutation) or 'tpe', warm-started "
        "with the labels inside it",
    )
    refine: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="guided search, several objectives: the share of each round spent on "
        "Layer-Full Pareto mutation of the front held (the rest follows the scores)",
    )
    seed: int = 0
    epochs: int = Field(default=100, ge=1, description="scorer training epochs")
    folds: int = Field(default=5, ge=1, description="ensemble folds per target")
    ensemble_seeds: int = Field(default=1, ge=1)

    def k_factor(self) -> float:
        """How many times the budget the first reduced space holds when k is automatic.

        The guided search for a front starts from the whole space: the union of a few
        targets' top-k modules cannot hold the front between and beyond their slopes (on
        NAS-Bench-Macro, even k = 8 of 27 capped the reachable hypervolume below what
        Layer-Full evolution found), and guided picks follow the scores, so the wider
        space costs no evaluations."""
        if self.inner == "guided" and len(self.search_objectives()) > 1:
            return math.inf
        return AUTO_K_FACTOR

    def search_objectives(self) -> list[Objective]:
        if self.objectives:
            return list(self.objectives)
        if len(self.targets) > 1:
            raise LoopError(
                "several targets need objectives for the search inside the reduced space",
                remedies=(Remedy("objectives", "", "'max acc, min macs'"),),
            )
        return [Objective(direction="max", expr=self.targets[0])]


class LoopRecord(BaseModel):
    """One real evaluation paid for by the loop."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    index: int
    round: int
    key: str
    arch: dict
    metrics: dict[str, float]


class RoundInfo(BaseModel):
    """What one finished round did."""

    round: int
    k: int = Field(description="modules kept per unit (capped at a unit's module count)")
    reduced_size: int = Field(description="architectures in the reduced space")
    trained_on: int = Field(description="labeled architectures the scorers saw")
    evaluated: int = Field(description="new evaluations in this round")
    improved: bool = Field(description="whether it found a network better than all before")
    built: dict = Field(description="the one-shot build #1 of this round's scorers")
    best: dict[str, float] = Field(description="best value per objective after the round")


class LoopProgress(BaseModel):
    phase: Literal["train", "rank", "search", "evaluated", "round"]
    round: int
    k: int
    evaluated: int
    budget: int
    best: dict[str, float]
    detail: str = ""


class LoopResult(BaseModel):
    config: LoopConfig
    rounds: list[RoundInfo]
    records: list[LoopRecord]
    labels: int = Field(description="labeled architectures given at the start")
    front: list[dict] = Field(
        description="Pareto front (one objective: the best) over labels and evaluations; "
        "each {'arch', 'metrics', 'source': 'label' | 'evaluation'}"
    )
    beyond_labels: int = Field(
        description="evaluated networks that no label dominates and that are on the front"
    )
    best_so_far: list[dict[str, float]] = Field(
        description="best value per objective after each evaluation (labels included)"
    )
    stopped: Literal["budget", "exhausted"]
    resumed_from: int = 0


class LoopState(BaseModel):
    version: int = STATE_VERSION
    fingerprint: str
    config: LoopConfig
    evaluator: str
    k: int
    rounds: list[RoundInfo]
    stopped: Literal["running", "budget", "exhausted"] = "running"


ProgressCallback = Callable[[LoopProgress], None]


def fingerprint(space: Space, labels: LabeledDataset, config: LoopConfig, evaluator: str) -> str:
    """Everything the loop's result depends on, except the budget."""
    payload = json.dumps(
        {
            "space": space.digest(),
            "labels": hashlib.sha256(labels.to_jsonl().encode("utf-8")).hexdigest(),
            "config": config.model_dump(mode="json", exclude={"budget"}),
            "evaluator": evaluator,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- files


def label_line(arch: Architecture, metrics: dict[str, float]) -> str:
    return json.dumps({"arch": arch.model_dump(mode="json"), "metrics": metrics}) + "\n"


def rewrite(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    write_text_atomic(path, text)


def read_state(out: Path) -> LoopState | None:
    return read_checkpoint(out / STATE_FILE, LoopState, LoopError, "loop", STATE_VERSION)


def check_resumable(state: LoopState, print_: str, config: LoopConfig) -> None:
    if state.fingerprint != print_:
        old = state.config.model_dump(exclude={"budget"})
        new = config.model_dump(exclude={"budget"})
        diffs = [
            f"{name}: {old[name]!r} -> {new[name]!r}" for name in old if old[name] != new[name]
        ]
        what = "; ".join(diffs) or "the space, the labels or the evaluator differ"
        raise LoopError(
            f"the folder holds a different loop ({what}); use another folder",
            remedies=(START_OVER,),
        )


def read_records(path: Path) -> list[LoopRecord]:
    """The evaluations on disk; a line torn by a kill mid-write is dropped."""
    records: list[LoopRecord] = []
    if not path.exists():
        return records
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = LoopRecord.model_validate_json(line)
        except ValueError:
            if number >= len(lines) - 1:
                break  # the last line, cut off by an interruption
            raise LoopError(f"{path}:{number}: damaged evaluation record") from None
        if record.index != len(records):
            raise LoopError(f"{path}:{number}: record {len(records)} has index {record.index}")
        records.append(record)
    return records


def load_loop(out_dir: str | Path) -> LoopState:
    """The checkpoint of a loop folder (its config and finished rounds)."""
    state = read_state(Path(out_dir))
    if state is None:
        raise LoopError(f"{out_dir}: no {STATE_FILE}; not a loop folder")
    return state


def target_metrics(text: str) -> list[str]:
    from autobuild_dsl.data import TargetError, parse_target

    try:
        return list(parse_target(text).metrics)
    except TargetError as error:
        raise LoopError(f"target `{text}`: {error}") from None
