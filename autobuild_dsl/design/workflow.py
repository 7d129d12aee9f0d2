"""The build workflow `abc build` runs, as one library call: rank, build, predict, order, check.

    runs = [load_run("runs/acc")]
    result, rankings = build_networks(runs, top_k=3, n=20)
    for built in result.architectures:
        print(built.score, built.predicted, built.arch)

Module scores say which modules are good; summed, they rank whole architectures only up to
the scorer's noise. So every built architecture also carries the ensemble's prediction of
its target (and the spread over members), and:

- near-ties of the summed score are broken by the prediction: starting from the best
  remaining candidate, every candidate whose summed score is within the leader's member
  spread (the sd over ensemble members of the summed score) is a tie, and a tie group is
  ordered by predicted target;
- a built architecture that the same ensemble predicts clearly worse than a one-module
  change of it (another of the unit's best modules in that unit, by more than the
  prediction's member spread) is reported in the notes, with the change.

Several runs (targets): candidates are the union of each run's proposals, ordered by
Pareto front over the runs' summed scores (build.construct); each run's prediction is
attached, and near-ties are left in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autobuild_dsl.design import rank_cache
from autobuild_dsl.design.builder import BuildError, BuiltArchitecture, ScoredModule
from autobuild_dsl.design.construct import BuildResult, SelectionMode, build_from_rankings
from autobuild_dsl.design.rank import (
    RankProgress,
    RankResult,
    ScoreKind,
    module_description,
    rank_modules,
)
from autobuild_dsl.scorer.records import TrainedRun
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import (
    architecture_from_modules,
    architecture_modules,
    decision_value,
    index_of,
)
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space, StageModule

# Architectures a build makes unless told (`abc build -n`).
DEFAULT_BUILT = 10
# Candidates drawn beyond n so that a tie at the cut can still be promoted.
EXTRA_CANDIDATES = 10
# Without a top-k, one-module changes try this many of a unit's best modules.
CHANGE_CANDIDATES = 10
# One-module changes are checked for this many of the best builds: each costs about
# units x candidates predictions, so checking every one of thousands takes minutes.
CHANGE_CHECKED = 100
# Predictions kept in RUN/cache/ (one entry per set of architectures asked; a build asks
# twice: its candidates and their one-module changes), the newest first.
PREDICT_ENTRY = "predict-"
PREDICT_KEPT = 32
# In the predictions' cache key: 2 = chain graphs predicted in numpy (older entries were
# computed with torch, equal to float rounding only).
PREDICT_VERSION = 2

ProgressFn = Callable[[RankProgress], None]


def build_networks(
    runs: Sequence[TrainedRun],
    *,
    top_k: int | dict[str, int] | Sequence[int] | None,
    n: int,
    mode: SelectionMode = "unconstrained",
    score: ScoreKind = "pooled",
    standardize: bool = False,
    globals: Sequence[dict[str, Any]] | None = None,
    all_globals: bool = False,
    space: Space | None = None,
    tie_break: bool = True,
    check_changes: bool = True,
    threads: int = 1,
    progress: Callable[[int, RankProgress], None] | None = None,
) -> tuple[BuildResult, list[RankResult]]:
    """Rank every module with each run, build the n best architectures, attach each run's
    prediction, break near-ties by prediction and report builds a one-module change beats.

    `space`: the space to build in (default: the first run's; a reduced-space file the
    runs were trained on is given by the CLI). `progress(run index, event)` follows ranking.
    """
    if not runs:
        raise BuildError("no run to build from")
    space = space or runs[0].space
    rankings = []
    for i, run in enumerate(runs):
        rankings.append(
            rank_modules(
                run,
                standardize=standardize,
                score=score,
                globals=globals,
                threads=threads,
                progress=(lambda event, i=i: progress(i, event)) if progress else None,
            )
        )
    several = len(runs) > 1
    # Extra candidates: for ties at the cut, and for equivalent networks left out.
    wanted = n + (min(2 * n, 200) + EXTRA_CANDIDATES if n else 0)
    result = build_from_rankings(
        space,
        rankings,
        top_k=top_k,
        n=wanted,
        mode=mode,
        all_globals=all_globals,
    )
    # The shortfall note is about the candidates asked for here, not the user's n.
    notes = [note for note in result.notes if not note.startswith("only ")]
    distinct, merged = _distinct_networks(space, result.architectures)
    if merged:
        notes.append(
            f"{merged} built architecture(s) left out: the same network as a better-placed "
            "one (e.g. an identity layer at another position of its stage)"
        )
    built = _with_predictions(runs, distinct, threads)
    if tie_break and not several:
        built, moved = _break_ties(built)
        if moved:
            notes.append(
                f"{moved} near-tie(s) of the summed score (within the members' spread) "
                "ordered by the ensemble's predicted target"
            )
    built = built[:n]
    if len(built) < n:
        notes.append(
            f"only {len(built)} distinct network(s) from the kept modules satisfy the "
            f"space's rules (asked for {n}); keep more modules per unit"
        )
    if check_changes and built:
        checked = built[:CHANGE_CHECKED]
        notes.extend(_one_module_changes(space, runs[0], rankings[0], result, checked, threads))
    return result.model_copy(update={"architectures": built, "notes": notes}), rankings


def _distinct_networks(
    space: Space, architectures: list[BuiltArchitecture]
) -> tuple[list[BuiltArchitecture], int]:
    """The architectures with every network once (the first, best placed, is kept)."""
    network = network_keyer(space)  # no resolving in spaces without no-op layers
    seen: set[str] = set()
    out = []
    for built in architectures:
        key = network(built.arch)
        if key in seen:
            continue
        seen.add(key)
        out.append(built)
    return out, len(architectures) - len(out)


def _with_predictions(
    runs: Sequence[TrainedRun], architectures: list[BuiltArchitecture], threads: int = 1
) -> list[BuiltArchitecture]:
    if not architectures:
        return []
    means, sds = [], []
    for run in runs:
        mean, sd = predict_architectures(run, [b.arch for b in architectures], threads=threads)
        means.append(mean)
        sds.append(sd)
    return [
        built.model_copy(
            update={
                "predicted": [float(m[i]) for m in means],
                "predicted_sd": [float(s[i]) for s in sds],
            }
        )
        for i, built in enumerate(architectures)
    ]


def predict_architectures(
    run: TrainedRun, archs: Sequence[Architecture], *, threads: int = 1, cache: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The run's ensemble prediction (mean, member spread) for each architecture.

    Chain graphs (no skip links) are predicted in numpy (scorer.numpy_predict: no torch
    import, whether or not torch is loaded, so every process gives the same numbers);
    other graphs with torch. `cache`: keep them in the run folder (design.rank_cache),
    keyed on the run's content and the architectures asked."""
    if not archs:
        return np.zeros(0), np.zeros(0)
    # One entry per request: the same numbers as computing them, to the bit (a forward's
    # floats can depend on what else is in its batch).
    asked = [a.key() for a in archs]
    key = rank_cache.cache_key("predict", PREDICT_VERSION, rank_cache.run_digest(run), asked)
    name = f"{PREDICT_ENTRY}{key[:16]}"
    stored = rank_cache.load_arrays(run.path, name, key) if cache else None
    if stored is not None:
        return stored["mean"], stored["sd"]
    encoder = run.encoder()
    arrays = getattr(encoder, "encode_arrays", None)  # sequence graphs as numpy arrays
    graphs = [arrays(arch) for arch in archs] if arrays is not None else None
    computed = None
    if graphs is not None:
        from autobuild_dsl.scorer.numpy_predict import predict_numpy

        computed = predict_numpy(run, graphs)
    if computed is None:
        from autobuild_dsl.parallel import torch_threads
        from autobuild_dsl.scorer.run import predict

        # Plain tensors where the encoder offers them: no PyG (and its ~1 s import).
        tensors = [g.tensors() for g in graphs] if graphs is not None else None
        with torch_threads(threads):
            computed = predict(run, tensors or [encoder.encode(arch) for arch in archs])
    mean, sd = computed
    # Kept only if computed with the weights keyed (see rank_cache.run_digest).
    again = rank_cache.cache_key("predict", PREDICT_VERSION, rank_cache.run_digest(run), asked)
    if cache and again == key:
        rank_cache.save_arrays(run.path, name, key, {"mean": mean, "sd": sd})
        rank_cache.prune(run.path, PREDICT_ENTRY, PREDICT_KEPT)
    return mean, sd


def _break_ties(built: list[BuiltArchitecture]) -> tuple[list[BuiltArchitecture], int]:
    """Order near-ties of the summed score by prediction; (new order, how many moved)."""
    remaining = list(built)
    ordered: list[BuiltArchitecture] = []
    while remaining:
        leader = remaining[0]
        tolerance = leader.score_sd or 0.0
        group = [b for b in remaining if leader.score - b.score <= tolerance]
        rest = [b for b in remaining if leader.score - b.score > tolerance]
        group.sort(key=lambda b: -(b.predicted[0] if b.predicted else -np.inf))
        ordered.extend(group)
        remaining = rest
    moved = sum(1 for a, b in zip(built, ordered, strict=True) if a is not b)
    return ordered, moved


def _unit_options(
    space: Space, ranking: RankResult, result: BuildResult, built: BuiltArchitecture
) -> dict[str, list[ScoredModule]]:
    """Per unit: the modules a one-module change may put there (the kept ones, else the
    unit's best in the built architecture's context)."""
    if result.top_k is not None:
        return dict(result.kept().units)
    options: dict[str, list[ScoredModule]] = {}
    for table in ranking.for_globals(built.globals):
        if table.context and any(
            decision_value(built.arch, k) != v for k, v in table.context.items()
        ):
            continue
        options.setdefault(table.unit, []).extend(table.top(CHANGE_CANDIDATES))
    return options


def _one_module_changes(
    space: Space,
    run: TrainedRun,
    ranking: RankResult,
    result: BuildResult,
    built: list[BuiltArchitecture],
    threads: int = 1,
) -> list[str]:
    """Notes for built architectures the ensemble predicts clearly worse than a neighbour
    that differs in one unit's module."""
    units = index_of(space).units
    variants: list[tuple[int, str, list[StageModule], Architecture]] = []
    for b, item in enumerate(built):
        own = architecture_modules(space, item.arch)
        for unit, modules in _unit_options(space, ranking, result, item).items():
            for module in modules:
                if module.parts == own[unit]:
                    continue
                changed = {**own, unit: module.parts}
                arch = architecture_from_modules(space, dict(item.globals), changed)
                if arch is not None:
                    variants.append((b, unit, module.parts, arch))
    if not variants:
        return []
    mean, _ = predict_architectures(run, [v[3] for v in variants], threads=threads)
    notes = []
    stages = {u.name: u.stages for u in units}
    # Index the variants by their built architecture once: a scan per architecture is
    # quadratic, and hangs when -n asks for thousands.
    by_built: dict[int, list[int]] = {}
    for i, v in enumerate(variants):
        by_built.setdefault(v[0], []).append(i)
    for b, item in enumerate(built):
        mine = by_built.get(b, [])
        if not mine or item.predicted is None or item.predicted_sd is None:
            continue
        best = max(mine, key=lambda i: mean[i])
        margin = item.predicted_sd[0]
        if mean[best] > item.predicted[0] + margin:
            _, unit, parts, _ = variants[best]
            notes.append(
                f"built #{b + 1}: the ensemble predicts it {item.predicted[0]:.4g} "
                f"(± {margin:.2g}), but changing unit {unit} to "
                f"{module_description(stages[unit], parts)} gives {mean[best]:.4g}"
            )
    return notes


__all__ = ["DEFAULT_BUILT", "build_networks", "predict_architectures"]
