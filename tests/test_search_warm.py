"""Warm starts: the Pareto search seeded with labels, and baselines that pay once per network."""

from __future__ import annotations

from pathlib import Path

import pytest

from autobuild_dsl.lang import compile_file
from autobuild_dsl.search.baselines import regularized_evolution, tpe_search
from autobuild_dsl.search.evolution import SearchConfig, SearchStateError, run_search
from autobuild_dsl.search.pareto import non_dominated, objective_matrix, parse_objectives
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import sample
from autobuild_dsl.space.equivalence import network_keyer

SPACE = compile_file(Path(__file__).resolve().parent.parent / "spaces" / "nas_bench_macro.abs")
OBJECTIVES = parse_objectives("max acc, min lat")
WEIGHT = {"identity": 0, "mb_e3k3": 1, "mb_e6k5": 2}


def metrics(arch: Architecture) -> dict[str, float]:
    ops = [WEIGHT[layer["op"]] for stage in arch.stages.values() for layer in stage.layers]
    return {
        "acc": float(sum(op * (i + 1) for i, op in enumerate(ops))),
        "lat": float(sum(op**2 for op in ops)),
    }


class Table:
    identity = "warm-table"

    def __init__(self) -> None:
        self.paid: list[Architecture] = []

    def evaluate(self, archs, on_evaluated=None):  # type: ignore[no-untyped-def]
        self.paid.extend(archs)
        return [metrics(a) for a in archs]


LABELS = sample(SPACE, 40, seed=3)
WARM = [(arch, metrics(arch)) for arch in LABELS]
CONFIG = SearchConfig(objectives=OBJECTIVES, budget=30, init=25, per_generation=10)


def test_a_warm_search_starts_from_the_labels_front_and_never_pays_for_a_label() -> None:
    table = Table()
    result = run_search(SPACE, table, CONFIG, warm=WARM)
    network = network_keyer(SPACE)
    labelled = {network(arch) for arch in LABELS}
    assert len(result.records) == len(table.paid) == 30
    assert not labelled & {network(arch) for arch in table.paid}
    # No random generation 0: the first generation is per_generation mutants of the
    # labels' front (their parents are labels, not records).
    first = [r for r in result.records if r.generation == 0]
    assert len(first) == CONFIG.per_generation
    assert all(r.parent is None for r in first)
    front = non_dominated(objective_matrix(OBJECTIVES, [m for _, m in WARM]))
    parents = {LABELS[i].key() for i in front}
    stage_names = list(LABELS[0].stages)
    for record in first:
        child = Architecture.model_validate(record.arch)
        # A Stage-Full mutant differs from some front label in one unit (here, a stage).
        assert any(
            sum(child.stages[s] != LABELS[i].stages[s] for s in stage_names) <= 1
            for i in front
            if LABELS[i].key() in parents
        )
    cold = run_search(SPACE, Table(), CONFIG)
    assert len([r for r in cold.records if r.generation == 0]) == CONFIG.init


def test_a_warm_search_resumes_only_with_the_same_labels(tmp_path: Path) -> None:
    out = tmp_path / "s"
    straight = run_search(SPACE, Table(), CONFIG, warm=WARM)
    run_search(SPACE, Table(), CONFIG.model_copy(update={"budget": 12}), out, warm=WARM)
    table = Table()
    resumed = run_search(SPACE, table, CONFIG, out, warm=WARM)
    assert [r.key for r in resumed.records] == [r.key for r in straight.records]
    assert len(table.paid) == 30 - 12 + 2  # the cut generation (10 asked, 2 given) is redone
    with pytest.raises(SearchStateError, match="different search"):
        run_search(SPACE, Table(), CONFIG, out, warm=WARM[:-1])


@pytest.mark.parametrize("search", [regularized_evolution, tpe_search])
def test_a_proposal_equivalent_to_a_held_network_is_free(search) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def objective(arch: Architecture) -> float:
        calls.append(arch.key())
        return metrics(arch)["acc"]

    network = network_keyer(SPACE)
    warm = [(arch, m["acc"]) for arch, m in WARM]
    held = {network(arch) for arch in LABELS}
    result = search(SPACE, objective, 20, seed=0, warm=warm, key=network)
    assert result.evaluations == len(calls) == 20
    assert not held & {network(Architecture.model_validate_json(k)) for k in calls}
    # Every proposal is one network here: the labels answer all of them, nothing is paid.
    calls.clear()
    result = search(SPACE, objective, 1, seed=0, warm=warm, key=lambda arch: "one network")
    assert calls == [] and result.evaluations == 0
