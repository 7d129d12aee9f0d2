"""Target expressions: parsing with the grammar, canonical text, vectorised evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autobuild_dsl.data import LabeledDataset, Target, TargetError, parse_target
from autobuild_dsl.lang import compile_file
from autobuild_dsl.space.decisions import sample

SPACES = Path(__file__).resolve().parent.parent / "spaces"


def dataset(values: dict[str, list[float]]) -> LabeledDataset:
    space = compile_file(SPACES / "nas_bench_macro.abs")
    n = len(next(iter(values.values())))
    return LabeledDataset(
        space=space,
        architectures=sample(space, n, seed=0),
        metric_names=list(values),
        values=np.array(list(values.values()), dtype=float).T,
        sources=[f"d.jsonl:{i + 1}" for i in range(n)],
    )


def test_parse_gives_canonical_text_and_metric_names() -> None:
    target = parse_target("acc-0.5*lat")
    assert isinstance(target, Target)
    assert target.text == "acc - 0.5 * lat"
    assert target.metrics == ["acc", "lat"]
    assert parse_target("(a - b) - (c - d)").text == "a - b - (c - d)"
    assert parse_target("-(a + b) * 2").text == "-(a + b) * 2"
    assert parse_target("max(top1, 70) / log(macs)").metrics == ["top1", "macs"]


def test_evaluate_is_vectorised_and_matches_per_row() -> None:
    data = dataset({"acc": [90.0, 80.0, 70.0], "lat": [2.0, 4.0, 1.0]})
    target = parse_target("acc - 0.5 * lat + sqrt(abs(-lat)) - max(acc, 85) + min(lat, 3, 2.5)")
    got = target.evaluate(data)
    for i in range(3):
        acc, lat = data.values[i]
        expected = acc - 0.5 * lat + math.sqrt(lat) - max(acc, 85) + min(lat, 3, 2.5)
        assert got[i] == pytest.approx(expected)
        assert target.evaluate_one({"acc": acc, "lat": lat}) == pytest.approx(expected)
    assert np.allclose(parse_target("exp(log(lat))").evaluate(data), [2.0, 4.0, 1.0])
    assert got.dtype == np.float64 and got.shape == (3,)


def test_constant_target_broadcasts_to_every_row() -> None:
    data = dataset({"acc": [1.0, 2.0]})
    assert parse_target("2 * 3").evaluate(data).tolist() == [6.0, 6.0]


def test_mapping_of_columns_is_accepted() -> None:
    target = parse_target("a / b")
    assert target.evaluate({"a": [1.0, 3.0], "b": [2.0, 4.0]}).tolist() == [0.5, 0.75]


def test_syntax_error_shows_a_caret_under_the_expression() -> None:
    with pytest.raises(TargetError) as caught:
        parse_target("acc - * lat")
    lines = str(caught.value).split("\n")
    assert lines[0].startswith("invalid target expression (column 7): unexpected '*'")
    assert lines[1] == "    acc - * lat"
    assert lines[2] == "    " + " " * 6 + "^"
    assert "string" not in lines[0]


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("acc < 3", "a comparison is not allowed", 5),
        ("acc and lat", "'and' is not allowed", 5),
        ("not acc", "'not' is not allowed", 1),
        ("acc + true", "'true' is not allowed", 7),
        ("floor(acc)", "unknown function 'floor'", 1),
        ("log(a, b)", "log() takes 1 argument(s), got 2", 1),
        ("acc +", "unexpected end of the expression", 6),
        ("x ^ 2", "unexpected character '^'", 3),
    ],
)
def test_rejected_expressions_name_the_place(text: str, message: str, column: int) -> None:
    with pytest.raises(TargetError) as caught:
        parse_target(text)
    first, _, caret = str(caught.value).split("\n")
    assert message in first
    assert caret.index("^") - 4 == column - 1


def test_empty_target_is_an_error() -> None:
    with pytest.raises(TargetError, match="empty"):
        parse_target("   ")


def test_unknown_metric_lists_what_the_data_has() -> None:
    data = dataset({"top1": [1.0], "macs": [2.0]})
    with pytest.raises(TargetError, match=r"unknown metric 'acc' \(the data has: macs, top1\)"):
        parse_target("acc").evaluate(data)


def test_non_finite_result_names_the_row() -> None:
    data = dataset({"acc": [1.0, 0.0, 2.0, -1.0]})
    with pytest.raises(TargetError, match=r"is infinite at row 1 \(d.jsonl:2\) \(acc = 0.0\)"):
        parse_target("1 / acc").evaluate(data)
    with pytest.raises(TargetError, match=r"is NaN at row 3 \(d.jsonl:4\).*1 row affected"):
        parse_target("sqrt(acc)").evaluate(data)


def test_missing_metric_value_names_the_row() -> None:
    data = dataset({"acc": [1.0, float("nan")], "lat": [1.0, 2.0]})
    with pytest.raises(TargetError, match=r"row 1 \(d.jsonl:2\) has no value for metric 'acc'"):
        parse_target("acc + lat").evaluate(data)
    assert parse_target("lat").evaluate(data).tolist() == [1.0, 2.0]


def test_target_round_trips_through_json() -> None:
    target = parse_target("top1 - 0.5 * lat_v100_1")
    assert Target.model_validate_json(target.model_dump_json()) == target


names = st.sampled_from(["a", "b", "top1", "lat_v100_1"])
numbers = st.floats(0.001, 1000, allow_nan=False).map(lambda x: round(x, 3))


def expressions(depth: int = 3) -> st.SearchStrategy[str]:
    leaf = st.one_of(names, numbers.map(str))
    if depth == 0:
        return leaf
    inner = expressions(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        inner.map(lambda e: f"-{e}"),
        st.tuples(st.sampled_from(["abs", "exp", "log", "sqrt"]), inner).map(
            lambda t: f"{t[0]}({t[1]})"
        ),
        st.tuples(st.sampled_from(["min", "max"]), inner, inner).map(
            lambda t: f"{t[0]}({t[1]}, {t[2]})"
        ),
    )


@settings(max_examples=150, deadline=None, derandomize=True)
@given(expressions())
def test_canonical_text_parses_back_to_the_same_expression(text: str) -> None:
    target = parse_target(text)
    again = parse_target(target.text)
    assert again.expr == target.expr
    assert again.text == target.text
