"""Importers: public benchmark files (and a user's own tables) -> a LabeledDataset.

Each importer turns its rows into (raw architecture dict, metrics); one shared pipeline
then checks every architecture against the space (`canonicalize`), rejects what does not
fit with file, row and reason, and merges rows that name the same network: the same
architecture, or an equivalent one that compiles to the same network (NAS-Bench-Macro's
6561 rows are 3969 networks; see `space/equivalence.py`).

Formats:
  ofa               OFA subnet dicts (`ks`, `e`, `d`, `r`): DyNAS-T CSVs and HELP's JSON
  nas-bench-macro   NAS-Bench-Macro's JSON object keyed by 8-digit strings
  generic           any CSV / JSON / JSON-lines table, described by a `GenericMapping`
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.data.dataset import (
    DatasetError,
    LabeledDataset,
    RowError,
    check_metric_name,
    from_records,
    metric_value,
)
from autobuild_dsl.errors import Remedy
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.expr import Const
from autobuild_dsl.space.model import Space
from autobuild_dsl.space.resolve import ResolveError

Progress = Callable[[int, int], None]
FORMATS = ("ofa", "nas-bench-macro", "generic")

# DyNAS-T's CSV columns -> metric names. `Latency (ms)` is 0 in every published file; it
# is kept (as `latency`) only when some row of the file has a non-zero value.
DYNAST_COLUMNS = {
    "Top-1 Acc (%)": "top1",
    "MACs": "macs",
    "Model Parameters": "params",
    "Latency (ms)": "latency",
}
DYNAST_ARCH_COLUMN = "Sub-network"
# NAS-Bench-Macro's digit per layer -> the layer alternative of spaces/nas_bench_macro.abs.
NAS_BENCH_MACRO_LABELS = {"0": "identity", "1": "mb_e3k3", "2": "mb_e6k5"}


class ImportReport(BaseModel):
    """What an import did: rows read, architectures kept, rows merged, rows rejected."""

    format: str
    files: list[str]
    read: int = Field(description="raw rows read")
    distinct_raw: int = Field(description="distinct architecture descriptions as written")
    imported: int = Field(description="distinct networks in the dataset (one row each)")
    merged: int = Field(description="rows folded into an earlier row of the same network")
    architectures: int = Field(
        default=0, description="distinct canonical architectures among the accepted rows"
    )
    equivalent: int = Field(
        default=0,
        description="architectures folded into an equivalent one: another choice vector "
        "that compiles to the same network (space/equivalence.py)",
    )
    rejected: list[RowError] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="columns dropped, and why")


@dataclass
class ImportResult:
    dataset: LabeledDataset | None  # None when nothing was imported
    report: ImportReport


@dataclass
class _Raw:
    """One input row: where it is, its architecture (raw) and its metrics."""

    file: str
    row: int | str
    arch: dict[str, Any] | None
    metrics: dict[str, float]
    key: str  # the architecture as written, to count distinct descriptions
    error: str | None = None


class GenericMapping(BaseModel):
    """How to read a user's own table: which column is the architecture, which are metrics.

    Column names are matched exactly first; for JSON records a dotted path (`lat.v100`,
    `test_acc.0`) reaches into nested objects and lists. In a JSON object keyed by id,
    the key itself is the column `$key`.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["csv", "json", "jsonl"] | None = Field(
        default=None, description="default: from the file extension"
    )
    arch: str = Field(default="arch", description="column holding the architecture")
    arch_format: Literal["canonical", "ofa", "code"] = Field(
        default="canonical",
        description="canonical: {globals, stages} as `abc sample` writes; ofa: {ks, e, d, r}; "
        "code: a compact code the space declares (`code NAME = ...`)",
    )
    code: str | None = Field(
        default=None,
        description="arch_format code: which of the space's codes (default: its only one)",
    )
    code_pattern: str | None = Field(
        default=None,
        description="arch_format code: a regular expression whose first group is the code "
        "inside the column (`^\\d+-(\\d+)-` for `64-41414-basic`)",
    )
    metrics: dict[str, str] = Field(description="metric name -> column (or dotted path)")
    records: str | None = Field(
        default=None, description="JSON: dotted path to the list/object of records"
    )
    delimiter: str = Field(default=",", description="CSV field delimiter")


# ===== shared pipeline =================================================================


def _collect(
    fmt: str,
    files: Sequence[str],
    space: Space,
    rows: Iterator[_Raw],
    notes: list[str],
    progress: Progress | None,
    metric_order: Sequence[str] = (),
) -> ImportResult:
    accepted = []
    rejected: list[RowError] = []
    distinct: set[str] = set()
    keyer = network_keyer(space)
    networks: dict[str, str] = {}  # canonical architecture key -> its network's key
    table = list(rows)  # benchmark files are small; a known total makes progress useful
    read = len(table)
    step = max(1, read // 100)
    for done, raw in enumerate(table, start=1):
        distinct.add(raw.key)
        if progress is not None and (done % step == 0 or done == read):
            progress(done, read)
        if raw.error is not None or raw.arch is None:
            rejected.append(RowError(file=raw.file, row=raw.row, reason=raw.error or "no arch"))
            continue
        try:
            arch = canonicalize(space, raw.arch)
            networks.setdefault(arch.key(), keyer(arch))
        except ArchitectureError as error:
            rejected.append(RowError(file=raw.file, row=raw.row, reason=f"arch: {error}"))
            continue
        except ResolveError as error:
            rejected.append(RowError(file=raw.file, row=raw.row, reason=f"network: {error}"))
            continue
        accepted.append((arch, raw.metrics, 1, f"{raw.file}:{raw.row}"))
    dataset, merged = (None, 0)
    if accepted:
        # Rows of equivalent architectures (one compiled network) become one row.
        def network(arch: Architecture) -> str:
            return networks[arch.key()]

        # Only the names some row has: a compact copy of a table may leave columns out.
        present = {name for _, metrics, _, _ in accepted for name in metrics}
        order = [name for name in metric_order if name in present]
        dataset, merged = from_records(space, accepted, order, key=network)
    architectures = len({arch.key() for arch, *_ in accepted})
    report = ImportReport(
        format=fmt,
        files=list(files),
        read=read,
        distinct_raw=len(distinct),
        imported=len(dataset) if dataset is not None else 0,
        merged=merged,
        architectures=architectures,
        equivalent=architectures - (len(dataset) if dataset is not None else 0),
        rejected=rejected,
        metrics=list(dataset.metric_names) if dataset is not None else [],
        notes=notes,
    )
    return ImportResult(dataset=dataset, report=report)


def import_files(
    fmt: str,
    paths: Sequence[str | Path],
    space: Space,
    mapping: GenericMapping | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Import `paths` in format `fmt` (one of FORMATS) into a dataset of `space`."""
    files = [str(p) for p in paths]
    if not files:
        raise DatasetError("no input files")
    for name in files:
        if not Path(name).is_file():
            raise DatasetError(f"{name}: no such file")
    if fmt == "ofa":
        return import_ofa(files, space, progress)
    if fmt == "nas-bench-macro":
        return import_nas_bench_macro(files, space, progress)
    if fmt == "generic":
        if mapping is None:
            raise DatasetError(
                "the generic importer needs a mapping (architecture column, metric columns)",
                remedies=(Remedy("map", "to give one", "MAPPING.json"),),
            )
        return import_generic(files, space, mapping, progress)
    raise DatasetError(f"unknown format '{fmt}' (formats: {', '.join(FORMATS)})")


class _DuplicateKey(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a repeated key is an error, not a silent "last one wins"."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"the key '{key}' appears twice in one object")
        result[key] = value
    return result


def _strict_loads(text: str) -> Any:
    """json.loads that refuses duplicate keys; over-long integers and too deep nesting
    come out as ValueError like any other bad JSON."""
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _read_text(path: str) -> str:
    """A UTF-8 file's text (a leading BOM dropped); a clear DatasetError otherwise."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read: {error.strerror or error}") from None


def _read_json(path: str) -> Any:
    text = _read_text(path)
    try:
        return _strict_loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}"
        ) from None
    except ValueError as error:
        raise DatasetError(f"{path}: not valid JSON: {error}") from None


def _open_csv(
    path: str, delimiter: str = ",", used: Sequence[str] = ()
) -> tuple[list[str], Iterator[tuple[int, dict | ValueError]]]:
    """The header and the rows of a CSV file. A row whose cell count differs from the
    header's (a short row, a file cut mid-row, cells beyond the header) comes back as a
    ValueError, to be rejected and counted, never silently padded or cut. A column in
    `used` that the header names twice is an error (which one did the user mean?)."""
    if len(delimiter) != 1:
        raise DatasetError(f"the CSV delimiter must be one character, not {delimiter!r}")
    text = _read_text(path)
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = next(reader, [])
    except csv.Error as error:
        raise DatasetError(f"{path}:1: bad CSV header: {error}") from None
    seen: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if name in seen and name in used:
            raise DatasetError(
                f"{path}: the header names column '{name}' twice (columns {seen[name]} and "
                f"{number}); rename one of them"
            )
        seen.setdefault(name, number)

    def rows() -> Iterator[tuple[int, dict | ValueError]]:
        try:
            for cells in reader:
                # reader.line_num is the line the row ended on: what an editor shows.
                if not cells:
                    continue  # a blank line
                if len(cells) != len(header):
                    yield (
                        reader.line_num,
                        ValueError(f"{len(cells)} cells, the header has {len(header)} columns"),
                    )
                    continue
                row: dict[str, str] = {}
                for name, cell in zip(header, cells, strict=True):
                    row.setdefault(name, cell)  # the first of a repeated (unused) column
                yield reader.line_num, row
        except csv.Error as error:
            raise DatasetError(f"{path}:{reader.line_num}: bad CSV: {error}") from None

    return header, rows()


def _literal(text: str) -> Any:
    """A JSON or Python-literal value from text; never evaluates code."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError("neither JSON nor a Python literal") from None


def _metric_or_error(name: str, value: object) -> tuple[float | None, str | None]:
    """Parse one cell: None for an empty cell, an error text for a non-number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None, f"{name}: {value!r} is not a number"
        checked = metric_value(number)
    else:
        checked = metric_value(value)
    if checked is None:
        return None, f"{name}: {value!r} is not a finite number"
    return checked, None


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _sanitize(name: str) -> str:
    """A metric name a target expression can use (`Top-1` -> `Top_1`, `1x` -> `m_1x`)."""
    cleaned = _clean(name)
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else f"m_{cleaned}"


# ===== OFA subnets =====================================================================


def _ofa_layout(space: Space) -> str | None:
    """Why the space cannot take OFA subnet dicts (None when it can)."""
    for stage in space.stages:
        if len(stage.options) != 1:
            return f"stage {stage.name} has layer alternatives; OFA subnets have one layer type"
        choices = stage.options[0].choices
        if set(choices) != {"kernel", "expand"}:
            have = ", ".join(choices) or "none"
            return (
                f"stage {stage.name}'s layers choose {have}; OFA subnets give `kernel` (ks) "
                "and `expand` (e)"
            )
        if stage.choices:
            return f"stage {stage.name} has stage-level choices, which OFA subnets do not give"
    extra = [g for g in space.choices if g != "resolution"]
    if extra:
        return f"global choice '{extra[0]}' has no field in OFA subnets (only r: resolution)"
    return None


def ofa_subnet_to_arch(space: Space, subnet: dict[str, Any]) -> dict[str, Any]:
    """An OFA subnet dict (`ks`, `e`, `d`, `r`) as a raw architecture of `space`.

    Stage i takes the i-th group of `len(ks) // len(d)` slots; only its first d[i] are
    used (canonicalize drops the rest). `r` sets the global `resolution`, or must equal
    the space's fixed input size. Raises ValueError with the reason.
    """
    odd = [key for key in subnet if not isinstance(key, str)]
    if odd:
        raise ValueError(f"field names must be strings, not {odd[0]!r}")
    unknown = sorted(set(subnet) - {"ks", "e", "d", "r", "wid"})
    if unknown:
        raise ValueError(f"unknown subnet field '{unknown[0]}' (fields: ks, e, d, r, wid)")
    if subnet.get("wid") is not None:
        raise ValueError(f"wid = {subnet['wid']!r}: width choices are not in this space")
    ks, e, d = subnet.get("ks"), subnet.get("e"), subnet.get("d")
    for name, value in (("ks", ks), ("e", e), ("d", d)):
        if not isinstance(value, list) or not value:
            raise ValueError(f"'{name}' must be a non-empty list")
    assert isinstance(ks, list) and isinstance(e, list) and isinstance(d, list)
    stages = space.stages
    if len(d) != len(stages):
        raise ValueError(f"d has {len(d)} entries; the space has {len(stages)} stages")
    if len(ks) != len(e):
        raise ValueError(f"ks has {len(ks)} entries, e has {len(e)}")
    if len(ks) % len(d):
        raise ValueError(f"{len(ks)} ks entries do not split into {len(d)} stages")
    slots = len(ks) // len(d)
    arch_stages = {}
    for i, stage in enumerate(stages):
        group = range(i * slots, (i + 1) * slots)
        layers = [{"kernel": ks[j], "expand": e[j]} for j in group]
        arch_stages[stage.name] = {"depth": d[i], "choices": {}, "layers": layers}
    globals_: dict[str, Any] = {}
    r = subnet.get("r")
    if isinstance(r, list):
        if len(r) != 1:
            raise ValueError(f"r = {r!r}: expected one resolution")
        r = r[0]
    if "resolution" in space.choices:
        if r is None:
            raise ValueError("missing 'r' (the resolution)")
        globals_["resolution"] = r
    elif r is not None:
        size = space.input.get("size")
        fixed = size.value if isinstance(size, Const) else None
        if fixed != r:
            raise ValueError(f"r = {r!r}, but the space's input size is fixed at {fixed}")
    return {"globals": globals_, "stages": arch_stages}


def _help_metrics(record: dict[str, Any]) -> tuple[dict[str, float], str | None]:
    """Metrics of a HELP-style JSON record: `latency_ms.K` -> `lat_K`, numbers by name."""
    metrics: dict[str, float] = {}
    for key, value in record.items():
        if key in ("ks", "e", "d", "r", "wid", "idx"):
            continue
        if isinstance(value, dict):
            prefix = "lat" if key == "latency_ms" else _sanitize(key)
            for sub, inner in value.items():
                name = f"{prefix}_{_clean(str(sub))}"
                number, error = _metric_or_error(f"{key}.{sub}", inner)
                if error:
                    return {}, error
                if number is not None:
                    if name in metrics:
                        return {}, _collision(f"{key}.{sub}", name)
                    metrics[name] = number
            continue
        number, error = _metric_or_error(key, value)
        if error:
            return {}, error
        if number is not None:
            if _sanitize(key) in metrics:
                return {}, _collision(key, _sanitize(key))
            metrics[_sanitize(key)] = number
    return metrics, None


def _collision(key: str, name: str) -> str:
    return f"'{key}' and another field both become metric '{name}'; rename one of them"


def _subnet_key(subnet: object) -> str:
    try:
        return json.dumps(subnet, sort_keys=True, default=str)
    except (TypeError, ValueError):  # keys of mixed types do not sort
        return repr(subnet)


def _ofa_rows(space: Space, files: Sequence[str], notes: list[str]) -> Iterator[_Raw]:
    for path in files:
        if path.lower().endswith(".csv"):
            yield from _dynast_rows(space, path, notes)
        else:
            yield from _help_rows(space, path)


def _dynast_rows(space: Space, path: str, notes: list[str]) -> Iterator[_Raw]:
    header, rows = _open_csv(path, used=[DYNAST_ARCH_COLUMN, *DYNAST_COLUMNS])
    if DYNAST_ARCH_COLUMN not in header:
        raise DatasetError(
            f"{path}: no '{DYNAST_ARCH_COLUMN}' column (columns: {', '.join(header)})"
        )
    table = list(rows)
    broken = [(line, row) for line, row in table if isinstance(row, ValueError)]
    table = [(line, row) for line, row in table if not isinstance(row, ValueError)]
    columns = {c: m for c, m in DYNAST_COLUMNS.items() if c in header}
    latency = "Latency (ms)"
    if latency in columns and all(
        _metric_or_error(latency, row.get(latency))[0] in (None, 0.0) for _, row in table
    ):
        # DyNAS-T's published files never measured latency: a column of zeros is no label.
        del columns[latency]
        notes.append(f"{Path(path).name}: dropped '{latency}' (0 in every row: not measured)")
    ignored = [c for c in header if c != DYNAST_ARCH_COLUMN and c not in DYNAST_COLUMNS]
    if ignored:
        notes.append(f"{Path(path).name}: ignored column(s) {', '.join(ignored)}")
    for line, problem in broken:
        yield _Raw(
            file=path, row=line, arch=None, metrics={}, key=f"{path}:{line}", error=str(problem)
        )
    for line, row in table:
        text = row.get(DYNAST_ARCH_COLUMN) or ""
        raw = _Raw(file=path, row=line, arch=None, metrics={}, key=text)
        try:
            subnet = _literal(text)
            if not isinstance(subnet, dict):
                raise ValueError("expected a dict")
            raw.key = _subnet_key(subnet)
            raw.arch = ofa_subnet_to_arch(space, subnet)
        except ValueError as error:
            raw.error = f"{DYNAST_ARCH_COLUMN}: {error}"
            yield raw
            continue
        for column, name in columns.items():
            number, error = _metric_or_error(column, row.get(column))
            if error:
                raw.error = error
                break
            if number is not None:
                raw.metrics[name] = number
        yield raw


def _jsonl_records(path: str) -> Iterator[tuple[int | str, Any]]:
    text = _read_text(path)
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield number, _strict_loads(line)
            except json.JSONDecodeError as error:
                yield number, ValueError(f"not valid JSON: {error.msg}")
            except ValueError as error:
                yield number, ValueError(f"not valid JSON: {error}")


def _json_records(path: str) -> Iterator[tuple[int | str, Any]]:
    if path.lower().endswith(".jsonl"):
        yield from _jsonl_records(path)
        return
    data = _read_json(path)
    if isinstance(data, list):
        yield from enumerate(data)
    elif isinstance(data, dict):
        yield from data.items()
    else:
        raise DatasetError(f"{path}: expected a list or an object of records")


def _help_rows(space: Space, path: str) -> Iterator[_Raw]:
    for row, record in _json_records(path):
        raw = _Raw(file=path, row=row, arch=None, metrics={}, key=f"{path}:{row}")
        if isinstance(record, ValueError):
            raw.error = str(record)
            yield raw
            continue
        if not isinstance(record, dict):
            raw.error = "expected an object with ks, e, d, r"
            yield raw
            continue
        subnet = {k: record[k] for k in ("ks", "e", "d", "r", "wid") if k in record}
        raw.key = _subnet_key(subnet)
        try:
            raw.arch = ofa_subnet_to_arch(space, subnet)
        except ValueError as error:
            raw.error = str(error)
            yield raw
            continue
        raw.metrics, raw.error = _help_metrics(record)
        yield raw


def import_ofa(
    paths: Sequence[str], space: Space, progress: Progress | None = None
) -> ImportResult:
    """OFA subnets from DyNAS-T CSVs (`*.csv`) and HELP-style JSON / JSON lines."""
    reason = _ofa_layout(space)
    if reason:
        raise DatasetError(f"space {space.name} cannot take OFA subnets: {reason}")
    notes: list[str] = []
    rows = list(_ofa_rows(space, paths, notes))  # read first: notes are filled while reading
    return _collect("ofa", paths, space, iter(rows), _merge_notes(notes), progress)


def _merge_notes(notes: list[str]) -> list[str]:
    """`file: message` notes as one line per message, naming the files."""
    files: dict[str, list[str]] = {}
    for note in notes:
        name, _, message = note.partition(": ")
        files.setdefault(message, []).append(name)
    return [f"{message} in {', '.join(names)}" for message, names in files.items()]


# ===== NAS-Bench-Macro =================================================================


def _macro_layout(space: Space) -> str | None:
    for stage in space.stages:
        labels = {o.label for o in stage.options}
        if labels != set(NAS_BENCH_MACRO_LABELS.values()):
            return (
                f"stage {stage.name}'s layers are {', '.join(sorted(labels))}; NAS-Bench-Macro "
                f"needs {', '.join(NAS_BENCH_MACRO_LABELS.values())} (spaces/nas_bench_macro.abs)"
            )
        if len(stage.depths) != 1:
            return f"stage {stage.name} has a depth choice; NAS-Bench-Macro's depths are fixed"
        if stage.choices or any(o.choices for o in stage.options):
            return f"stage {stage.name} has choices NAS-Bench-Macro does not give"
    if space.choices:
        return f"global choice '{next(iter(space.choices))}' is not in NAS-Bench-Macro"
    return None


def _macro_metrics(value: dict[str, Any]) -> tuple[dict[str, float], str | None]:
    metrics: dict[str, float] = {}
    for key, item in value.items():
        if key == "test_acc":
            if not isinstance(item, list):
                return {}, "test_acc: expected a list"
            for i, acc in enumerate(item):
                number, error = _metric_or_error(f"test_acc[{i}]", acc)
                if error:
                    return {}, error
                if number is not None:
                    metrics[f"acc_seed{i}"] = number
            continue
        number, error = _metric_or_error(key, item)
        if error:
            return {}, error
        if number is not None:
            if _sanitize(key) in metrics:
                return {}, _collision(key, _sanitize(key))
            metrics[_sanitize(key)] = number
    return metrics, None


def import_nas_bench_macro(
    paths: Sequence[str], space: Space, progress: Progress | None = None
) -> ImportResult:
    """NAS-Bench-Macro's JSON (`"02012100": {test_acc, mean_acc, std, params, flops}`)."""
    reason = _macro_layout(space)
    if reason:
        raise DatasetError(f"space {space.name} cannot take NAS-Bench-Macro rows: {reason}")
    depths = [(s.name, s.depths[0]) for s in space.stages]
    total = sum(d for _, d in depths)

    def rows() -> Iterator[_Raw]:
        for path in paths:
            data = _read_json(path)
            if not isinstance(data, dict):
                raise DatasetError(f"{path}: expected an object keyed by architecture strings")
            for key, value in data.items():
                raw = _Raw(file=path, row=key, arch=None, metrics={}, key=str(key))
                bad = [c for c in str(key) if c not in NAS_BENCH_MACRO_LABELS]
                if len(str(key)) != total or bad:
                    raw.error = f"key {key!r}: expected {total} digits from 0, 1, 2"
                    yield raw
                    continue
                if not isinstance(value, dict):
                    raw.error = "expected an object of metrics"
                    yield raw
                    continue
                stages, start = {}, 0
                for name, depth in depths:
                    layers = [{"op": NAS_BENCH_MACRO_LABELS[c]} for c in key[start : start + depth]]
                    stages[name] = {"depth": depth, "choices": {}, "layers": layers}
                    start += depth
                raw.arch = {"globals": {}, "stages": stages}
                raw.metrics, raw.error = _macro_metrics(value)
                yield raw

    order = ["mean_acc", "std", "acc_seed0", "acc_seed1", "acc_seed2", "params", "flops"]
    return _collect("nas-bench-macro", paths, space, rows(), [], progress, order)


# ===== generic tables ==================================================================


def _field(record: Any, path: str) -> tuple[bool, Any]:
    """(found, value) of a column: an exact key first, then a dotted path."""
    if isinstance(record, dict) and path in record:
        return True, record[path]
    current = record
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(current) <= index < len(current):
                return False, None
            current = current[index]
        else:
            return False, None
    return True, current


def _generic_records(path: str, mapping: GenericMapping) -> Iterator[tuple[int | str, Any]]:
    fmt = mapping.format
    if fmt is None:
        suffix = Path(path).suffix.lower().lstrip(".")
        if suffix not in ("csv", "json", "jsonl"):
            raise DatasetError(
                f'{path}: cannot tell the format from the extension; set "format" in the '
                "mapping (csv, json or jsonl)"
            )
        fmt = suffix  # type: ignore[assignment]
    if fmt == "csv":
        needed = [mapping.arch, *mapping.metrics.values()]
        header, rows = _open_csv(path, mapping.delimiter, used=needed)
        missing = [c for c in needed if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: no column '{missing[0]}' (columns: {', '.join(header) or 'none'})"
            )
        yield from rows
        return
    if fmt == "jsonl":
        yield from _jsonl_records(path)
        return
    data = _read_json(path)
    if mapping.records:
        found, data = _field(data, mapping.records)
        if not found:
            raise DatasetError(f"{path}: no records at '{mapping.records}'")
    if isinstance(data, list):
        yield from enumerate(data)
    elif isinstance(data, dict):
        for key, value in data.items():
            yield key, ({"$key": key, **value} if isinstance(value, dict) else value)
    else:
        raise DatasetError(f"{path}: expected a list or an object of records")


def import_generic(
    paths: Sequence[str],
    space: Space,
    mapping: GenericMapping,
    progress: Progress | None = None,
) -> ImportResult:
    """A user's own CSV / JSON / JSON-lines table, read as `mapping` says."""
    if not mapping.metrics:
        raise DatasetError("the mapping names no metric columns")
    for name in mapping.metrics:
        reason = check_metric_name(name)
        if reason:
            raise DatasetError(f"mapping: {reason}")
    if mapping.arch_format == "ofa":
        reason = _ofa_layout(space)
        if reason:
            raise DatasetError(f"space {space.name} cannot take OFA subnets: {reason}")
    if mapping.arch_format == "code":
        _check_code_mapping(space, mapping)

    def rows() -> Iterator[_Raw]:
        for path in paths:
            # A mapped metric column that no row of a file has is a wrong mapping, not a
            # file of rows without values: said once, by name, after the file is read.
            found_columns: set[str] = set()
            keys_seen: dict[str, None] = {}
            records = 0
            for row, record in _generic_records(path, mapping):
                records += 1
                if isinstance(record, dict):
                    if len(keys_seen) < 50:
                        keys_seen.update(dict.fromkeys(str(k) for k in list(record)[:50]))
                    found_columns.update(
                        c for c in mapping.metrics.values() if _field(record, c)[0]
                    )
                raw = _Raw(file=path, row=row, arch=None, metrics={}, key="")
                if isinstance(record, ValueError):
                    raw.error = str(record)
                    yield raw
                    continue
                found, value = _field(record, mapping.arch)
                if not found or value is None or value == "":
                    raw.error = f"no architecture in column '{mapping.arch}'"
                    yield raw
                    continue
                try:
                    if mapping.arch_format == "code":
                        raw.key = json.dumps(value)
                        raw.arch = code_to_arch(space, mapping, value)
                    else:
                        if isinstance(value, str):
                            value = _literal(value)
                        if not isinstance(value, dict):
                            raise ValueError("expected an object")
                        raw.key = _subnet_key(value)
                        if mapping.arch_format == "ofa":
                            value = ofa_subnet_to_arch(space, value)
                        elif "arch" in value and "stages" not in value:
                            value = value["arch"]  # a row of `abc sample` output
                        raw.arch = value
                except ValueError as error:
                    raw.error = f"{mapping.arch}: {error}"
                    yield raw
                    continue
                for name, column in mapping.metrics.items():
                    found, cell = _field(record, column)
                    number, error = _metric_or_error(column, cell if found else None)
                    if error:
                        raw.error = error
                        break
                    if number is not None:
                        raw.metrics[name] = number
                yield raw
            absent = [c for c in mapping.metrics.values() if c not in found_columns]
            if records and absent:
                shown = ", ".join(keys_seen) or "none"
                raise DatasetError(
                    f"{path}: the mapping reads column(s) {', '.join(absent)}, which no row "
                    f"has (columns seen: {shown})"
                )

    return _collect("generic", paths, space, rows(), [], progress, list(mapping.metrics))


def _check_code_mapping(space: Space, mapping: GenericMapping) -> None:
    from autobuild_dsl.space.codes import CodeError, pick_code

    try:
        pick_code(space, mapping.code)
    except CodeError as error:
        raise DatasetError(f"mapping: {error}") from None
    if mapping.code_pattern is not None:
        try:
            if re.compile(mapping.code_pattern).groups < 1:
                raise DatasetError("mapping: code_pattern needs a group: (...) around the code")
        except re.error as error:
            raise DatasetError(
                f"mapping: code_pattern is not a regular expression: {error}"
            ) from None


def code_to_arch(space: Space, mapping: GenericMapping, value: Any) -> dict[str, Any]:
    """A cell holding an architecture code -> the raw architecture it stands for.

    A string cell is read as written (a digit string keeps its leading zeros); a list
    cell (JSON, or `[0, 2, 1]` in a CSV) is one token per item."""
    from autobuild_dsl.space.codes import CodeError, decode

    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("a code written as a number loses its leading zeros; write it as a string")
    if mapping.code_pattern is not None:
        if not isinstance(value, str):
            raise ValueError("code_pattern needs a text cell")
        match = re.search(mapping.code_pattern, value)
        if match is None:
            raise ValueError(f"'{value}' does not match code_pattern {mapping.code_pattern}")
        value = match.group(1)
    try:
        return decode(space, value, mapping.code)
    except CodeError as error:
        raise ValueError(str(error)) from None


def load_mapping(path: str | Path) -> GenericMapping:
    """Read a generic-import mapping file (JSON)."""
    data = _read_json(str(path))
    try:
        return GenericMapping.model_validate(data)
    except ValueError as error:
        raise DatasetError(f"{path}: not a valid mapping: {error}") from None


__all__ = [
    "FORMATS",
    "GenericMapping",
    "ImportReport",
    "ImportResult",
    "code_to_arch",
    "import_files",
    "import_generic",
    "import_nas_bench_macro",
    "import_ofa",
    "load_mapping",
    "ofa_subnet_to_arch",
]
