"""Top-scoring rooted subgraphs of ONNX-IR graphs, for runs trained with `--encoding ir`.

IR graphs have no stage modules to rank, so an IR run is explained by its rooted subgraphs:
the hop-h embedding of node v summarises the operations within h steps upstream of v (its
h-hop in-neighbourhood, edges running producer -> consumer), and its norm scores that
subgraph (the paper's Sec. 3, Fig. 8). `top_rooted_subgraphs` scores every (node, hop) of
a set of architectures and reports the best distinct subgraphs with the operations they
cover.

Scores: each member's node-embedding norm at hop h is standardised with the mean/sd of
node norms at hop h over its training graphs (stored in the run, as Eq. 5 standardises
module scores), and members are averaged with weights = their held-out SRCC at hop h. The
result is a z-score, comparable across hops and runs.

Distinct subgraphs: two rooted subgraphs with the same features and the same upstream
structure get the same embedding, so they are one subgraph. They are found with
Weisfeiler-Lehman refinement over in-neighbours (each node's id at hop h is interned from
its id and its in-neighbours' ids at hop h - 1), which mirrors message passing exactly.
By default the report has one row per root *location* (space, operation type and layer,
e.g. the Conv of MobileNetV3's s4.3): the best of the subgraphs rooted there, over every hop and variant, with
how many folded into it (`variants`) and how many of the scored graphs hold any of them
(`occurrences`). `per_location=False` folds only look-alikes (same hop, root location,
operations and layers covered; other channel or kernel values).

Which graphs: the architectures given, or by default the rows of the data file the run was
trained on (`config.data`), which must still exist; their IR graphs come from the cache.

Dependencies: this module reads trained runs (the scorer); it is imported by `build` and
the CLI only, and imports the scorer lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from autobuild_dsl.graphs.ir import IrEncoder, IrError, IrGraph, op_presence
from autobuild_dsl.space.architecture import Architecture

if TYPE_CHECKING:
    from autobuild_dsl.scorer.run import TrainedRun

Progress = Callable[[int, int], None]
# Candidates per hop, per row asked for: look-alike subgraphs fold into one row.
_LOOKALIKES = 50


class SubgraphNode(BaseModel):
    """One operation a rooted subgraph covers (in its example graph)."""

    index: int = Field(description="node index in the example's IR graph (ONNX order)")
    op: str
    place: str | None = Field(description="the layer it belongs to: stem, s3.1, head, ...")
    distance: int = Field(description="hops upstream of the root (0 = the root)")
    features: dict[str, Any] = Field(description="its other feature values (category: value)")


class RootedSubgraph(BaseModel):
    """One distinct rooted subgraph (root node, hop) and its score."""

    rank: int
    hop: int
    score: float = Field(description="ensemble z-score of the root's hop-h embedding norm")
    norm: float = Field(description="ensemble mean of the raw norm (members weighted)")
    root: SubgraphNode
    ops: dict[str, int] = Field(description="operation type -> how many nodes it covers")
    places: list[str] = Field(description="layers the covered operations belong to")
    nodes: list[SubgraphNode]
    variants: int = Field(
        default=1,
        description="distinct subgraphs folded into this row (the same root location, or "
        "with per_location=False the same hop, root, operations and layers); the row shows "
        "the best",
    )
    occurrences: int = Field(description="scored graphs that hold this subgraph (any variant)")
    spaces: list[str] = Field(description="spaces of the graphs that hold it")
    example: int = Field(description="index (in the scored architectures) of one holder")
    example_space: str


class OpTypeScore(BaseModel):
    """The FE-MLP score of one operation type, and the spaces whose graphs have it."""

    op: str
    score: float
    raw: float
    spaces: list[str]


class SubgraphReport(BaseModel):
    run: str
    source: str = Field(description="where the scored architectures came from")
    graphs: int
    hops: list[int]
    hop_srcc: list[float | None] = Field(description="the run's mean held-out SRCC per hop")
    subgraphs: list[RootedSubgraph]
    op_types: list[OpTypeScore] = Field(description="FE-MLP op-type scores, best first")


def _run_architectures(run: TrainedRun, encoder: IrEncoder) -> tuple[list[Architecture], str]:
    from autobuild_dsl.data.dataset import DatasetError, load_dataset
    from autobuild_dsl.data.mixed import load_mixed_dataset

    path = run.config.data
    if not path or not Path(path).is_file():
        raise IrError(
            f"{run.path}: the run's data file ({path or 'not recorded'}) is not there; "
            "give the architectures to score"
        )
    try:
        if len(encoder.spaces) > 1:
            dataset = load_mixed_dataset(path, encoder.spaces)
        else:
            dataset = load_dataset(path, encoder.space)
    except DatasetError as error:
        raise IrError(f"{path}: {error}") from None
    return list(dataset.architectures), f"the run's data ({path})"


def _wl_ids(x: np.ndarray, in_nbrs: np.ndarray, hops: int) -> list[np.ndarray]:
    """Per hop 0..hops, an id per node: equal ids <=> equal rooted subgraphs (hop-h WL)."""
    _, ids = np.unique(x, axis=0, return_inverse=True)
    ids = ids.reshape(-1).astype(np.int64)
    out = [ids]
    for _ in range(hops):
        # In-neighbour ids, padding -1; sorted per node: the aggregation ignores order.
        nbr = np.where(in_nbrs >= 0, ids[np.maximum(in_nbrs, 0)], -1)
        nbr = np.sort(nbr, axis=1)
        _, ids = np.unique(np.column_stack([ids, nbr]), axis=0, return_inverse=True)
        ids = ids.reshape(-1).astype(np.int64)
        out.append(ids)
    return out


def _covered(graph: IrGraph, root: int, hop: int) -> dict[int, int]:
    """Nodes within `hop` steps upstream of `root` -> their distance."""
    preds: dict[int, list[int]] = {}
    for a, b in graph.edges:
        preds.setdefault(b, []).append(a)
    seen = {root: 0}
    frontier = [root]
    for distance in range(1, hop + 1):
        nxt = []
        for node in frontier:
            for p in preds.get(node, []):
                if p not in seen:
                    seen[p] = distance
                    nxt.append(p)
        frontier = nxt
    return seen


def _node(encoder: IrEncoder, graph: IrGraph, index: int, distance: int) -> SubgraphNode:
    features: dict[str, Any] = {}
    for category in encoder.ir_categories:
        if category.name == "op":
            continue
        column = graph.height if category.name == "size" else getattr(graph, category.name)
        value = column[index]
        if value is not None:
            features[category.name] = value
    return SubgraphNode(
        index=index,
        op=graph.ops[index],
        place=graph.place(index),
        distance=distance,
        features=features,
    )


def op_type_scores(run: TrainedRun, graphs: Sequence[IrGraph] = ()) -> list[OpTypeScore]:
    """The run's FE-MLP scores of the `op` category, best first; `spaces` says which of
    `graphs` have each op type (empty when no graphs are given)."""
    from autobuild_dsl.scorer.run import run_feature_importance

    presence = op_presence(graphs)
    rows = [r for r in run_feature_importance(run) if r.category == "op" and r.group == "op"]
    scores = [
        OpTypeScore(
            op=str(r.value), score=r.score, raw=r.raw, spaces=sorted(presence.get(str(r.value), ()))
        )
        for r in rows
    ]
    return sorted(scores, key=lambda s: -s.score)


def top_rooted_subgraphs(
    run: TrainedRun,
    top: int = 10,
    *,
    archs: Sequence[Architecture] | None = None,
    hops: Sequence[int] | None = None,
    per_location: bool = True,
    progress: Progress | None = None,
) -> SubgraphReport:
    """The `top` best distinct rooted subgraphs (node, hop) over a set of architectures.

    `archs`: the architectures to score (default: the run's data file). `hops`: which hop
    levels compete (default: every hop 1..L; hop 0 is a single node, which the op-type
    scores already cover). `per_location`: one row per root location (operation type and
    layer), showing its best hop and variant, so the rows name different places of the
    network; False: one row per look-alike group (the same root location at several hops,
    or with other operations upstream, gets several rows). `progress(done, total)` reports
    IR graphs built or read.
    """
    from autobuild_dsl.scorer.model import pack_graphs

    encoder, archs, source, levels = _subgraph_inputs(run, top, archs, hops)
    raw = encoder.graphs(archs, progress)
    packed = pack_graphs([encoder.encode_graph(g) for g in raw])
    score, norm = _node_scores(run, packed)
    ids = _wl_ids(packed.x.numpy(), _in_neighbours(packed), max(levels))
    candidates = _candidates(ids, score, levels, top)
    subgraphs = _fold_rows(encoder, raw, packed, ids, norm, candidates, top, per_location)
    hop_srcc = run.metrics.mean.hop_srcc if run.metrics is not None else []
    return SubgraphReport(
        run=str(run.path),
        source=source,
        graphs=len(raw),
        hops=levels,
        hop_srcc=list(hop_srcc),
        subgraphs=subgraphs,
        op_types=op_type_scores(run, raw),
    )


def _subgraph_inputs(
    run: TrainedRun, top: int, archs: Sequence[Architecture] | None, hops: Sequence[int] | None
) -> tuple[IrEncoder, list[Architecture], str, list[int]]:
    """The run's IR encoder, the architectures to score (and where they came from) and the
    hop levels that compete, once checked."""
    if run.config.encoding != "ir":
        raise IrError(f"{run.path}: rooted subgraphs are for runs trained with encoding 'ir'")
    if top < 1:
        raise IrError("top must be at least 1")
    encoder = run.encoder()
    assert isinstance(encoder, IrEncoder)
    if archs is None:
        chosen, source = _run_architectures(run, encoder)
    else:
        chosen, source = list(archs), f"{len(archs)} given architecture(s)"
    if not chosen:
        raise IrError("no architectures to score")
    levels = sorted(set(hops)) if hops is not None else list(range(1, run.num_hops))
    bad = [h for h in levels if not 0 <= h < run.num_hops]
    if bad or not levels:
        raise IrError(f"hop {bad[0] if bad else '?'} is not one of 0..{run.num_hops - 1}")
    return encoder, chosen, source, levels


def _node_scores(run: TrainedRun, packed: Any) -> tuple[np.ndarray, np.ndarray]:
    """[hops, nodes] z-scored norms and raw norms, members weighted by their held-out
    SRCC at each hop."""
    from autobuild_dsl.scorer.run import node_norms

    total = int(packed.node_ptr[-1])
    score = np.zeros((run.num_hops, total))
    norm = np.zeros((run.num_hops, total))
    weights = np.array([[m.hop_weight(h) for h in range(run.num_hops)] for m in run.members])
    sums = weights.sum(axis=0)
    weights = np.where(sums > 0, weights / np.where(sums > 0, sums, 1), 1.0 / len(run.members))
    with torch.inference_mode():
        for k, member in enumerate(run.members):
            norms, _ = node_norms(member.model, packed)
            values = norms.double().numpy()
            for h in range(run.num_hops):
                moments = member.record.hop_norms[h]
                sd = moments.sd if moments.sd > 0 else 1.0
                score[h] += weights[k, h] * (values[h] - moments.mean) / sd
                norm[h] += weights[k, h] * values[h]
    return score, norm


def _in_neighbours(packed: Any) -> np.ndarray:
    """In-neighbour table (nodes x max in-degree, -1 padding) from the packed graphs."""
    total = int(packed.node_ptr[-1])
    local = np.arange(total)
    rel = packed.rel_nbr.numpy()[1:]  # slot 0 is the node itself
    mask = packed.nbr_mask.numpy()[1:]
    return np.where(mask, local[None, :] + rel, -1).T if rel.size else np.full((total, 0), -1)


def _candidates(
    ids: np.ndarray, score: np.ndarray, levels: list[int], top: int
) -> list[tuple[float, int, int]]:
    """Per hop the best distinct subgraphs, (score, hop, first node holding it), best
    first; more than `top`, as look-alikes fold together."""
    total = score.shape[1]
    candidates: list[tuple[float, int, int]] = []
    for h in levels:
        order = np.argsort(ids[h], kind="stable")
        _, first = np.unique(ids[h][order], return_index=True)
        means = np.add.reduceat(score[h][order], first) / np.diff(np.append(first, total))
        best = np.argsort(-means, kind="stable")[: top * _LOOKALIKES]
        candidates.extend((float(means[g]), h, int(order[first[g]])) for g in best)
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    return candidates


def _fold_rows(
    encoder: IrEncoder,
    raw: Sequence[IrGraph],
    packed: Any,
    ids: np.ndarray,
    norm: np.ndarray,
    candidates: list[tuple[float, int, int]],
    top: int,
    per_location: bool,
) -> list[RootedSubgraph]:
    """The `top` rows: candidates in order, look-alikes folded into the row they match."""
    graph_of = np.repeat(np.arange(len(raw)), np.diff(packed.node_ptr.numpy()))
    starts = packed.node_ptr.numpy()[:-1]
    rows: dict[tuple[Any, ...], RootedSubgraph] = {}
    holders_of: dict[tuple[Any, ...], set[int]] = {}
    for value, h, node in candidates:
        example = int(graph_of[node])
        graph = raw[example]
        root = node - int(starts[example])
        covered = _covered(graph, root, h)
        nodes = [_node(encoder, graph, i, d) for i, d in sorted(covered.items())]
        counts: dict[str, int] = {}
        for item in nodes:
            counts[item.op] = counts.get(item.op, 0) + 1
        places = list(dict.fromkeys(n.place for n in nodes if n.place is not None))
        ops = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        # Look-alikes: same hop, root, operations and layers; other feature values.
        signature: tuple[Any, ...] = (graph.space, graph.ops[root], graph.place(root))
        if not per_location:
            signature += (h, tuple(ops.items()), tuple(places))
        holders = np.flatnonzero(ids[h] == ids[h][node])
        owners = {int(g) for g in np.unique(graph_of[holders])}
        if signature in rows:
            row = rows[signature]
            holders_of[signature] |= owners
            rows[signature] = row.model_copy(update={"variants": row.variants + 1})
            continue
        if len(rows) == top:
            continue  # full: later candidates only fold into the rows above
        holders_of[signature] = owners
        rows[signature] = RootedSubgraph(
            rank=len(rows) + 1,
            hop=h,
            score=value,
            norm=float(norm[h, holders].mean()),
            root=_node(encoder, graph, root, 0),
            ops=ops,
            places=places,
            nodes=nodes,
            occurrences=0,
            spaces=[],
            example=example,
            example_space=graph.space,
        )
    return [
        row.model_copy(
            update={
                "occurrences": len(holders_of[key]),
                "spaces": sorted({raw[g].space for g in holders_of[key]}),
            }
        )
        for key, row in rows.items()
    ]


__all__ = [
    "OpTypeScore",
    "RootedSubgraph",
    "SubgraphNode",
    "SubgraphReport",
    "op_type_scores",
    "top_rooted_subgraphs",
]
