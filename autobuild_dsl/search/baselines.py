"""Single-objective search baselines: regularized evolution and TPE (Optuna).

These are the comparisons AutoBuild's build step is measured against: given the same
number of evaluations of the true objective, how good an architecture does a search find?
Both count *distinct* architectures evaluated against the budget (a repeated proposal is
answered from memory for free), which is the most generous reading for the baselines.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable

from pydantic import BaseModel

from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import (
    ArchitectureError,
    canonicalize,
    index_of,
    mutate,
)
from autobuild_dsl.space.model import Space

Objective = Callable[[Architecture], float]


class BaselineResult(BaseModel):
    """The outcome of one baseline run (higher objective is better)."""

    method: str
    best_arch: dict
    best_value: float
    evaluations: int
    # The best value found after each distinct evaluation (an anytime curve).
    best_so_far: list[float]


class _Budgeted:
    """Counts distinct evaluations and remembers every answer."""

    def __init__(self, objective: Objective, budget: int) -> None:
        self.objective = objective
        self.budget = budget
        self.seen: dict[str, float] = {}
        self.best: tuple[float, Architecture] | None = None
        self.curve: list[float] = []

    @property
    def exhausted(self) -> bool:
        return len(self.seen) >= self.budget

    def __call__(self, arch: Architecture) -> float:
        key = arch.key()
        if key in self.seen:
            return self.seen[key]
        value = float(self.objective(arch))
        self.seen[key] = value
        if self.best is None or value > self.best[0]:
            self.best = (value, arch)
        self.curve.append(self.best[0])
        return value

    def result(self, method: str) -> BaselineResult:
        if self.best is None:
            raise ValueError(f"{method}: no architecture was evaluated (budget {self.budget})")
        return BaselineResult(
            method=method,
            best_arch=self.best[1].model_dump(mode="json"),
            best_value=self.best[0],
            evaluations=len(self.seen),
            best_so_far=self.curve,
        )


def regularized_evolution(
    space: Space,
    objective: Objective,
    budget: int,
    *,
    seed: int = 0,
    population_size: int | None = None,
    tournament_size: int | None = None,
    mutation: str = "layer",
) -> BaselineResult:
    """Aging evolution (Real et al., 2019): tournament parent, mutate, drop the oldest.

    Defaults scale with the budget so small budgets still evolve: population
    min(50, budget // 4) (at least 4), tournament a quarter of the population.
    """
    if budget < 1:
        raise ValueError("budget must be at least 1")
    rng = random.Random(seed)
    population_size = population_size or max(4, min(50, budget // 4))
    tournament_size = tournament_size or max(2, population_size // 4)
    evaluate = _Budgeted(objective, budget)
    population: collections.deque[tuple[Architecture, float]] = collections.deque()
    index = index_of(space)
    attempts = 0
    while len(population) < population_size and not evaluate.exhausted and attempts < 50 * budget:
        attempts += 1
        arch = index.sample(rng)
        population.append((arch, evaluate(arch)))
    attempts = 0
    while not evaluate.exhausted and attempts < 50 * budget:
        attempts += 1
        contenders = rng.sample(list(population), min(tournament_size, len(population)))
        parent = max(contenders, key=lambda item: item[1])[0]
        child = mutate(space, parent, rng, mode=mutation)
        population.append((child, evaluate(child)))
        population.popleft()
    return evaluate.result("regularized evolution")


def tpe_search(
    space: Space,
    objective: Objective,
    budget: int,
    *,
    seed: int = 0,
    startup_trials: int | None = None,
) -> BaselineResult:
    """Optuna's TPE over the space's decisions, defined by run (depth before layers).

    Globals, each stage's depth and stage choices, and each used layer's configuration are
    categorical parameters; a proposal that breaks a rule is told as infeasible (-inf).
    """
    try:
        import optuna
    except ImportError as error:  # an optional extra: say how to get it
        raise ImportError(
            "TPE needs Optuna: pip install 'autobuild-dsl[bench]' (or optuna)"
        ) from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    index = index_of(space)
    startup = startup_trials if startup_trials is not None else max(5, min(20, budget // 5))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    evaluate = _Budgeted(objective, budget)
    trials = 0
    while not evaluate.exhausted and trials < 50 * budget:
        trials += 1
        trial = study.ask()
        raw = _suggest_architecture(space, index, trial)
        try:
            arch = canonicalize(space, raw)
        except ArchitectureError:
            study.tell(trial, -math.inf)
            continue
        study.tell(trial, evaluate(arch))
    return evaluate.result("TPE (Optuna)")


def _suggest_architecture(space: Space, index, trial) -> dict:  # type: ignore[no-untyped-def]
    globals_ = {
        name: trial.suggest_categorical(f"@{name}", list(domain))
        for name, domain in space.choices.items()
    }
    stages: dict[str, dict] = {}
    for unit in index.units:
        restricted = space.restrictions.get(unit.name)
        if restricted is not None:
            pick = trial.suggest_categorical(f"{unit.name}.module", list(range(len(restricted))))
            for stage_name, part in zip(unit.stages, restricted[pick], strict=True):
                stages[stage_name] = {
                    "depth": part.depth,
                    "choices": dict(part.choices),
                    "layers": [dict(x) for x in part.layers],
                }
            continue
        for stage_name in unit.stages:
            stage = index.stages[stage_name]
            depth = trial.suggest_categorical(f"{stage_name}.depth", list(stage.depths))
            choices = {
                c: trial.suggest_categorical(f"{stage_name}.{c}", list(domain))
                for c, domain in stage.choices.items()
                # A tied choice is decided once, by the stage that keeps it.
                if f"{stage_name}.{c}" not in space.ties
            }
            layers = []
            for i in range(depth):
                # Slot 0 may offer more configurations (a stride choice acts there only).
                configs = index.position_configs(stage_name, i)
                pick = trial.suggest_categorical(
                    f"{stage_name}.L{min(i, 1)}.{i}", list(range(len(configs)))
                )
                layers.append(dict(configs[pick]))
            stages[stage_name] = {"depth": depth, "choices": choices, "layers": layers}
    return {"space": space.name, "globals": globals_, "stages": stages}
