"""A user's own table (CSV, JSON or JSON lines) read as a `GenericMapping` says: which
column holds the architecture (canonical, an OFA subnet, or a code the space declares) and
which columns are metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.data.dataset import DatasetError, check_metric_name
from autobuild_dsl.data.ofa import ofa_layout, ofa_subnet_to_arch
from autobuild_dsl.data.rows import (
    ImportResult,
    Progress,
    Raw,
    check_layout,
    collect,
    jsonl_records,
    literal,
    metrics_of,
    open_csv,
    read_json,
    subnet_key,
)
from autobuild_dsl.space.model import Space


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
        header, rows = open_csv(path, mapping.delimiter, used=needed)
        missing = [c for c in needed if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: no column '{missing[0]}' (columns: {', '.join(header) or 'none'})"
            )
        yield from rows
        return
    if fmt == "jsonl":
        yield from jsonl_records(path)
        return
    data = read_json(path)
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
    _check_mapping(space, mapping)

    def rows() -> Iterator[Raw]:
        for path in paths:
            yield from _file_rows(space, mapping, path)

    return collect("generic", paths, space, rows(), [], progress, list(mapping.metrics))


def _check_mapping(space: Space, mapping: GenericMapping) -> None:
    """Refuse a mapping that cannot work for `space`, before any file is read."""
    if not mapping.metrics:
        raise DatasetError("the mapping names no metric columns")
    for name in mapping.metrics:
        reason = check_metric_name(name)
        if reason:
            raise DatasetError(f"mapping: {reason}")
    if mapping.arch_format == "ofa":
        check_layout(space, ofa_layout(space), "OFA subnets")
    if mapping.arch_format == "code":
        check_code_mapping(space, mapping)


def _file_rows(space: Space, mapping: GenericMapping, path: str) -> Iterator[Raw]:
    # A mapped metric column that no row of a file has is a wrong mapping, not a file of
    # rows without values: said once, by name, after the file is read.
    found_columns: set[str] = set()
    keys_seen: dict[str, None] = {}
    records = 0
    for row, record in _generic_records(path, mapping):
        records += 1
        if isinstance(record, dict):
            if len(keys_seen) < 50:
                keys_seen.update(dict.fromkeys(str(k) for k in list(record)[:50]))
            found_columns.update(c for c in mapping.metrics.values() if _field(record, c)[0])
        yield _record_row(
            space, mapping, Raw(file=path, row=row, arch=None, metrics={}, key=""), record
        )
    absent = [c for c in mapping.metrics.values() if c not in found_columns]
    if records and absent:
        shown = ", ".join(keys_seen) or "none"
        raise DatasetError(
            f"{path}: the mapping reads column(s) {', '.join(absent)}, which no row "
            f"has (columns seen: {shown})"
        )


def _record_row(space: Space, mapping: GenericMapping, raw: Raw, record: Any) -> Raw:
    """`raw` filled from one record: its architecture and metrics, or why not."""
    if isinstance(record, ValueError):
        raw.error = str(record)
        return raw
    found, value = _field(record, mapping.arch)
    if not found or value is None or value == "":
        raw.error = f"no architecture in column '{mapping.arch}'"
        return raw
    try:
        if mapping.arch_format == "code":
            raw.key = json.dumps(value)
            raw.arch = code_to_arch(space, mapping, value)
        else:
            if isinstance(value, str):
                value = literal(value)
            if not isinstance(value, dict):
                raise ValueError("expected an object")
            raw.key = subnet_key(value)
            if mapping.arch_format == "ofa":
                value = ofa_subnet_to_arch(space, value)
            elif "arch" in value and "stages" not in value:
                value = value["arch"]  # a row of `abc sample` output
            raw.arch = value
    except ValueError as error:
        raw.error = f"{mapping.arch}: {error}"
        return raw
    cells = ((column, _field(record, column)[1], name) for name, column in mapping.metrics.items())
    raw.metrics, raw.error = metrics_of(cells)
    return raw


def check_code_mapping(space: Space, mapping: GenericMapping) -> None:
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
    data = read_json(str(path))
    try:
        return GenericMapping.model_validate(data)
    except ValueError as error:
        raise DatasetError(f"{path}: not a valid mapping: {error}") from None


__all__ = [
    "GenericMapping",
    "check_code_mapping",
    "code_to_arch",
    "import_generic",
    "load_mapping",
]
