"""Measure many architectures of a space into a labeled-dataset file: parallel, resumable.

The output is the dataset format of `autobuild_dsl.data.dataset` (JSON lines of
`{"arch", "metrics", "count"}`), so `abc train` reads it directly. The row is written here
by hand rather than through `data` because dependencies point from `data` to `compile`,
not back; tests check that `load_dataset` reads what this module writes.

Latency rows carry their settings as metrics of their own (`latency_threads`,
`latency_warmup`, `latency_repeats`): the dataset format has no other place for them, and
a row then says how it was measured wherever it goes.

Each result is appended (one line, flushed) as soon as it is measured, so an interrupted
run loses only the networks in flight; `resume=True` reads the file back, skips every
architecture it already holds (by canonical key) and appends the rest. A line torn by a
hard kill is cut off on resume, so the finished file is always valid JSON lines.

Work runs in this process (`jobs=1`), in a pool of spawned processes (`jobs>1`; each
worker fixes torch's and ONNX Runtime's thread counts), or on a Ray cluster
(`ray="auto"`, `"local"` or an address; Ray is an optional extra, imported only then),
through `autobuild_dsl.parallel`. Reading the input files is `compile.batch_input`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl import io as abc_io

# Re-exported: the batch's input readers are part of its interface (`X as X`).
from autobuild_dsl.compile.batch_input import BatchError as BatchError
from autobuild_dsl.compile.batch_input import _listing
from autobuild_dsl.compile.batch_input import canonical_arch as canonical_arch
from autobuild_dsl.compile.batch_input import read_arch_records as read_arch_records
from autobuild_dsl.compile.batch_input import read_architectures as read_architectures
from autobuild_dsl.compile.batch_input import read_labels as read_labels
from autobuild_dsl.compile.measure import (
    Device,
    LatencyPlan,
    anchor_architecture,
    check_metrics,
    pick_clock,
    prepare,
    time_latencies,
)
from autobuild_dsl.errors import CONTINUE, OVERWRITE, Remedy
from autobuild_dsl.parallel import Fanout, machine_load, torch_threads
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import canonicalize
from autobuild_dsl.space.model import Space

# Settings that latency rows record as metrics, and the MeasureSettings field of each.
LATENCY_SETTINGS = {
    "latency_threads": "threads",
    "latency_warmup": "warmup",
    "latency_repeats": "repeats",
}


class MeasureSettings(BaseModel):
    """How every network of one batch is measured (see `measure.measure`)."""

    model_config = ConfigDict(frozen=True)

    metrics: tuple[str, ...]
    threads: int = Field(1, ge=1)
    warmup: int = Field(5, ge=0)
    repeats: int = Field(30, ge=1)
    device: Device = "auto"
    seed: int = 0
    # When timing stops (see `measure.LatencyPlan`): the median's relative 95 % CI
    # half-width, seconds per network, runs per network.
    ci: float = Field(0.02, ge=0)
    time_cap: float = Field(3.0, gt=0)
    max_repeats: int = Field(1000, ge=1)
    # Networks timed interleaved, round by round (drift lands on all of them alike).
    interleave: int = Field(8, ge=1)
    clock: Literal["auto", "wall", "cpu"] = "auto"  # see `measure.pick_clock`
    # Time the space's anchor network in every round too (`latency_rel`, `latency_anchor`).
    anchor: bool = True
    # The name latency is written under (`lat`: `lat`, `lat_spread`, `lat_threads`, ...),
    # so a target can say `acc - 0.5*lat`.
    name: str = Field("latency", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    def plan(self) -> LatencyPlan:
        timing = self.model_dump(include={"warmup", "repeats", "ci", "time_cap", "max_repeats"})
        return LatencyPlan(**timing, clock=pick_clock(self.clock, self.threads))

    def named(self, metrics: dict[str, float | int]) -> dict[str, float | int]:
        """`metrics` with latency's keys under `name`."""
        if self.name == "latency":
            return metrics
        return {
            (self.name + k[len("latency") :] if k.split("_")[0] == "latency" else k): v
            for k, v in metrics.items()
        }


@dataclass(frozen=True)
class BatchProgress:
    """One event: `done` of `total` networks finished in this run (`failed` of them failed);
    `key` is the canonical key of the one that just finished."""

    done: int
    total: int
    failed: int
    key: str


@dataclass
class BatchReport:
    rows: int  # architecture rows read from the input
    distinct: int  # different architectures among them
    already: int  # skipped: the output held them already (resume)
    measured: int  # measured and appended in this run
    kept_labels: int = 0  # rows written with metrics their input row already carried
    replaced: list[str] = field(default_factory=list)  # input metrics a measurement replaced
    # With retest: each architecture's latency from a second, independent pass (by key).
    retest: dict[str, float] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)
    # The same for the anchored latency (`<name>_rel`), when measured with an anchor.
    retest_rel: dict[str, float] = field(default_factory=dict)
    first_rel: dict[str, float] = field(default_factory=dict)
    spreads: list[float] = field(default_factory=list)  # latency spread of each row measured
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    repaired: bool = False  # a torn last line of the output was cut off


# ------------------------------------------------------------------------- the output


def dataset_row(arch: Architecture, metrics: dict[str, float | int]) -> str:
    """One line of the dataset format (`autobuild_dsl.data.dataset`), newline included."""
    record = {"arch": arch.model_dump(mode="json"), "metrics": metrics, "count": 1}
    return json.dumps(record, separators=(",", ":")) + "\n"


def _expected_settings(settings: MeasureSettings) -> dict[str, int]:
    if "latency" not in settings.metrics:
        return {}
    return {metric: getattr(settings, attr) for metric, attr in LATENCY_SETTINGS.items()}


def measured_keys(
    path: str | os.PathLike[str], space: Space, settings: MeasureSettings
) -> tuple[set[str], bool]:
    """The canonical keys an existing output already holds, and whether its last line was
    torn (cut off here, so appending continues a valid file). Every row must hold the
    requested metrics, measured with the same settings: otherwise resuming would mix
    numbers that do not compare."""
    out = Path(path)
    data, torn = _split_torn(out.read_bytes())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchError(f"{out}: cannot resume: not a measure output (not UTF-8 text)") from None
    keys: set[str] = set()
    errors: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            key = _row_key(f"{out}:{number}", line, space, settings, errors)
            if key is not None:
                keys.add(key)
    if errors:
        raise BatchError(_listing(errors, f"{out}: cannot resume:"))
    try:  # the sidecar catches what rows cannot show (another space version, command)
        claimed = abc_io.check_claim(out, "measure", **_claim(space, settings))
    except abc_io.ForeignOutput as error:
        raise BatchError(str(error)) from None
    if not keys and not claimed and (torn.strip() or text.strip()):
        raise BatchError(f"{out}: cannot resume: not a measure output (no dataset row)")
    if not claimed and keys:  # an output of an older version: claim it from now on
        abc_io.write_claim(out, "measure", **_claim(space, settings))
    if torn:
        with out.open("r+b") as handle:
            handle.truncate(len(data))
    elif data and not out.read_bytes().endswith(b"\n"):
        with out.open("ab") as handle:
            handle.write(b"\n")
    return keys, bool(torn)


def _split_torn(data: bytes) -> tuple[bytes, bytes]:
    """(the whole lines, a torn last line or b"") of an output's bytes."""
    if not data or data.endswith(b"\n"):
        return data, b""
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
    except ValueError:
        # A hard kill in the middle of a line: the torn tail is cut off (and measured
        # again), but only once the rest is known to be this command's own rows.
        return data[:cut], data[cut:]
    return data + b"\n", b""


def _row_key(
    where: str, line: str, space: Space, settings: MeasureSettings, errors: list[str]
) -> str | None:
    """The canonical key of one output row; a malformed row goes to `errors`, a row
    measured otherwise than `settings` is an error at once."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        errors.append(f"{where}: not valid JSON: {error.msg}")
        return None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        errors.append(f"{where}: not a dataset row (expected 'arch' and 'metrics')")
        return None
    if not isinstance(record.get("arch"), dict):
        errors.append(f"{where}: missing 'arch'")
        return None
    try:
        arch = canonical_arch(space, where, record["arch"])
    except BatchError as error:
        errors.append(str(error))
        return None
    metrics = record["metrics"]
    # Rows also carry the metrics their input rows had (measure keeps them); which metrics
    # this output measures is the sidecar's to say.
    missing = [m for m in _named_metrics(settings) if m not in metrics]
    if missing:
        raise BatchError(
            f"{where}: cannot resume: this row has no {', '.join(missing)} (it has "
            f"{', '.join(sorted(set(metrics) - set(LATENCY_SETTINGS)))}); measure into a "
            "new file, or resume with the metrics it was measured with",
            remedies=(Remedy("metrics", "as the file was measured"),),
        )
    for metric, value in settings.named(_expected_settings(settings)).items():
        if metrics.get(metric) != value:
            option = LATENCY_SETTINGS["latency" + metric[len(settings.name) :]]
            raise BatchError(
                f"{where}: cannot resume: measured with {metric} = "
                f"{_plain(metrics.get(metric))}, this run uses {value}; resume with the same "
                f"--{option}, or measure into a new file"
            )
    return arch.key()


def _claim(space: Space, settings: MeasureSettings) -> dict[str, Any]:
    """What a measure output depends on: recorded beside it, checked on resume."""
    return {
        "space": space.name,
        "space_digest": space.digest(),
        "metrics": sorted(settings.metrics),
        **_expected_settings(settings),
        # Anchored and plain rows do not mix (one has `<name>_rel`, the other not).
        **({"anchor": settings.anchor} if "latency" in settings.metrics else {}),
    }


def _plain(value: object) -> str:
    return "nothing" if value is None else json.dumps(value)


def _named_metrics(settings: MeasureSettings) -> dict[str, float | int]:
    return settings.named({m: 0 for m in settings.metrics})


# ------------------------------------------------------------------------- the workers

Result = tuple[str, dict[str, float | int] | None, str | None]
WorkerState = tuple[Space, MeasureSettings]


def _worker_state(space_json: str, settings_json: str) -> WorkerState:
    """Built once per worker process (or once here, inline)."""
    return Space.from_json(space_json), MeasureSettings.model_validate_json(settings_json)


def _measure_group(state: WorkerState, archs_json: list[str]) -> list[Result]:
    """Measure a group of architectures, their latencies timed interleaved: (canonical
    key, metrics or None, error or None) each. Failures come back as text, so one network
    that does not compile does not stop the batch."""
    from autobuild_dsl.space.resolve import resolve

    space, settings = state
    results: list[Result] = []
    prepared: list[tuple[int, tuple[object, dict]]] = []
    for arch_json in archs_json:
        arch = Architecture.model_validate_json(arch_json)
        try:
            net = resolve(space, arch)
            counts, session = prepare(
                net, settings.metrics, settings.threads, settings.seed, settings.device
            )
        except (ValueError, RuntimeError, MemoryError) as error:
            results.append((arch.key(), None, f"{type(error).__name__}: {error}"))
            continue
        if session is not None:
            prepared.append((len(results), session))
        results.append((arch.key(), counts, None))
    if prepared:
        plan = settings.plan()
        try:
            anchor = _anchor_session(space, settings) if settings.anchor else None
            readings = time_latencies(
                [s for _, s in prepared], plan, seed=settings.seed, anchor=anchor
            )
        except (ValueError, RuntimeError) as error:  # ONNX Runtime failing at run time
            return [(key, None, f"{type(error).__name__}: {error}") for key, _, _ in results]
        for (index, _), reading in zip(prepared, readings, strict=True):
            key, counts, _ = results[index]
            assert counts is not None
            results[index] = (key, {**counts, **reading.metrics(settings.threads, plan)}, None)
    return [(k, settings.named(m) if m is not None else None, e) for k, m, e in results]


def _anchor_session(space: Space, settings: MeasureSettings) -> tuple[object, dict]:
    """The space's anchor network as a session (fixed weights seed: the same network in
    every group, pass and run)."""
    from autobuild_dsl.space.resolve import resolve

    net = resolve(space, anchor_architecture(space))
    _, session = prepare(net, ("latency",), settings.threads, 0, "cpu")
    assert session is not None
    return session


def _results(
    space_json: str,
    settings: MeasureSettings,
    todo: Sequence[Architecture],
    jobs: int,
    ray: str | None,
) -> Iterator[Result]:
    """Measure `todo` in groups (timed interleaved within a group), inline, in a pool of
    processes or on Ray; closing the iterator stops what still runs."""
    payloads = [arch.model_dump_json() for arch in todo]
    # Interleaving matters for latency only; without it a group of one keeps progress fine.
    size = settings.interleave if "latency" in settings.metrics else 1
    if jobs > 1 and "latency" in settings.metrics:
        # Every worker gets groups: fewer, so all of them have work.
        size = max(1, min(size, math.ceil(len(payloads) / jobs)))
    groups = [payloads[i : i + size] for i in range(0, len(payloads), size)]
    inline = ray is None and (jobs <= 1 or len(groups) <= 1)
    fanout: Fanout[None] = Fanout(
        _worker_state,
        (space_json, settings.model_dump_json()),
        jobs=1 if inline else min(jobs, len(groups)) if ray is None else jobs,
        ray_address=ray,
        threads=settings.threads,
        error=BatchError,
    )
    # Inline, this process measures with the asked threads (workers set their own).
    threads = torch_threads(settings.threads) if inline else contextlib.nullcontext()
    with fanout, threads:
        for _, results in fanout.map(_measure_group, ((None, group) for group in groups)):
            yield from results


# ------------------------------------------------------------------------- the batch


def measure_file(
    space: Space,
    archs: Sequence[Architecture],
    out: str | os.PathLike[str],
    settings: MeasureSettings,
    *,
    jobs: int = 1,
    ray: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[BatchProgress], None] | None = None,
    labels: Mapping[str, Mapping[str, float]] | None = None,
    retest: bool = False,
) -> BatchReport:
    """Measure `archs` (canonical, of `space`) into the dataset file `out`, appending each
    row as soon as it is measured. Without `resume` or `overwrite` an existing `out` is an
    error; with `overwrite` it is replaced when the first row is ready.

    `labels` (by canonical key) are metrics the input rows already carry (accuracy, ...):
    each row keeps them, and gets the measured ones added. With `retest`, latency is then
    measured again in a second, independent pass (`report.first` / `report.retest`), and
    every row of this run gets it as `<name>_retest`."""
    check_metrics(settings.metrics)  # fails fast, before any file is touched
    if settings.device == "meta" and "latency" in settings.metrics:
        raise BatchError(
            "latency needs a real network on the CPU; the meta device counts params and MACs "
            "only (measure on another device, or measure latency separately)",
            remedies=(Remedy("device", "to measure latency", "cpu"),),
        )
    if jobs < 1:
        raise BatchError("jobs must be at least 1")
    try:
        settings.plan()
    except ValueError as error:
        raise BatchError(str(error)) from None
    if resume and overwrite:
        raise BatchError("resume and overwrite contradict each other: choose one")
    path = Path(out)
    if path.is_dir():
        raise BatchError(f"{path} is a folder")
    # One writer per output: a second run (or resume) on the same file fails at once.
    with abc_io.output_lock(path, "measure output"):
        return _measure_locked(
            space,
            archs,
            path,
            settings,
            jobs=jobs,
            ray=ray,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            labels=labels,
            retest=retest,
        )


def _measure_locked(
    space: Space,
    archs: Sequence[Architecture],
    path: Path,
    settings: MeasureSettings,
    *,
    jobs: int,
    ray: str | None,
    resume: bool,
    overwrite: bool,
    progress: Callable[[BatchProgress], None] | None,
    labels: Mapping[str, Mapping[str, float]] | None,
    retest: bool,
) -> BatchReport:
    distinct: dict[str, Architecture] = {}
    for arch in archs:
        distinct.setdefault(arch.key(), arch)
    done: set[str] = set()
    repaired = False
    if path.exists():
        if resume:
            done, repaired = measured_keys(path, space, settings)
        elif not overwrite:
            raise BatchError(f"{path} exists", remedies=(CONTINUE, OVERWRITE))
    # A new (or replaced) file is created with its first row: a run that fails before
    # measuring anything leaves the old file, or none, as it was.
    fresh = overwrite or not path.exists()
    todo = [arch for key, arch in distinct.items() if key not in done]
    report = BatchReport(
        rows=len(archs),
        distinct=len(distinct),
        already=len(distinct) - len(todo),
        measured=0,
        repaired=repaired,
    )
    if not todo:
        return report
    if retest and settings.name not in _named_metrics(settings):
        raise BatchError("a retest measures latency twice: add latency to the metrics")
    results = _results(space.to_json(), settings, todo, jobs, ray)
    output = _Output(path, _claim(space, settings) if fresh else None)
    try:
        for finished, (key, metrics, error) in enumerate(results, start=1):
            if metrics is None:
                report.failures.append((key, error or "failed"))
            else:
                given = (labels or {}).get(key) or {}
                _note_row(report, settings.name, key, given, metrics)
                output.append(dataset_row(distinct[key], {**given, **metrics}))
                report.measured += 1
            if progress is not None:
                progress(BatchProgress(finished, len(todo), len(report.failures), key))
    finally:
        results.close()  # stops a pool or Ray tasks still running after an interruption
        output.close()
    report.replaced = sorted(set(report.replaced))
    if retest and report.first:
        again = settings.model_copy(update={"metrics": ("latency",), "seed": settings.seed + 1})
        second = [arch for key, arch in distinct.items() if key in report.first]
        for key, metrics, _ in _results(space.to_json(), again, second, jobs, ray):
            if metrics is not None:
                report.retest[key] = float(metrics[settings.name])
                if f"{settings.name}_rel" in metrics:
                    report.retest_rel[key] = float(metrics[f"{settings.name}_rel"])
        second = {settings.name: report.retest, f"{settings.name}_rel": report.retest_rel}
        _add_retest(path, space, second)
    return report


class _Output:
    """The output file, opened for appending at the first row: created (with its claim)
    then when `claim` is given, so a run that measures nothing leaves no file."""

    def __init__(self, path: Path, claim: dict[str, Any] | None) -> None:
        self.path = path
        self.claim = claim
        self.handle: Any = None

    def append(self, row: str) -> None:
        if self.handle is None:
            if self.claim is not None:
                abc_io.write_atomic(self.path, b"")
                abc_io.write_claim(self.path, "measure", **self.claim)
            self.handle = self.path.open("a", encoding="utf-8")
        self.handle.write(row)
        self.handle.flush()  # on disk before the next one finishes: nothing to lose

    def close(self) -> None:
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.handle = None


def _note_row(
    report: BatchReport,
    name: str,
    key: str,
    given: Mapping[str, float],
    metrics: Mapping[str, float | int],
) -> None:
    """What the report keeps of one measured row: replaced labels, latency, spread."""
    report.replaced.extend(m for m in given if m in metrics)
    report.kept_labels += bool(given)
    if name in metrics:
        report.first[key] = float(metrics[name])
        if f"{name}_rel" in metrics:
            report.first_rel[key] = float(metrics[f"{name}_rel"])
        spread = metrics.get(f"{name}_spread")
        if spread is not None:
            report.spreads.append(float(spread))


def _add_retest(path: Path, space: Space, second: Mapping[str, Mapping[str, float]]) -> None:
    """Rewrite `path` (atomically) with `<name>_retest` on the rows that have one, for each
    metric name of `second` (name -> key -> second reading)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        key = canonicalize(space, record["arch"]).key()
        for name, readings in second.items():
            if key in readings:
                record["metrics"][f"{name}_retest"] = readings[key]
        lines.append(json.dumps(record, separators=(",", ":")) + "\n")
    abc_io.write_atomic(path, "".join(lines))


def spearman(first: Sequence[float], second: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties), without scipy."""
    import numpy as np

    def ranks(values: Sequence[float]) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        order = np.argsort(array, kind="mergesort")
        result = np.empty(len(array))
        result[order] = np.arange(len(array), dtype=np.float64)
        for value in np.unique(array):  # ties share their mean rank
            tied = array == value
            if tied.sum() > 1:
                result[tied] = result[tied].mean()
        return result

    if len(first) != len(second) or len(first) < 2:
        raise ValueError("Spearman needs two equally long series of at least 2 values")
    a, b = ranks(first), ranks(second)
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator else float("nan")


def oversubscribed(jobs: int, threads: int) -> str | None:
    """A warning when parallel latency measurements would share CPU cores."""
    cores = os.cpu_count() or 1
    if jobs * threads > cores:
        return (
            f"{jobs} jobs x {threads} threads > {cores} CPU cores: latencies measured in "
            "parallel compete for cores and come out slower and noisier"
        )
    return None


def busy_machine() -> str | None:
    """A warning when the load average exceeds the CPU cores: latency is then timed on a
    machine that other work slows down, by amounts that change from run to run."""
    cores, load = machine_load()
    if load is not None and load > cores:
        return (
            f"load average {load:.1f} > {cores} CPU cores: other work competes for the CPU, "
            "so latencies come out slower and noisier (see each row's spread)"
        )
    return None
