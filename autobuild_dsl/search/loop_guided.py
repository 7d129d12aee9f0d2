"""The loop's guided search inside a reduced space: candidates in the order the round's
scorers place them.

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
from collections.abc import Callable, Sequence

import numpy as np

from autobuild_dsl.search.pareto import non_dominated
from autobuild_dsl.space.architecture import Architecture
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


def score_pool(runs: Sequence[object], pool: Sequence[Architecture]) -> list[np.ndarray]:
    """Each run's score of every architecture of the pool."""
    from autobuild_dsl.scorer.graph_scores import graph_scores

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


__all__ = ["MAX_SCORED", "candidates", "guided_picks", "score_pool"]
