"""Labeled datasets: architectures of one space with measured metrics.

On disk a dataset is JSON lines, one architecture per line:

    {"arch": {...canonical architecture...}, "metrics": {"top1": 75.4, "macs": 2.5e8}, "count": 2}

`count` (optional, default 1) says how many raw measurements were averaged into the row.
In memory it is a `LabeledDataset`: the canonical architectures, the metric names and a
float matrix [rows, metrics] where NaN marks a metric a row was not measured on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from autobuild_dsl import io
from autobuild_dsl.errors import AbcError, Remedy
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize
from autobuild_dsl.space.model import Space

if TYPE_CHECKING:
    from torch_geometric.data import Data

    from autobuild_dsl.graphs.encode import GraphEncoder, GraphTensors

_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words the target grammar reads as keywords, so a metric so named could not be used.
_RESERVED = frozenset({"and", "or", "not", "true", "false"})
# How many row errors a DatasetError message quotes before summarising the rest.
_SHOWN_ERRORS = 20


class RowError(BaseModel):
    """One input row that was not accepted, and why."""

    model_config = ConfigDict(frozen=True)

    file: str
    row: int | str  # line number (CSV, JSON lines), list index or key (JSON)
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.row}: {self.reason}"


class DatasetError(AbcError, ValueError):
    """A dataset file (or import) that cannot be used; `errors` holds every bad row."""

    code = "dataset"

    def __init__(
        self,
        message: str,
        errors: Sequence[RowError] = (),
        *,
        remedies: tuple[Remedy, ...] = (),
    ) -> None:
        self.errors = list(errors)
        shown = [str(e) for e in self.errors[:_SHOWN_ERRORS]]
        if len(self.errors) > _SHOWN_ERRORS:
            shown.append(f"... and {len(self.errors) - _SHOWN_ERRORS} more")
        text = "\n".join([message, *shown]) if shown else message
        super().__init__(text, remedies=remedies)


def check_metric_name(name: str) -> str | None:
    """Why `name` cannot be a metric name (None when it can): targets must be able to say it."""
    if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
        return (
            f"metric name {name!r} is not a plain name (letters, digits, _; not starting "
            "with a digit), so a target expression could not use it"
        )
    if name in _RESERVED:
        return f"metric name '{name}' is a reserved word of target expressions"
    return None


def metric_value(value: object) -> float | None:
    """A JSON/CSV metric value as a finite float, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range (> ~1.8e308)
        return None
    return number if math.isfinite(number) else None


@dataclass(eq=False)
class LabeledDataset:
    """Architectures of `space` with a float matrix of metrics (NaN = not measured)."""

    space: Space
    architectures: list[Architecture]
    metric_names: list[str]
    values: np.ndarray
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sources: list[str] | None = None  # where each row came from ("file:line"), if known
    _graph_cache: dict[int, tuple[Any, list[Any]]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        n = len(self.architectures)
        self.values = np.asarray(self.values, dtype=np.float64).reshape(n, len(self.metric_names))
        counts = np.asarray(self.counts, dtype=np.int64).reshape(-1)
        # No counts given: each row is one measurement.
        self.counts = np.ones(n, dtype=np.int64) if counts.size == 0 and n else counts
        if self.counts.shape != (n,) or (self.counts < 1).any():
            raise DatasetError(f"counts must be {n} positive integers, one per row")
        if len(set(self.metric_names)) != len(self.metric_names):
            raise DatasetError("metric names repeat: " + ", ".join(self.metric_names))
        for name in self.metric_names:
            reason = check_metric_name(name)
            if reason:
                raise DatasetError(reason)
        if self.sources is not None and len(self.sources) != n:
            raise DatasetError("one source per row is needed")

    def __len__(self) -> int:
        return len(self.architectures)

    def metric(self, name: str) -> np.ndarray:
        """One metric's column (NaN where a row lacks it)."""
        if name not in self.metric_names:
            has = ", ".join(self.metric_names) or "none"
            raise KeyError(f"no metric '{name}' (the data has: {has})")
        return self.values[:, self.metric_names.index(name)]

    def row_metrics(self, i: int) -> dict[str, float]:
        """Row i's measured metrics (missing ones left out)."""
        return {
            name: float(v)
            for name, v in zip(self.metric_names, self.values[i], strict=True)
            if not np.isnan(v)
        }

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledDataset:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return LabeledDataset(
            space=self.space,
            architectures=[self.architectures[i] for i in idx],
            metric_names=list(self.metric_names),
            values=self.values[idx].copy(),
            counts=self.counts[idx].copy(),
            sources=[self.sources[i] for i in idx] if self.sources is not None else None,
        )

    def graphs(self, encoder: GraphEncoder) -> list[Data] | list[GraphTensors]:
        """Every architecture as a graph; encoded once per dataset and encoder. Plain
        tensors (`GraphTensors`) where the encoder offers them: what the scorer packs,
        without importing PyG (~2-3 s) or building its objects (half the encoding time)."""
        entry = self._graph_cache.get(id(encoder))
        # The entry holds the encoder itself, so its id cannot be reused while cached.
        if entry is None or entry[0] is not encoder:
            tensors = getattr(encoder, "encode_tensors", None)
            graphs = (
                [tensors(arch) for arch in self.architectures]
                if tensors is not None
                else encoder.encode_many(self.architectures)
            )
            entry = (encoder, graphs)
            self._graph_cache[id(encoder)] = entry
        return entry[1]

    def to_jsonl(self) -> str:
        lines = []
        for arch, row, count in zip(self.architectures, self.values, self.counts, strict=True):
            metrics = {
                name: _plain(float(v))
                for name, v in zip(self.metric_names, row, strict=True)
                if not np.isnan(v)
            }
            record = {"arch": arch.model_dump(mode="json"), "metrics": metrics, "count": int(count)}
            lines.append(json.dumps(record, separators=(",", ":")) + "\n")
        return "".join(lines)


def _plain(value: float) -> float | int:
    # Integral values (params, MACs) are written as integers; the float is the same.
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def from_records(
    space: Space,
    records: Iterable[tuple[Architecture, Mapping[str, float], int, str | None]],
    metric_names: Sequence[str] | None = None,
    key: Callable[[Architecture], str] = Architecture.key,
) -> tuple[LabeledDataset, int]:
    """Build a dataset from (canonical arch, metrics, count, source) rows, merging repeats.

    Rows with the same key (by default: the same canonical architecture; an import passes
    `space.equivalence.network_keyer(space)` to merge equivalent networks too) are merged:
    each metric is averaged over the rows that have it, weighted by their counts, and the
    counts add up; the first row's architecture is kept. Returns the dataset and how many
    rows were merged into an earlier one.
    """
    names: list[str] = list(metric_names or [])
    order: list[str] = []
    archs: dict[str, Architecture] = {}
    seen: dict[str, dict[str, list[tuple[float, int]]]] = {}
    counts: dict[str, int] = {}
    sources: dict[str, str | None] = {}
    merged = 0
    for arch, metrics, count, source in records:
        row_key = key(arch)
        if row_key in archs:
            merged += 1
        else:
            archs[row_key] = arch
            order.append(row_key)
            seen[row_key], counts[row_key] = {}, 0
            sources[row_key] = source
        counts[row_key] += count
        for name, value in metrics.items():
            if name not in names:
                names.append(name)
            seen[row_key].setdefault(name, []).append((value, count))
    values = np.full((len(order), len(names)), np.nan)
    for i, row_key in enumerate(order):
        for j, name in enumerate(names):
            pairs = seen[row_key].get(name)
            if not pairs:
                continue
            # One value (or equal values: equivalent networks of a benchmark) is kept as
            # is: value * count / count need not round-trip exactly.
            if all(v == pairs[0][0] for v, _ in pairs):
                values[i, j] = pairs[0][0]
            else:
                # Weights first: v * c of two huge values could overflow to infinity,
                # a weighted mean of finite values never does.
                total = sum(c for _, c in pairs)
                values[i, j] = math.fsum(v * (c / total) for v, c in pairs)
    known = [sources[k] for k in order]
    dataset = LabeledDataset(
        space=space,
        architectures=[archs[k] for k in order],
        metric_names=names,
        values=values,
        counts=np.array([counts[k] for k in order], dtype=np.int64),
        sources=[s or "" for s in known] if any(known) else None,
    )
    return dataset, merged


def parse_row(space: Space, file: str, line: int, text: str) -> tuple[Architecture, dict, int]:
    """One JSON-lines row of a dataset file, checked; raises RowError-carrying DatasetError."""
    raw, metrics, count = parse_record(file, line, text)
    try:
        arch = canonicalize(space, raw)
    except ArchitectureError as error:
        raise row_error(file, line, f"arch: {error}") from None
    return arch, metrics, count


def parse_record(file: str, line: int, text: str) -> tuple[Any, dict[str, float], int]:
    """One JSON-lines row as written: (raw architecture, metrics, count), the architecture
    not yet checked against a space. Raises RowError-carrying DatasetError."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise row_error(file, line, f"not valid JSON: {error.msg} (column {error.colno})") from None
    except ValueError as error:  # an integer of more than 4300 digits
        raise row_error(file, line, f"not valid JSON: {error}") from None
    if not isinstance(record, dict):
        raise row_error(file, line, "expected an object with 'arch' and 'metrics'")
    unknown = sorted(set(record) - {"arch", "metrics", "count"})
    if unknown:
        raise row_error(file, line, f"unknown field '{unknown[0]}' (fields: arch, metrics, count)")
    if "arch" not in record:
        raise row_error(file, line, "missing 'arch'")
    raw_metrics = record.get("metrics")
    if not isinstance(raw_metrics, dict):
        raise row_error(file, line, "'metrics' must be an object of name: number")
    metrics: dict[str, float] = {}
    for name, value in raw_metrics.items():
        reason = check_metric_name(name)
        if reason:
            raise row_error(file, line, reason)
        number = metric_value(value)
        if number is None:
            raise row_error(file, line, f"metrics.{name}: {value!r} is not a finite number")
        metrics[name] = number
    count = record.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise row_error(file, line, f"count: {count!r} is not a positive integer")
    return record["arch"], metrics, count


def row_error(file: str, row: int | str, reason: str) -> DatasetError:
    error = RowError(file=file, row=row, reason=reason)
    return DatasetError(str(error), [error])


# A row as parsed: (architecture, metrics, count).
Row = tuple[Any, dict[str, float], int]


def read_dataset_text(path: Path, kind: type[DatasetError] = DatasetError) -> str:
    """A dataset file's text (a leading BOM dropped); `kind` says what could not be read."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise kind(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise kind(f"{path}: cannot read: {error}") from None


def parsed_rows(
    path: Path,
    parse: Callable[[int, str], Row],
    errors: list[RowError],
    kind: type[DatasetError] = DatasetError,
) -> Iterator[tuple[int, Row]]:
    """(line number, `parse(number, line)`) of every non-blank line of a JSON-lines file;
    the rows `parse` refuses go to `errors`, so every bad row is reported at once."""
    for number, line in enumerate(read_dataset_text(path, kind).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = parse(number, line)
        except DatasetError as error:
            errors.extend(error.errors)
            continue
        yield number, row


def bad_rows(
    errors: list[RowError], where: str, what: str = "", kind: type[DatasetError] = DatasetError
) -> DatasetError:
    """One error for every bad row: `{where}N bad rows{what}:` and the rows."""
    noun = "row" if len(errors) == 1 else "rows"
    return kind(f"{where}{len(errors)} bad {noun}{what}:", errors)


def load_records(
    path: Path, parse: Callable[[int, str], Row], what: str = ""
) -> list[tuple[Any, dict[str, float], int, str]]:
    """Every row of a dataset file, parsed and with its source (`file:line`)."""
    errors: list[RowError] = []
    records = [(*row, f"{path}:{number}") for number, row in parsed_rows(path, parse, errors)]
    if errors:
        raise bad_rows(errors, f"{path}: ", what)
    if not records:
        raise DatasetError(f"{path}: holds no rows")
    return records


def load_dataset(path: str | Path, space: Space) -> LabeledDataset:
    """Read a JSON-lines dataset and check every architecture against `space`.

    Every bad row is reported (file:line: reason) in one DatasetError. Rows that repeat an
    architecture are merged (see `from_records`).
    """
    path = Path(path)

    def parse(number: int, line: str) -> Row:
        return parse_row(space, str(path), number, line)

    dataset, _ = from_records(space, load_records(path, parse, f" for space {space.name}"))
    return dataset


def write_text_atomic(path: str | Path, text: str, overwrite: bool = True) -> None:
    """Write the whole file or nothing: a temporary file renamed into place."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists")
    io.write_atomic(path, text)


def save_dataset(dataset: LabeledDataset, path: str | Path, overwrite: bool = True) -> None:
    """Write the dataset as JSON lines, atomically (a reader never sees half a file)."""
    write_text_atomic(path, dataset.to_jsonl(), overwrite=overwrite)


__all__ = [
    "DatasetError",
    "LabeledDataset",
    "RowError",
    "check_metric_name",
    "from_records",
    "load_dataset",
    "metric_value",
    "parse_record",
    "save_dataset",
]
