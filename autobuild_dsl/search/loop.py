"""AutoBuild-NAS as a loop: reduce the space with scorers, evaluate, learn, repeat.

Each round trains one scorer ensemble per target on the labels held so far (the user's
plus every evaluation), keeps the union of each target's top-k modules per unit (the
paper's AutoBuild-NAS space, section 5.1), spends `per_round` real evaluations inside it
(`inner`: guided by the scores, see loop_guided; or regularized evolution / TPE /
Pareto mutation warm-started with the labels inside it) and appends each evaluation
(fsync'd) the moment it finishes. k grows when the reduced space holds nothing new or a
round found nothing better (`widen_on_stall`); the loop stops at the budget.

Resuming: `loop.json` (replaced atomically after each round) holds the finished rounds;
a rerun retrains the interrupted round on the same labels (finished members reused),
proposes the same architectures and answers those already paid from `evaluations.jsonl`.
Every random choice is drawn from a generator seeded by (seed, round, step).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from autobuild_dsl import io as abc_io
from autobuild_dsl.data.dataset import LabeledDataset, from_records, write_text_atomic
from autobuild_dsl.errors import CONTINUE, START_OVER, Remedy
from autobuild_dsl.search.baselines import regularized_evolution, tpe_search
from autobuild_dsl.search.evaluators import Evaluator
from autobuild_dsl.search.evolution import FRONT_FILE, Evaluates
from autobuild_dsl.search.loop_free import FreeMetrics, free_metrics_of, front_values
from autobuild_dsl.search.loop_guided import (
    candidates,
    front_picks,
    guided_picks,
    pareto_mutation,
    score_pool,
)
from autobuild_dsl.search.loop_report import write_report
from autobuild_dsl.search.loop_state import (
    LABELS_FILE,
    RECORDS_FILE,
    ROUNDS_DIR,
    STATE_FILE,
    LoopConfig,
    LoopError,
    LoopProgress,
    LoopRecord,
    LoopResult,
    LoopState,
    ProgressCallback,
    RoundInfo,
    check_resumable,
    fingerprint,
    label_line,
    load_loop,
    read_records,
    read_state,
    rewrite,
    target_metrics,
)
from autobuild_dsl.search.pareto import (
    dominated_by,
    extends_front,
    non_dominated,
    objective_matrix,
)
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import (
    ArchitectureError,
    canonicalize,
    index_of,
)
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space

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
        free: FreeMetrics | None = None,
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
        self.free = free
        self.records: list[LoopRecord] = []
        # key -> metrics of every architecture held (labels and evaluations)
        self.known: dict[str, dict[str, float]] = {}
        self.round_of: dict[str, int] = {}  # -1 for the user's labels
        self.archs: dict[str, Architecture] = {}
        # Equivalent architectures (one compiled network) are paid for once.
        self.network_key = network_keyer(space) if free is None else free.network_key
        self.by_network: dict[str, str] = {}
        self.recorded: set[str] = set()
        self.aliases: set[str] = set()  # equivalent to a held network, never paid for
        for i, arch in enumerate(labels.architectures):
            key = arch.key()
            row = labels.row_metrics(i)
            self.known[key] = free.fill(arch, row) if free is not None else row
            self.round_of[key] = -1
            self.archs[key] = arch
            self.by_network.setdefault(self.network_key(arch), key)
        self.label_count = len(self.known)
        self._k = config.top_k or 0  # 0: chosen from the budget in the first round
        self._round_keys: list[str] = []
        self._round_set: set[str] = set()
        self._runs: list[Any] = []  # this round's trained runs, one per target

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
        abc_io.append_synced(self.out / RECORDS_FILE, record.model_dump_json() + "\n")
        abc_io.append_synced(self.out / LABELS_FILE, label_line(arch, metrics))
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
                    row = dict(values) if self.free is None else self.free.fill(arch, dict(values))
                    self._record(round_, arch, row)
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
        names = list(self.labels.metric_names)
        if self.free is not None:
            names += [n for n in self.free.names() if n not in names]
        dataset, _ = from_records(self.space, rows, names)
        return dataset

    def rankings(self, round_: int) -> list[Any]:
        from autobuild_dsl.design.rank import rank_modules
        from autobuild_dsl.scorer import EnsembleConfig, MemberDone, TrainConfig, train_run

        data = self.dataset(round_)
        rankings, runs = [], []
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
            runs.append(run)
        self._runs = runs
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
        if self.config.inner == "guided":
            # Held as in an uninterrupted run: not this round's records not yet re-asked.
            prior = [*self._held_before(round_), *self._round_keys]
            held_networks = {self.network_key(self.archs[k]) for k in prior}
            pool = candidates(reduced, held_networks, self.network_key, rng_seed)
            several = len(self.objectives) > 1
            # Several objectives: part of the round refines the front by mutation.
            share = count - int(count * self.config.refine) if several else count
            picks = self._guided(pool, prior, share, several)
            # `jobs` at a time (run in parallel by the runner, which caches each as it
            # finishes), so a kill loses at most what was in flight.
            for start in range(0, len(picks), max(1, self.jobs)):
                self.pay(round_, picks[start : start + max(1, self.jobs)])
            left = count - (len(self._round_keys) - before)
            if several and left > 0:
                now = [*held, *(k for k in self._round_keys if k not in set(held))]
                self._pareto(round_, reduced, left, now, rng_seed, mode="layer")
        elif len(self.objectives) == 1:
            objective = self.objectives[0]
            sign = 1.0 if objective.direction == "max" else -1.0
            warm = [(self.archs[k], sign * objective.value(self.known[k])) for k in held]

            def value(arch: Architecture) -> float:
                return sign * objective.value(self.pay(round_, [arch])[0])

            seed = int(hashlib.sha256(rng_seed.encode()).hexdigest()[:8], 16)
            # Budgeted by network: a proposal equivalent to a held network is answered
            # for free and does not use up the round (it used to, and widened k early).
            if self.config.inner == "tpe":
                tpe_search(reduced, value, count, seed=seed, warm=warm, key=self.network_key)
            else:
                regularized_evolution(
                    reduced, value, count, seed=seed, mutation="stage", warm=warm,
                    key=self.network_key,
                )  # fmt: skip
        else:
            self._pareto(round_, reduced, count, held, rng_seed)
        return len(self._round_keys) - before

    def _guided(
        self, pool: list[Architecture], prior: list[str], count: int, several: bool
    ) -> list[Architecture]:
        scores = score_pool(self._runs, pool)
        if not (several and pool):
            return guided_picks(pool, scores, count)
        held = [k for k in prior if k not in self.aliases]
        values = front_values(
            self.free, self.objectives, self.config.targets, self._runs, pool, scores,
            [self.archs[k] for k in held], [self.known[k] for k in held],
        )  # fmt: skip
        if values is not None:  # two objectives in their units: the most hypervolume
            return front_picks(pool, values[0], values[1], count)
        if self.free is None:
            return guided_picks(pool, scores, count)
        # Otherwise the objectives the free metrics answer join the scores as exact columns.
        exact = self.free.exact(self.objectives)
        return guided_picks(pool, scores + self.free.columns(exact, pool), count)

    def _pareto(
        self, round_: int, reduced: Space, count: int, held: list[str], rng_seed: str,
        mode: str = "stage",
    ) -> None:  # fmt: skip
        """Pareto mutation (Stage-Full, or Layer-Full with `mode="layer"`) in the reduced
        space, from the front of what is held inside it."""
        pareto_mutation(
            reduced, self.objectives, held, self.known, self.archs,
            set(self._held_before(round_)) | self._round_set,
            lambda batch: self.pay(round_, batch),
            count, self.config.per_generation, rng_seed, mode,
        )  # fmt: skip

    # ---- driver

    def run(self, resume: bool) -> LoopResult:
        self.out.mkdir(parents=True, exist_ok=True)
        print_ = fingerprint(self.space, self.labels, self.config, self._identity())
        rounds, stopped, resumed_from = self._load(resume, print_)
        # The labels file: the user's labels, then every evaluation (repaired on resume).
        labels_text = self.labels.to_jsonl() + "".join(
            label_line(self.archs[r.key], r.metrics) for r in self.records
        )
        write_text_atomic(self.out / LABELS_FILE, labels_text)
        rewrite(self.out / RECORDS_FILE, "".join(r.model_dump_json() + "\n" for r in self.records))
        self._write_state(print_, rounds, "running")
        while stopped != "exhausted" and self._paid_before(len(rounds)) < self.config.budget:
            info = self._round(len(rounds))
            if info is None:
                stopped = "exhausted"
                break
            rounds.append(info)
            self._write_state(print_, rounds, "running")
            self._report("round", info.round, self._k)
        self._write_state(print_, rounds, stopped)
        result = self._result(rounds, stopped, resumed_from)
        write_text_atomic(
            self.out / FRONT_FILE, "".join(json.dumps(row) + "\n" for row in result.front)
        )
        write_report(result, self.out)
        return result

    def _identity(self) -> str:
        free = "" if self.free is None else f" + free {self.free.identity}"
        return self.runner.identity + free

    def _load(
        self, resume: bool, print_: str
    ) -> tuple[list[RoundInfo], Literal["budget", "exhausted"], int]:
        """The folder's finished rounds and evaluations (none for a new loop)."""
        state = read_state(self.out)
        self._k = self.config.top_k or 0
        if state is None:
            return [], "budget", 0
        if not resume:
            raise LoopError(f"{self.out} holds a loop already", remedies=(CONTINUE, START_OVER))
        check_resumable(state, print_, self.config)
        self.records = read_records(self.out / RECORDS_FILE)
        if len(self.records) > self.config.budget:
            raise LoopError(
                f"the folder holds {len(self.records)} evaluations, more than the budget "
                f"{self.config.budget}",
                remedies=(Remedy("budget", "or more", str(len(self.records))),),
            )
        for record in self.records:
            arch = canonicalize(self.space, record.arch)
            self.known[record.key] = record.metrics
            self.round_of[record.key] = record.round
            self.archs[record.key] = arch
            self.recorded.add(record.key)
            self.by_network.setdefault(self.network_key(arch), record.key)
        self._k = state.k
        stopped: Literal["budget", "exhausted"] = (
            "exhausted" if state.stopped == "exhausted" else "budget"
        )
        return list(state.rounds), stopped, len(self.records)

    def _round(self, round_: int) -> RoundInfo | None:
        """Train, rank, reduce and search: one round (None: nothing left to evaluate)."""
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
            inside = sum(1 for k in [*held, *self._round_keys] if _inside(reduced, self.archs[k]))
            if size > inside:
                self._report("search", round_, self._k, f"reduced space {size:,}")
                self.search(round_, reduced, count - len(self._round_keys))
            if len(self._round_keys) == count or not can_grow:
                break
            # The kept modules hold nothing new (or the search found no more of it):
            # keep one more module per unit and spend the rest of the round there.
            self._k += 1
        if not self._round_keys:
            return None
        top = built.architectures[0]
        improved = self._improved(round_, held)
        info = RoundInfo(
            round=round_,
            k=self._k,
            reduced_size=size,
            trained_on=trained_on,
            evaluated=len(self._round_keys),
            improved=improved,
            built={"arch": top.arch.model_dump(mode="json"), "score": top.score},
            best=self._best(),
        )
        if not improved and self.config.widen_on_stall and can_grow:
            self._k += 1  # the kept modules gave nothing better: look wider
        return info

    def _auto_k(self, rankings: list[Any], round_: int) -> int:
        """The smallest k whose reduced space holds `k_factor()` x the budget."""
        k = 1
        while True:
            reduced, _, can_grow = self.reduce(rankings, k, round_)
            if (
                index_of(reduced).size() >= self.config.k_factor() * self.config.budget
                or not can_grow
            ):
                return k
            k += 1

    def _improved(self, round_: int, held: set[str]) -> bool:
        """Whether a network of this round is better than every earlier one (for several
        objectives: not weakly dominated by any network held before the round)."""
        before = [self.known[k] for k in self.known if k in held]
        new = [self.known[r.key] for r in self.records if r.round == round_]
        return extends_front(self.objectives, before, new)

    def _write_state(self, print_: str, rounds: list[RoundInfo], stopped: str) -> None:
        state = LoopState(
            fingerprint=print_,
            config=self.config,
            evaluator=self._identity(),
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
            if self.round_of[keys[i]] >= 0 and not dominated_by(matrix[i], matrix[labels]):
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
    free: Evaluator | None = None,
) -> LoopResult:
    """Run (or, with `resume`, continue) an AutoBuild-NAS loop in `out_dir`.

    `runner` evaluates architectures (an `EvaluationRunner`: any evaluator kind, cached);
    `labels` are the architectures already measured; `space_file`, when given, lets each
    round write its reduced space as an `.abs` file; `jobs` trains ensemble members in
    parallel; `free` is an evaluator cheap enough for every candidate (see loop_free).
    """
    config.search_objectives()  # fail before any work if the objectives are missing
    free_metrics = None if free is None else free_metrics_of(free, space, labels)
    have = list(labels.metric_names)
    if free_metrics is not None:
        have += free_metrics.names()
    missing = [m for t in config.targets for m in target_metrics(t) if m not in have]
    if missing:
        raise LoopError(
            f"target metric '{missing[0]}' is not in the labels "
            f"(they have: {', '.join(have) or 'none'})"
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
        free_metrics,
    )
    return loop.run(resume)


def _inside(space: Space, arch: Architecture) -> bool:
    try:
        canonicalize(space, arch)
    except ArchitectureError:
        return False
    return True


__all__ = [
    "ROUNDS_DIR",
    "STATE_FILE",
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
