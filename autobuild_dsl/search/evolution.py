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
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl import io as abc_io
from autobuild_dsl.errors import START_OVER, AbcError, Remedy
from autobuild_dsl.search.pareto import Objective, non_dominated
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


def fingerprint(space: Space, config: SearchConfig, evaluator: str) -> str:
    """Everything a search's result depends on, except the budget."""
    payload = json.dumps(
        {
            "space": space.digest(),
            "config": config.model_dump(mode="json", exclude={"budget"}),
            "evaluator": evaluator,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def run_search(
    space: Space,
    runner: Evaluates,
    config: SearchConfig,
    out_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    *,
    force: bool = False,
) -> SearchResult:
    """Run (or resume, if `out_dir` holds a checkpoint of the same search) to the budget.
    One search per folder at a time (a second fails with `OutputBusy`); `force` discards
    what the folder holds, and without it records that no checkpoint owns are refused."""
    if out_dir is None:
        return _run_search(space, runner, config, None, progress)
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
        return _run_search(space, runner, config, out_dir, progress)


def _run_search(
    space: Space,
    runner: Evaluates,
    config: SearchConfig,
    out_dir: Path | None,
    progress: ProgressCallback | None,
) -> SearchResult:
    print_ = fingerprint(space, config, runner.identity)
    records: list[SearchRecord] = []
    generation = 0
    resumed_from = 0
    if out_dir is not None:
        state = _read_state(out_dir)
        if state is not None:
            _check_resumable(state, print_, config)
            records = _read_records(out_dir / RECORDS_FILE, state.records)
            resumed_from = len(records)
            generation = state.generations
            _rewrite_records(out_dir / RECORDS_FILE, records)
            if state.stopped == "exhausted":
                return _finish(
                    out_dir, space, config, runner, records, generation, "exhausted", resumed_from
                )
            if state.complete_records < len(records) < config.budget:
                # The last generation was cut by a smaller budget: redo it in full (its
                # evaluations come back from the cache).
                records = records[: state.complete_records]
                _rewrite_records(out_dir / RECORDS_FILE, records)
                _write_state(
                    out_dir,
                    space,
                    config,
                    runner,
                    print_,
                    records,
                    len(records),
                    generation,
                    "interrupted",
                )
        else:
            _rewrite_records(out_dir / RECORDS_FILE, records)
    archs = [_architecture(space, r) for r in records]
    # Networks already evaluated: an equivalent architecture is never proposed again.
    network = network_keyer(space)
    seen = {network(arch) for arch in archs}
    stopped: Literal["budget", "exhausted", "interrupted"] = "budget"
    while len(records) < config.budget:
        rng = random.Random(f"autobuild-dsl/search:{config.seed}:{generation}")
        if generation == 0:
            batch = _initial(space, rng, config.init, seen, network)
        else:
            front = non_dominated(_matrix(config.objectives, records))
            batch = _mutants(space, rng, config, archs, front, seen, network)
        if not batch:
            stopped = "exhausted"
            break
        remaining = config.budget - len(records)
        complete = len(batch) <= remaining
        batch = batch[:remaining]

        def on_evaluated(done: int, total: int, generation: int = generation) -> None:
            if progress is not None:
                progress(_progress("evaluating", generation, len(records) + done, config, records))

        metrics = runner.evaluate([arch for arch, _ in batch], on_evaluated)
        new = []
        for (arch, parent), values in zip(batch, metrics, strict=True):
            new.append(
                SearchRecord(
                    index=len(records) + len(new),
                    generation=generation,
                    parent=parent,
                    key=arch.key(),
                    arch=arch.model_dump(mode="json"),
                    metrics=values,
                    objectives={o.label: o.value(values) for o in config.objectives},
                )
            )
        records.extend(new)
        archs.extend(arch for arch, _ in batch)
        seen.update(network(arch) for arch, _ in batch)
        finished = generation
        generation += 1 if complete else 0
        if out_dir is not None:
            _append_records(out_dir / RECORDS_FILE, new)
            complete_records = len(records) if complete else len(records) - len(new)
            _write_state(
                out_dir,
                space,
                config,
                runner,
                print_,
                records,
                complete_records,
                generation,
                "interrupted",
            )
            _write_front(out_dir / FRONT_FILE, config, records)
        if progress is not None:
            progress(_progress("generation", finished, len(records), config, records))
        if not complete:
            break
    return _finish(out_dir, space, config, runner, records, generation, stopped, resumed_from)


def _finish(
    out_dir: Path | None,
    space: Space,
    config: SearchConfig,
    runner: Evaluates,
    records: list[SearchRecord],
    generations: int,
    stopped: Literal["budget", "exhausted", "interrupted"],
    resumed_from: int,
) -> SearchResult:
    front = non_dominated(_matrix(config.objectives, records))
    if out_dir is not None:
        state = _read_state(out_dir)
        complete_records = state.complete_records if state is not None else len(records)
        _write_state(
            out_dir,
            space,
            config,
            runner,
            fingerprint(space, config, runner.identity),
            records,
            min(complete_records, len(records)),
            generations,
            stopped,
        )
        _write_front(out_dir / FRONT_FILE, config, records)
    return SearchResult(
        config=config,
        records=records,
        front=front,
        generations=generations,
        stopped=stopped,
        resumed_from=resumed_from,
    )


# --------------------------------------------------------------------------- generations


def _initial(
    space: Space,
    rng: random.Random,
    count: int,
    seen: set[str],
    network: Callable[[Architecture], str],
) -> list[tuple[Architecture, int | None]]:
    index = index_of(space)
    batch: list[tuple[Architecture, int | None]] = []
    keys: set[str] = set()
    for _ in range(count * TRIES_PER_ARCH):
        if len(batch) == count:
            break
        arch = index.sample(rng)
        key = network(arch)
        if key in seen or key in keys:
            continue
        keys.add(key)
        batch.append((arch, None))
    return batch


def _mutants(
    space: Space,
    rng: random.Random,
    config: SearchConfig,
    archs: list[Architecture],
    front: list[int],
    seen: set[str],
    network: Callable[[Architecture], str],
) -> list[tuple[Architecture, int | None]]:
    batch: list[tuple[Architecture, int | None]] = []
    keys: set[str] = set()
    for _ in range(config.per_generation * TRIES_PER_ARCH):
        if len(batch) == config.per_generation:
            break
        parent = front[rng.randrange(len(front))]
        child = mutate(space, archs[parent], rng, mode=config.mode)
        key = network(child)
        if key in seen or key in keys:
            continue
        keys.add(key)
        batch.append((child, parent))
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


def _read_state(out_dir: Path) -> _State | None:
    path = out_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        return _State.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SearchStateError(f"{path}: not a search checkpoint: {error}") from None


def _check_resumable(state: _State, print_: str, config: SearchConfig) -> None:
    if state.version != STATE_VERSION:
        raise SearchStateError(f"the checkpoint has version {state.version}, not {STATE_VERSION}")
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
    payload = "".join(_record_line(r) for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_state(
    out_dir: Path,
    space: Space,
    config: SearchConfig,
    runner: Evaluates,
    print_: str,
    records: Sequence[SearchRecord],
    complete_records: int,
    generations: int,
    stopped: Literal["budget", "exhausted", "interrupted"],
) -> None:
    state = _State(
        space=space.name,
        fingerprint=print_,
        config=config,
        evaluator=runner.identity,
        records=len(records),
        complete_records=complete_records,
        generations=generations,
        stopped=stopped,
    )
    _write_atomic(out_dir / STATE_FILE, state.model_dump_json(indent=2) + "\n")


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
