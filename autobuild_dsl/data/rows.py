"""The import pipeline every format shares: rows as read (`Raw`), the file readers (JSON
that refuses repeated keys, CSV that refuses ragged rows), metric cells, and `collect`, which
checks each row against the space and merges rows of one network into a dataset.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from autobuild_dsl.data.dataset import (
    DatasetError,
    LabeledDataset,
    RowError,
    from_records,
    metric_value,
)
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space
from autobuild_dsl.space.resolve import ResolveError

Progress = Callable[[int, int], None]


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
class Raw:
    """One input row: where it is, its architecture (raw) and its metrics."""

    file: str
    row: int | str
    arch: dict[str, Any] | None
    metrics: dict[str, float]
    key: str  # the architecture as written, to count distinct descriptions
    error: str | None = None


def collect(
    fmt: str,
    files: Sequence[str],
    space: Space,
    rows: Iterator[Raw],
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


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a repeated key is an error, not a silent "last one wins"."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # A plain ValueError: the readers turn it into a row's (or file's) error.
            raise ValueError(f"the key '{key}' appears twice in one object")
        result[key] = value
    return result


def strict_loads(text: str) -> Any:
    """json.loads that refuses duplicate keys; over-long integers and too deep nesting
    come out as ValueError like any other bad JSON."""
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_text(path: str) -> str:
    """A UTF-8 file's text (a leading BOM dropped); a clear DatasetError otherwise."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read: {error.strerror or error}") from None


def read_json(path: str) -> Any:
    text = read_text(path)
    try:
        return strict_loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}"
        ) from None
    except ValueError as error:
        raise DatasetError(f"{path}: not valid JSON: {error}") from None


def open_csv(
    path: str, delimiter: str = ",", used: Sequence[str] = ()
) -> tuple[list[str], Iterator[tuple[int, dict | ValueError]]]:
    """The header and the rows of a CSV file. A row whose cell count differs from the
    header's (a short row, a file cut mid-row, cells beyond the header) comes back as a
    ValueError, to be rejected and counted, never silently padded or cut. A column in
    `used` that the header names twice is an error (which one did the user mean?)."""
    if len(delimiter) != 1:
        raise DatasetError(f"the CSV delimiter must be one character, not {delimiter!r}")
    text = read_text(path)
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


def literal(text: str) -> Any:
    """A JSON or Python-literal value from text; never evaluates code."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError("neither JSON nor a Python literal") from None


def metric_or_error(name: str, value: object) -> tuple[float | None, str | None]:
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


def clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def sanitize(name: str) -> str:
    """A metric name a target expression can use (`Top-1` -> `Top_1`, `1x` -> `m_1x`)."""
    cleaned = clean(name)
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else f"m_{cleaned}"


def collision(key: str, name: str) -> str:
    return f"'{key}' and another field both become metric '{name}'; rename one of them"


def add_metric(
    metrics: dict[str, float], key: str, value: object, name: str | None = None
) -> str | None:
    """Add the cell `value` of field `key` as metric `name` (default: `sanitize(key)`);
    the reason when the cell is not a number or another field already became that metric
    (None: added, or an empty cell)."""
    name = sanitize(key) if name is None else name
    number, error = metric_or_error(key, value)
    if error:
        return error
    if number is not None:
        if name in metrics:
            return collision(key, name)
        metrics[name] = number
    return None


def metrics_of(
    cells: Iterable[tuple[str, object, str | None]],
) -> tuple[dict[str, float], str | None]:
    """Metrics from (field, cell, metric name or None) triples, as `add_metric` adds them;
    ({}, reason) at the first cell that is not a number (or a ValueError the cells raise)."""
    metrics: dict[str, float] = {}
    try:
        for key, value, name in cells:
            error = add_metric(metrics, key, value, name)
            if error:
                return {}, error
    except ValueError as error:
        return {}, str(error)
    return metrics, None


def subnet_key(subnet: object) -> str:
    try:
        return json.dumps(subnet, sort_keys=True, default=str)
    except (TypeError, ValueError):  # keys of mixed types do not sort
        return repr(subnet)


def jsonl_records(path: str) -> Iterator[tuple[int | str, Any]]:
    text = read_text(path)
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield number, strict_loads(line)
            except json.JSONDecodeError as error:
                yield number, ValueError(f"not valid JSON: {error.msg}")
            except ValueError as error:
                yield number, ValueError(f"not valid JSON: {error}")


def json_records(path: str) -> Iterator[tuple[int | str, Any]]:
    if path.lower().endswith(".jsonl"):
        yield from jsonl_records(path)
        return
    data = read_json(path)
    if isinstance(data, list):
        yield from enumerate(data)
    elif isinstance(data, dict):
        yield from data.items()
    else:
        raise DatasetError(f"{path}: expected a list or an object of records")


def check_layout(space: Space, reason: str | None, what: str) -> None:
    """Refuse a space whose layout a format cannot fill (`reason`, None when it can)."""
    if reason:
        raise DatasetError(f"space {space.name} cannot take {what}: {reason}")


def merge_notes(notes: list[str]) -> list[str]:
    """`file: message` notes as one line per message, naming the files."""
    files: dict[str, list[str]] = {}
    for note in notes:
        name, _, message = note.partition(": ")
        files.setdefault(message, []).append(name)
    return [f"{message} in {', '.join(names)}" for message, names in files.items()]


__all__ = [
    "ImportReport",
    "ImportResult",
    "Progress",
    "Raw",
    "add_metric",
    "check_layout",
    "clean",
    "collect",
    "collision",
    "json_records",
    "jsonl_records",
    "literal",
    "merge_notes",
    "metric_or_error",
    "metrics_of",
    "open_csv",
    "read_json",
    "read_text",
    "sanitize",
    "strict_loads",
    "subnet_key",
]
