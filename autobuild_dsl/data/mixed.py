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
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from autobuild_dsl.data.dataset import (
    DatasetError,
    LabeledDataset,
    Row,
    from_records,
    load_records,
    parse_row,
    row_error,
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

    @classmethod
    def of(cls, plain: LabeledDataset, spaces: list[Space]) -> MixedDataset:
        """`plain`'s rows (of any of `spaces`) as a mixed dataset."""
        kept = {f.name: getattr(plain, f.name) for f in fields(LabeledDataset) if f.init}
        return cls(**kept, spaces=spaces)

    def subset(self, indices: Sequence[int] | np.ndarray) -> MixedDataset:
        return MixedDataset.of(super().subset(indices), list(self.spaces))

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
            self.space, self.architectures, self.metric_names, self.values, self.counts
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
    known = ", ".join(by_name)

    def parse(number: int, line: str) -> Row:
        try:
            record = json.loads(line)
        except ValueError:
            record = None  # parse_row reports it
        arch = record.get("arch") if isinstance(record, dict) else None
        name = arch.get("space") if isinstance(arch, dict) else None
        space = by_name.get(name) if isinstance(name, str) else None
        if space is None and isinstance(arch, dict):
            if name is None:
                raise row_error(
                    str(path),
                    number,
                    f"arch has no 'space' field: a mixed dataset needs one ({known})",
                )
            raise row_error(
                str(path), number, f"arch.space {name!r} is not one of the spaces given ({known})"
            )
        return parse_row(space or spaces[0], str(path), number, line)

    plain, _ = from_records(spaces[0], load_records(path, parse))
    return MixedDataset.of(plain, spaces)


__all__ = ["MixedDataset", "load_mixed_dataset"]
