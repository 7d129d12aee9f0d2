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
(`ray="auto"`, `"local"` or an address; Ray is an optional extra, imported only then).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl import io as abc_io
from autobuild_dsl.compile.measure import (
    Device,
    LatencyPlan,
    anchor_architecture,
    check_metrics,
    pick_clock,
    prepare,
    time_latencies,
)
from autobuild_dsl.errors import CONTINUE, OVERWRITE, AbcError, Remedy
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize
from autobuild_dsl.space.model import Space

# Settings that latency rows record as metrics, and the MeasureSettings field of each.
LATENCY_SETTINGS = {
    "latency_threads": "threads",
    "latency_warmup": "warmup",
    "latency_repeats": "repeats",
}
# How many bad input lines an error message quotes before summarising the rest.
_SHOWN = 20


class BatchError(AbcError, ValueError):
    """Bad input for a batch measurement: unreadable files, architectures outside the space,
    an output that cannot be resumed."""

    code = "batch"


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
        return LatencyPlan(
            warmup=self.warmup,
            repeats=self.repeats,
            ci=self.ci,
            time_cap=self.time_cap,
            max_repeats=self.max_repeats,
            clock=pick_clock(self.clock, self.threads),
        )

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


# ------------------------------------------------------------------------ reading input


def read_arch_records(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """The raw architectures in a file, each with where it was (`file` or `file:line`).

    Accepts one JSON architecture (any layout), a JSON list of them, or JSON lines; an item
    may be the architecture itself or an object holding it under "arch" (as `abc sample`
    and dataset files write it)."""
    return _records(str(path), _read_items(path))


def _read_items(path: str | os.PathLike[str]) -> list[tuple[str, object]]:
    """The JSON items of the file (one JSON value, a list, or JSON lines), with where."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BatchError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BatchError(f"{name}: cannot read: {error}") from None
    items: list[tuple[str, object]] = []
    try:
        whole = json.loads(text)
    except ValueError:  # JSONDecodeError, or an integer of more than 4300 digits
        errors = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"{name}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                errors.append(
                    f"{name}:{number}: not valid JSON: {error.msg} (column {error.colno})"
                )
            except ValueError as error:
                errors.append(f"{name}:{number}: not valid JSON: {error}")
        if errors:
            raise BatchError(_listing(errors)) from None
    else:
        if isinstance(whole, list):
            items = [(f"{name}[{i}]", item) for i, item in enumerate(whole)]
        else:
            items = [(name, whole)]
    return items


def _records(name: str, items: list[tuple[str, object]]) -> list[tuple[str, dict[str, Any]]]:
    records: list[tuple[str, dict[str, Any]]] = []
    errors = []
    for where, item in items:
        if isinstance(item, dict) and "arch" in item:
            item = item["arch"]
        if isinstance(item, dict):
            records.append((where, item))
        else:
            errors.append(f"{where}: expected an architecture object (or one under 'arch')")
    if errors:
        raise BatchError(_listing(errors))
    if not records:
        raise BatchError(f"{name}: holds no architecture")
    return records


def read_labels(path: str | os.PathLike[str], space: Space) -> dict[str, dict[str, float]]:
    """The metrics the rows of an architecture file already carry (`{"arch", "metrics"}`
    rows, as dataset files hold them), by canonical key. A file of bare architectures has
    none. An architecture given twice with different metrics is an error: which to keep
    is the user's call (`abc data merge --average` averages repeats)."""
    labels: dict[str, dict[str, float]] = {}
    where_of: dict[str, str] = {}
    for where, item in _read_items(path):
        if not isinstance(item, dict) or not isinstance(item.get("metrics"), dict):
            continue
        metrics = {
            k: float(v)
            for k, v in item["metrics"].items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if not metrics or not isinstance(item.get("arch"), dict):
            continue
        key = canonical_arch(space, where, item["arch"]).key()
        if key in labels and labels[key] != metrics:
            raise BatchError(
                f"{where}: this architecture is also on {where_of[key]} with other metrics; "
                "average repeated rows first (merging the data with averaging on)"
            )
        labels[key], where_of[key] = metrics, where
    return labels


def canonical_arch(space: Space, where: str, raw: dict[str, Any]) -> Architecture:
    """`raw` checked against `space`; an error says where, which field and why."""
    named = raw.get("space")
    if named is not None and named != space.name:
        # An architecture names its space; one of another space is not taken as ours.
        raise BatchError(
            f"{where}: the architecture is of space {_quoted(named)}, not '{space.name}'"
        )
    try:
        return canonicalize(space, raw)
    except ArchitectureError as error:
        claimed = raw.get("space")
        hint = ""
        if isinstance(claimed, str) and claimed != space.name:
            hint = f" (the architecture names space '{claimed}', this is '{space.name}')"
        raise BatchError(f"{where}: {error}{hint}") from None


def _quoted(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else json.dumps(value, default=str)


def read_architectures(
    path: str | os.PathLike[str], space: Space
) -> list[tuple[str, Architecture]]:
    """Every architecture of the file, canonical; all bad ones reported together."""
    good: list[tuple[str, Architecture]] = []
    errors: list[str] = []
    for where, raw in read_arch_records(path):
        try:
            good.append((where, canonical_arch(space, where, raw)))
        except BatchError as error:
            errors.append(str(error))
    if errors:
        noun = "architecture" if len(errors) == 1 else "architectures"
        raise BatchError(_listing(errors, f"{len(errors)} {noun} outside space {space.name}:"))
    return good


def _listing(lines: Sequence[str], title: str | None = None) -> str:
    shown = list(lines[:_SHOWN])
    if len(lines) > _SHOWN:
        shown.append(f"... and {len(lines) - _SHOWN} more")
    return "\n".join([title, *shown] if title else shown)


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
    data = out.read_bytes()
    torn = b""
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
        except ValueError:
            # A hard kill in the middle of a line: the torn tail is cut off (and measured
            # again), but only once the rest is known to be this command's own rows.
            torn, data = data[cut:], data[:cut]
        else:
            data += b"\n"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchError(f"{out}: cannot resume: not a measure output (not UTF-8 text)") from None
    expected = settings.named(_expected_settings(settings))
    # Rows also carry the metrics their input rows had (measure keeps them); which metrics
    # this output measures is the sidecar's to say (checked below).
    wanted = list(settings.named({m: 0 for m in settings.metrics}))
    keys: set[str] = set()
    errors: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{out}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"{where}: not valid JSON: {error.msg}")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
            errors.append(f"{where}: not a dataset row (expected 'arch' and 'metrics')")
            continue
        if not isinstance(record.get("arch"), dict):
            errors.append(f"{where}: missing 'arch'")
            continue
        try:
            arch = canonical_arch(space, where, record["arch"])
        except BatchError as error:
            errors.append(str(error))
            continue
        metrics = record["metrics"]
        missing = [m for m in wanted if m not in metrics]
        if missing:
            what = f"has no {', '.join(missing)}"
            raise BatchError(
                f"{where}: cannot resume: this row {what} (it has "
                f"{', '.join(sorted(set(metrics) - set(LATENCY_SETTINGS)))}); measure into a "
                "new file, or resume with the metrics it was measured with",
                remedies=(Remedy("metrics", "as the file was measured"),),
            )
        for metric, value in expected.items():
            if metrics.get(metric) != value:
                option = LATENCY_SETTINGS["latency" + metric[len(settings.name) :]]
                raise BatchError(
                    f"{where}: cannot resume: measured with {metric} = "
                    f"{_plain(metrics.get(metric))}, this run uses {value}; resume with the same "
                    f"--{option}, or measure into a new file"
                )
        keys.add(arch.key())
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
    repaired = False
    if torn:
        with out.open("r+b") as handle:
            handle.truncate(len(data))
        repaired = True
    elif data and not out.read_bytes().endswith(b"\n"):
        with out.open("ab") as handle:
            handle.write(b"\n")
    return keys, repaired


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


# ------------------------------------------------------------------------- the workers

# Per-process state of a worker: (space JSON, settings JSON) -> (space, settings).
_STATE: dict[tuple[str, str], tuple[Space, MeasureSettings]] = {}


def _state(space_json: str, settings_json: str) -> tuple[Space, MeasureSettings]:
    key = (space_json, settings_json)
    if key not in _STATE:
        _STATE.clear()
        _STATE[key] = (
            Space.from_json(space_json),
            MeasureSettings.model_validate_json(settings_json),
        )
    return _STATE[key]


def _fix_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
        torch.set_num_interop_threads(1)


def _init_worker(space_json: str, settings_json: str) -> None:
    # Ctrl-C reaches the whole process group: only the parent reacts (it stops the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    abc_io.die_with_parent()
    _, settings = _state(space_json, settings_json)
    _fix_threads(settings.threads)


Result = tuple[str, dict[str, float | int] | None, str | None]


def _measure_group(space_json: str, settings_json: str, archs_json: list[str]) -> list[Result]:
    """Measure a group of architectures, their latencies timed interleaved: (canonical
    key, metrics or None, error or None) each. Failures come back as text, so one network
    that does not compile does not stop the batch."""
    from autobuild_dsl.space.resolve import resolve

    space, settings = _state(space_json, settings_json)
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


def _ray_measure(space_json: str, settings_json: str, archs_json: list[str]) -> list[Result]:
    _, settings = _state(space_json, settings_json)
    _fix_threads(settings.threads)
    return _measure_group(space_json, settings_json, archs_json)


def _run_inline(space_json: str, settings_json: str, groups: list[list[str]]) -> Iterator[Result]:
    import torch

    settings = MeasureSettings.model_validate_json(settings_json)
    before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        for group in groups:
            yield from _measure_group(space_json, settings_json, group)
    finally:
        torch.set_num_threads(before)


def _run_pool(
    space_json: str, settings_json: str, groups: list[list[str]], jobs: int
) -> Iterator[Result]:
    # Spawned, not forked: a fork of a process that already runs torch's thread pools can
    # deadlock. Each worker imports torch once and measures many networks.
    pool = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(space_json, settings_json),
    )
    queue = list(reversed(groups))
    running: set[Future[list[Result]]] = set()
    finished = False
    try:
        while queue or running:
            # A bounded window: an interruption leaves little submitted work behind.
            while queue and len(running) < 2 * jobs:
                running.add(pool.submit(_measure_group, space_json, settings_json, queue.pop()))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()
        finished = True
    finally:
        if not finished:  # interrupted: stop the workers now, their results are not wanted
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
        pool.shutdown(wait=finished, cancel_futures=True)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BatchError(
            "measuring on Ray needs the optional 'ray' extra: pip install 'autobuild-dsl[ray]'"
        ) from None
    return ray


def _run_ray(
    space_json: str,
    settings_json: str,
    groups: list[list[str]],
    address: str,
    jobs: int,
    threads: int,
) -> Iterator[Result]:
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(
                address=None if address == "local" else address,
                include_dashboard=False,
                log_to_driver=False,
            )
        except Exception as error:  # ConnectionError, ValueError, RuntimeError, ...
            where = "a local Ray cluster" if address == "local" else f"Ray at '{address}'"
            raise BatchError(
                f"cannot start or reach {where}: {str(error) or type(error).__name__}"
            ) from None
    try:
        if jobs <= 1:  # as many tasks in flight as the cluster has room for
            jobs = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        task = ray.remote(num_cpus=threads)(_ray_measure)
        space_ref = ray.put(space_json)
        queue = list(reversed(groups))
        running: list[Any] = []
        try:
            while queue or running:
                while queue and len(running) < jobs:
                    running.append(task.remote(space_ref, settings_json, queue.pop()))
                done, running = ray.wait(running, num_returns=1)
                yield from ray.get(done[0])
        finally:
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
    finally:
        if started:  # a cluster this call connected to (or started) is let go again
            ray.shutdown()


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
    space_json = space.to_json()
    if retest and settings.name not in _named_metrics(settings):
        raise BatchError("a retest measures latency twice: add latency to the metrics")
    if ray is not None:
        _import_ray()  # now, not at the first result: a missing extra is a clear error
    results = _results(space_json, settings, todo, jobs, ray)
    labels = labels or {}
    finished = 0
    handle = None
    try:
        for key, metrics, error in results:
            finished += 1
            if metrics is None:
                report.failures.append((key, error or "failed"))
            else:
                if handle is None:
                    if fresh:
                        abc_io.write_atomic(path, b"")
                        abc_io.write_claim(path, "measure", **_claim(space, settings))
                    handle = path.open("a", encoding="utf-8")
                given = labels.get(key) or {}
                report.replaced.extend(m for m in given if m in metrics)
                report.kept_labels += bool(given)
                if settings.name in metrics:
                    report.first[key] = float(metrics[settings.name])
                    if f"{settings.name}_rel" in metrics:
                        report.first_rel[key] = float(metrics[f"{settings.name}_rel"])
                    spread = metrics.get(f"{settings.name}_spread")
                    if spread is not None:
                        report.spreads.append(float(spread))
                handle.write(dataset_row(distinct[key], {**given, **metrics}))
                handle.flush()  # on disk before the next one finishes: nothing to lose
                report.measured += 1
            if progress is not None:
                progress(BatchProgress(finished, len(todo), len(report.failures), key))
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops a pool or Ray tasks still running after an interruption
        if handle is not None:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
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


def _named_metrics(settings: MeasureSettings) -> dict[str, float | int]:
    return settings.named({m: 0 for m in settings.metrics})


def _results(
    space_json: str,
    settings: MeasureSettings,
    todo: Sequence[Architecture],
    jobs: int,
    ray: str | None,
) -> Iterator[Result]:
    """Measure `todo` in groups (timed interleaved within a group), inline, in a pool of
    processes or on Ray."""
    settings_json = settings.model_dump_json()
    payloads = [arch.model_dump_json() for arch in todo]
    # Interleaving matters for latency only; without it a group of one keeps progress fine.
    size = settings.interleave if "latency" in settings.metrics else 1
    if jobs > 1 and "latency" in settings.metrics:
        # Every worker gets groups: fewer, so all of them have work.
        size = max(1, min(size, math.ceil(len(payloads) / jobs)))
    groups = [payloads[i : i + size] for i in range(0, len(payloads), size)]
    if ray is not None:
        return _run_ray(space_json, settings_json, groups, ray, jobs, settings.threads)
    if jobs > 1 and len(groups) > 1:
        return _run_pool(space_json, settings_json, groups, min(jobs, len(groups)))
    return _run_inline(space_json, settings_json, groups)


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


def _replace_with_empty(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    abc_io.write_atomic(path, b"")


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
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None
    if load > cores:
        return (
            f"load average {load:.1f} > {cores} CPU cores: other work competes for the CPU, "
            "so latencies come out slower and noisier (see each row's spread)"
        )
    return None
