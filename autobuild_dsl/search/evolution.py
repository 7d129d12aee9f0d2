"""Evolutionary multi-objective search (the paper's supplementary 7.5).

Generation 0 evaluates `init` distinct random architectures. Every later generation takes
the Pareto front of everything evaluated so far and makes `per_generation` distinct new
mutants of its members (Stage-Full: one unit's whole module or one global choice; Layer-
Full: one layer changed, added or removed); they are evaluated and merged, so the front is
always the front of all evaluations. In a reduced space (`restrict`), Stage-Full mutation
only draws the kept modules: that is AutoBuild-NAS. The budget counts distinct evaluated
networks: an architecture equivalent to one already evaluated (the same compiled network,
`space.equivalence`) is never proposed, so the search never pays twice for one network.

Determinism and resuming: generation g draws from its own generator seeded by
(seed, g), so a generation depends only on what was evaluated before it. After each
generation the new records are appended to `evaluated.jsonl` (fsync'd) and `search.json`
is replaced atomically; a rerun in the same folder continues from the last complete
generation and gives the same result as a run that was never interrupted. A budget that
cut the last generation short is a *partial* generation; a rerun with a larger budget
redoes it (its evaluations come back from the cache) and goes on.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl import io as abc_io
from autobuild_dsl.errors import START_OVER, AbcError, Remedy
from autobuild_dsl.search.pareto import Objective, non_dominated, objective_matrix
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize, index_of, mutate
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space

STATE_FILE = "search.json"
RECORDS_FILE = "evaluated.jsonl"
FRONT_FILE = "front.jsonl"
STATE_VERSION = 1
# Draws per wanted architecture before a generation settles for fewer (small spaces).
TRIES_PER_ARCH = 50


class SearchStateError(AbcError, ValueError):
    """The output folder holds a different or damaged search."""

    code = "search-state"


class SearchConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    objectives: list[Objective] = Field(min_length=1)
    budget: int = Field(ge=1, description="distinct networks to evaluate")
    init: int = Field(default=50, ge=1, description="random architectures in generation 0")
    per_generation: int = Field(default=20, ge=1, description="mutants per generation")
    mode: Literal["stage", "layer"] = "stage"
    seed: int = 0


class SearchRecord(BaseModel):
    """One evaluated architecture."""

    # Keep NaN/inf metrics as such through JSON (the default would write null).
    model_config = ConfigDict(ser_json_inf_nan="constants")

    index: int
    generation: int
    parent: int | None = Field(description="index of the front member it mutates")
    key: str
    arch: dict
    metrics: dict[str, float]
    objectives: dict[str, float] = Field(description="objective label -> value")


class SearchProgress(BaseModel):
    """Reported while evaluating (`phase="evaluating"`) and after each generation."""

    phase: Literal["evaluating", "generation"]
    generation: int
    evaluated: int
    budget: int
    front_size: int
    best: dict[str, float]


class SearchResult(BaseModel):
    config: SearchConfig
    records: list[SearchRecord]
    front: list[int] = Field(description="indices of the Pareto-optimal records")
    generations: int
    stopped: Literal["budget", "exhausted", "interrupted"]
    resumed_from: int = Field(default=0, description="records found in the folder at start")

    def front_records(self) -> list[SearchRecord]:
        return [self.records[i] for i in self.front]


class _State(BaseModel):
    version: int = STATE_VERSION
    space: str
    fingerprint: str
    config: SearchConfig
    evaluator: str
    records: int
    complete_records: int = Field(description="records of completed generations")
    generations: int = Field(description="completed generations")
    stopped: Literal["budget", "exhausted", "interrupted"] = "interrupted"


class Evaluates(Protocol):
    """What the search needs of an evaluation runner (see `runner.EvaluationRunner`)."""

    @property
    def identity(self) -> str: ...

    def evaluate(
        self,
        archs: Sequence[Architecture],
        on_evaluated: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, float]]: ...


ProgressCallback = Callable[[SearchProgress], None]
# Architectures already measured, with their metrics: free for a warm-started search.
Warm = Sequence[tuple[Architecture, Mapping[str, float]]]
_M = TypeVar("_M", bound=BaseModel)


def fingerprint(space: Space, config: SearchConfig, evaluator: str, warm: Warm = ()) -> str:
    """Everything a search's result depends on, except the budget."""
    payload: dict[str, object] = {
        "space": space.digest(),
        "config": config.model_dump(mode="json", exclude={"budget"}),
        "evaluator": evaluator,
    }
    if warm:  # absent without labels, so older checkpoints keep their fingerprint
        rows = sorted(json.dumps([arch.key(), metrics], sort_keys=True) for arch, metrics in warm)
        payload["warm"] = hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def run_search(
    space: Space,
    runner: Evaluates,
    config: SearchConfig,
    out_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    *,
    force: bool = False,
    warm: Warm = (),
) -> SearchResult:
    """Run (or resume, if `out_dir` holds a checkpoint of the same search) to the budget.
    One search per folder at a time (a second fails with `OutputBusy`); `force` discards
    what the folder holds, and without it records that no checkpoint owns are refused.

    `warm`: architectures already measured, with their metrics (a user's labels). They are
    free: the search starts from their front (no random generation 0), never proposes their
    networks again, and only its own evaluations count against the budget and are recorded.
    """
    search = _Search(space, runner, config, out_dir, progress, warm)
    if out_dir is None:
        return search.run()
    out_dir.mkdir(parents=True, exist_ok=True)
    with abc_io.output_lock(out_dir / STATE_FILE, "search folder"):
        if force:
            for name in (STATE_FILE, RECORDS_FILE, FRONT_FILE):
                (out_dir / name).unlink(missing_ok=True)
        elif not (out_dir / STATE_FILE).exists():
            stray = [
                name
                for name in (RECORDS_FILE, FRONT_FILE)
                if (out_dir / name).exists() and (out_dir / name).stat().st_size > 0
            ]
            if stray:
                raise SearchStateError(
                    f"{out_dir} holds {' and '.join(stray)} but no {STATE_FILE}: not a "
                    "checkpoint this search can resume; use another folder",
                    remedies=(Remedy("force", "to discard them"),),
                )
        return search.run()


@dataclass
class _Search:
    """One search: its records, the warm-start labels, and its checkpoint."""

    space: Space
    runner: Evaluates
    config: SearchConfig
    out_dir: Path | None
    progress: ProgressCallback | None
    warm: Warm
    records: list[SearchRecord] = field(default_factory=list)
    generation: int = 0
    resumed_from: int = 0

    def __post_init__(self) -> None:
        self.warm_archs = [canonicalize(self.space, arch) for arch, _ in self.warm]
        self.warm_metrics = [dict(metrics) for _, metrics in self.warm]
        self.print_ = fingerprint(self.space, self.config, self.runner.identity, self.warm)
        self.network = network_keyer(self.space)

    def run(self) -> SearchResult:
        if self.out_dir is not None and self._resume():
            return self._finish("exhausted")
        # Parents are drawn from the labels and the records (labels first).
        archs = [*self.warm_archs, *(_architecture(self.space, r) for r in self.records)]
        # Networks already known: an equivalent architecture is never proposed again.
        seen = {self.network(arch) for arch in archs}
        config = self.config
        while len(self.records) < config.budget:
            rng = random.Random(f"autobuild-dsl/search:{config.seed}:{self.generation}")
            batch = self._batch(rng, archs, seen)
            if not batch:
                return self._finish("exhausted")
            complete = len(batch) <= config.budget - len(self.records)
            batch = batch[: config.budget - len(self.records)]
            self._evaluate(batch)
            archs.extend(arch for arch, _ in batch)
            seen.update(self.network(arch) for arch, _ in batch)
            finished = self.generation
            self.generation += 1 if complete else 0
            if self.out_dir is not None:
                complete_records = len(self.records) - (0 if complete else len(batch))
                self._save(complete_records, "interrupted")
                _write_front(self.out_dir / FRONT_FILE, config, self.records)
            self._show("generation", finished, len(self.records))
            if not complete:
                break
        return self._finish("budget")

    def _batch(
        self, rng: random.Random, archs: list[Architecture], seen: set[str]
    ) -> list[tuple[Architecture, int | None]]:
        """The next generation: random networks first (without labels), then mutants of
        the front of the labels and the records."""
        config = self.config
        if self.generation == 0 and not self.warm_archs:
            index = index_of(self.space)
            return _distinct(lambda: (index.sample(rng), None), config.init, seen, self.network)
        front = non_dominated(self._matrix())

        def mutant() -> tuple[Architecture, int | None]:
            parent = front[rng.randrange(len(front))]
            return mutate(self.space, archs[parent], rng, mode=config.mode), parent

        return _distinct(mutant, config.per_generation, seen, self.network)

    def _matrix(self) -> np.ndarray:
        metrics = [*self.warm_metrics, *(r.metrics for r in self.records)]
        return objective_matrix(self.config.objectives, metrics)

    def _show(self, phase: Literal["evaluating", "generation"], generation: int, n: int) -> None:
        if self.progress is not None:
            self.progress(_progress(phase, generation, n, self.config, self.records))

    def _evaluate(self, batch: list[tuple[Architecture, int | None]]) -> None:
        """Evaluate a generation, append its records (and to the folder's file)."""
        generation, start, labels = self.generation, len(self.records), len(self.warm_archs)

        def on_evaluated(done: int, total: int) -> None:
            self._show("evaluating", generation, start + done)

        metrics = self.runner.evaluate([arch for arch, _ in batch], on_evaluated)
        new = [
            SearchRecord(
                index=start + i,
                generation=generation,
                # Parents index the records; a label parent is not one (None).
                parent=None if parent is None or parent < labels else parent - labels,
                key=arch.key(),
                arch=arch.model_dump(mode="json"),
                metrics=values,
                objectives={o.label: o.value(values) for o in self.config.objectives},
            )
            for i, ((arch, parent), values) in enumerate(zip(batch, metrics, strict=True))
        ]
        self.records.extend(new)
        if self.out_dir is not None:
            _append_records(self.out_dir / RECORDS_FILE, new)

    def _resume(self) -> bool:
        """Load the folder's checkpoint, if any; whether it says the space is exhausted."""
        assert self.out_dir is not None
        path = self.out_dir / RECORDS_FILE
        state = _read_state(self.out_dir)
        if state is None:
            _rewrite_records(path, [])
            return False
        _check_resumable(state, self.print_, self.config)
        self.records = _read_records(path, state.records)
        self.resumed_from = len(self.records)
        self.generation = state.generations
        _rewrite_records(path, self.records)
        if state.stopped == "exhausted":
            return True
        if state.complete_records < len(self.records) < self.config.budget:
            # The last generation was cut by a smaller budget: redo it in full (its
            # evaluations come back from the cache).
            self.records = self.records[: state.complete_records]
            _rewrite_records(path, self.records)
            self._save(len(self.records), "interrupted")
        return False

    def _save(
        self, complete_records: int, stopped: Literal["budget", "exhausted", "interrupted"]
    ) -> None:
        assert self.out_dir is not None
        state = _State(
            space=self.space.name,
            fingerprint=self.print_,
            config=self.config,
            evaluator=self.runner.identity,
            records=len(self.records),
            complete_records=complete_records,
            generations=self.generation,
            stopped=stopped,
        )
        _write_atomic(self.out_dir / STATE_FILE, state.model_dump_json(indent=2) + "\n")

    def _finish(self, stopped: Literal["budget", "exhausted", "interrupted"]) -> SearchResult:
        records = self.records
        if self.out_dir is not None:
            state = _read_state(self.out_dir)
            complete_records = state.complete_records if state is not None else len(records)
            self._save(min(complete_records, len(records)), stopped)
            _write_front(self.out_dir / FRONT_FILE, self.config, records)
        return SearchResult(
            config=self.config,
            records=records,
            front=non_dominated(_matrix(self.config.objectives, records)),
            generations=self.generation,
            stopped=stopped,
            resumed_from=self.resumed_from,
        )


# --------------------------------------------------------------------------- generations


def _distinct(
    draw: Callable[[], tuple[Architecture, int | None]],
    count: int,
    seen: set[str],
    network: Callable[[Architecture], str],
) -> list[tuple[Architecture, int | None]]:
    """Up to `count` drawn (architecture, parent) pairs of distinct networks none of which
    is in `seen` (fewer when the draws run out: a small or exhausted space)."""
    batch: list[tuple[Architecture, int | None]] = []
    keys: set[str] = set()
    for _ in range(count * TRIES_PER_ARCH):
        if len(batch) == count:
            break
        arch, parent = draw()
        key = network(arch)
        if key in seen or key in keys:
            continue
        keys.add(key)
        batch.append((arch, parent))
    return batch


def _matrix(objectives: Sequence[Objective], records: Sequence[SearchRecord]) -> np.ndarray:
    matrix = np.empty((len(records), len(objectives)), dtype=float)
    for i, record in enumerate(records):
        for j, objective in enumerate(objectives):
            value = record.objectives[objective.label]
            matrix[i, j] = -value if objective.direction == "max" else value
    return matrix


def _progress(
    phase: Literal["evaluating", "generation"],
    generation: int,
    evaluated: int,
    config: SearchConfig,
    records: Sequence[SearchRecord],
) -> SearchProgress:
    best: dict[str, float] = {}
    for objective in config.objectives:
        values = [r.objectives[objective.label] for r in records]
        if values:
            best[objective.label] = max(values) if objective.direction == "max" else min(values)
    front = non_dominated(_matrix(config.objectives, records)) if records else []
    return SearchProgress(
        phase=phase,
        generation=generation,
        evaluated=evaluated,
        budget=config.budget,
        front_size=len(front),
        best=best,
    )


def _architecture(space: Space, record: SearchRecord) -> Architecture:
    try:
        arch = canonicalize(space, record.arch)
    except ArchitectureError as error:
        raise SearchStateError(f"record {record.index} is not in the space: {error}") from None
    if arch.key() != record.key:
        raise SearchStateError(f"record {record.index}: its key does not match its architecture")
    return arch


# --------------------------------------------------------------------------- files


def read_checkpoint(
    path: Path, model: type[_M], error: type[AbcError], what: str, version: int
) -> _M | None:
    """A checkpoint file as `model` (with a `version` field), None when there is none; a
    damaged one or one of another version is an error."""
    if not path.exists():
        return None
    try:
        state = model.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as problem:
        raise error(f"{path}: not a {what} checkpoint: {problem}") from None
    if state.version != version:  # type: ignore[attr-defined]
        raise error(f"the checkpoint has version {state.version}, not {version}")  # type: ignore[attr-defined]
    return state


def _read_state(out_dir: Path) -> _State | None:
    return read_checkpoint(out_dir / STATE_FILE, _State, SearchStateError, "search", STATE_VERSION)


def _check_resumable(state: _State, print_: str, config: SearchConfig) -> None:
    if state.fingerprint != print_:
        old, new = state.config, config
        diffs = [
            f"{name}: {_shown(getattr(old, name))} -> {_shown(getattr(new, name))}"
            for name in ("objectives", "init", "per_generation", "mode", "seed")
            if getattr(old, name) != getattr(new, name)
        ]
        what = "; ".join(diffs) or "the space or the evaluator differ"
        raise SearchStateError(
            f"the folder holds a different search ({what}); use another folder",
            remedies=(START_OVER,),
        )
    if state.records > config.budget:
        raise SearchStateError(
            f"the folder already holds {state.records} evaluations, more than the budget "
            f"{config.budget}; use another folder",
            remedies=(Remedy("budget", "or more", str(state.records)),),
        )


def _shown(value: object) -> str:
    """A setting as a user writes it (objectives as `max acc, min lat`), not a repr."""
    if isinstance(value, list):
        return ", ".join(getattr(o, "label", str(o)) for o in value)
    return str(value)


def _read_records(path: Path, count: int) -> list[SearchRecord]:
    records: list[SearchRecord] = []
    if count == 0:
        return records
    try:
        with path.open("r", encoding="utf-8") as handle:
            for line in handle:
                if len(records) == count:
                    break
                records.append(SearchRecord.model_validate_json(line))
    except (OSError, ValueError) as error:
        raise SearchStateError(f"{path}: damaged at record {len(records)}: {error}") from None
    if len(records) != count:
        raise SearchStateError(f"{path}: holds {len(records)} records, the checkpoint {count}")
    for i, record in enumerate(records):
        if record.index != i:
            raise SearchStateError(f"{path}: record {i} has index {record.index}")
    return records


def _record_line(record: SearchRecord) -> str:
    return record.model_dump_json() + "\n"


def _rewrite_records(path: Path, records: Sequence[SearchRecord]) -> None:
    """Drop anything past the checkpoint (a generation cut off before its checkpoint)."""
    expected = "".join(_record_line(r) for r in records)
    if path.exists() and path.read_text(encoding="utf-8") == expected:
        return
    _write_atomic(path, expected)


def _append_records(path: Path, records: Sequence[SearchRecord]) -> None:
    abc_io.append_synced(path, "".join(_record_line(r) for r in records))


def _write_front(path: Path, config: SearchConfig, records: Sequence[SearchRecord]) -> None:
    front = non_dominated(_matrix(config.objectives, records)) if records else []
    _write_atomic(path, "".join(_record_line(records[i]) for i in front))


def _write_atomic(path: Path, text: str) -> None:
    abc_io.write_atomic(path, text)


def load_result(path: Path) -> SearchResult:
    """Read a search's output folder (or its `evaluated.jsonl`) back into a result."""
    folder = path if path.is_dir() else path.parent
    state = _read_state(folder)
    if state is None:
        raise SearchStateError(f"{folder}: no {STATE_FILE}; not a search output folder")
    records = _read_records(folder / RECORDS_FILE, state.records)
    front = non_dominated(_matrix(state.config.objectives, records))
    return SearchResult(
        config=state.config,
        records=records,
        front=front,
        generations=state.generations,
        stopped=state.stopped,
    )
