"""Datasets that mix architectures of several spaces (for ONNX-IR scorers, `--encoding ir`).

A mixed dataset file is an ordinary dataset file (JSON lines, see `dataset.py`) whose rows
belong to different spaces. Each row says which by the `space` field of its `arch`, which
`abc data import` and `save_dataset` always write; so concatenating two imported files
gives a mixed file:

    {"arch": {"space": "ofa_mbv3", ...}, "metrics": {"macs": 2.3e8, "top1": 76.1}}
    {"arch": {"space": "ofa_proxyless", ...}, "metrics": {"macs": 3.1e8}}

Every row is checked against its own space. The first space given is the primary one
(`dataset.space`): the run folder records it as the run's space.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autobuild_dsl.data.dataset import (
    DatasetError,
    LabeledDataset,
    RowError,
    from_records,
    parse_row,
)
from autobuild_dsl.data.splits import LabelStats, label_stats
from autobuild_dsl.space.model import Space


@dataclass(eq=False)
class MixedDataset(LabeledDataset):
    """A LabeledDataset whose architectures come from `spaces` (each arch names its own).

    `space` is the first (primary) space. Per-stage label statistics (which module ranking
    reads) are computed over the primary space's rows only: stages of different spaces are
    not the same thing; the overall mean/sd cover every row.
    """

    spaces: list[Space] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.spaces:
            self.spaces = [self.space]
        names = {s.name for s in self.spaces}
        stray = sorted({a.space for a in self.architectures} - names)
        if stray:
            raise DatasetError(f"architectures of space(s) {', '.join(stray)} not given")

    def space_names(self) -> list[str]:
        """Each row's space name."""
        return [a.space for a in self.architectures]

    def subset(self, indices: Sequence[int] | np.ndarray) -> MixedDataset:
        plain = super().subset(indices)
        return MixedDataset(
            space=plain.space,
            architectures=plain.architectures,
            metric_names=plain.metric_names,
            values=plain.values,
            counts=plain.counts,
            sources=plain.sources,
            spaces=list(self.spaces),
        )

    def label_stats(self, labels: np.ndarray, train: Sequence[int] | None = None) -> LabelStats:
        """`splits.label_stats` over `train`, per-stage parts from the primary space's rows."""
        labels = np.asarray(labels, dtype=np.float64).reshape(-1)
        rows = np.arange(len(self)) if train is None else np.asarray(train, dtype=np.int64)
        primary = [int(i) for i in rows if self.architectures[i].space == self.space.name]
        if len(primary) == len(rows):
            return label_stats(self._plain(), labels, rows)
        picked = labels[rows]
        overall = {
            "count": int(picked.size),
            "mean": float(picked.mean()),
            "sd": float(picked.std()),
        }
        if not primary:
            # No training row of the primary space: no per-stage statistics at all.
            return LabelStats(**overall, by_stage={}, by_unit={})
        return label_stats(self._plain(), labels, primary).model_copy(update=overall)

    def _plain(self) -> LabeledDataset:
        return LabeledDataset(
            space=self.space,
            architectures=self.architectures,
            metric_names=self.metric_names,
            values=self.values,
            counts=self.counts,
        )


def load_mixed_dataset(path: str | Path, spaces: Sequence[Space]) -> MixedDataset:
    """Read a JSON-lines dataset whose rows belong to any of `spaces` (by `arch.space`).

    Every bad row is reported (file:line: reason) in one DatasetError, as `load_dataset`.
    """
    spaces = list(spaces)
    if not spaces:
        raise DatasetError("no space given")
    by_name = {s.name: s for s in spaces}
    if len(by_name) != len(spaces):
        raise DatasetError("two of the spaces have the same name")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read: {error}") from None
    known = ", ".join(by_name)
    records = []
    errors: list[RowError] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None  # parse_row reports it
        arch = record.get("arch") if isinstance(record, dict) else None
        name = arch.get("space") if isinstance(arch, dict) else None
        space = by_name.get(name) if isinstance(name, str) else None
        if space is None and isinstance(arch, dict):
            reason = (
                f"arch.space {name!r} is not one of the spaces given ({known})"
                if name is not None
                else f"arch has no 'space' field: a mixed dataset needs one ({known})"
            )
            errors.append(RowError(file=str(path), row=number, reason=reason))
            continue
        try:
            checked, metrics, count = parse_row(space or spaces[0], str(path), number, line)
        except DatasetError as error:
            errors.extend(error.errors)
            continue
        records.append((checked, metrics, count, f"{path}:{number}"))
    if errors:
        noun = "row" if len(errors) == 1 else "rows"
        raise DatasetError(f"{path}: {len(errors)} bad {noun}:", errors)
    if not records:
        raise DatasetError(f"{path}: holds no rows")
    plain, _ = from_records(spaces[0], records)
    return MixedDataset(
        space=plain.space,
        architectures=plain.architectures,
        metric_names=plain.metric_names,
        values=plain.values,
        counts=plain.counts,
        sources=plain.sources,
        spaces=spaces,
    )


__all__ = ["MixedDataset", "load_mixed_dataset"]
