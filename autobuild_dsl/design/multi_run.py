"""Several runs (one per target) building together (design.construct): each run proposes its
own best architectures by its own summed module scores, and the candidates are ordered by
Pareto front over the runs' summed scores, then by the best rank they reach in any run,
then by their mean rank. Scores of different targets are never added.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from autobuild_dsl.design.builder import (
    BuiltArchitecture,
    ModuleTable,
    best_architectures,
    same_globals,
)
from autobuild_dsl.space.decisions import (
    architecture_modules,
    decision_value,
    index_of,
    same_value,
)
from autobuild_dsl.space.model import Space

SelectionMode = Literal["unconstrained", "constrained"]


def pareto_candidates(
    space: Space, per_run: list[list[ModuleTable]], n: int
) -> list[BuiltArchitecture]:
    """Several runs: each run's n best (its own scores), scored by every run, ordered by
    Pareto front over the runs' summed scores, then by the best rank reached in any run
    (each run's own best come first), then by mean rank across the runs."""
    if not n:
        return []
    candidates: dict[str, BuiltArchitecture] = {}
    for tables in per_run:
        for built in best_architectures(space, tables, n):
            candidates.setdefault(built.arch.key(), built)
    pool = list(candidates.values())
    columns = []
    for tables in per_run:
        lookup = _text_scores(tables)  # once per run, not per architecture
        columns.append([_summed(space, tables, lookup, b) for b in pool])
    scores = np.array(columns, dtype=float).T.reshape(len(pool), len(per_run))
    fronts = pareto_fronts(scores)
    ranks = np.argsort(np.argsort(-scores, axis=0, kind="stable"), axis=0, kind="stable")
    # Within a front: first each run's own best ones (the extremes), then by mean rank.
    best_rank = ranks.min(axis=1)
    mean_rank = ranks.mean(axis=1)
    order = sorted(range(len(pool)), key=lambda i: (fronts[i], best_rank[i], mean_rank[i]))
    out = []
    for i in order[:n]:
        out.append(
            pool[i].model_copy(
                update={
                    "score": float(scores[i, 0]),
                    "run_scores": [float(v) for v in scores[i]],
                    "front": int(fronts[i]),
                }
            )
        )
    return out


def _summed(
    space: Space,
    tables: list[ModuleTable],
    lookup: list[dict[str, dict[str, float]]],
    built: BuiltArchitecture,
) -> float:
    """A built architecture's summed module score under another run's tables (-inf if one of
    its modules is not in them)."""
    from autobuild_dsl.design.builder import module_text

    units = index_of(space).units
    modules = architecture_modules(space, built.arch)
    wanted = {u.name: " + ".join(module_text(p) for p in modules[u.name]) for u in units}
    best = -math.inf
    for t, table in enumerate(tables):
        if not same_globals(table.globals, built.globals):
            continue
        if table.context and not all(
            same_value(v, built.context.get(k, decision_value(built.arch, k)))
            for k, v in table.context.items()
        ):
            continue
        total = 0.0
        for unit in units:
            found = lookup[t][unit.name].get(wanted[unit.name])
            if found is None:
                break
            total += found
        else:
            best = max(best, total)
    return best


def _text_scores(tables: list[ModuleTable]) -> list[dict[str, dict[str, float]]]:
    """Per table, per unit: module text -> score."""
    from autobuild_dsl.design.builder import module_text

    return [
        {
            unit: {" + ".join(module_text(p) for p in m.parts): m.score for m in modules}
            for unit, modules in table.units.items()
        }
        for table in tables
    ]


def pareto_fronts(values: np.ndarray, chunk: int = 256) -> np.ndarray:
    """[points, objectives] (higher is better) -> front number per point (1 = not dominated).

    Counts, for every point, the points that dominate it, then peels fronts off by
    subtracting what each front dominates: n^2 comparisons in all (a scan per front was
    n^2 per front, minutes for the thousands of candidates of a large -n).
    """
    count = values.shape[0]
    front = np.zeros(count, dtype=np.int64)
    if count == 0:
        return front
    values = values.reshape(count, -1)

    def dominated_counts(rows: np.ndarray) -> np.ndarray:
        total = np.zeros(count, dtype=np.int64)
        for start in range(0, len(rows), chunk):
            a = values[rows[start : start + chunk]][:, None, :]
            better = np.all(a >= values[None], axis=2) & np.any(a > values[None], axis=2)
            total += better.sum(axis=0)
        return total

    dominated_by = dominated_counts(np.arange(count))
    number = 1
    while True:
        current = np.flatnonzero((front == 0) & (dominated_by == 0))
        if not len(current):
            break
        front[current] = number
        dominated_by -= dominated_counts(current)
        number += 1
    return front


__all__ = ["pareto_candidates", "pareto_fronts"]
