"""The AutoBuild-NAS loop (`abc improve`) and the warm-started search baselines."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from autobuild_dsl.cli import cli
from autobuild_dsl.data.dataset import from_records
from autobuild_dsl.lang import compile_file
from autobuild_dsl.search.baselines import regularized_evolution, tpe_search
from autobuild_dsl.search.loop import LoopConfig, LoopError, run_loop
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import iter_architectures, sample
from autobuild_dsl.space.equivalence import network_key, network_keyer

SPACE_FILE = "spaces/nas_bench_macro.abs"
SPACE = compile_file(SPACE_FILE)
WEIGHT = {"identity": 0.0, "mb_e3k3": 1.0, "mb_e6k5": 2.0}
ALL = list(iter_architectures(SPACE))
KEY = network_keyer(SPACE)  # remembered across the tests: the whole space is keyed once


def acc(arch: Architecture) -> float:
    # Later layers count more, so the optimum (all mb_e6k5) is unique.
    layers = [layer["op"] for stage in arch.stages.values() for layer in stage.layers]
    return sum(WEIGHT[op] * (1 + i / 10) for i, op in enumerate(layers))


def macs(arch: Architecture) -> float:
    layers = [layer["op"] for stage in arch.stages.values() for layer in stage.layers]
    return float(sum(WEIGHT[op] ** 2 for op in layers))


class Killed(Exception):
    """Stands for a kill -9: the evaluation in flight is lost, nothing else runs."""


class Counting:
    """An evaluator that remembers every architecture it was paid for."""

    identity = "synthetic"

    def __init__(self, kill_after: int | None = None) -> None:
        self.paid: list[str] = []
        self.kill_after = kill_after

    def evaluate(
        self, archs: Sequence[Architecture], on_evaluated: Callable[[int, int], None] | None = None
    ) -> list[dict[str, float]]:
        results = []
        for arch in archs:
            if self.kill_after is not None and len(self.paid) >= self.kill_after:
                raise Killed
            self.paid.append(arch.key())
            results.append({"acc": acc(arch), "macs": macs(arch)})
        return results


def labels(n: int = 40, seed: int = 0):  # type: ignore[no-untyped-def]
    archs = sample(SPACE, n, seed=seed)
    rows = [(a, {"acc": acc(a), "macs": macs(a)}, 1, None) for a in archs]
    return from_records(SPACE, rows)[0]


def config(**changes: object) -> LoopConfig:
    base: dict[str, object] = {
        "targets": ["acc"],
        "budget": 12,
        "top_k": 2,
        "per_round": 6,
        "epochs": 3,
        "folds": 2,
        "seed": 1,
    }
    base.update(changes)
    return LoopConfig.model_validate(base)


def test_loop_spends_the_budget_and_records_every_evaluation(tmp_path: Path) -> None:
    data = labels()
    evaluator = Counting()
    result = run_loop(SPACE, data, evaluator, config(), tmp_path)
    assert len(evaluator.paid) == len(set(evaluator.paid)) == 12
    assert [r.key for r in result.records] == evaluator.paid
    # No label is paid for again; every evaluation is in the labels file, after the labels.
    held = {a.key() for a in data.architectures}
    assert not held & set(evaluator.paid)
    # ... nor any network equivalent to a label or to another evaluation.
    nets = [network_key(SPACE, Architecture.model_validate_json(k)) for k in evaluator.paid]
    assert len(set(nets)) == len(nets)
    assert not set(nets) & {network_key(SPACE, a) for a in data.architectures}
    lines = (tmp_path / "labels.jsonl").read_text().splitlines()
    assert len(lines) == len(data) + 12
    assert [json.loads(x)["metrics"]["acc"] for x in lines[len(data) :]] == [
        r.metrics["acc"] for r in result.records
    ]
    # Two rounds of six; the second round's scorers trained on the first round's results.
    assert [(r.evaluated, r.trained_on) for r in result.rounds] == [(6, 40), (6, 46)]
    best = max(acc(a) for a in data.architectures)
    assert result.best_so_far[0]["max acc"] == best
    assert result.best_so_far[-1]["max acc"] == max(
        [best, *(r.metrics["acc"] for r in result.records)]
    )
    assert (tmp_path / "report.md").exists() and (tmp_path / "progress.png").exists()


def test_same_seed_same_result(tmp_path: Path) -> None:
    data = labels()
    first = run_loop(SPACE, data, Counting(), config(), tmp_path / "a")
    second = run_loop(SPACE, data, Counting(), config(), tmp_path / "b")
    assert [r.key for r in first.records] == [r.key for r in second.records]
    assert first.rounds == second.rounds
    other = run_loop(SPACE, data, Counting(), config(seed=2), tmp_path / "c")
    assert [r.key for r in other.records] != [r.key for r in first.records]
    # Without --top-k, k is the smallest whose reduced space holds 1.5 x the budget:
    # k = 2 gives 2^3 = 8 < 18 networks, k = 3 gives 27.
    auto = run_loop(SPACE, data, Counting(), config(top_k=None), tmp_path / "d")
    assert auto.rounds[0].k == 3 and auto.rounds[0].reduced_size == 27
    # ... but a guided search for a front starts from the whole space.
    front = config(
        top_k=None,
        targets=["acc - 0.1 * macs", "acc - 1.0 * macs"],
        objectives=[{"direction": "max", "expr": "acc"}, {"direction": "min", "expr": "macs"}],
    )
    assert front.k_factor() == float("inf")
    assert (
        config(
            top_k=None, inner="evolution", **front.model_dump(include={"targets", "objectives"})
        ).k_factor()
        == 1.5
    )


@pytest.mark.parametrize("inner", ["evolution", "tpe", "guided"])
def test_resume_after_a_kill_mid_round_pays_nothing_twice(tmp_path: Path, inner: str) -> None:
    data = labels()

    def settings(**changes: object) -> LoopConfig:
        return config(inner=inner, **changes)

    whole = run_loop(SPACE, data, Counting(), settings(), tmp_path / "whole")
    killed = Counting(kill_after=8)  # round 1 (evaluations 7-12) is cut after its second
    with pytest.raises(Killed):
        run_loop(SPACE, data, killed, settings(), tmp_path / "cut")
    # A write torn by the kill is ignored on resume.
    with (tmp_path / "cut" / "evaluations.jsonl").open("a") as handle:
        handle.write('{"index": 8, "round": 1, "ke')
    with pytest.raises(LoopError, match="holds a loop already") as refused:
        run_loop(SPACE, data, Counting(), settings(), tmp_path / "cut")
    assert [r.parameter for r in refused.value.remedies] == ["resume", "force"]
    rest = Counting()
    resumed = run_loop(SPACE, data, rest, settings(), tmp_path / "cut", resume=True)
    assert len(rest.paid) == 4
    assert not set(rest.paid) & set(killed.paid)
    assert resumed.resumed_from == 8
    # The same evaluations as a run that was never interrupted.
    assert [r.key for r in resumed.records] == [r.key for r in whole.records]
    assert len((tmp_path / "cut" / "labels.jsonl").read_text().splitlines()) == len(data) + 12
    # Killed after a round's last evaluation, before its checkpoint: nothing is paid again
    # and the round is recorded as it would have been.
    # (The checkpoint after round 0 is the final one of a loop with a budget of one round.)
    run_loop(SPACE, data, Counting(), settings(budget=6), tmp_path / "one")
    state = json.loads((tmp_path / "one" / "loop.json").read_text())
    state["stopped"] = "running"
    (tmp_path / "cut" / "loop.json").write_text(json.dumps(state))
    again = Counting()
    replayed = run_loop(SPACE, data, again, settings(), tmp_path / "cut", resume=True)
    assert again.paid == []
    assert replayed.rounds == whole.rounds
    # A larger budget continues; a different setting is refused.
    more = Counting()
    run_loop(SPACE, data, more, settings(budget=18), tmp_path / "cut", resume=True)
    assert len(more.paid) == 6
    with pytest.raises(LoopError, match="different loop"):
        run_loop(
            SPACE, data, Counting(), settings(budget=18, top_k=3), tmp_path / "cut", resume=True
        )


@pytest.mark.parametrize("inner", ["guided", "evolution"])
def test_several_targets_search_a_front(tmp_path: Path, inner: str) -> None:
    data = labels()
    evaluator = Counting()
    result = run_loop(
        SPACE,
        data,
        evaluator,
        config(
            targets=["acc - 0.1 * macs", "acc - 1.0 * macs"],
            objectives=[{"direction": "max", "expr": "acc"}, {"direction": "min", "expr": "macs"}],
            inner=inner,
        ),
        tmp_path,
    )
    assert len(set(evaluator.paid)) == 12
    assert len(result.front) >= 2
    points = [(row["metrics"]["acc"], row["metrics"]["macs"]) for row in result.front]
    for a, m in points:  # no front member dominates another
        assert not any(a2 >= a and m2 <= m and (a2, m2) != (a, m) for a2, m2 in points)
    with pytest.raises(LoopError, match="objectives"):
        config(targets=["acc", "macs"]).search_objectives()


def test_shell_command_evaluator_end_to_end(tmp_path: Path) -> None:
    data = labels()
    (tmp_path / "labels.jsonl").write_text(data.to_jsonl())
    script = tmp_path / "evaluate.py"
    script.write_text(
        "import json, sys\n"
        "arch = json.load(sys.stdin)\n"
        "w = {'identity': 0.0, 'mb_e3k3': 1.0, 'mb_e6k5': 2.0}\n"
        "ops = [l['op'] for s in arch['stages'].values() for l in s['layers']]\n"
        "acc = sum(w[o] * (1 + i / 10) for i, o in enumerate(ops))\n"
        "print(json.dumps({'acc': acc, 'macs': float(sum(w[o] ** 2 for o in ops))}))\n"
    )
    out = tmp_path / "loop"
    args = ["improve", SPACE_FILE, str(tmp_path / "labels.jsonl"), "--target", "acc",
            "--evaluator", f"command:{sys.executable} {script}", "--budget", "6",
            "--per-round", "3", "--top-k", "2", "--epochs", "3", "--folds", "2",
            "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "evaluations.jsonl").read_text().splitlines()]
    assert len(records) == 6
    for record in records:
        arch = Architecture.model_validate(record["arch"])
        assert record["metrics"]["acc"] == pytest.approx(acc(arch))
    assert "best max acc" in result.output
    # Running again into the same folder needs --resume (nothing more to pay) or --force.
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "--resume" in again.output
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "evaluated now: 0" in resumed.output


def test_warm_started_baselines_use_the_labels() -> None:
    best = max(ALL, key=acc)
    warm_archs = sample(SPACE, 30, seed=5)
    assert best not in warm_archs
    warm = [(a, acc(a)) for a in [*warm_archs, best]]
    for method in (regularized_evolution, tpe_search):
        calls: list[str] = []

        def counted(arch: Architecture, calls: list[str] = calls) -> float:
            calls.append(arch.key())
            return acc(arch)

        result = method(SPACE, counted, 10, seed=0, warm=warm)
        # The labels are free, known and never paid for; the best of them counts.
        assert result.evaluations == 10 and result.warm == 31
        assert len(calls) == 10
        assert not set(calls) & {a.key() for a, _ in warm}
        assert result.best_value == acc(best)
        assert result.best_so_far[0] == acc(best)
    # TPE learns from the labels: warm-started it proposes better architectures than cold.
    cold_calls: list[float] = []
    warm_calls: list[float] = []
    tpe_search(SPACE, lambda a: cold_calls.append(acc(a)) or acc(a), 25, seed=0, startup_trials=5)
    good = sorted(ALL, key=acc)[-200:-1:4]
    tpe_search(
        SPACE,
        lambda a: warm_calls.append(acc(a)) or acc(a),
        25,
        seed=0,
        startup_trials=5,
        warm=[(a, acc(a)) for a in good],
    )
    assert sum(warm_calls) / len(warm_calls) > sum(cold_calls) / len(cold_calls)


def test_guided_pays_for_what_the_scorers_place_best(tmp_path: Path) -> None:
    from autobuild_dsl.scorer import load_run
    from autobuild_dsl.scorer.embedding_scores import graph_scores
    from autobuild_dsl.search.loop_guided import candidates

    data = labels()
    evaluator = Counting()
    result = run_loop(
        SPACE, data, evaluator, config(inner="guided", budget=6), tmp_path, space_file=SPACE_FILE
    )
    assert len(evaluator.paid) == 6
    # Round 0: the reduced space's networks not held, in the order of the round's scores.
    run = load_run(tmp_path / "rounds" / "r00" / "target0")
    reduced = compile_file(tmp_path / "rounds" / "r00" / "reduced.abs")
    held = {network_key(SPACE, a) for a in data.architectures}
    pool = candidates(reduced, held, lambda a: network_key(SPACE, a), "unused")
    assert len(pool) > 6
    scores = graph_scores(run, run.encoder().encode_many(pool))
    best_first = sorted(range(len(pool)), key=lambda i: -scores[i])
    assert [Architecture.model_validate_json(k).stages for k in evaluator.paid] == [
        pool[i].stages for i in best_first[:6]
    ]
    assert result.rounds[0].evaluated == 6
    # The scores rank like the target on the networks of the space (trained for 3 epochs).
    from autobuild_dsl.scorer.train import spearman

    everything = run.encoder().encode_many(ALL)
    assert spearman(graph_scores(run, everything), [acc(a) for a in ALL]) > 0.5


def test_guided_picks_take_turns_between_targets() -> None:
    import numpy as np

    from autobuild_dsl.search.loop_guided import guided_picks

    pool = ALL[:5]
    first = np.array([5.0, 4.0, 3.0, 2.0, 1.0])  # prefers 0, 1, 2, ...
    second = np.array([1.0, 5.0, 2.0, 3.0, 4.0])  # prefers 1, 4, 3, ...
    picked = guided_picks(pool, [first, second], 4)
    assert picked == [pool[0], pool[1], pool[2], pool[4]]
    assert guided_picks(pool, [first], 9) == pool  # never more than the pool


def test_guided_front_refines_by_layer_mutation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import autobuild_dsl.search.loop_guided as loop_module

    modes: list[str] = []
    original = loop_module.mutate

    def recording(space, arch, rng, mode="layer"):  # type: ignore[no-untyped-def]
        modes.append(mode)
        return original(space, arch, rng, mode=mode)

    monkeypatch.setattr(loop_module, "mutate", recording)
    objectives = [{"direction": "max", "expr": "acc"}, {"direction": "min", "expr": "macs"}]
    targets = ["acc - 0.1 * macs", "acc - 1.0 * macs"]
    for refine, out in ((1.0, "all"), (0.0, "none")):
        modes.clear()
        evaluator = Counting()
        settings = config(
            targets=targets, objectives=objectives, refine=refine, budget=6, top_k=None
        )
        run_loop(SPACE, labels(), evaluator, settings, tmp_path / out)
        assert len(evaluator.paid) == 6
        # refine 1: every evaluation is a Layer-Full mutant of the front; 0: none is.
        assert (set(modes), len(modes) >= 6) == (({"layer"}, True) if refine else (set(), False))


class FreeMacs:
    """A free evaluator: exact MACs, counting each architecture it is asked for."""

    identity = "macs counter"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def evaluate(self, archs: Sequence[Architecture]) -> list[dict[str, float]]:
        self.asked += [network_key(SPACE, a) for a in archs]
        return [{"macs": macs(a)} for a in archs]


class AccOnly(Counting):
    def evaluate(self, archs, on_evaluated=None):  # type: ignore[no-untyped-def]
        return [{"acc": row["acc"]} for row in super().evaluate(archs, on_evaluated)]


def test_free_metrics_fill_the_rows_and_guide_the_front(tmp_path: Path) -> None:
    import numpy as np

    from autobuild_dsl.scorer import load_run
    from autobuild_dsl.scorer.embedding_scores import graph_scores
    from autobuild_dsl.search.loop_guided import (
        calibrated,
        candidates,
        front_picks,
        guided_picks,
    )

    archs = sample(SPACE, 40, seed=0)
    data = from_records(SPACE, [(a, {"acc": acc(a)}, 1, None) for a in archs])[0]  # no macs
    free, evaluator = FreeMacs(), AccOnly()
    objectives = [{"direction": "max", "expr": "acc"}, {"direction": "min", "expr": "macs"}]
    settings = config(objectives=objectives, budget=6, top_k=None)
    result = run_loop(SPACE, data, evaluator, settings, tmp_path, free=free)
    assert len(evaluator.paid) == 6
    assert len(free.asked) == len(set(free.asked))  # once per network, never again
    for record in result.records:  # the evaluator gave accuracy only; MACs were added
        assert record.metrics["macs"] == macs(Architecture.model_validate(record.arch))
    assert all("macs" in row["metrics"] for row in result.front)
    # Round 0 paid, one by one, the candidates adding the most hypervolume to the labels'
    # front, in (accuracy calibrated from the scorer's score, exact MACs).
    run = load_run(tmp_path / "rounds" / "r00" / "target0")
    held = {network_key(SPACE, a) for a in archs}
    pool = candidates(SPACE, held, KEY, "unused")
    scores = graph_scores(run, run.encoder().encode_many(pool))
    held_acc = np.array([acc(a) for a in archs])
    predicted = calibrated(graph_scores(run, run.encoder().encode_many(archs)), held_acc, scores)
    expected = front_picks(
        pool,
        [predicted, -np.array([macs(a) for a in pool])],
        [held_acc, -np.array([macs(a) for a in archs])],
        6,
    )
    expected_stages = [a.stages for a in expected]
    assert expected_stages != [a.stages for a in guided_picks(pool, [scores], 6)]
    assert [Architecture.model_validate_json(k).stages for k in evaluator.paid] == expected_stages
    # The checkpoint knows the free evaluator: resuming without it is refused.
    with pytest.raises(LoopError):
        run_loop(SPACE, data, AccOnly(), settings, tmp_path, resume=True)


def test_improve_makes_targets_of_the_objectives_free_metrics_leave(tmp_path: Path) -> None:
    archs = sample(SPACE, 30, seed=2)
    data = from_records(SPACE, [(a, {"acc": acc(a)}, 1, None) for a in archs])[0]
    (tmp_path / "labels.jsonl").write_text(data.to_jsonl())
    functions = tmp_path / "metrics.py"
    functions.write_text(
        "W = {'identity': 0.0, 'mb_e3k3': 1.0, 'mb_e6k5': 2.0}\n"
        "def ops(arch):\n"
        "    return [l['op'] for s in arch.stages.values() for l in s.layers]\n"
        "def accuracy(arch):\n"
        "    return {'acc': sum(W[o] * (1 + i / 10) for i, o in enumerate(ops(arch)))}\n"
        "def count(arch):\n"
        "    return {'macs': float(sum(W[o] ** 2 for o in ops(arch)))}\n"
    )
    out = tmp_path / "loop"
    args = ["improve", SPACE_FILE, str(tmp_path / "labels.jsonl"),
            "--objectives", "max acc, min macs", "--evaluator", f"python:{functions}:accuracy",
            "--free", f"python:{functions}:count", "--budget", "4", "--per-round", "4",
            "--epochs", "2", "--folds", "2", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    state = json.loads((out / "loop.json").read_text())
    assert state["config"]["targets"] == ["acc"]  # macs is free: only accuracy is learned
    records = [json.loads(x) for x in (out / "evaluations.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(set(r["metrics"]) == {"acc", "macs"} for r in records)
    every = CliRunner().invoke(cli, [*args[:4], "max acc", *args[5:], "--force"])
    assert every.exit_code == 0, every.output  # one objective, not free: target acc
    bad = [*args[:4], "min macs", *args[5:], "--force"]
    refused = CliRunner().invoke(cli, bad)
    assert refused.exit_code == 1 and "nothing to learn" in refused.output


def test_front_picks_add_the_most_hypervolume() -> None:
    import numpy as np
    from pymoo.indicators.hv import HV

    from autobuild_dsl.search.loop_guided import _gains, calibrated, front_picks

    rng = np.random.default_rng(0)
    held = rng.uniform(0, 1, size=(12, 2))
    points = rng.uniform(0, 1, size=(40, 2))
    ref = np.array([1.2, 1.3])
    base = HV(ref_point=ref)(held)
    exact = [HV(ref_point=ref)(np.vstack([held, p])) - base for p in points]
    assert np.allclose(_gains(points, held, ref), exact)
    # Picks (higher is better on both axes, so the points are negated) in greedy order.
    pool = ALL[:40]
    picked = front_picks(pool, [-points[:, 0], -points[:, 1]], [-held[:, 0], -held[:, 1]], 3)
    first = int(np.argmax(_gains(points, held, np.max(np.vstack([points, held]), axis=0) + 1e-6)))
    assert picked[0] == pool[first] and len(set(map(id, picked))) == 3
    # Nothing predicted to add anything: the rest still come, in the scores' order.
    dominated = held.min(axis=0) + 0.5 + rng.uniform(0, 0.1, size=(5, 2))
    assert len(front_picks(ALL[:5], [-dominated[:, 0], -dominated[:, 1]],
                           [-held[:, 0], -held[:, 1]], 5)) == 5  # fmt: skip
    # Calibration is monotone in the score and in the held values' units.
    scores = np.array([0.1, 0.5, 0.2, 0.9])
    values = np.array([70.0, 90.0, 80.0, 93.0])
    mapped = calibrated(scores, values, np.array([0.0, 0.3, 0.7, 1.0]))
    assert np.all(np.diff(mapped) >= 0) and mapped[0] == 70.0 and mapped[-1] == 93.0


def test_objectives_learned_by_their_own_targets_pick_by_hypervolume(tmp_path: Path) -> None:
    import numpy as np

    from autobuild_dsl.scorer import graph_scores, load_run
    from autobuild_dsl.search.loop_guided import calibrated, candidates, front_picks

    data = labels()
    evaluator = Counting()
    objectives = [{"direction": "max", "expr": "acc"}, {"direction": "min", "expr": "macs"}]
    settings = config(targets=["acc", "-(macs)"], objectives=objectives, budget=3, top_k=None)
    run_loop(SPACE, data, evaluator, settings, tmp_path)
    held = data.architectures
    pool = candidates(SPACE, {KEY(a) for a in held}, KEY, "x")
    predicted, held_values = [], []
    for t, truth in enumerate((acc, lambda a: -macs(a))):
        run = load_run(tmp_path / "rounds" / "r00" / f"target{t}")
        values = np.array([truth(a) for a in held])
        held_scores = graph_scores(run, run.encoder().encode_many(held))
        scores = graph_scores(run, run.encoder().encode_many(pool))
        predicted.append(calibrated(held_scores, values, scores))
        held_values.append(values)
    expected = [a.stages for a in front_picks(pool, predicted, held_values, 3)]
    assert [Architecture.model_validate_json(k).stages for k in evaluator.paid] == expected
