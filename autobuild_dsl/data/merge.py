"""Join the metrics of the same architectures from several dataset files.

Accuracy from one file and measured latency from another become one row per network
(by network key: two architectures that compile to the same network, such as a stride-1
identity at another place of its stage, are one network and share its metrics). Nothing is averaged silently: two values of one metric for one
architecture (from two files, or two lines of one file) that differ by more than a
relative tolerance are a *disagreement*, reported with both sources; they are averaged
(weighted by their counts) only when the caller asks (`average=True`). Values within the
tolerance are the same measurement written twice: the first is kept.

Rows present in only some files are reported; `inner=True` keeps only the architectures
that every file holds (so `abc sample` output, rows without metrics, picks rows of a table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autobuild_dsl.data.dataset import (
    DatasetError,
    LabeledDataset,
    Row,
    RowError,
    bad_rows,
    parse_row,
    parsed_rows,
)
from autobuild_dsl.errors import Remedy
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space


@dataclass(frozen=True)
class Disagreement:
    """Two values of one metric for one architecture that differ beyond the tolerance."""

    metric: str
    first: float
    first_source: str
    second: float
    second_source: str

    @property
    def relative(self) -> float:
        scale = max(abs(self.first), abs(self.second))
        return abs(self.first - self.second) / scale if scale else 0.0

    def __str__(self) -> str:
        return (
            f"{self.metric}: {self.first:g} ({self.first_source}) vs {self.second:g} "
            f"({self.second_source}), {100 * self.relative:.2g}% apart"
        )


@dataclass
class MergeReport:
    files: list[str]
    rows_per_file: list[int]  # distinct architectures in each file
    rows: int  # architectures in the result
    only_in_some: dict[str, int] = field(default_factory=dict)  # "a.jsonl, b.jsonl" -> count
    dropped: int = 0  # left out by inner=True
    disagreements: list[Disagreement] = field(default_factory=list)
    averaged: int = 0  # (architecture, metric) pairs averaged over repeats
    repeats: int = 0  # (architecture, metric) pairs given more than once, agreeing or not


class MergeError(DatasetError):
    """Inputs that cannot be merged (unreadable files, bad rows, disagreements)."""

    code = "merge"


@dataclass
class _Value:
    value: float
    count: int
    source: str
    repeats: list[tuple[float, int, str]] = field(default_factory=list)


def _with_metrics(line: str) -> str:
    """A row of bare architectures (`abc sample` output) joins with no metrics of its own."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return line  # parse_row says where and why
    if isinstance(record, dict) and "arch" in record and "metrics" not in record:
        record["metrics"] = {}
        return json.dumps(record)
    return line


def _close(a: float, b: float, tolerance: float) -> bool:
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=0.0) or a == b


@dataclass
class _Joined:
    """Every input row, by network: its first architecture, metric values and files."""

    archs: dict[str, Architecture] = field(default_factory=dict)  # in first-seen order
    values: dict[str, dict[str, _Value]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    present: dict[str, list[int]] = field(default_factory=dict)  # indices of its files

    def add(self, key: str, row: Row, source: str, index: int) -> bool:
        """Record one row; True when it is the first of its network in file `index`."""
        arch, metrics, count = row
        if key not in self.archs:
            self.archs[key] = arch
            self.values[key], self.counts[key], self.present[key] = {}, 0, []
        self.counts[key] = max(self.counts[key], count)
        for name, value in metrics.items():
            held = self.values[key].get(name)
            if held is None:
                self.values[key][name] = _Value(value, count, source)
            else:
                held.repeats.append((value, count, source))
        first = index not in self.present[key]
        if first:
            self.present[key].append(index)
        return first


def _join(paths: Sequence[Path], space: Space, report: MergeReport) -> _Joined:
    keyer = network_keyer(space)
    joined = _Joined()
    errors: list[RowError] = []
    for index, path in enumerate(paths):

        def parse(number: int, line: str, path: Path = path) -> Row:
            return parse_row(space, str(path), number, _with_metrics(line))

        here = 0
        for number, row in parsed_rows(path, parse, errors, MergeError):
            here += joined.add(keyer(row[0]), row, f"{path}:{number}", index)
        report.rows_per_file.append(here)
    if errors:
        raise bad_rows(errors, "", f" for space {space.name}", MergeError)
    if not joined.archs:
        raise MergeError("the files hold no rows")
    return joined


def _merged_value(
    name: str, held: _Value, tolerance: float, average: bool, report: MergeReport
) -> tuple[float, int]:
    """One metric of one network: its first value, or with `average` the count-weighted
    mean of its repeats, and how many measurements that mean stands for (0: none averaged).
    Repeats beyond `tolerance` are recorded as disagreements."""
    if not held.repeats:
        return held.value, 0
    report.repeats += 1
    report.disagreements.extend(
        Disagreement(name, held.value, held.source, value, source)
        for value, _, source in held.repeats
        if not _close(held.value, value, tolerance)
    )
    if not average:
        return held.value, 0
    pairs = [(held.value, held.count), *((v, c) for v, c, _ in held.repeats)]
    total = sum(c for _, c in pairs)
    report.averaged += 1
    return sum(v * c for v, c in pairs) / total, total


def _disagreement_error(report: MergeReport, tolerance: float) -> MergeError:
    shown = [str(d) for d in report.disagreements[:20]]
    if len(report.disagreements) > 20:
        shown.append(f"... and {len(report.disagreements) - 20} more")
    # A tolerance (rounded up) under which every one of them is the same measurement.
    needed = math.ceil(max(d.relative for d in report.disagreements) * 1e4) / 1e4
    head = (
        f"{len(report.disagreements)} value(s) disagree by more than {tolerance:g} "
        "(relative); nothing written:"
    )
    return MergeError(
        "\n".join([head, *shown]),
        remedies=(
            Remedy("average", "to average repeated measurements"),
            Remedy("tolerance", "to accept them as one measurement", f"{needed:g}"),
        ),
    )


def merge_files(
    paths: Sequence[str | Path],
    space: Space,
    *,
    tolerance: float = 1e-6,
    average: bool = False,
    inner: bool = False,
) -> tuple[LabeledDataset, MergeReport]:
    """Join `paths` (dataset JSON lines of `space`) into one dataset; see the module doc.

    Raises MergeError for bad rows (all of them, with file and line) and, unless `average`,
    for disagreements beyond `tolerance` (relative)."""
    if len(paths) < 1:
        raise MergeError("give at least one file to merge")
    if tolerance < 0:
        raise MergeError("the tolerance must be at least 0")
    report = MergeReport(files=[str(p) for p in paths], rows_per_file=[], rows=0)
    joined = _join([Path(p) for p in paths], space, report)
    names = list(dict.fromkeys(name for held in joined.values.values() for name in held))
    column = {name: j for j, name in enumerate(names)}
    order = list(joined.archs)
    kept = [k for k in order if not inner or len(joined.present[k]) == len(paths)]
    report.dropped = len(order) - len(kept)
    for key in order:
        if len(joined.present[key]) < len(paths):
            where = ", ".join(report.files[i] for i in joined.present[key])
            report.only_in_some[where] = report.only_in_some.get(where, 0) + 1
    matrix = np.full((len(kept), len(names)), np.nan)
    out_counts = np.array([joined.counts[key] for key in kept], dtype=np.int64)
    for i, key in enumerate(kept):
        for name, held in joined.values[key].items():
            value, total = _merged_value(name, held, tolerance, average, report)
            matrix[i, column[name]] = value
            out_counts[i] = max(out_counts[i], total)
    report.rows = len(kept)
    if report.disagreements and not average:
        raise _disagreement_error(report, tolerance)
    archs = [joined.archs[key] for key in kept]
    return LabeledDataset(space, archs, names, matrix, out_counts), report


__all__ = ["Disagreement", "MergeError", "MergeReport", "merge_files"]
