"""The first run a user makes (issue 15): clear errors for missing files and inputs, joining
accuracy and latency onto the same networks, one rule for rows that lack a metric, latency
timed until stable, and feature importance that marks values the data never holds."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autobuild_dsl.cli import cli
from autobuild_dsl.cli.common import run_guarded
from autobuild_dsl.compile.batch import MeasureSettings, spearman
from autobuild_dsl.compile.measure import (
    LatencyPlan,
    LatencyReading,
    median_ci,
    pick_clock,
    time_latencies,
)
from autobuild_dsl.data import load_dataset, parse_target
from autobuild_dsl.data.describe import describe
from autobuild_dsl.data.merge import MergeError, merge_files
from autobuild_dsl.lang import compile_file
from autobuild_dsl.space.decisions import sample

ROOT = Path(__file__).resolve().parent.parent
MACRO = ROOT / "spaces" / "nas_bench_macro.abs"
EXAMPLES = ROOT / "examples" / "nas_bench_macro"


@pytest.fixture(scope="module")
def macro():
    return compile_file(MACRO)


def _invoke(*args: object):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result, " ".join(result.output.split())


def _guarded(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """As the `abc` entry point runs: errors become messages and exit codes."""
    monkeypatch.setattr(sys, "argv", ["abc", *args])
    code = run_guarded(cli)
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def _rows(space, n: int, seed: int, metrics) -> list[dict]:
    archs = sample(space, n, seed=seed)
    return [{"arch": a.model_dump(mode="json"), "metrics": metrics(i)} for i, a in enumerate(archs)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------- errors a user meets


def test_a_missing_space_file_is_exit_1_and_lists_the_files_next_to_it(monkeypatch, capsys) -> None:
    code, text = _guarded(monkeypatch, capsys, "compile", str(ROOT / "spaces" / "ofa_mbv3.abs"))
    assert code == 1
    assert "no such file" in text and "1:1" not in text
    # The closest name first: the file a user most likely meant.
    assert f".abs files in {ROOT / 'spaces'}: {ROOT / 'spaces' / 'mbv3.abs'}," in text
    assert "nas_bench_macro.abs" in text


def test_a_command_missing_its_inputs_shows_a_working_example(monkeypatch, capsys) -> None:
    code, text = _guarded(monkeypatch, capsys, "rank", "--target", "acc-0.5*lat")
    assert code != 0 and "Missing argument" in text
    example = text.split("example: ", 1)[1]
    assert example.startswith("abc rank spaces/nas_bench_macro.abs examples/nas_bench_macro/")
    # The example's data file ships with the checkout.
    assert (ROOT / example.split()[3]).is_file()


def test_the_shipped_example_table_imports_with_acc_params_flops(tmp_path: Path) -> None:
    out = tmp_path / "table.jsonl"
    result, text = _invoke(
        "data", "import", "--from", "nas-bench-macro", EXAMPLES / "nas_bench_macro.json",
        "--space", MACRO, "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, text
    assert "imported 3,969 networks" in text and "metrics: params, flops, acc" in text
    assert (EXAMPLES / "LICENSE").read_text().startswith("Copyright 2021 Xiu Su")


# ------------------------------------------------------------------------------ joining


def test_measure_keeps_the_labels_the_input_rows_carry(macro, tmp_path: Path) -> None:
    rows = _rows(macro, 4, 3, lambda i: {"acc": 90.0 + i, "params": 1})
    source = _write(tmp_path / "labeled.jsonl", rows)
    out = tmp_path / "measured.jsonl"
    result, text = _invoke(
        "measure", MACRO, source, "-o", out, "--metrics", "params,macs", "--device", "meta"
    )
    assert result.exit_code == 0, text
    assert "kept the input's metrics on 4 rows" in text
    assert "measured params replaced the input's values" in text
    data = load_dataset(out, macro)
    assert sorted(data.metric_names) == ["acc", "macs", "params"]
    assert list(data.metric("acc")) == [90.0, 91.0, 92.0, 93.0]
    assert (data.metric("params") > 1).all()  # the measured value, not the input's


def test_merge_joins_metrics_and_reports_rows_in_only_some_files(macro, tmp_path: Path) -> None:
    acc = _write(tmp_path / "acc.jsonl", _rows(macro, 5, 1, lambda i: {"acc": 80.0 + i}))
    lat_rows = _rows(macro, 5, 1, lambda i: {"lat": 1.0 + i})[:3]
    lat = _write(tmp_path / "lat.jsonl", lat_rows)
    out = tmp_path / "joined.jsonl"
    result, text = _invoke("data", "merge", acc, lat, "--space", MACRO, "-o", out)
    assert result.exit_code == 0, text
    assert f"2 architectures only in {acc}" in text
    data = load_dataset(out, macro)
    assert len(data) == 5 and np.isnan(data.metric("lat")).sum() == 2
    inner, report = merge_files([acc, lat], macro, inner=True)
    assert len(inner) == 3 and report.dropped == 2
    assert list(inner.metric("acc")) == [80.0, 81.0, 82.0]
    assert list(inner.metric("lat")) == [1.0, 2.0, 3.0]


def test_merge_reports_a_planted_disagreement_and_averages_only_when_asked(
    macro, tmp_path: Path
) -> None:
    rows = _rows(macro, 3, 2, lambda i: {"acc": 70.0 + i})
    first = _write(tmp_path / "a.jsonl", rows)
    planted = [dict(r) for r in rows]
    planted[1] = {**planted[1], "metrics": {"acc": 75.0}}  # 71 vs 75
    second = _write(tmp_path / "b.jsonl", planted)
    out = tmp_path / "out.jsonl"
    result, text = _invoke("data", "merge", first, second, "--space", MACRO, "-o", out)
    assert result.exit_code == 1 and not out.exists()
    assert "1 value(s) disagree" in text
    assert f"acc: 71 ({first}:2) vs 75 ({second}:2)" in text
    averaged, report = merge_files([first, second], macro, average=True)
    assert report.averaged == 3 and len(report.disagreements) == 1
    assert list(averaged.metric("acc")) == [70.0, 73.0, 72.0]
    assert list(averaged.counts) == [2, 2, 2]
    # Within the tolerance the values are the same measurement: no disagreement.
    close, report = merge_files([first, second], macro, tolerance=0.1)
    assert not report.disagreements or close is None
    with pytest.raises(MergeError, match="disagree"):
        merge_files([first, second], macro, tolerance=0.01)


# ----------------------------------------------------------------- rows lacking a metric


def test_train_and_describe_leave_out_the_same_rows_and_say_so(macro, tmp_path: Path) -> None:
    # 12 rows with acc; only the first 8 also have lat.
    rows = _rows(macro, 12, 4, lambda i: {"acc": 80.0 + i, **({"lat": 1.0 + i} if i < 8 else {})})
    data_file = _write(tmp_path / "data.jsonl", rows)
    target = parse_target("acc - 0.5*lat")
    info = describe(load_dataset(data_file, macro), target)
    assert info.target_dropped == 4 and info.target_lacking == {"lat": 4}
    assert info.target_summary is not None and info.target_summary.rows == 8
    result, text = _invoke(
        "data", "describe", data_file, "--space", MACRO, "--target", "acc - 0.5*lat"
    )
    assert result.exit_code == 0, text
    assert "target left out 4 of 12 rows (4 rows lack lat)" in text
    run_dir = tmp_path / "run"
    result, text = _invoke(
        "train", MACRO, data_file, "--target", "acc - 0.5*lat", "-o", run_dir,
        "--epochs", "1", "--test-fraction", "0.25", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, text
    assert "left out 4 of 12 rows (4 rows lack lat)" in text
    assert json.loads((run_dir / "config.json").read_text())["rows"] == 8


def test_every_unknown_metric_is_named_at_once(macro, tmp_path: Path) -> None:
    data_file = _write(tmp_path / "d.jsonl", _rows(macro, 4, 0, lambda i: {"top1": 1.0 + i}))
    result, text = _invoke(
        "data", "describe", data_file, "--space", MACRO, "--target", "acc - 0.5*lat + top1"
    )
    assert result.exit_code == 1
    assert "unknown metrics 'acc', 'lat' (the data has: top1)" in text


# --------------------------------------------------------------------------- latency


class _FakeSession:
    """A session whose run() only records the order it was called in."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def run(self, _outputs, _feed) -> None:
        self.calls.append(self.name)


def test_latencies_are_timed_interleaved_in_rounds() -> None:
    calls: list[str] = []
    sessions = [(_FakeSession(n, calls), {}) for n in "abc"]
    plan = LatencyPlan(warmup=0, repeats=4, ci=math.inf, time_cap=60, clock="wall")
    readings = time_latencies(sessions, plan, seed=1)
    assert [len(r.times) for r in readings] == [4, 4, 4]
    # Every round holds each network once: no network is timed twice before the others.
    rounds = [calls[i : i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # a new order each round


class _SlowingSession:
    """A session whose run takes `cost * slowdown` seconds of busy time, where the shared
    `slowdown` grows as the test goes (a machine getting busier)."""

    def __init__(self, cost: float, clock: list[float], calls: list[float]) -> None:
        self.cost, self.clock, self.calls = cost, clock, calls

    def run(self, _outputs, _feed) -> None:
        self.clock[0] *= 1.2  # every run leaves the machine slower
        end = time.perf_counter() + self.cost * self.clock[0]
        while time.perf_counter() < end:
            pass
        self.calls.append(self.cost)


def test_an_anchor_cancels_a_slow_down_shared_by_every_run() -> None:
    slowdown, calls = [1.0], []
    sessions = [(_SlowingSession(c, slowdown, calls), {}) for c in (0.002, 0.004)]
    anchor = (_SlowingSession(0.002, slowdown, calls), {})
    plan = LatencyPlan(warmup=0, repeats=8, ci=math.inf, time_cap=60, clock="wall")
    readings = time_latencies(sessions, plan, seed=3, anchor=anchor)
    assert [len(r.anchor_times) for r in readings] == [8, 8]
    assert len(calls) == 8 * 3  # the anchor runs once in every round
    # Raw times grow ~1.2^21 over the test; the ratio to the same round's anchor does not.
    assert max(readings[0].times) > 5 * min(readings[0].times)
    rel = [r.metrics(1, plan)["latency_rel"] for r in readings]
    assert rel[0] == pytest.approx(1.0, rel=0.5) and rel[1] == pytest.approx(2.0, rel=0.5)
    assert rel[1] / rel[0] == pytest.approx(2.0, rel=0.4)
    slowdown[0] = 1.0  # (the slow-down compounds: left at 1.2^24 this call took ~25 s)
    assert "latency_rel" not in time_latencies(sessions, plan)[0].metrics(1, plan)


def test_timing_stops_when_the_median_is_stable_or_the_cap_is_reached() -> None:
    steady = LatencyReading(times=[10.0] * 9 + [10.1] * 3)
    plan = LatencyPlan(repeats=10, ci=0.02, time_cap=100.0)
    assert steady.done(plan) and steady.ci < 0.02 and steady.spread < 0.02
    noisy = LatencyReading(times=[1.0, 5.0] * 10, spent=1.0)
    assert noisy.ci > 0.5 and not noisy.done(plan)
    assert LatencyReading(times=noisy.times, spent=100.0).done(plan)  # the time cap
    assert not LatencyReading(times=[10.0] * 5).done(plan)  # fewer than `repeats`
    assert median_ci([1.0] * 5) == math.inf
    metrics = steady.metrics(threads=1, plan=plan)
    assert metrics["latency_runs"] == 12 and metrics["latency_spread"] == 0.0025


def test_the_clock_and_the_latency_name() -> None:
    assert pick_clock("auto", 1) == "cpu" and pick_clock("auto", 4) == "wall"
    with pytest.raises(ValueError, match="one thread"):
        pick_clock("cpu", 2)
    settings = MeasureSettings(metrics=("latency",), name="lat")
    assert settings.named({"latency": 2.0, "latency_spread": 0.1, "params": 3}) == {
        "lat": 2.0,
        "lat_spread": 0.1,
        "params": 3,
    }
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)


def test_measure_writes_latency_under_its_name_with_spread_and_retest(
    macro, tmp_path: Path
) -> None:
    rows = _rows(macro, 3, 5, lambda i: {"acc": 60.0 + i})
    source = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result, text = _invoke(
        "measure", MACRO, source, "-o", out, "--metrics", "lat=latency", "--warmup", "0",
        "--repeats", "6", "--time-cap", "0.05", "--retest",
    )  # fmt: skip
    assert result.exit_code == 0, text
    assert "test-retest Spearman of lat over 3 networks" in text
    assert "test-retest Spearman of lat_rel over 3 networks" in text
    data = load_dataset(out, macro)
    names = ("acc", "lat", "lat_spread", "lat_ci", "lat_runs", "lat_wall", "lat_retest")
    for name in (*names, "lat_rel", "lat_anchor", "lat_rel_retest"):
        assert name in data.metric_names, name
    assert (data.metric("lat_runs") >= 6).all() and set(data.metric("lat_threads")) == {1.0}
    assert list(data.metric("acc")) == [60.0, 61.0, 62.0]


# ------------------------------------------------------------------- feature importance


def test_feature_importance_marks_values_the_data_never_holds(macro, tmp_path: Path) -> None:
    from autobuild_dsl.design.importance import feature_importance, importance_chart
    from autobuild_dsl.scorer.run import EnsembleConfig, train_run
    from autobuild_dsl.scorer.train import TrainConfig

    # No architecture uses mb_e6k5: its score is never fitted to a label.
    texts = {
        json.dumps(a.model_dump(mode="json")).replace("mb_e6k5", "mb_e3k3")
        for a in sample(macro, 40, seed=0)
    }
    rows = [
        {"arch": json.loads(t), "metrics": {"acc": float(i)}} for i, t in enumerate(sorted(texts))
    ]
    assert len(rows) >= 12
    data_file = _write(tmp_path / "d.jsonl", rows)
    run = train_run(
        macro,
        load_dataset(data_file, macro),
        "acc",
        tmp_path / "run",
        train=TrainConfig(epochs=1),
        ensemble=EnsembleConfig(test_fraction=0.25),
        data_path=str(data_file),
    )
    scores = feature_importance(run)
    seen = {(r.category, r.value): r.seen for r in scores}
    # mb_e6k5 is the only layer with expansion 6 and kernel 5.
    assert seen[("expand", 6)] is False and seen[("kernel", 5)] is False
    assert seen[("expand", 3)] is True and seen[("op", "mbconv")] is True
    assert sum(r.seen is False for r in scores) == 2
    chart = importance_chart(scores, tmp_path / "chart.svg")
    assert "kernel = 5  (unseen in data)" in chart.read_text()
    assert "kernel = 3  (unseen" not in chart.read_text()
