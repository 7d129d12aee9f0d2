"""AutoBuild-NAS as a loop: reduce the space with scorers, evaluate, learn, repeat.

Each round:

1. train one scorer ensemble per target expression on the labels held so far (the user's
   labels plus every evaluation of earlier rounds);
2. rank every unit's modules with each ensemble and keep the union of each target's
   top-k per unit (the paper's AutoBuild-NAS space, section 5.1);
3. search that reduced space with real evaluations: regularized evolution warm-started
   with the labels inside it (one objective), or Stage-Full Pareto mutation of the front
   of the labels inside it (several objectives), `per_round` new evaluations;
4. every evaluation is appended (fsync'd) to `evaluations.jsonl` and `labels.jsonl` the
   moment it finishes.

When the reduced space holds nothing new, or a round found nothing better than what was
held before it (`widen_on_stall`), k grows by one (and stays grown); the loop stops at the
budget, or when even the full space is exhausted.

Resuming: `loop.json` (replaced atomically after each round) holds the finished rounds.
A rerun retrains the interrupted round's scorers on the same labels (finished members are
reused), proposes the same architectures, and answers those already evaluated from
`evaluations.jsonl`, so nothing is paid twice and the result equals an uninterrupted run.
Every random choice is drawn from a generator seeded by (seed, round, step).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.data.dataset import LabeledDataset, from_records, write_text_atomic
from autobuild_dsl.errors import CONTINUE, START_OVER, AbcError, Remedy
from autobuild_dsl.search.baselines import regularized_evolution
from autobuild_dsl.search.evolution import Evaluates
from autobuild_dsl.search.pareto import Objective, non_dominated, objective_matrix
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import (
    ArchitectureError,
    canonicalize,
    index_of,
    mutate,
)
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space

STATE_FILE = "loop.json"
RECORDS_FILE = "evaluations.jsonl"
LABELS_FILE = "labels.jsonl"
REPORT_FILE = "report.md"
PLOT_FILE = "progress.png"
FRONT_FILE = "front.jsonl"
ROUNDS_DIR = "rounds"
STATE_VERSION = 1
TRIES_PER_ARCH = 50
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
        f"space holds {AUTO_K_FACTOR:g} x the budget",
    )
    per_round: int = Field(default=16, ge=1, description="evaluations between retrainings")
    per_generation: int = Field(
        default=8, ge=1, description="several objectives: mutants evaluated per batch"
    )
    widen_on_stall: bool = Field(
        default=True,
        description="also keep one more module per unit after a round that "
        "found nothing better (not only when the reduced space is exhausted)",
    )
    seed: int = 0
    epochs: int = Field(default=100, ge=1, description="scorer training epochs")
    folds: int = Field(default=5, ge=1, description="ensemble folds per target")
    ensemble_seeds: int = Field(default=1, ge=1)

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


class _State(BaseModel):
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
            "space": hashlib.sha256(space.to_json().encode("utf-8")).hexdigest(),
            "labels": hashlib.sha256(labels.to_jsonl().encode("utf-8")).hexdigest(),
            "config": config.model_dump(mode="json", exclude={"budget"}),
            "evaluator": evaluator,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the loop


class _Loop:
    def __init__(
        self,
        space: Space,
        labels: LabeledDataset,
        runner: Evaluates,
        config: LoopConfig,
        out: Path,
        progress: ProgressCallback | None,
        space_file: Path | None,
        jobs: int,
    ) -> None:
        self.space = space
        self.labels = labels
        self.runner = runner
        self.config = config
        self.objectives = config.search_objectives()
        self.out = out
        self.progress = progress
        self.space_file = space_file
        self.jobs = jobs
        self.records: list[LoopRecord] = []
        # key -> metrics of every architecture held (labels and evaluations)
        self.known: dict[str, dict[str, float]] = {}
        self.round_of: dict[str, int] = {}  # -1 for the user's labels
        self.archs: dict[str, Architecture] = {}
        # Equivalent architectures (one compiled network) are paid for once.
        self.network_key = network_keyer(space)
        self.by_network: dict[str, str] = {}
        self.recorded: set[str] = set()
        self.aliases: set[str] = set()  # equivalent to a held network, never paid for
        for i, arch in enumerate(labels.architectures):
            key = arch.key()
            self.known[key] = labels.row_metrics(i)
            self.round_of[key] = -1
            self.archs[key] = arch
            self.by_network.setdefault(self.network_key(arch), key)
        self.label_count = len(self.known)
        self._k = config.top_k or 0  # 0: chosen from the budget in the first round
        self._round_keys: list[str] = []
        self._round_set: set[str] = set()

    # ---- bookkeeping

    def _paid_before(self, round_: int) -> int:
        return sum(1 for r in self.records if r.round < round_)

    def _held_before(self, round_: int) -> list[str]:
        """Keys known before a round started, in a fixed order (labels, then evaluations)."""
        return [k for k in self.known if self.round_of[k] < round_]

    def _best(self, keys: Sequence[str] | None = None) -> dict[str, float]:
        keys = list(self.known) if keys is None else keys
        best: dict[str, float] = {}
        for objective in self.objectives:
            values = [objective.value(self.known[k]) for k in keys]
            if values:
                best[objective.label] = max(values) if objective.direction == "max" else min(values)
        return best

    def _report(self, phase: str, round_: int, k: int, detail: str = "") -> None:
        if self.progress is not None:
            self.progress(
                LoopProgress(
                    phase=phase,  # type: ignore[arg-type]
                    round=round_,
                    k=k,
                    evaluated=len(self.records),
                    budget=self.config.budget,
                    best=self._best(),
                    detail=detail,
                )
            )

    def _record(self, round_: int, arch: Architecture, metrics: dict[str, float]) -> None:
        key = arch.key()
        record = LoopRecord(
            index=len(self.records),
            round=round_,
            key=key,
            arch=arch.model_dump(mode="json"),
            metrics=metrics,
        )
        _append(self.out / RECORDS_FILE, record.model_dump_json() + "\n")
        _append(self.out / LABELS_FILE, _label_line(arch, metrics))
        self.records.append(record)
        self.recorded.add(key)
        self.known[key] = metrics
        self.round_of[key] = round_
        self.archs[key] = arch
        self.by_network.setdefault(self.network_key(arch), key)

    def pay(self, round_: int, archs: Sequence[Architecture]) -> list[dict[str, float]]:
        """Metrics of each architecture: those evaluated earlier in this round (before an
        interruption) from the records, the rest from the evaluator, recorded at once."""
        for arch in archs:
            key = arch.key()
            if key not in self.known:
                same = self.by_network.get(self.network_key(arch))
                if same is not None:
                    # The same network as one held: its metrics, for free.
                    self.known[key] = dict(self.known[same])
                    self.round_of[key] = self.round_of[same]
                    self.archs[key] = arch
                    self.aliases.add(key)
        todo = [a for a in archs if a.key() not in self.known]
        if todo:
            left = self.config.budget - len(self.records)
            if len(todo) > left:
                raise LoopError(f"internal: {len(todo)} evaluations asked, {left} left")

            def done(finished: int, total: int) -> None:
                self._report("evaluated", round_, self._k, f"{finished}/{total}")

            metrics = self.runner.evaluate(todo, done)
            for arch, values in zip(todo, metrics, strict=True):
                if arch.key() not in self.known:
                    self._record(round_, arch, dict(values))
        for arch in archs:
            # This round's evaluations in the order the search asked for them: the same
            # whether they were paid now or before an interruption.
            key = arch.key()
            if key in self.recorded and self.round_of[key] == round_ and key not in self._round_set:
                self._round_set.add(key)
                self._round_keys.append(key)
        return [dict(self.known[a.key()]) for a in archs]

    # ---- one round

    def dataset(self, round_: int) -> LabeledDataset:
        keys = [k for k in self._held_before(round_) if k not in self.aliases]
        rows = [(self.archs[k], self.known[k], 1, None) for k in keys]
        dataset, _ = from_records(self.space, rows, self.labels.metric_names)
        return dataset

    def rankings(self, round_: int) -> list[Any]:
        from autobuild_dsl.design.rank import rank_modules
        from autobuild_dsl.scorer import EnsembleConfig, MemberDone, TrainConfig, train_run

        data = self.dataset(round_)
        rankings = []
        for t, target in enumerate(self.config.targets):
            folder = self.out / ROUNDS_DIR / f"r{round_:02d}" / f"target{t}"

            def show(event: object, t: int = t) -> None:
                if isinstance(event, MemberDone):
                    self._report(
                        "train",
                        round_,
                        self._k,
                        f"target {t + 1}/{len(self.config.targets)}: member "
                        f"{event.done}/{event.total}",
                    )

            run = train_run(
                self.space,
                data,
                target,
                folder,
                train=TrainConfig(epochs=self.config.epochs),
                ensemble=EnsembleConfig(
                    folds=self.config.folds,
                    seeds=self.config.ensemble_seeds,
                    seed=self.config.seed,
                ),
                jobs=self.jobs,
                resume=True,
                force=True,  # a folder left without its config by a kill is started over
                progress=show,
            )
            self._report("rank", round_, self._k, f"target {t + 1}/{len(self.config.targets)}")
            rankings.append(rank_modules(run))
        return rankings

    def reduce(self, rankings: list[Any], k: int, round_: int) -> tuple[Space, Any, bool]:
        """The reduced space of each unit's top-k (union over targets); whether k can grow."""
        from autobuild_dsl.design.construct import build_from_rankings, reduced_space

        counts: dict[str, int] = {}
        for ranking in rankings:
            for table in ranking.tables:
                counts[table.unit] = min(counts.get(table.unit, len(table)), len(table))
        ks = {unit: min(k, count) for unit, count in counts.items()}
        result = build_from_rankings(self.space, rankings, top_k=ks, n=1)
        kept = result.kept()
        restrictions = {u: [list(m.parts) for m in modules] for u, modules in kept.units.items()}
        choices = dict(self.space.choices)
        choices.update(result.global_values())
        reduced = self.space.model_copy(update={"restrictions": restrictions, "choices": choices})
        if self.space_file is not None:
            path = self.out / ROUNDS_DIR / f"r{round_:02d}" / "reduced.abs"
            text = reduced_space(
                self.space, self.space_file, path, result, f"{self.space.name}_r{round_}"
            )
            write_text_atomic(path, text)
        return reduced, result, any(ks[u] < counts[u] for u in counts)

    def search(self, round_: int, reduced: Space, count: int) -> int:
        """Spend up to `count` evaluations inside the reduced space; returns how many."""
        before = len(self._round_keys)
        held = [
            k
            for k in [*self._held_before(round_), *self._round_keys]
            if _inside(reduced, self.archs[k])
        ]
        rng_seed = f"autobuild-dsl/loop:{self.config.seed}:{round_}:{self._k}"
        if len(self.objectives) == 1:
            objective = self.objectives[0]
            sign = 1.0 if objective.direction == "max" else -1.0
            warm = [(self.archs[k], sign * objective.value(self.known[k])) for k in held]

            def value(arch: Architecture) -> float:
                return sign * objective.value(self.pay(round_, [arch])[0])

            seed = int(hashlib.sha256(rng_seed.encode()).hexdigest()[:8], 16)
            regularized_evolution(reduced, value, count, seed=seed, mutation="stage", warm=warm)
        else:
            self._pareto(round_, reduced, count, held, rng_seed)
        return len(self._round_keys) - before

    def _pareto(
        self, round_: int, reduced: Space, count: int, held: list[str], rng_seed: str
    ) -> None:
        """Stage-Full Pareto search in the reduced space, starting from the labels' front."""
        pool = list(held)
        seen = set(self._held_before(round_)) | self._round_set
        left, step = count, 0
        index = index_of(reduced)
        while left > 0:
            rng = random.Random(f"{rng_seed}:{step}")
            step += 1
            want = min(self.config.per_generation, left)
            batch: list[Architecture] = []
            keys: set[str] = set()
            front = (
                non_dominated(objective_matrix(self.objectives, [self.known[k] for k in pool]))
                if pool
                else []
            )
            for _ in range(want * TRIES_PER_ARCH):
                if len(batch) == want:
                    break
                if front:
                    parent = self.archs[pool[front[rng.randrange(len(front))]]]
                    child = mutate(reduced, parent, rng, mode="stage")
                else:
                    child = index.sample(rng)
                key = child.key()
                if key in seen or key in keys:
                    continue
                keys.add(key)
                batch.append(child)
            if not batch:
                return
            self.pay(round_, batch)
            for arch in batch:
                seen.add(arch.key())
                pool.append(arch.key())
            left -= len(batch)

    # ---- driver

    def run(self, resume: bool) -> LoopResult:
        self.out.mkdir(parents=True, exist_ok=True)
        print_ = fingerprint(self.space, self.labels, self.config, self.runner.identity)
        state = _read_state(self.out)
        rounds: list[RoundInfo] = []
        self._k = self.config.top_k or 0
        resumed_from = 0
        if state is not None:
            if not resume:
                raise LoopError(f"{self.out} holds a loop already", remedies=(CONTINUE, START_OVER))
            _check_resumable(state, print_, self.config)
            self.records = _read_records(self.out / RECORDS_FILE)
            resumed_from = len(self.records)
            for record in self.records:
                arch = canonicalize(self.space, record.arch)
                self.known[record.key] = record.metrics
                self.round_of[record.key] = record.round
                self.archs[record.key] = arch
                self.recorded.add(record.key)
                self.by_network.setdefault(self.network_key(arch), record.key)
            rounds = list(state.rounds)
            self._k = state.k
            if len(self.records) > self.config.budget:
                raise LoopError(
                    f"the folder holds {len(self.records)} evaluations, more than the budget "
                    f"{self.config.budget}",
                    remedies=(Remedy("budget", "or more", str(len(self.records))),),
                )
        # The labels file: the user's labels, then every evaluation (repaired on resume).
        labels_text = self.labels.to_jsonl() + "".join(
            _label_line(self.archs[r.key], r.metrics) for r in self.records
        )
        write_text_atomic(self.out / LABELS_FILE, labels_text)
        _rewrite(self.out / RECORDS_FILE, "".join(r.model_dump_json() + "\n" for r in self.records))
        stopped: Literal["budget", "exhausted"] = "budget"
        if state is not None and state.stopped == "exhausted":
            stopped = "exhausted"
        self._write_state(print_, rounds, "running")
        while stopped != "exhausted" and self._paid_before(len(rounds)) < self.config.budget:
            round_ = len(rounds)
            trained_on = len(self._held_before(round_))
            rankings = self.rankings(round_)
            held = set(self._held_before(round_))
            count = min(self.config.per_round, self.config.budget - self._paid_before(round_))
            self._round_keys, self._round_set = [], set()
            if self._k == 0:
                self._k = self._auto_k(rankings, round_)
            while True:
                reduced, built, can_grow = self.reduce(rankings, self._k, round_)
                size = index_of(reduced).size()
                inside = sum(
                    1 for k in [*held, *self._round_keys] if _inside(reduced, self.archs[k])
                )
                left = count - len(self._round_keys)
                if size > inside:
                    self._report("search", round_, self._k, f"reduced space {size:,}")
                    self.search(round_, reduced, left)
                if len(self._round_keys) == count or not can_grow:
                    break
                # The kept modules hold nothing new (or the search found no more of it):
                # keep one more module per unit and spend the rest of the round there.
                self._k += 1
            paid = len(self._round_keys)
            if paid == 0:
                stopped = "exhausted"
                break
            top = built.architectures[0]
            improved = self._improved(round_, held)
            rounds.append(
                RoundInfo(
                    round=round_,
                    k=self._k,
                    reduced_size=size,
                    trained_on=trained_on,
                    evaluated=paid,
                    improved=improved,
                    built={"arch": top.arch.model_dump(mode="json"), "score": top.score},
                    best=self._best(),
                )
            )
            if not improved and self.config.widen_on_stall and can_grow:
                self._k += 1  # the kept modules gave nothing better: look wider
            self._write_state(print_, rounds, "running")
            self._report("round", round_, self._k)
        self._write_state(print_, rounds, stopped)
        result = self._result(rounds, stopped, resumed_from)
        write_text_atomic(
            self.out / FRONT_FILE, "".join(json.dumps(row) + "\n" for row in result.front)
        )
        write_report(result, self.out)
        return result

    def _auto_k(self, rankings: list[Any], round_: int) -> int:
        """The smallest k whose reduced space holds AUTO_K_FACTOR x the budget."""
        k = 1
        while True:
            reduced, _, can_grow = self.reduce(rankings, k, round_)
            if index_of(reduced).size() >= AUTO_K_FACTOR * self.config.budget or not can_grow:
                return k
            k += 1

    def _improved(self, round_: int, held: set[str]) -> bool:
        """Whether a network of this round is better than every earlier one (for several
        objectives: not weakly dominated by any network held before the round)."""
        before = [k for k in self.known if k in held]
        new = [r.key for r in self.records if r.round == round_]
        if not new:
            return False
        if not before:
            return True
        old = objective_matrix(self.objectives, [self.known[k] for k in before])
        fresh = objective_matrix(self.objectives, [self.known[k] for k in new])
        return any(not np.any(np.all(old <= point, axis=1)) for point in fresh)

    def _write_state(self, print_: str, rounds: list[RoundInfo], stopped: str) -> None:
        state = _State(
            fingerprint=print_,
            config=self.config,
            evaluator=self.runner.identity,
            k=self._k,
            rounds=rounds,
            stopped=stopped,  # type: ignore[arg-type]
        )
        write_text_atomic(self.out / STATE_FILE, state.model_dump_json(indent=2) + "\n")

    def _result(
        self, rounds: list[RoundInfo], stopped: Literal["budget", "exhausted"], resumed_from: int
    ) -> LoopResult:
        keys = [k for k in self.known if k not in self.aliases]
        matrix = objective_matrix(self.objectives, [self.known[k] for k in keys])
        front = non_dominated(matrix)
        labels = [i for i, k in enumerate(keys) if self.round_of[k] < 0]
        beyond = 0
        for i in front:
            if self.round_of[keys[i]] >= 0 and not _dominated_by(matrix[i], matrix[labels]):
                beyond += 1
        curve = []
        label_keys = keys[: self.label_count]
        for n in range(len(self.records) + 1):
            curve.append(self._best(label_keys + [r.key for r in self.records[:n]]))
        return LoopResult(
            config=self.config,
            rounds=rounds,
            records=self.records,
            labels=self.label_count,
            front=[
                {
                    "arch": self.archs[keys[i]].model_dump(mode="json"),
                    "metrics": self.known[keys[i]],
                    "source": "label" if self.round_of[keys[i]] < 0 else "evaluation",
                }
                for i in front
            ],
            beyond_labels=beyond,
            best_so_far=curve,
            stopped=stopped,
            resumed_from=resumed_from,
        )


def run_loop(
    space: Space,
    labels: LabeledDataset,
    runner: Evaluates,
    config: LoopConfig,
    out_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    space_file: str | Path | None = None,
    jobs: int = 1,
) -> LoopResult:
    """Run (or, with `resume`, continue) an AutoBuild-NAS loop in `out_dir`.

    `runner` evaluates architectures (an `EvaluationRunner`: any evaluator kind, cached);
    `labels` are the architectures already measured; `space_file`, when given, lets each
    round write its reduced space as an `.abs` file; `jobs` trains ensemble members in
    parallel.
    """
    config.search_objectives()  # fail before any work if the objectives are missing
    missing = [
        m for t in config.targets for m in _target_metrics(t) if m not in labels.metric_names
    ]
    if missing:
        raise LoopError(
            f"target metric '{missing[0]}' is not in the labels "
            f"(they have: {', '.join(labels.metric_names) or 'none'})"
        )
    loop = _Loop(
        space,
        labels,
        runner,
        config,
        Path(out_dir),
        progress,
        Path(space_file) if space_file is not None else None,
        jobs,
    )
    return loop.run(resume)


def _target_metrics(text: str) -> list[str]:
    from autobuild_dsl.data import TargetError, parse_target

    try:
        return list(parse_target(text).metrics)
    except TargetError as error:
        raise LoopError(f"target `{text}`: {error}") from None


def _inside(space: Space, arch: Architecture) -> bool:
    try:
        canonicalize(space, arch)
    except ArchitectureError:
        return False
    return True


def _dominated_by(point: np.ndarray, others: np.ndarray) -> bool:
    """Whether a row of `others` dominates `point` (minimisation)."""
    if len(others) == 0:
        return False
    return bool(np.any(np.all(others <= point, axis=1) & np.any(others < point, axis=1)))


# --------------------------------------------------------------------------- files


def _label_line(arch: Architecture, metrics: dict[str, float]) -> str:
    return json.dumps({"arch": arch.model_dump(mode="json"), "metrics": metrics}) + "\n"


def _append(path: Path, text: str) -> None:
    """Append and fsync: a finished evaluation survives a kill -9 right after it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _rewrite(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    write_text_atomic(path, text)


def _read_state(out: Path) -> _State | None:
    path = out / STATE_FILE
    if not path.exists():
        return None
    try:
        return _State.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LoopError(f"{path}: not a loop checkpoint: {error}") from None


def _check_resumable(state: _State, print_: str, config: LoopConfig) -> None:
    if state.version != STATE_VERSION:
        raise LoopError(f"the checkpoint has version {state.version}, not {STATE_VERSION}")
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


def _read_records(path: Path) -> list[LoopRecord]:
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


def load_loop(out_dir: str | Path) -> _State:
    """The checkpoint of a loop folder (its config and finished rounds)."""
    state = _read_state(Path(out_dir))
    if state is None:
        raise LoopError(f"{out_dir}: no {STATE_FILE}; not a loop folder")
    return state


# --------------------------------------------------------------------------- report


def write_report(result: LoopResult, out: Path) -> None:
    """`report.md` and `progress.png` (best so far vs evaluations; the front for two
    objectives or more)."""
    objectives = result.config.search_objectives()
    plot = _plot(result, out / PLOT_FILE)
    lines = [
        "# AutoBuild-NAS loop",
        "",
        f"Targets: {', '.join(f'`{t}`' for t in result.config.targets)}; objectives: "
        f"{', '.join(o.label for o in objectives)}.",
        f"{result.labels} labels given; {len(result.records)} of {result.config.budget} "
        f"evaluations paid; stopped: {result.stopped}.",
        "",
        "| round | k | reduced space | trained on | evaluated | "
        + " | ".join(f"best {o.label}" for o in objectives)
        + " |",
        "|---" * (5 + len(objectives)) + "|",
    ]
    for info in result.rounds:
        best = " | ".join(f"{info.best.get(o.label, float('nan')):.6g}" for o in objectives)
        lines.append(
            f"| {info.round} | {info.k} | {info.reduced_size:,} | {info.trained_on} | "
            f"{info.evaluated} | {best} |"
        )
    lines += [
        "",
        f"Front: {len(result.front)} network(s), {result.beyond_labels} found by "
        "the loop beyond the labels' front.",
        "",
    ]
    for row in result.front[:20]:
        values = ", ".join(f"{o.label} = {o.value(row['metrics']):.6g}" for o in objectives)
        lines.append(f"- {row['source']}: {values}")
    if plot:
        lines += ["", f"![progress]({PLOT_FILE})"]
    write_text_atomic(out / REPORT_FILE, "\n".join(lines) + "\n")


def _plot(result: LoopResult, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    objectives = result.config.search_objectives()
    if len(objectives) == 1:
        figure, axis = plt.subplots(figsize=(6, 3.6))
        label = objectives[0].label
        axis.plot([row[label] for row in result.best_so_far], drawstyle="steps-post")
        axis.set_xlabel("real evaluations")
        axis.set_ylabel(f"best {label}")
    else:
        figure, axis = plt.subplots(figsize=(6, 4))
        x, y = objectives[0], objectives[1]
        evaluated = [r.metrics for r in result.records]
        axis.scatter([x.value(m) for m in evaluated], [y.value(m) for m in evaluated], s=8,
                     alpha=0.5, label="evaluated")  # fmt: skip
        front = sorted(result.front, key=lambda row: x.value(row["metrics"]))
        axis.plot([x.value(r["metrics"]) for r in front], [y.value(r["metrics"]) for r in front],
                  marker="o", color="C3", label="front")  # fmt: skip
        axis.set_xlabel(x.label)
        axis.set_ylabel(y.label)
        axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    os.replace(tmp, path)
    return True


__all__ = [
    "LoopConfig",
    "LoopError",
    "LoopProgress",
    "LoopRecord",
    "LoopResult",
    "RoundInfo",
    "load_loop",
    "run_loop",
    "write_report",
]
