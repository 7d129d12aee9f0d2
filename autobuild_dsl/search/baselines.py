"""Single-objective search baselines: regularized evolution and TPE (Optuna).

These are the comparisons AutoBuild's build step is measured against: given the same
number of evaluations of the true objective, how good an architecture does a search find?
Both count *distinct* architectures evaluated against the budget (a repeated proposal is
answered from memory for free), which is the most generous reading for the baselines.

Both can be *warm-started* with labels a user already holds (`warm`: architectures with
their objective values): those are known for free, regularized evolution starts its
population from the best of them and TPE is told them as finished trials, so a baseline
given B evaluations and N labels is compared like with like against AutoBuild-NAS (which
trains on the N labels and then spends B evaluations).
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import (
    ArchitectureError,
    canonicalize,
    index_of,
    mutate,
)
from autobuild_dsl.space.keys import DecisionKey
from autobuild_dsl.space.model import Space

Objective = Callable[[Architecture], float]
# Labels given for free: (architecture, objective value), higher is better.
Warm = Sequence[tuple[Architecture, float]]


class BaselineResult(BaseModel):
    """The outcome of one baseline run (higher objective is better)."""

    method: str
    best_arch: dict
    best_value: float
    evaluations: int = Field(description="distinct architectures paid for (warm ones are free)")
    warm: int = Field(default=0, description="labels given for free")
    # The best value known after each paid evaluation (labels included: an anytime curve).
    best_so_far: list[float]


class _Budgeted:
    """Counts distinct evaluations and remembers every answer."""

    def __init__(self, objective: Objective, budget: int, warm: Warm = ()) -> None:
        self.objective = objective
        self.budget = budget
        self.seen: dict[str, float] = {}
        self.best: tuple[float, Architecture] | None = None
        self.curve: list[float] = []
        for arch, value in warm:
            self.seen[arch.key()] = float(value)
            if self.best is None or value > self.best[0]:
                self.best = (float(value), arch)
        self.free = len(self.seen)

    @property
    def paid(self) -> int:
        return len(self.seen) - self.free

    @property
    def exhausted(self) -> bool:
        return self.paid >= self.budget

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
            evaluations=self.paid,
            warm=self.free,
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
    warm: Warm = (),
) -> BaselineResult:
    """Aging evolution (Real et al., 2019): tournament parent, mutate, drop the oldest.

    Defaults scale with the budget so small budgets still evolve: population
    min(50, budget // 4) (at least 4), tournament a quarter of the population. With
    `warm` labels, the population starts as the best of them (best last, so it ages
    out last) and only new architectures count against the budget.
    """
    if budget < 1:
        raise ValueError("budget must be at least 1")
    rng = random.Random(seed)
    population_size = population_size or max(4, min(50, budget // 4))
    tournament_size = tournament_size or max(2, population_size // 4)
    evaluate = _Budgeted(objective, budget, warm)
    population: collections.deque[tuple[Architecture, float]] = collections.deque()
    # Sorted by value, then key: the same labels in any order give the same start.
    for arch, value in sorted(warm, key=lambda item: (item[1], item[0].key()))[-population_size:]:
        population.append((arch, float(value)))
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
    warm: Warm = (),
) -> BaselineResult:
    """Optuna's TPE over the space's decisions, defined by run (depth before layers).

    Globals, each stage's depth and stage choices, and each used layer's configuration are
    categorical parameters; a proposal that breaks a rule is told as infeasible (-inf).
    `warm` labels are added to the study as finished trials (so the random start-up
    trials are skipped once there are enough of them) and cost nothing.
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
    evaluate = _Budgeted(objective, budget, warm)
    for arch, value in sorted(warm, key=lambda item: item[0].key()):
        params, distributions = _architecture_params(space, index, arch)
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=float(value)
            )
        )
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
            depth = trial.suggest_categorical(DecisionKey.depth(stage_name), list(stage.depths))
            choices = {
                c: trial.suggest_categorical(DecisionKey.choice(stage_name, c), list(domain))
                for c, domain in stage.choices.items()
                # A tied choice is decided once, by the stage that keeps it.
                if DecisionKey.choice(stage_name, c) not in space.ties
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


def _architecture_params(space: Space, index, arch: Architecture) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """The TPE parameters (and their distributions) that `_suggest_architecture` turns
    into `arch`: the inverse map, used to tell Optuna about labels it did not propose."""
    from optuna.distributions import CategoricalDistribution

    params: dict = {}
    distributions: dict = {}

    def put(name: str, value: object, domain: list) -> None:
        params[name] = value
        distributions[name] = CategoricalDistribution(domain)

    for name, domain in space.choices.items():
        put(f"@{name}", arch.globals[name], list(domain))
    for unit in index.units:
        restricted = space.restrictions.get(unit.name)
        if restricted is not None:
            for pick, module in enumerate(restricted):
                if all(
                    arch.stages[s].depth == part.depth
                    and arch.stages[s].layers == [dict(x) for x in part.layers]
                    and all(part.choices.get(c) == v for c, v in arch.stages[s].choices.items())
                    for s, part in zip(unit.stages, module, strict=True)
                ):
                    put(f"{unit.name}.module", pick, list(range(len(restricted))))
                    break
            else:
                raise ValueError(f"a warm-start label is not in the space (unit {unit.name})")
            continue
        for stage_name in unit.stages:
            stage = index.stages[stage_name]
            chosen = arch.stages[stage_name]
            put(DecisionKey.depth(stage_name), chosen.depth, list(stage.depths))
            for c, domain in stage.choices.items():
                if (key := DecisionKey.choice(stage_name, c)) not in space.ties:
                    put(key, chosen.choices[c], list(domain))
            for i, layer in enumerate(chosen.layers):
                configs = index.position_configs(stage_name, i)
                put(
                    f"{stage_name}.L{min(i, 1)}.{i}",
                    [dict(x) for x in configs].index(dict(layer)),
                    list(range(len(configs))),
                )
    return params, distributions
