"""Regularized evolution and TPE on NAS-Bench-Macro's space with a known objective."""

from __future__ import annotations

import pytest

from autobuild_dsl.lang import compile_file
from autobuild_dsl.search.baselines import regularized_evolution, tpe_search
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import sample, validate

SPACE = compile_file("spaces/nas_bench_macro.abs")
WEIGHT = {"identity": 0.0, "mb_e3k3": 1.0, "mb_e6k5": 2.0}


def objective(arch: Architecture) -> float:
    # Later layers count more, so the optimum (all mb_e6k5) is unique.
    layers = [layer["op"] for stage in arch.stages.values() for layer in stage.layers]
    return sum(WEIGHT[op] * (1 + i / 10) for i, op in enumerate(layers))


def random_search_best(budget: int, seed: int) -> float:
    return max(objective(a) for a in sample(SPACE, budget, seed=seed))


@pytest.mark.parametrize("method", [regularized_evolution, tpe_search])
def test_baseline_beats_random_search_and_respects_budget(method) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def counted(arch: Architecture) -> float:
        calls.append(arch.key())
        return objective(arch)

    result = method(SPACE, counted, 120, seed=3)
    assert result.evaluations == 120
    assert len(calls) == len(set(calls)) == 120  # never pays twice for one architecture
    assert result.best_value == max(result.best_so_far)
    assert result.best_so_far == sorted(result.best_so_far)
    best = validate(SPACE, result.best_arch)
    assert objective(best) == result.best_value
    mean_random = sum(random_search_best(120, s) for s in range(5)) / 5
    assert result.best_value > mean_random


@pytest.mark.parametrize("method", [regularized_evolution, tpe_search])
def test_baseline_is_deterministic_for_a_seed(method) -> None:  # type: ignore[no-untyped-def]
    first = method(SPACE, objective, 40, seed=7)
    second = method(SPACE, objective, 40, seed=7)
    assert first == second


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="budget"):
        regularized_evolution(SPACE, objective, 0)
