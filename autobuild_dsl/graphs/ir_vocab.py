"""IR node-feature vocabularies: fitted once over a set of raw IR graphs (several spaces:
their union), then fixed; `_Coder` turns a column of values into codes (exact labels;
nearest value in log scale for numbers)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.graphs.ir_export import IrError, IrGraph

DEFAULT_MAX_VALUES = 64


class IrCategory(BaseModel):
    """A feature category of IR graphs and its fitted vocabulary."""

    model_config = ConfigDict(frozen=True)

    name: str
    group: Literal["op", "attr"]
    kind: Literal["label", "number"]
    vocab: list[Any]
    ops: list[str] = Field(default_factory=list, description="op types the category applies to")


def _column(graph: IrGraph, name: str) -> list[Any]:
    if name == "op":
        return graph.ops
    if name == "size":
        return graph.height
    return getattr(graph, name)


def _representatives(values: list[float], limit: int) -> list[int | float]:
    """At most `limit` values standing for `values`: all of them, or log-scale quantiles."""
    ordered = sorted(set(values))
    if len(ordered) <= limit:
        return ordered
    logs = np.log2(np.maximum(np.asarray(ordered, dtype=np.float64), 1e-9))
    picks = np.quantile(logs, np.linspace(0.0, 1.0, limit))
    chosen = {ordered[int(np.argmin(np.abs(logs - p)))] for p in picks}
    return sorted(chosen)


def fit_categories(
    graphs: Iterable[IrGraph], max_values: int = DEFAULT_MAX_VALUES
) -> list[IrCategory]:
    """The categories and vocabularies over `graphs` (several spaces: their union)."""
    if max_values < 2:
        raise ValueError("max_values must be at least 2")
    seen: dict[str, set[Any]] = {n: set() for n in ("op", "channels", "height", "width")}
    seen.update({n: set() for n in ("kernel", "stride", "groups")})
    applies: dict[str, set[str]] = {n: set() for n in seen}
    square = True
    count = 0
    for graph in graphs:
        count += 1
        for name in seen:
            for op, value in zip(graph.ops, _column(graph, name), strict=True):
                if value is not None:
                    seen[name].add(value)
                    applies[name].add(op)
        square = square and all(
            h == w for h, w in zip(graph.height, graph.width, strict=True) if w is not None
        )
    if count == 0:
        raise IrError("no architectures to fit the IR vocabularies on")
    categories = [IrCategory(name="op", group="op", kind="label", vocab=sorted(seen["op"]))]
    numeric = ["channels", "size"] if square else ["channels", "height", "width"]
    numeric += ["kernel", "stride"]
    for name in numeric:
        source = "height" if name == "size" else name
        values = seen[source]
        if len(values) < 2:
            continue  # the same everywhere: carries no information
        categories.append(
            IrCategory(
                name=name,
                group="attr",
                kind="number",
                vocab=_representatives(sorted(values), max_values),
                ops=sorted(applies[source]),
            )
        )
    if len(seen["groups"]) >= 2:
        categories.append(
            IrCategory(
                name="groups",
                group="attr",
                kind="label",
                vocab=sorted(seen["groups"]),
                ops=sorted(applies["groups"]),
            )
        )
    return categories


class _Coder:
    """Value -> code for one category (exact labels; nearest value in log scale for numbers)."""

    def __init__(self, category: IrCategory) -> None:
        self.category = category
        if category.kind == "label":
            self.codes = {v: i + 1 for i, v in enumerate(category.vocab)}
            return
        logs = np.log2(np.maximum(np.asarray(category.vocab, dtype=np.float64), 1e-9))
        self.cuts = (logs[1:] + logs[:-1]) / 2.0

    def column(self, values: Sequence[Any], where: str) -> np.ndarray:
        out = np.zeros(len(values), dtype=np.int64)
        if self.category.kind == "label":
            for i, value in enumerate(values):
                if value is None:
                    continue
                code = self.codes.get(value)
                if code is None:
                    known = ", ".join(str(v) for v in self.category.vocab)
                    raise IrError(
                        f"{where}: {self.category.name} {value!r} was not in the data the "
                        f"encoder was fitted on (known: {known})"
                    )
                out[i] = code
            return out
        present = np.array([v is not None for v in values], dtype=bool)
        if present.any():
            numbers = np.array([v for v in values if v is not None], dtype=np.float64)
            logs = np.log2(np.maximum(numbers, 1e-9))
            out[present] = np.searchsorted(self.cuts, logs) + 1
        return out
