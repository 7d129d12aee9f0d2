"""OFA subnets (`ks`, `e`, `d`, `r`) from DyNAS-T's CSVs and HELP-style JSON / JSON lines."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from autobuild_dsl.data.dataset import DatasetError
from autobuild_dsl.data.rows import (
    ImportResult,
    Progress,
    Raw,
    check_layout,
    clean,
    collect,
    json_records,
    literal,
    merge_notes,
    metric_or_error,
    metrics_of,
    open_csv,
    sanitize,
    subnet_key,
)
from autobuild_dsl.space.expr import Const
from autobuild_dsl.space.model import Space

# DyNAS-T's CSV columns -> metric names. `Latency (ms)` is 0 in every published file; it
# is kept (as `latency`) only when some row of the file has a non-zero value.
DYNAST_COLUMNS = {
    "Top-1 Acc (%)": "top1",
    "MACs": "macs",
    "Model Parameters": "params",
    "Latency (ms)": "latency",
}
DYNAST_ARCH_COLUMN = "Sub-network"


def ofa_layout(space: Space) -> str | None:
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


def _help_cells(record: dict[str, Any]) -> Iterator[tuple[str, object, str | None]]:
    """The metric cells of a HELP-style JSON record: `latency_ms.K` -> `lat_K`, numbers by
    name (nested objects as `key_sub`)."""
    for key, value in record.items():
        if key in ("ks", "e", "d", "r", "wid", "idx"):
            continue
        if isinstance(value, dict):
            prefix = "lat" if key == "latency_ms" else sanitize(key)
            for sub, inner in value.items():
                yield f"{key}.{sub}", inner, f"{prefix}_{clean(str(sub))}"
        else:
            yield key, value, None


def _ofa_rows(space: Space, files: Sequence[str], notes: list[str]) -> Iterator[Raw]:
    for path in files:
        if path.lower().endswith(".csv"):
            yield from _dynast_rows(space, path, notes)
        else:
            yield from _help_rows(space, path)


def _dynast_rows(space: Space, path: str, notes: list[str]) -> Iterator[Raw]:
    header, rows = open_csv(path, used=[DYNAST_ARCH_COLUMN, *DYNAST_COLUMNS])
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
        metric_or_error(latency, row.get(latency))[0] in (None, 0.0) for _, row in table
    ):
        # DyNAS-T's published files never measured latency: a column of zeros is no label.
        del columns[latency]
        notes.append(f"{Path(path).name}: dropped '{latency}' (0 in every row: not measured)")
    ignored = [c for c in header if c != DYNAST_ARCH_COLUMN and c not in DYNAST_COLUMNS]
    if ignored:
        notes.append(f"{Path(path).name}: ignored column(s) {', '.join(ignored)}")
    for line, problem in broken:
        yield Raw(
            file=path, row=line, arch=None, metrics={}, key=f"{path}:{line}", error=str(problem)
        )
    for line, row in table:
        text = row.get(DYNAST_ARCH_COLUMN) or ""
        raw = Raw(file=path, row=line, arch=None, metrics={}, key=text)
        try:
            subnet = literal(text)
            if not isinstance(subnet, dict):
                raise ValueError("expected a dict")
            raw.key = subnet_key(subnet)
            raw.arch = ofa_subnet_to_arch(space, subnet)
        except ValueError as error:
            raw.error = f"{DYNAST_ARCH_COLUMN}: {error}"
            yield raw
            continue
        raw.metrics, raw.error = metrics_of((c, row.get(c), name) for c, name in columns.items())
        yield raw


def _help_rows(space: Space, path: str) -> Iterator[Raw]:
    for row, record in json_records(path):
        raw = Raw(file=path, row=row, arch=None, metrics={}, key=f"{path}:{row}")
        if isinstance(record, ValueError):
            raw.error = str(record)
            yield raw
            continue
        if not isinstance(record, dict):
            raw.error = "expected an object with ks, e, d, r"
            yield raw
            continue
        subnet = {k: record[k] for k in ("ks", "e", "d", "r", "wid") if k in record}
        raw.key = subnet_key(subnet)
        try:
            raw.arch = ofa_subnet_to_arch(space, subnet)
        except ValueError as error:
            raw.error = str(error)
            yield raw
            continue
        raw.metrics, raw.error = metrics_of(_help_cells(record))
        yield raw


def import_ofa(
    paths: Sequence[str], space: Space, progress: Progress | None = None
) -> ImportResult:
    """OFA subnets from DyNAS-T CSVs (`*.csv`) and HELP-style JSON / JSON lines."""
    check_layout(space, ofa_layout(space), "OFA subnets")
    notes: list[str] = []
    rows = list(_ofa_rows(space, paths, notes))  # read first: notes are filled while reading
    return collect("ofa", paths, space, iter(rows), merge_notes(notes), progress)


__all__ = ["DYNAST_ARCH_COLUMN", "DYNAST_COLUMNS", "import_ofa", "ofa_layout", "ofa_subnet_to_arch"]
