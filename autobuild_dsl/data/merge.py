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

from autobuild_dsl.data.dataset import DatasetError, LabeledDataset, RowError, parse_row
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
    keyer = network_keyer(space)
    archs: dict[str, Architecture] = {}
    order: list[str] = []
    values: dict[str, dict[str, _Value]] = {}
    counts: dict[str, int] = {}
    present: dict[str, list[int]] = {}
    errors: list[RowError] = []
    report = MergeReport(files=[str(p) for p in paths], rows_per_file=[], rows=0)
    for index, path in enumerate(paths):
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MergeError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise MergeError(f"{path}: cannot read: {error}") from None
        seen_here: set[str] = set()
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                arch, metrics, count = parse_row(space, str(path), number, _with_metrics(line))
            except DatasetError as error:
                errors.extend(error.errors)
                continue
            key = keyer(arch)
            source = f"{path}:{number}"
            if key not in archs:
                archs[key] = arch
                order.append(key)
                values[key], counts[key], present[key] = {}, 0, []
            if key not in seen_here:
                seen_here.add(key)
                present[key].append(index)
            counts[key] = max(counts[key], count)
            for name, value in metrics.items():
                held = values[key].get(name)
                if held is None:
                    values[key][name] = _Value(value, count, source)
                else:
                    held.repeats.append((value, count, source))
        report.rows_per_file.append(len(seen_here))
    if errors:
        noun = "row" if len(errors) == 1 else "rows"
        raise MergeError(f"{len(errors)} bad {noun} for space {space.name}:", errors)
    if not order:
        raise MergeError("the files hold no rows")
    names: list[str] = []
    for key in order:
        for name in values[key]:
            if name not in names:
                names.append(name)
    kept = [k for k in order if not inner or len(present[k]) == len(paths)]
    report.dropped = len(order) - len(kept)
    for key in order:
        if len(present[key]) < len(paths):
            where = ", ".join(report.files[i] for i in present[key])
            report.only_in_some[where] = report.only_in_some.get(where, 0) + 1
    matrix = np.full((len(kept), len(names)), np.nan)
    out_counts = np.ones(len(kept), dtype=np.int64)
    for i, key in enumerate(kept):
        out_counts[i] = counts[key]
        for name, held in values[key].items():
            result = held.value
            if held.repeats:
                report.repeats += 1
                for value, _, source in held.repeats:
                    if not _close(held.value, value, tolerance):
                        report.disagreements.append(
                            Disagreement(name, held.value, held.source, value, source)
                        )
                if average:
                    pairs = [(held.value, held.count), *((v, c) for v, c, _ in held.repeats)]
                    total = sum(c for _, c in pairs)
                    result = sum(v * c for v, c in pairs) / total
                    out_counts[i] = max(out_counts[i], total)
                    report.averaged += 1
            matrix[i, names.index(name)] = result
    report.rows = len(kept)
    if report.disagreements and not average:
        shown = [str(d) for d in report.disagreements[:20]]
        if len(report.disagreements) > 20:
            shown.append(f"... and {len(report.disagreements) - 20} more")
        # A tolerance (rounded up) under which every one of them is the same measurement.
        needed = math.ceil(max(d.relative for d in report.disagreements) * 1e4) / 1e4
        raise MergeError(
            "\n".join(
                [
                    f"{len(report.disagreements)} value(s) disagree by more than "
                    f"{tolerance:g} (relative); nothing written:",
                    *shown,
                ]
            ),
            remedies=(
                Remedy("average", "to average repeated measurements"),
                Remedy("tolerance", "to accept them as one measurement", f"{needed:g}"),
            ),
        )
    dataset = LabeledDataset(
        space=space,
        architectures=[archs[k] for k in kept],
        metric_names=names,
        values=matrix,
        counts=out_counts,
    )
    return dataset, report


__all__ = ["Disagreement", "MergeError", "MergeReport", "merge_files"]
