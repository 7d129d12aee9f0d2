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

The shared pipeline and readers are in `rows.py`, OFA in `ofa.py`, generic tables in
`generic.py`; NAS-Bench-Macro and the dispatch (`import_files`) are here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from autobuild_dsl.data.dataset import DatasetError
from autobuild_dsl.data.generic import GenericMapping, code_to_arch, import_generic, load_mapping
from autobuild_dsl.data.ofa import import_ofa, ofa_subnet_to_arch
from autobuild_dsl.data.rows import (
    ImportReport,
    ImportResult,
    Progress,
    Raw,
    check_layout,
    collect,
    metrics_of,
    read_json,
)
from autobuild_dsl.errors import Remedy
from autobuild_dsl.space.model import Space

FORMATS = ("ofa", "nas-bench-macro", "generic")
# NAS-Bench-Macro's digit per layer -> the layer alternative of spaces/nas_bench_macro.abs.
NAS_BENCH_MACRO_LABELS = {"0": "identity", "1": "mb_e3k3", "2": "mb_e6k5"}


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


def _macro_cells(value: dict[str, Any]) -> Iterator[tuple[str, object, str | None]]:
    for key, item in value.items():
        if key != "test_acc":
            yield key, item, None
        elif not isinstance(item, list):
            raise ValueError("test_acc: expected a list")
        else:
            yield from ((f"test_acc[{i}]", acc, f"acc_seed{i}") for i, acc in enumerate(item))


def import_nas_bench_macro(
    paths: Sequence[str], space: Space, progress: Progress | None = None
) -> ImportResult:
    """NAS-Bench-Macro's JSON (`"02012100": {test_acc, mean_acc, std, params, flops}`)."""
    check_layout(space, _macro_layout(space), "NAS-Bench-Macro rows")
    depths = [(s.name, s.depths[0]) for s in space.stages]
    total = sum(d for _, d in depths)

    def rows() -> Iterator[Raw]:
        for path in paths:
            data = read_json(path)
            if not isinstance(data, dict):
                raise DatasetError(f"{path}: expected an object keyed by architecture strings")
            for key, value in data.items():
                raw = Raw(file=path, row=key, arch=None, metrics={}, key=str(key))
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
                raw.metrics, raw.error = metrics_of(_macro_cells(value))
                yield raw

    order = ["mean_acc", "std", "acc_seed0", "acc_seed1", "acc_seed2", "params", "flops"]
    return collect("nas-bench-macro", paths, space, rows(), [], progress, order)


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
