"""Reading the input of a batch measurement: architecture files (one JSON value, a list or
JSON lines; bare architectures or dataset rows) and the labels their rows already carry.
Every bad item is reported together, each with its file and line."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize
from autobuild_dsl.space.model import Space

# How many bad input lines an error message quotes before summarising the rest.
_SHOWN = 20


class BatchError(AbcError, ValueError):
    """Bad input for a batch measurement: unreadable files, architectures outside the space,
    an output that cannot be resumed."""

    code = "batch"


def read_arch_records(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """The raw architectures in a file, each with where it was (`file` or `file:line`).

    Accepts one JSON architecture (any layout), a JSON list of them, or JSON lines; an item
    may be the architecture itself or an object holding it under "arch" (as `abc sample`
    and dataset files write it)."""
    return _records(str(path), _read_items(path))


def _read_items(path: str | os.PathLike[str]) -> list[tuple[str, object]]:
    """The JSON items of the file (one JSON value, a list, or JSON lines), with where."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BatchError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BatchError(f"{name}: cannot read: {error}") from None
    items: list[tuple[str, object]] = []
    try:
        whole = json.loads(text)
    except ValueError:  # JSONDecodeError, or an integer of more than 4300 digits
        errors = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"{name}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                errors.append(
                    f"{name}:{number}: not valid JSON: {error.msg} (column {error.colno})"
                )
            except ValueError as error:
                errors.append(f"{name}:{number}: not valid JSON: {error}")
        if errors:
            raise BatchError(_listing(errors)) from None
    else:
        if isinstance(whole, list):
            items = [(f"{name}[{i}]", item) for i, item in enumerate(whole)]
        else:
            items = [(name, whole)]
    return items


def _records(name: str, items: list[tuple[str, object]]) -> list[tuple[str, dict[str, Any]]]:
    records: list[tuple[str, dict[str, Any]]] = []
    errors = []
    for where, item in items:
        if isinstance(item, dict) and "arch" in item:
            item = item["arch"]
        if isinstance(item, dict):
            records.append((where, item))
        else:
            errors.append(f"{where}: expected an architecture object (or one under 'arch')")
    if errors:
        raise BatchError(_listing(errors))
    if not records:
        raise BatchError(f"{name}: holds no architecture")
    return records


def read_labels(path: str | os.PathLike[str], space: Space) -> dict[str, dict[str, float]]:
    """The metrics the rows of an architecture file already carry (`{"arch", "metrics"}`
    rows, as dataset files hold them), by canonical key. A file of bare architectures has
    none. An architecture given twice with different metrics is an error: which to keep
    is the user's call (`abc data merge --average` averages repeats)."""
    labels: dict[str, dict[str, float]] = {}
    where_of: dict[str, str] = {}
    for where, item in _read_items(path):
        if not isinstance(item, dict) or not isinstance(item.get("metrics"), dict):
            continue
        metrics = {
            k: float(v)
            for k, v in item["metrics"].items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if not metrics or not isinstance(item.get("arch"), dict):
            continue
        key = canonical_arch(space, where, item["arch"]).key()
        if key in labels and labels[key] != metrics:
            raise BatchError(
                f"{where}: this architecture is also on {where_of[key]} with other metrics; "
                "average repeated rows first (merging the data with averaging on)"
            )
        labels[key], where_of[key] = metrics, where
    return labels


def canonical_arch(space: Space, where: str, raw: dict[str, Any]) -> Architecture:
    """`raw` checked against `space`; an error says where, which field and why."""
    named = raw.get("space")
    if named is not None and named != space.name:
        # An architecture names its space; one of another space is not taken as ours.
        raise BatchError(
            f"{where}: the architecture is of space {_quoted(named)}, not '{space.name}'"
        )
    try:
        return canonicalize(space, raw)
    except ArchitectureError as error:
        claimed = raw.get("space")
        hint = ""
        if isinstance(claimed, str) and claimed != space.name:
            hint = f" (the architecture names space '{claimed}', this is '{space.name}')"
        raise BatchError(f"{where}: {error}{hint}") from None


def _quoted(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else json.dumps(value, default=str)


def read_architectures(
    path: str | os.PathLike[str], space: Space
) -> list[tuple[str, Architecture]]:
    """Every architecture of the file, canonical; all bad ones reported together."""
    good: list[tuple[str, Architecture]] = []
    errors: list[str] = []
    for where, raw in read_arch_records(path):
        try:
            good.append((where, canonical_arch(space, where, raw)))
        except BatchError as error:
            errors.append(str(error))
    if errors:
        noun = "architecture" if len(errors) == 1 else "architectures"
        raise BatchError(_listing(errors, f"{len(errors)} {noun} outside space {space.name}:"))
    return good


def _listing(lines: Sequence[str], title: str | None = None) -> str:
    shown = list(lines[:_SHOWN])
    if len(lines) > _SHOWN:
        shown.append(f"... and {len(lines) - _SHOWN} more")
    return "\n".join([title, *shown] if title else shown)
