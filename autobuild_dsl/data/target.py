"""Target expressions over metrics (`top1 - 0.5 * lat_v100_1`), parsed by the grammar.

The text is parsed with the `.abs` grammar's `target` start rule and lowered to the same
typed `Expr` the language uses, so evaluation never touches Python's eval. A target is
arithmetic only: numbers, metric names, + - * /, unary minus, parentheses and the
functions log, exp, sqrt, abs, min, max.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.expr import (
    Binary,
    Call,
    Const,
    Expr,
    ExprError,
    Ref,
    Unary,
    evaluate,
    format_expr,
    names_in,
)

if TYPE_CHECKING:
    from autobuild_dsl.data.dataset import LabeledDataset
    from autobuild_dsl.lang.syntax import LocatedExpr


class TargetError(AbcError, ValueError):
    """A target expression that does not parse, or cannot be evaluated on the data."""

    code = "target"


_COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")


def _not_arithmetic(expr: Expr) -> str | None:
    """What to call an expression a target may not use, or None."""
    if isinstance(expr, Binary) and expr.op in ("and", "or"):
        return f"'{expr.op}'"
    if isinstance(expr, Binary) and expr.op in _COMPARISONS:
        return "a comparison"
    if isinstance(expr, Unary) and expr.op == "not":
        return "'not'"
    if isinstance(expr, Const) and isinstance(expr.value, bool):
        return "'true'" if expr.value else "'false'"
    if isinstance(expr, Const) and isinstance(expr.value, str):
        return "a string"
    return None


def _located(text: str, line: int, column: int, message: str) -> TargetError:
    lines = text.split("\n")
    source_line = lines[line - 1] if 1 <= line <= len(lines) else ""
    prefix = "".join("\t" if ch == "\t" else " " for ch in source_line[: max(column, 1) - 1])
    where = f"line {line}, column {column}" if len(lines) > 1 else f"column {column}"
    return TargetError(
        f"invalid target expression ({where}): {message}\n    {source_line}\n    {prefix}^"
    )


def _check_arithmetic(text: str, node: LocatedExpr) -> None:
    what = None if node.grouped else _not_arithmetic(node.expr)
    if what is not None:
        # Point at the operator when there is one (`a < b`), else at the node.
        at = node.op_loc or node.loc
        raise _located(
            text,
            at.line or 1,
            at.column or 1,
            f"{what} is not allowed; a target is arithmetic over metrics (+ - * /, "
            "log, exp, sqrt, abs, min, max)",
        )
    for part in node.parts:
        _check_arithmetic(text, part)


class Target(BaseModel):
    """A parsed target: its canonical text and its expression tree."""

    model_config = ConfigDict(frozen=True)

    text: str
    expr: Expr

    @property
    def metrics(self) -> list[str]:
        """The metric names the expression reads, in order of first use."""
        return names_in(self.expr)

    def evaluate(self, data: LabeledDataset | Mapping[str, object]) -> np.ndarray:
        """The target for every row, as float64; names the row where it is not finite.

        `data` is a LabeledDataset, or a mapping from metric name to a column (array).
        """
        columns, rows, sources = _columns(data)
        self.check_known(columns)
        for name in self.metrics:
            absent = np.flatnonzero(np.isnan(columns[name]))
            if absent.size:
                raise TargetError(
                    f"target `{self.text}`: {_row(int(absent[0]), sources)} has no value for "
                    f"metric '{name}' ({absent.size} row{'s' if absent.size != 1 else ''} lack it)"
                )
        with np.errstate(all="ignore"):
            result = np.broadcast_to(
                np.asarray(_vector(self.expr, columns), dtype=np.float64), (rows,)
            ).copy()
        bad = np.flatnonzero(~np.isfinite(result))
        if bad.size:
            i = int(bad[0])
            values = ", ".join(f"{m} = {float(columns[m][i])!r}" for m in self.metrics)
            kind = "NaN" if np.isnan(result[i]) else "infinite"
            raise TargetError(
                f"target `{self.text}` is {kind} at {_row(i, sources)}"
                f"{f' ({values})' if values else ''}; {bad.size} row"
                f"{'s' if bad.size != 1 else ''} affected"
            )
        return result

    def check_known(self, names: Iterable[str]) -> None:
        """TargetError naming every metric the expression reads that `names` lacks."""
        known = set(names)
        missing = [m for m in self.metrics if m not in known]
        if missing:
            has = ", ".join(sorted(known)) or "none"
            noun = "metric" if len(missing) == 1 else "metrics"
            listed = ", ".join(f"'{m}'" for m in missing)
            raise TargetError(
                f"target `{self.text}`: unknown {noun} {listed} (the data has: {has})"
            )

    def labeled_rows(self, dataset: LabeledDataset) -> LabeledRows:
        """Which rows carry every metric the target reads. `abc train` and
        `abc data describe` both use this, so they leave out the same rows and say so."""
        self.check_known(dataset.metric_names)
        keep = np.ones(len(dataset), dtype=bool)
        lacking: dict[str, int] = {}
        for name in self.metrics:
            absent = np.isnan(dataset.metric(name))
            if absent.any():
                lacking[name] = int(absent.sum())
            keep &= ~absent
        return LabeledRows(keep=keep, lacking=lacking)

    def evaluate_one(self, metrics: Mapping[str, float]) -> float:
        """The target for one set of metrics (a search evaluator's result)."""

        def lookup(name: str) -> float:
            if name not in metrics:
                has = ", ".join(sorted(metrics)) or "none"
                raise ExprError(f"unknown metric '{name}' (has: {has})")
            return float(metrics[name])

        try:
            value = evaluate(self.expr, lookup)
        except ExprError as error:
            raise TargetError(f"target `{self.text}`: {error}") from None
        value = float(value)  # type: ignore[arg-type]
        if not np.isfinite(value):
            raise TargetError(f"target `{self.text}` is not finite ({value})")
        return value


@dataclass(frozen=True)
class LabeledRows:
    """The rows a target can label: `keep` (a mask) and, per metric, how many rows lack it."""

    keep: np.ndarray
    lacking: dict[str, int]

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def dropped(self) -> int:
        return int(self.keep.size - self.keep.sum())

    def note(self) -> str | None:
        """One line saying what was left out, or None when every row is kept."""
        if not self.dropped:
            return None
        why = ", ".join(f"{n} rows lack {m}" for m, n in self.lacking.items())
        return f"left out {self.dropped:,} of {self.keep.size:,} rows ({why})"


def _row(i: int, sources: list[str] | None) -> str:
    if sources is not None and i < len(sources):
        return f"row {i} ({sources[i]})"
    return f"row {i}"


def _columns(
    data: LabeledDataset | Mapping[str, object],
) -> tuple[dict[str, np.ndarray], int, list[str] | None]:
    if isinstance(data, Mapping):
        columns = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in data.items()}
        lengths = {len(c) for c in columns.values()}
        if len(lengths) > 1:
            raise TargetError("metric columns have different lengths")
        return columns, (lengths.pop() if lengths else 0), None
    columns = {name: data.values[:, j] for j, name in enumerate(data.metric_names)}
    return columns, len(data), data.sources


def _vector(expr: Expr, columns: dict[str, np.ndarray]) -> np.ndarray | float:
    if isinstance(expr, Const):
        return float(expr.value)  # type: ignore[arg-type]
    if isinstance(expr, Ref):
        return columns[expr.name]
    if isinstance(expr, Unary):
        return -_vector(expr.operand, columns)
    if isinstance(expr, Binary):
        left = _vector(expr.left, columns)
        right = _vector(expr.right, columns)
        if expr.op == "+":
            return np.add(left, right)
        if expr.op == "-":
            return np.subtract(left, right)
        if expr.op == "*":
            return np.multiply(left, right)
        if expr.op == "/":
            return np.divide(left, right)
    if isinstance(expr, Call):
        args = [np.asarray(_vector(a, columns), dtype=np.float64) for a in expr.args]
        if expr.func == "log":
            return np.log(args[0])
        if expr.func == "exp":
            return np.exp(args[0])
        if expr.func == "sqrt":
            return np.sqrt(args[0])
        if expr.func == "abs":
            return np.abs(args[0])
        if expr.func == "min":
            return np.minimum.reduce(np.broadcast_arrays(*args))
        if expr.func == "max":
            return np.maximum.reduce(np.broadcast_arrays(*args))
    raise TargetError(f"cannot evaluate {format_expr(expr)}")


def parse_target(text: str) -> Target:
    """Parse a target expression; syntax errors show the expression with a caret."""
    from autobuild_dsl.lang import parse_expression
    from autobuild_dsl.lang.diagnostics import DiagnosticSink

    if not text.strip():
        raise TargetError("the target expression is empty (e.g. `top1` or `acc - 0.5 * lat`)")
    sink = DiagnosticSink()
    located = parse_expression(text, "<target>", sink)
    if located is None:
        first = sink.items[0]
        # The grammar is shared with .abs files: say "expression", and drop strings,
        # which a target cannot use anyway.
        message = first.message.replace("end of the file", "end of the expression")
        message = message.replace(', a string in double quotes ("...")', "")
        raise _located(text, first.line, first.column, message)
    _check_arithmetic(text, located)
    if located.problems:
        loc, message = located.problems[0]
        raise _located(text, max(loc.line, 1), max(loc.column, 1), message)
    expr = located.strict()
    return Target(text=format_expr(expr), expr=expr)


__all__ = ["LabeledRows", "Target", "TargetError", "parse_target"]
