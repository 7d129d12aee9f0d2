"""The loop's searches inside a reduced space: guided (candidates in the order the
round's scorers place them) and Pareto mutation of the held front.

Every network of the reduced space that is not held yet is scored by each target's
ensemble (`scorer.graph_scores`: the ranked embedding norm the scorers were trained to
order by), and the round pays for the best ones. With several targets (one per
trade-off, e.g. `acc - a * macs` for a spread of a), the best are those no other
candidate beats on every target: the predicted Pareto front between the targets'
slopes, taken layer by layer (non-dominated sorting).

Retraining between rounds on what was just paid for sharpens the scores where the best
networks are, which is where the next round looks.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from autobuild_dsl.search.evolution import TRIES_PER_ARCH
from autobuild_dsl.search.pareto import Objective, non_dominated, objective_matrix
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import mutate
from autobuild_dsl.space.enumeration import iter_architectures
from autobuild_dsl.space.index import index_of
from autobuild_dsl.space.model import Space

# A reduced space larger than this is scored on a seeded sample of this many networks:
# scoring costs a forward pass per network and member, about 1 ms each on one core.
MAX_SCORED = 20_000


def candidates(
    reduced: Space,
    held: set[str],
    network_key: Callable[[Architecture], str],
    seed: str,
) -> list[Architecture]:
    """One architecture per network of the reduced space that is not held, in a fixed
    order (all of them, or a seeded sample of MAX_SCORED when the space is larger)."""
    index = index_of(reduced)
    if index.size() <= MAX_SCORED:
        pool: Sequence[Architecture] = list(iter_architectures(reduced))
    else:
        rng = random.Random(seed)
        pool = [index.sample(rng) for _ in range(MAX_SCORED)]
    seen = set(held)
    picked = []
    for arch in pool:
        key = network_key(arch)
        if key not in seen:
            seen.add(key)
            picked.append(arch)
    return picked


def guided_picks(
    pool: Sequence[Architecture],
    scores: Sequence[np.ndarray],
    count: int,
) -> list[Architecture]:
    """Up to `count` of `pool`, best first.

    One target: in the order of its scores. Several: the candidates no other candidate
    beats on every target's score come first (each target weighs the objectives
    differently, so these are the predicted Pareto front between the targets' slopes),
    then the next such layer, and so on; within a layer the targets take turns adding
    their best. Ties keep the pool's order, so the choice is deterministic.
    """
    matrix = np.column_stack([np.asarray(s, dtype=np.float64) for s in scores])
    remaining = np.arange(len(pool))
    chosen: list[int] = []
    while len(remaining) and len(chosen) < count:
        layer = remaining[non_dominated(-matrix[remaining])] if matrix.shape[1] > 1 else remaining
        chosen.extend(_turns(matrix[layer], layer)[: count - len(chosen)])
        remaining = np.setdiff1d(remaining, layer)
    return [pool[i] for i in chosen]


def _turns(matrix: np.ndarray, ids: np.ndarray) -> list[int]:
    """`ids` ordered by the targets taking turns, each adding its best not yet added."""
    orders = [iter(np.argsort(-matrix[:, t], kind="stable")) for t in range(matrix.shape[1])]
    out: list[int] = []
    taken: set[int] = set()
    for order in itertools.cycle(orders):
        if len(out) == len(ids):
            return out
        for i in order:
            if int(i) not in taken:
                taken.add(int(i))
                out.append(int(ids[i]))
                break
    return out


def front_picks(
    pool: Sequence[Architecture],
    predicted: Sequence[np.ndarray],
    held: Sequence[np.ndarray],
    count: int,
) -> list[Architecture]:
    """Up to `count` of `pool` for a two-objective front, each the candidate whose
    predicted point adds the most hypervolume to the front of what is held and picked
    so far (greedy; points in objective units, higher is better on both axes). When no
    candidate is predicted to add anything, the rest follow `guided_picks`."""
    points = -np.column_stack([np.asarray(v, dtype=np.float64) for v in predicted])
    front = -np.column_stack([np.asarray(v, dtype=np.float64) for v in held])
    front = front[non_dominated(front)] if len(front) else front
    ref = np.max(np.vstack([points, front]), axis=0)
    ref = ref + 1e-6 * np.maximum(1.0, np.abs(ref))  # so the worst points still count
    chosen: list[int] = []
    free = np.ones(len(pool), dtype=bool)
    while len(chosen) < min(count, len(pool)):
        gains = np.where(free, _gains(points, front, ref), -1.0)
        best = int(np.argmax(gains))
        if gains[best] <= 0:
            break
        chosen.append(best)
        free[best] = False
        both = np.vstack([front, points[best : best + 1]])
        front = both[non_dominated(both)]
    rest = [i for i in range(len(pool)) if free[i]]
    more = guided_picks([pool[i] for i in rest], [np.asarray(v)[rest] for v in predicted],
                        count - len(chosen))  # fmt: skip
    return [pool[i] for i in chosen] + more


def _gains(points: np.ndarray, front: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The hypervolume (minimisation, 2 objectives, up to `ref`) each point adds to that
    of `front`: the staircase under the front, integrated from the point to `ref`."""
    order = np.argsort(front[:, 0], kind="stable")
    xs = np.append(front[order, 0], ref[0])
    # Height of the free region over each x-segment: the lowest front y to its left.
    heights = np.append(ref[1], np.minimum.accumulate(front[order, 1])) if len(front) else ref[1:2]
    starts = np.append(-np.inf, xs[:-1])
    ends = xs
    width = np.clip(np.minimum(ends, ref[0]) - np.maximum(starts, points[:, :1]), 0.0, None)
    height = np.clip(np.minimum(heights, ref[1]) - points[:, 1:2], 0.0, None)
    return (width * height).sum(axis=1)


def calibrated(held_scores: np.ndarray, held_values: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`scores` in the units of `held_values`: an increasing isotonic fit of the held
    networks' values on their scores, interpolated (the scorers rank; this gives the
    ranks a scale, so predicted points can be weighed against held ones)."""
    from scipy.optimize import isotonic_regression

    order = np.argsort(held_scores, kind="stable")
    fit = isotonic_regression(np.asarray(held_values, dtype=np.float64)[order]).x
    return np.interp(scores, np.asarray(held_scores)[order], fit)


def score_pool(runs: Sequence[object], pool: Sequence[Architecture]) -> list[np.ndarray]:
    """Each run's score of every architecture of the pool."""
    from autobuild_dsl.scorer.embedding_scores import graph_scores

    if not pool:
        return [np.zeros(0) for _ in runs]
    scores = []
    encoded: dict[str, object] = {}
    for run in runs:
        # Targets' runs on the same labels encode alike: encode the pool once for them.
        config = run.config  # type: ignore[attr-defined]
        same = json.dumps(
            [config.encoding, config.space, config.encoder_state,
             [c.model_dump(mode="json") for c in config.categories]],
            sort_keys=True, default=str,
        )  # fmt: skip
        if same not in encoded:
            encoded[same] = run.encoder().encode_many(list(pool))  # type: ignore[attr-defined]
        scores.append(graph_scores(run, encoded[same]))  # type: ignore[arg-type]
    return scores


def pareto_mutation(
    reduced: Space,
    objectives: Sequence[Objective],
    held: Sequence[str],
    known: Mapping[str, Mapping[str, float]],
    archs: Mapping[str, Architecture],
    seen: set[str],
    pay: Callable[[list[Architecture]], object],
    count: int,
    per_generation: int,
    rng_seed: str,
    mode: str,
) -> None:
    """Pareto mutation search inside `reduced`: generations of `per_generation` mutants
    (`mode` "stage" or "layer") of random members of the current front of `held`, paid
    with `pay` (which adds them to `known` and `archs`), until `count` are paid or no new
    architecture is found. `seen` holds keys never to propose."""
    pool = list(held)
    left, step = count, 0
    index = index_of(reduced)
    while left > 0:
        rng = random.Random(f"{rng_seed}:{step}")
        step += 1
        want = min(per_generation, left)
        batch: list[Architecture] = []
        keys: set[str] = set()
        front = (
            non_dominated(objective_matrix(objectives, [known[k] for k in pool])) if pool else []
        )
        for _ in range(want * TRIES_PER_ARCH):
            if len(batch) == want:
                break
            if front:
                child = mutate(
                    reduced, archs[pool[front[rng.randrange(len(front))]]], rng, mode=mode
                )
            else:
                child = index.sample(rng)
            key = child.key()
            if key in seen or key in keys:
                continue
            keys.add(key)
            batch.append(child)
        if not batch:
            return
        pay(batch)
        for arch in batch:
            seen.add(arch.key())
            pool.append(arch.key())
        left -= len(batch)


__all__ = [
    "MAX_SCORED",
    "calibrated",
    "candidates",
    "front_picks",
    "guided_picks",
    "pareto_mutation",
    "score_pool",
]
