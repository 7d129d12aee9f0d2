"""Search: objectives and fronts, the evaluation cache, evaluators, the evolutionary search
(determinism, resuming, mutation modes, reduced spaces), exhaustive search and plotting."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autobuild_dsl.cli import cli
from autobuild_dsl.lang import compile_file, compile_text
from autobuild_dsl.search.cache import EvaluationCache
from autobuild_dsl.search.evaluators import (
    CommandConfig,
    EvaluationError,
    Evaluator,
    LookupConfig,
    MeasureConfig,
    PredictorConfig,
    PythonConfig,
    make_evaluator,
    parse_evaluator_spec,
)
from autobuild_dsl.search.evolution import (
    RECORDS_FILE,
    SearchConfig,
    SearchProgress,
    SearchStateError,
    load_result,
    run_search,
)
from autobuild_dsl.search.exhaustive import ExhaustiveConfig, SpaceTooLarge, exhaustive_search
from autobuild_dsl.search.pareto import (
    ObjectiveError,
    non_dominated,
    pareto_front,
    parse_objectives,
)
from autobuild_dsl.search.plot import Series, front_2d, plot_fronts
from autobuild_dsl.search.runner import EvaluationRunner
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import iter_architectures
from autobuild_dsl.space.equivalence import distinct, network_key

MACRO = Path(__file__).resolve().parent.parent / "spaces" / "nas_bench_macro.abs"
OP_CODE = {"identity": "0", "mb_e3k3": "1", "mb_e6k5": "2"}


def macro_code(arch: Architecture) -> str:
    """NAS-Bench-Macro's 8-digit key of an architecture of spaces/nas_bench_macro.abs."""
    return "".join(
        OP_CODE[layer["op"]] for s in ("s1", "s2", "s3") for layer in arch.stages[s].layers
    )


def toy_metrics(code: str) -> dict[str, float]:
    """A cheap deterministic stand-in for the benchmark, with a real trade-off."""
    acc = sum(int(d) * (i + 1) for i, d in enumerate(code)) + 0.01 * int(code, 3)
    lat = sum({"0": 0.0, "1": 1.0, "2": 3.0}[d] for d in code)
    return {"acc": acc, "lat": lat}


class ToyEvaluator(Evaluator):
    """In-process evaluator over the NAS-Bench-Macro space; counts what it is asked."""

    def __init__(self, space) -> None:
        super().__init__(PythonConfig(function="toy:toy"), space)
        self.calls = 0

    @property
    def identity(self) -> str:
        return "toy"

    def evaluate(self, archs):
        self.calls += len(archs)
        return [toy_metrics(macro_code(a)) for a in archs]


@pytest.fixture(scope="module")
def macro():
    return compile_file(MACRO)


def toy_runner(space, cache_dir: Path | None = None) -> EvaluationRunner:
    return EvaluationRunner(space, evaluator=ToyEvaluator(space), cache_dir=cache_dir)


CONFIG = SearchConfig(
    objectives=parse_objectives("max acc, min lat"), budget=120, init=30, per_generation=15
)


# ----------------------------------------------------------------------------- pareto


def test_objectives_parse_directions_and_reject_mistakes() -> None:
    objectives = parse_objectives("max acc, min latency")
    assert [(o.direction, o.expr) for o in objectives] == [("max", "acc"), ("min", "latency")]
    assert objectives[0].minimised({"acc": 2.0}) == -2.0
    with pytest.raises(ObjectiveError, match="must start with 'max' or 'min'"):
        parse_objectives("acc")
    with pytest.raises(ObjectiveError, match="repeated"):
        parse_objectives("max acc, max acc")
    with pytest.raises(ObjectiveError, match="no metric 'latency'"):
        objectives[1].value({"acc": 1.0})


def test_target_expression_objectives() -> None:
    first, second = parse_objectives("max acc - 0.5 * lat, min max(lat, 1)")
    assert first.expr == "acc - 0.5 * lat" and not first.is_metric and not second.is_metric
    assert first.value({"acc": 80.0, "lat": 10.0}) == 75.0
    assert first.minimised({"acc": 80.0, "lat": 10.0}) == -75.0
    assert second.value({"lat": 0.25}) == 1.0
    with pytest.raises(ObjectiveError, match="metric 'lat'"):
        first.value({"acc": 1.0})
    with pytest.raises(ObjectiveError, match=r"objective 'acc -': invalid target"):
        parse_objectives("max acc -")


def test_non_dominated_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    points = rng.integers(0, 6, size=(60, 3)).astype(float)  # ties and duplicates
    brute = [
        i
        for i in range(len(points))
        if not any(
            np.all(points[j] <= points[i]) and np.any(points[j] < points[i])
            for j in range(len(points))
        )
    ]
    assert non_dominated(points) == brute
    metrics = [{"a": 1.0, "b": 5.0}, {"a": 2.0, "b": 6.0}, {"a": 2.0, "b": 4.0}]
    assert pareto_front(parse_objectives("max a, min b"), metrics) == [2]


# ----------------------------------------------------------------------------- cache


def test_cache_survives_a_torn_line_and_keeps_appending(tmp_path: Path) -> None:
    cache = EvaluationCache(tmp_path, "ev-1")
    cache.put_many([("k1", {"acc": 1.5}), ("k2", {"acc": float("nan")})])
    with cache.path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "k3", "metr')  # an interrupted write
    again = EvaluationCache(tmp_path, "ev-1")
    assert again.get("k1") == {"acc": 1.5} and "k3" not in again
    assert np.isnan(again.get("k2")["acc"])
    again.put_many([("k4", {"acc": 4.0})])
    third = EvaluationCache(tmp_path, "ev-1")
    assert third.get("k4") == {"acc": 4.0} and len(third) == 3
    assert len(EvaluationCache(tmp_path, "ev-2")) == 0  # another evaluator, another file


# ----------------------------------------------------------------------------- evaluators


def test_evaluator_specs(tmp_path: Path) -> None:
    assert parse_evaluator_spec("lookup:data.jsonl", tmp_path) == LookupConfig(
        data=str(tmp_path / "data.jsonl")
    )
    assert parse_evaluator_spec("predictor:runs/a", tmp_path).run == str(tmp_path / "runs/a")
    assert parse_evaluator_spec("measure", tmp_path) == MeasureConfig()
    assert parse_evaluator_spec("measure:params,latency", tmp_path).metrics == [
        "params",
        "latency",
    ]
    assert parse_evaluator_spec("python:pkg.mod:fn", tmp_path).function == "pkg.mod:fn"
    assert parse_evaluator_spec("python:ev.py:fn", tmp_path).function == f"{tmp_path}/ev.py:fn"
    command = parse_evaluator_spec("command:python3 ev.py {arch}", tmp_path)
    assert command == CommandConfig(command="python3 ev.py {arch}", cwd=str(tmp_path))
    (tmp_path / "ev.json").write_text('{"kind": "command", "command": "x", "timeout": 5}')
    assert parse_evaluator_spec("@ev.json", tmp_path).timeout == 5
    assert isinstance(
        parse_evaluator_spec('{"kind": "predictor", "run": "r"}', tmp_path), PredictorConfig
    )
    for bad in ("nope:x", "lookup:", "python:fn", '{"kind": "command"}'):
        with pytest.raises(EvaluationError):
            parse_evaluator_spec(bad, tmp_path)


EVAL_SCRIPT = """
import json, sys
arch = json.load(open(sys.argv[1])) if len(sys.argv) > 1 else json.load(sys.stdin)
ops = [l["op"] for s in ("s1", "s2", "s3") for l in arch["stages"][s]["layers"]]
code = "".join({"identity": "0", "mb_e3k3": "1", "mb_e6k5": "2"}[o] for o in ops)
if code == "22222222":
    print("boom", file=sys.stderr); sys.exit(3)
print("training... done")
print(json.dumps({"acc": sum(int(d) * (i + 1) for i, d in enumerate(code)) + 0.01 * int(code, 3),
                  "lat": sum({"0": 0.0, "1": 1.0, "2": 3.0}[d] for d in code)}))
"""


def test_command_evaluator_file_and_stdin(tmp_path: Path, macro) -> None:
    (tmp_path / "ev.py").write_text(EVAL_SCRIPT)
    archs = list(itertools.islice(iter_architectures(macro), 0, 6561, 1000))
    expected = [toy_metrics(macro_code(a)) for a in archs]
    for template in (f"{sys.executable} ev.py {{arch}}", f"{sys.executable} ev.py"):
        evaluator = make_evaluator(parse_evaluator_spec(f"command:{template}", tmp_path), macro)
        assert evaluator.evaluate(archs) == expected
    worst = next(a for a in iter_architectures(macro) if macro_code(a) == "22222222")
    with pytest.raises(EvaluationError, match=r"status 3.*boom"):
        evaluator.evaluate([worst])


def test_python_evaluator_from_a_file_passes_space(tmp_path: Path, macro) -> None:
    (tmp_path / "ev.py").write_text(
        "def evaluate(arch, space):\n"
        "    return {'depth': sum(s.depth for s in arch.stages.values()), 'n': len(space.stages)}\n"
    )
    evaluator = make_evaluator(parse_evaluator_spec("python:ev.py:evaluate", tmp_path), macro)
    assert evaluator.evaluate([next(iter_architectures(macro))]) == [{"depth": 8.0, "n": 3.0}]
    (tmp_path / "bad.py").write_text("def evaluate(arch):\n    return {'acc': 'high'}\n")
    bad = make_evaluator(parse_evaluator_spec("python:bad.py:evaluate", tmp_path), macro)
    with pytest.raises(EvaluationError, match="not a number"):
        bad.evaluate([next(iter_architectures(macro))])


def test_runner_caches_and_deduplicates(tmp_path: Path, macro) -> None:
    # Ten distinct networks (equivalent architectures share one evaluation: test_equivalence).
    archs = [a for a, _ in itertools.islice(distinct(macro, iter_architectures(macro)), 10)]
    runner = toy_runner(macro, tmp_path)
    first = runner.evaluate(archs + archs[:3])
    assert runner.evaluator.calls == 10 and first[10:] == first[:3]
    again = toy_runner(macro, tmp_path)
    assert again.evaluate(archs) == first[:10]
    assert again.evaluator.calls == 0 and again.hits == 10


# ----------------------------------------------------------------------------- evolution


def test_search_spends_the_budget_on_distinct_architectures_and_is_deterministic(macro) -> None:
    one = run_search(macro, toy_runner(macro), CONFIG)
    two = run_search(macro, toy_runner(macro), CONFIG)
    keys = [r.key for r in one.records]
    assert len(keys) == CONFIG.budget == len(set(keys))
    assert keys == [r.key for r in two.records] and one.front == two.front
    other = run_search(macro, toy_runner(macro), CONFIG.model_copy(update={"seed": 1}))
    assert [r.key for r in other.records] != keys
    # The front is the front of everything evaluated, and mutants come from the front.
    assert one.front == pareto_front(CONFIG.objectives, [r.metrics for r in one.records])
    assert [r.generation for r in one.records[:30]] == [0] * 30
    assert all(r.parent is not None and r.parent < r.index for r in one.records[30:])


def _differences(a: Architecture, b: Architecture) -> list[tuple[str, int]]:
    return [
        (s, i)
        for s in a.stages
        for i, (x, y) in enumerate(zip(a.stages[s].layers, b.stages[s].layers, strict=True))
        if x != y
    ]


def test_mutation_modes_change_a_stage_or_a_layer(macro) -> None:
    for mode in ("stage", "layer"):
        result = run_search(macro, toy_runner(macro), CONFIG.model_copy(update={"mode": mode}))
        archs = [Architecture.model_validate(r.arch) for r in result.records]
        stage_counts = []
        for record, arch in zip(result.records, archs, strict=True):
            if record.parent is None:
                continue
            diffs = _differences(archs[record.parent], arch)
            stage_counts.append(len({s for s, _ in diffs}))
            if mode == "layer":
                assert len(diffs) == 1
        assert set(stage_counts) == {1}
        if mode == "stage":  # whole-stage mutation sometimes changes several layers
            assert any(
                len(_differences(archs[r.parent], a)) > 1
                for r, a in zip(result.records, archs, strict=True)
                if r.parent is not None
            )


def test_reduced_space_search_stays_in_the_kept_modules(macro) -> None:
    reduced = compile_text(
        f'space r extends nas_bench_macro from "{MACRO}" {{\n'
        "  restrict s1 to { [(op = mb_e6k5), (op = mb_e6k5)], [(op = mb_e3k3), (op = identity)] }\n"
        "  restrict s2 to { [(op = mb_e6k5), (op = mb_e6k5), (op = mb_e6k5)],"
        " [(op = identity), (op = identity), (op = mb_e3k3)] }\n"
        "}\n",
        space="r",
    )
    result = run_search(reduced, toy_runner(reduced), CONFIG.model_copy(update={"budget": 60}))
    codes = {macro_code(Architecture.model_validate(r.arch)) for r in result.records}
    assert len(codes) == 60
    assert {c[:2] for c in codes} <= {"22", "10"} and {c[2:5] for c in codes} <= {"222", "001"}


def test_search_resumes_after_a_budget_stop_or_a_crash(tmp_path: Path, macro) -> None:
    straight = run_search(macro, toy_runner(macro), CONFIG)
    # Stopped by a smaller budget mid-generation (a partial generation), then extended.
    cache = tmp_path / "cache"
    run_search(
        macro, toy_runner(macro, cache), CONFIG.model_copy(update={"budget": 52}), tmp_path / "a"
    )
    resumed_runner = toy_runner(macro, cache)
    resumed = run_search(macro, resumed_runner, CONFIG, tmp_path / "a")
    assert [r.key for r in resumed.records] == [r.key for r in straight.records]
    assert resumed.front == straight.front and resumed.resumed_from == 52
    assert resumed_runner.evaluator.calls == CONFIG.budget - 52  # the redone part was cached

    # Killed by an exception after two generations; the rerun picks up from the checkpoint.
    def crash(event: SearchProgress) -> None:
        if event.phase == "generation" and event.generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(macro, toy_runner(macro), CONFIG, tmp_path / "b", progress=crash)
    assert len((tmp_path / "b" / RECORDS_FILE).read_text().splitlines()) == 45
    # A generation appended but not checkpointed (killed between the two writes) is dropped.
    with (tmp_path / "b" / RECORDS_FILE).open("a") as handle:
        handle.write('{"index": 45, "torn')
    again = run_search(macro, toy_runner(macro), CONFIG, tmp_path / "b")
    assert [r.key for r in again.records] == [r.key for r in straight.records]
    assert load_result(tmp_path / "b").front == straight.front
    with pytest.raises(SearchStateError, match=r"seed: 0 -> 1"):
        run_search(macro, toy_runner(macro), CONFIG.model_copy(update={"seed": 1}), tmp_path / "b")
    with pytest.raises(SearchStateError, match="more than the budget"):
        run_search(
            macro, toy_runner(macro), CONFIG.model_copy(update={"budget": 60}), tmp_path / "b"
        )


def test_tiny_space_search_stops_when_exhausted() -> None:
    tiny = compile_text(
        f'space t extends nas_bench_macro from "{MACRO}" {{\n'
        "  restrict s1 to { [(op = mb_e6k5), (op = mb_e6k5)] }\n"
        "  restrict s2 to { [(op = mb_e6k5), (op = mb_e6k5), (op = mb_e6k5)] }\n"
        "  restrict s3 to { [(op = mb_e6k5), (op = mb_e6k5), (op = mb_e6k5)],"
        " [(op = identity), (op = identity), (op = identity)] }\n"
        "}\n",
        space="t",
    )
    result = run_search(tiny, toy_runner(tiny), CONFIG)
    assert len(result.records) == 2 and result.stopped == "exhausted"


# ----------------------------------------------------------------------------- CLI + command


def test_cli_search_with_a_shell_command_evaluator_end_to_end(tmp_path: Path, macro) -> None:
    (tmp_path / "ev.py").write_text(EVAL_SCRIPT)
    out = tmp_path / "out"
    args = [
        "search",
        str(MACRO),
        "--evaluator",
        f"command:cd {tmp_path} && {sys.executable} ev.py {{arch}}",
        "--objectives",
        "max acc, min lat",
        "--budget",
        "24",
        "--init",
        "12",
        "--per-generation",
        "6",
        "--seed",
        "3",
        "--cache",
        str(tmp_path / "cache"),
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines at the terminal width
    assert "Pareto front" in text and "evaluated now: 24, from cache: 0" in text
    records = [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]
    assert len(records) == 24
    for record in records:
        arch = Architecture.model_validate(record["arch"])
        assert record["metrics"] == toy_metrics(macro_code(arch))
    front = [json.loads(line) for line in (out / "front.jsonl").read_text().splitlines()]
    assert {r["key"] for r in front} <= {r["key"] for r in records} and front
    # Same command in a fresh folder: every evaluation comes from the cache.
    again = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "out2")])
    assert "evaluated now: 0, from cache: 24" in " ".join(again.output.split())
    assert (tmp_path / "out2" / RECORDS_FILE).read_text() == (out / RECORDS_FILE).read_text()


def test_cli_reports_user_mistakes(tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["search", str(MACRO), "--objectives", "max a", "--budget", "5", "-o", "x"]
    bad = runner.invoke(cli, [*common, "-e", "oops:x"])
    assert bad.exit_code == 1 and "unknown kind 'oops'" in bad.output
    no_budget = runner.invoke(
        cli, ["search", str(MACRO), "-e", "command:true", "--objectives", "max a", "-o", "x"]
    )
    assert no_budget.exit_code == 1 and "--budget is required" in no_budget.output
    wrong_metric = runner.invoke(
        cli,
        [*common[:-1], str(tmp_path / "o"), "-e", """command:echo '{"b": 1}'""", "--no-cache"],
    )
    assert wrong_metric.exit_code == 1
    assert "no metric 'a' (has b)" in " ".join(wrong_metric.output.split())


def test_parallel_jobs_give_the_same_result(tmp_path: Path, macro) -> None:
    (tmp_path / "ev.py").write_text(EVAL_SCRIPT)
    config = parse_evaluator_spec(f"command:{sys.executable} ev.py {{arch}}", tmp_path)
    small = CONFIG.model_copy(update={"budget": 16, "init": 8, "per_generation": 4})
    serial = run_search(macro, EvaluationRunner(macro, config), small)
    with EvaluationRunner(macro, config, jobs=2) as parallel_runner:
        parallel = run_search(macro, parallel_runner, small)
    assert [r.metrics for r in parallel.records] == [r.metrics for r in serial.records]


def test_ray_is_optional_and_named_when_missing(tmp_path: Path, macro) -> None:
    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed here")
    config = parse_evaluator_spec("command:true", tmp_path)
    runner = EvaluationRunner(macro, config, ray_address="auto")
    with pytest.raises(EvaluationError, match=r"pip install 'autobuild-dsl\[ray\]'"):
        runner.evaluate(list(itertools.islice(iter_architectures(macro), 2)))


# ----------------------------------------------------------------------------- exhaustive


def test_exhaustive_search_keeps_the_true_top_n(macro) -> None:
    objective = parse_objectives("max acc")[0]
    config = ExhaustiveConfig(objective=objective, top=7, batch_size=500)
    events = []
    result = exhaustive_search(macro, toy_runner(macro), config, progress=events.append)

    def best_per_network(value_of) -> list[tuple[float, str]]:  # type: ignore[no-untyped-def]
        """(value, key) of each network's best member (ties: the smaller key), best first."""
        best: dict[str, tuple[float, str]] = {}
        for a in iter_architectures(macro):
            value, key, net = value_of(a), a.key(), network_key(macro, a)
            held = best.get(net)
            if held is None or value > held[0] or (value == held[0] and key < held[1]):
                best[net] = (value, key)
        return sorted(best.values(), key=lambda item: (-item[0], item[1]))

    everything = best_per_network(lambda a: toy_metrics(macro_code(a))["acc"])
    assert result.evaluated == result.size == 6561 == events[-1].done
    assert len(events) == 14  # ceil(6561 / 500) batches, reported one by one
    # The top holds each network once (its best member): equivalent architectures of this
    # toy metric score differently, and only the best of them is listed.
    assert [r.value for r in result.top] == [v for v, _ in everything[:7]]
    assert result.top[0].key == everything[0][1] and result.throughput > 0
    assert len({network_key(macro, Architecture.model_validate(r.arch)) for r in result.top}) == 7
    # Ties (many architectures share a latency) go to the smaller key, whatever the batching.
    ties = best_per_network(lambda a: toy_metrics(macro_code(a))["lat"])
    for batch_size in (97, 4096):
        tied = exhaustive_search(
            macro,
            toy_runner(macro),
            ExhaustiveConfig(
                objective=parse_objectives("max lat")[0], top=5, batch_size=batch_size
            ),
        )
        assert [r.key for r in tied.top] == [k for _, k in ties[:5]]
    with pytest.raises(SpaceTooLarge, match=r"6,561 architectures .*would take"):
        exhaustive_search(
            macro, toy_runner(macro), config.model_copy(update={"max_architectures": 1000})
        )


REDUCED = """space r extends nas_bench_macro from "{macro}" {{
  restrict s1 to {{ [(op = mb_e6k5), (op = mb_e6k5)], [(op = mb_e3k3), (op = identity)] }}
  restrict s2 to {{ [(op = mb_e6k5), (op = mb_e6k5), (op = mb_e6k5)],
                   [(op = identity), (op = identity), (op = mb_e3k3)] }}
}}
"""


def train_toy_run(space, out: Path, seeds: int = 1, epochs: int = 1, count: int = 60) -> Path:
    """A tiny predictor ensemble (one fold, `seeds` members) on the toy metric."""
    from autobuild_dsl.data import from_records
    from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, train_run
    from autobuild_dsl.space.decisions import sample

    archs = sample(space, count, seed=seeds - 1)
    dataset, _ = from_records(
        space, [(a, {"acc": toy_metrics(macro_code(a))["acc"]}, 1, None) for a in archs]
    )
    train_run(
        space,
        dataset,
        "acc",
        out,
        train=TrainConfig(epochs=epochs, loss="mse"),
        ensemble=EnsembleConfig(folds=1, seeds=seeds),
    )
    return out


@pytest.fixture(scope="module")
def macro_run(tmp_path_factory: pytest.TempPathFactory, macro) -> Path:
    """A tiny trained predictor on the toy metric (one member, one epoch)."""
    return train_toy_run(macro, tmp_path_factory.mktemp("run") / "run")


def test_predictor_exhaustive_search_of_a_reduced_space(tmp_path: Path, macro_run: Path) -> None:
    from autobuild_dsl.scorer import load_run, predict

    (tmp_path / "r.abs").write_text(REDUCED.format(macro=MACRO))
    reduced = compile_file(tmp_path / "r.abs")
    archs = list(iter_architectures(reduced))
    run = load_run(macro_run)  # trained on the full space: its encoder scores the reduced one
    mean, spread = predict(run, run.encoder().encode_many(archs))
    truth = sorted(zip(-mean, [a.key() for a in archs], strict=True))[:3]
    evaluator = make_evaluator(parse_evaluator_spec(f"predictor:{macro_run}"), reduced)
    assert evaluator.metric == "acc"
    got = evaluator.evaluate(archs[:5])
    assert [g["acc_std"] for g in got] == pytest.approx(spread[:5].tolist())
    out = tmp_path / "es"
    result = CliRunner().invoke(
        cli,
        [
            "search",
            "--exhaustive",
            str(tmp_path / "r.abs"),
            "-e",
            f"predictor:{macro_run}",
            "--top",
            "3",
            "--batch-size",
            "50",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    top = [json.loads(line) for line in (out / "top.jsonl").read_text().splitlines()]
    assert [t["key"] for t in top] == [k for _, k in truth]
    assert [t["value"] for t in top] == pytest.approx([-v for v, _ in truth])
    summary = json.loads((out / "exhaustive.json").read_text())
    assert summary["size"] == summary["evaluated"] == len(archs) == 2 * 2 * 27
    assert summary["objective"] == {"direction": "max", "expr": "acc"}


# ----------------------------------------------------------------------------- plot


def test_front_2d_and_plot(tmp_path: Path, macro) -> None:
    x, y = parse_objectives("min lat, max acc")
    pairs = [(1.0, 1.0), (2.0, 3.0), (2.0, 2.0), (3.0, 3.0), (0.5, 0.0)]
    assert front_2d(pairs, x, y) == [(0.5, 0.0), (1.0, 1.0), (2.0, 3.0)]
    result = run_search(macro, toy_runner(macro), CONFIG, tmp_path / "s")
    data = Series(
        label="random",
        points=[
            toy_metrics(macro_code(a))
            for a in itertools.islice(iter_architectures(macro), 0, 6561, 50)
        ],
    )
    summary = plot_fronts(
        [Series(label="ea", points=[r.metrics for r in result.records])],
        x,
        y,
        tmp_path / "f.png",
        data=data,
    )
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert len(summary.series) == 2 and summary.series[1].points == CONFIG.budget
    cli_out = CliRunner().invoke(
        cli,
        ["plot", str(tmp_path / "s"), "--x", "lat", "--y", "acc", "-o", str(tmp_path / "g.svg")],
    )
    assert cli_out.exit_code == 0, cli_out.output
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")
    expected_front = front_2d([(r.metrics["lat"], r.metrics["acc"]) for r in result.records], x, y)
    assert f"front of {len(expected_front)}" in cli_out.output


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def macro_bench(shared_data: Path) -> dict:
    return json.loads(
        (shared_data / "nas_bench_macro" / "nas-bench-macro_cifar10.json").read_text()
    )


def test_measure_evaluator_matches_the_benchmark_counts(macro, macro_bench) -> None:
    archs = [a for a in iter_architectures(macro) if macro_code(a) in ("02012100", "22222222")]
    evaluator = make_evaluator(parse_evaluator_spec("measure:params,macs"), macro)
    for arch, metrics in zip(archs, evaluator.evaluate(archs), strict=True):
        row = macro_bench[macro_code(arch)]
        assert metrics == {"params": row["params"], "macs": row["flops"]}
    with pytest.raises(EvaluationError, match="unknown metric"):
        make_evaluator(parse_evaluator_spec("measure:fps"), macro).evaluate(archs[:1])


def test_lookup_search_on_nas_bench_macro_matches_the_benchmark(
    tmp_path: Path, macro, macro_bench, shared_data: Path
) -> None:
    source = shared_data / "nas_bench_macro" / "nas-bench-macro_cifar10.json"
    imported = tmp_path / "macro.jsonl"
    args = ["data", "import", "--from", "nas-bench-macro", str(source), "--space", str(MACRO)]
    done = CliRunner().invoke(cli, [*args, "-o", str(imported)])
    assert done.exit_code == 0, done.output
    lookup = make_evaluator(parse_evaluator_spec(f"lookup:{imported}"), macro)
    assert len(lookup) == 3969  # networks: the import merged equivalent architectures

    def runner() -> EvaluationRunner:
        return EvaluationRunner(macro, evaluator=lookup)

    search = SearchConfig(
        objectives=parse_objectives("max mean_acc, min flops"), budget=250, seed=7
    )
    one = run_search(macro, runner(), search)
    assert len(one.records) == 250 == len({r.key for r in one.records})
    # Never two equivalent architectures (one compiled network) in one search.
    networks = {network_key(macro, Architecture.model_validate(r.arch)) for r in one.records}
    assert len(networks) == 250
    for record in one.front_records():
        row = macro_bench[macro_code(Architecture.model_validate(record.arch))]
        assert record.metrics["mean_acc"] == pytest.approx(row["mean_acc"], abs=1e-9)
        assert record.metrics["flops"] == row["flops"] and record.metrics["params"] == row["params"]
    # The front is truly Pareto-optimal among what was evaluated, per the benchmark itself.
    rows = [macro_bench[macro_code(Architecture.model_validate(r.arch))] for r in one.records]
    assert one.front == pareto_front(search.objectives, rows)
    assert max(r["mean_acc"] for r in rows) > 92.5  # well above the median (90.99)

    # Same seed, same result; interrupted after generation 3 and rerun: the same again.
    def stop(event: SearchProgress) -> None:
        if event.phase == "generation" and event.generation == 3:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        run_search(macro, runner(), search, tmp_path / "two", progress=stop)
    two = run_search(macro, runner(), search, tmp_path / "two")
    assert two.resumed_from == 50 + 3 * 20
    assert [r.key for r in two.records] == [r.key for r in one.records]
    assert [r.metrics for r in two.records] == [r.metrics for r in one.records]
    assert two.front == one.front
    with pytest.raises(EvaluationError, match="not in the table"):
        lookup.evaluate([Architecture(space="nas_bench_macro", stages={})])


def test_a_predictor_whose_heads_never_beat_chance_says_so(
    tmp_path: Path, macro_run: Path, macro
) -> None:
    import shutil

    from autobuild_dsl.space.decisions import sample

    run = tmp_path / "run"
    shutil.copytree(macro_run, run)
    spec = f"predictor:{run}"
    # A run whose heads were measured fine says nothing ...
    for record in (run / "members").glob("*.json"):
        data = json.loads(record.read_text())
        data["metrics"]["pred_srcc"] = 0.4
        record.write_text(json.dumps(data))
    assert make_evaluator(parse_evaluator_spec(spec), macro).notes == []
    # ... one whose every head anti-correlated on its held-out rows warns.
    for record in (run / "members").glob("*.json"):
        data = json.loads(record.read_text())
        data["metrics"]["pred_srcc"] = -0.9
        record.write_text(json.dumps(data))
    notes = make_evaluator(parse_evaluator_spec(spec), macro).notes
    assert len(notes) == 1 and "beats chance" in notes[0] and "-0.90" in notes[0]
    archs = tmp_path / "archs.jsonl"
    archs.write_text(sample(macro, 1, seed=0)[0].model_dump_json() + "\n")
    result = CliRunner().invoke(cli, ["predict", str(run), str(archs), "--json"])
    assert result.exit_code == 0, result.output
    assert "beats chance" in result.output
