"""An ensemble's predictions in numpy, without torch, for chain graphs.

A first `abc build RUN -k 3 -n 20` predicts a few hundred small networks with 20 members:
~0.1 s of arithmetic, behind 1-3 s of `import torch`. Sequence graphs without skip links
are chains (every node has at most one in-edge, from the node just before it), and for
them `ScorerModel.predict` in eval mode is a short list of dense numpy steps:

    FE-MLP table (embed . weight + bias) -> gather each node's codes -> abs
    per layer: source = lin_l(h), target = lin_r(h); the two-slot GATv2 attention
        (softmax over (self, predecessor) = sigmoid of the logit difference,
        leaky ReLU slope 0.2); + bias; BatchNorm with its running statistics when the
        config has it; ReLU; + h from the second layer on when residual
    mean pool of the last hop per graph -> head (Linear-ReLU-Linear-ReLU-Linear)

then each member's label moments and the ensemble weighting (scorer.records, shared with
scorer.run.predict). Float32 like the torch path, so the two agree to float rounding
(tests/test_numpy_predict.py). Anything else (skip links, IR graphs, a state dict or
feature code the model would refuse) returns None: the caller runs the torch path, which
computes or reports it as before.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autobuild_dsl.scorer.config import ModelConfig
from autobuild_dsl.scorer.records import TrainedRun, ensemble_moments, in_target_units

# GATv2Layer's negative slope and nn.BatchNorm1d's eps (ScorerModel's defaults).
SLOPE = 0.2
BN_EPS = 1e-5
# Nodes per forward pass: bounds the memory of a large request.
CHUNK_NODES = 1 << 16


@dataclass(frozen=True)
class ChainBatch:
    """Chain graphs packed one after another: node i's predecessor is row i - 1 where
    `has_prev[i]`."""

    x: np.ndarray  # [nodes, categories] int64 feature codes
    has_prev: np.ndarray  # [nodes] bool: the node has a predecessor
    starts: np.ndarray  # [graphs] first node of each graph
    counts: np.ndarray  # [graphs] nodes per graph


def chain_batch(graphs: Sequence[Any], vocab_sizes: Sequence[int]) -> ChainBatch | None:
    """The graphs (numpy `x` [nodes, categories], `edge_index` [2, edges]) as one chain
    batch, or None where a graph is no chain or a code lies outside its category's
    vocabulary (the torch path refuses it with its own message)."""
    xs, prevs, counts = [], [], []
    width = len(vocab_sizes)
    for graph in graphs:
        x, edges = np.asarray(graph.x), np.asarray(graph.edge_index)
        if x.ndim != 2 or x.shape[1] != width or edges.ndim != 2 or edges.shape[0] != 2:
            return None
        n = x.shape[0]
        src, dst = edges[0], edges[1]
        keep = src != dst  # self loops are implied (pack_graphs drops explicit ones)
        src, dst = src[keep], dst[keep]
        if src.size and (dst.min() < 1 or dst.max() >= n or np.any(src != dst - 1)):
            return None  # an edge that is not node -> next node
        has_prev = np.zeros(n, dtype=bool)
        has_prev[dst] = True
        if int(has_prev.sum()) != dst.size:
            return None  # the same edge twice: two in-edges
        xs.append(x)
        prevs.append(has_prev)
        counts.append(n)
    x_all = np.concatenate(xs).astype(np.int64) if xs else np.zeros((0, width), np.int64)
    if x_all.size and (x_all.min() < 0 or np.any(x_all.max(axis=0) > np.asarray(vocab_sizes))):
        return None
    count = np.asarray(counts, dtype=np.int64)
    return ChainBatch(
        x=x_all,
        has_prev=np.concatenate(prevs) if prevs else np.zeros(0, dtype=bool),
        starts=np.cumsum(count) - count,
        counts=count,
    )


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every entry of a ScorerModel's state dict with its shape (eval needs all)."""
    cats, hidden, head = len(config.vocab_sizes), config.hidden, config.head_hidden
    shapes: dict[str, tuple[int, ...]] = {
        "features.embed": (cats, max(config.vocab_sizes) + 1, config.fe_dim),
        "features.weight": (cats, config.fe_dim),
        "features.bias": (cats,),
        "head.0.weight": (head, hidden),
        "head.0.bias": (head,),
        "head.2.weight": (head, head),
        "head.2.bias": (head,),
        "head.4.weight": (1, head),
        "head.4.bias": (1,),
    }
    for layer in range(config.num_layers):
        width = cats if layer == 0 else hidden
        for side in ("lin_l", "lin_r"):
            shapes[f"convs.{layer}.{side}.weight"] = (hidden, width)
            shapes[f"convs.{layer}.{side}.bias"] = (hidden,)
        shapes[f"convs.{layer}.att"] = (1, 1, hidden)
        shapes[f"convs.{layer}.bias"] = (hidden,)
        if config.batch_norm:
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"norms.{layer}.{name}"] = (hidden,)
            shapes[f"norms.{layer}.num_batches_tracked"] = ()
    return shapes


def check_state(state: dict[str, np.ndarray] | None, config: ModelConfig) -> bool:
    """Whether `state` is exactly a ScorerModel state dict of this config (float32
    parameters; what `load_state_dict` would accept)."""
    if state is None:
        return False
    shapes = _expected_shapes(config)
    if set(state) != set(shapes):
        return False
    for name, shape in shapes.items():
        value = state[name]
        kind = np.int64 if name.endswith("num_batches_tracked") else np.float32
        if value.shape != shape or value.dtype != kind:
            return False
    return True


def _leaky_relu(v: np.ndarray) -> np.ndarray:
    # max(v, slope * v) is v where v > 0 and slope * v elsewhere (slope < 1): the same
    # floats as torch's leaky_relu, in one pass fewer than `where`.
    return np.maximum(v, np.float32(SLOPE) * v)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative v: 1/inf = 0
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-v))


@dataclass(frozen=True)
class ChainPlan:
    """Which nodes of a chain batch are alike at each hop (a node's hop-k embedding
    depends only on its codes and its k predecessors), so each member computes every
    distinct context once, as scorer.shared does for the torch path. Model-free: planned
    once for all members."""

    x: np.ndarray  # [distinct rows, categories] codes of hop 0's distinct rows
    self_rows: list[np.ndarray]  # per hop: each new context's own row at the hop before
    prev_rows: list[np.ndarray]  # ... its predecessor's row there (-1: none)
    last: np.ndarray  # [nodes] each node's row at the last hop
    starts: np.ndarray  # [graphs] first node of each graph
    counts: np.ndarray  # [graphs] nodes per graph


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each row's distinct id [n], one row of each distinct id) of an int [n, k] array;
    ids follow the sorted order of the rows. Rows of small non-negative integers
    are folded into one int64 first: a 1-D unique is a plain sort, far faster than
    `unique(axis=0)`. The one row-distinct step of both planners (this one and
    scorer.shared's)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim == 1:
        rows = rows[:, None]
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    radix = rows.max(axis=0) + 1
    if rows.shape[1] and rows.min() >= 0 and float(np.prod(radix.astype(np.float64))) < 2**62:
        folded = np.zeros(rows.shape[0], dtype=np.int64)
        for column, base in enumerate(radix.tolist()):
            folded = folded * int(base) + rows[:, column]
        _, inverse = np.unique(folded, return_inverse=True)
    else:  # too many value combinations to fold into one integer
        _, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    # One row of each id (its rows are equal, so any will do): a scatter, cheaper than
    # unique's return_index, which needs a stable sort.
    first = np.empty(int(inverse.max()) + 1, dtype=np.int64)
    first[inverse] = np.arange(inverse.shape[0])
    return inverse, first


def plan(batch: ChainBatch, num_layers: int) -> ChainPlan:
    """The distinct contexts of `batch` at hops 0..num_layers."""
    ids, first = distinct_rows(batch.x)
    rows0 = batch.x[first]
    self_rows, prev_rows = [], []
    for _ in range(num_layers):
        pred = np.where(batch.has_prev, np.roll(ids, 1), -1)  # the predecessor's row, -1: none
        # A node's next context: its own row and its predecessor's (+1: 0 is none).
        ids_next, first = distinct_rows(np.stack([ids, pred + 1], axis=1))
        self_rows.append(ids[first])
        prev_rows.append(pred[first])
        ids = ids_next
    return ChainPlan(rows0, self_rows, prev_rows, ids, batch.starts, batch.counts)


def _layer(
    state: dict[str, np.ndarray],
    config: ModelConfig,
    layer: int,
    h: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """The next hop's distinct rows from this hop's `h` (ScorerModel.hop on a two-slot
    chain batch): `rows` = each new context's own row and predecessor row (-1: none)."""
    p = f"convs.{layer}."
    source_all = h @ state[p + "lin_l.weight"].T + state[p + "lin_l.bias"]
    target = (h @ state[p + "lin_r.weight"].T + state[p + "lin_r.bias"])[rows[0]]
    source = source_all[rows[0]]
    # No predecessor: the padded slot reads the node itself, so its message equals the
    # self message and the output is exact whatever weight it gets (as in GATv2Layer).
    other = source_all[np.where(rows[1] >= 0, rows[1], rows[0])]
    act_self = _leaky_relu(source + target)
    act_other = _leaky_relu(other + target)
    weight = _sigmoid((act_other - act_self) @ state[p + "att"].reshape(-1))
    out = source + weight[:, None] * (other - source) + state[p + "bias"]
    if config.batch_norm:
        n = f"norms.{layer}."
        scale = state[n + "weight"] / np.sqrt(state[n + "running_var"] + np.float32(BN_EPS))
        out = (out - state[n + "running_mean"]) * scale + state[n + "bias"]
    out = np.maximum(out, np.float32(0.0))
    # Hop 0 has another width (one scalar per category): no skip into hop 1.
    return out + h[rows[0]] if config.residual and layer > 0 else out


def forward(state: dict[str, np.ndarray], config: ModelConfig, planned: ChainPlan) -> np.ndarray:
    """[graphs] float32: the member's standardised predictions (ScorerModel.predict)."""
    table = np.einsum("cvd,cd->cv", state["features.embed"], state["features.weight"])
    table = table + state["features.bias"][:, None]
    h = np.abs(table[np.arange(table.shape[0])[None, :], planned.x])
    for layer, rows in enumerate(zip(planned.self_rows, planned.prev_rows, strict=True)):
        h = _layer(state, config, layer, h, rows)
    counts = planned.counts
    sums = np.zeros((counts.shape[0], h.shape[1]), dtype=np.float32)
    filled = counts > 0
    if filled.any():  # reduceat over the non-empty graphs' first rows
        sums[filled] = np.add.reduceat(h[planned.last], planned.starts[filled], axis=0)
    z = sums / np.maximum(counts, 1).astype(np.float32)[:, None]
    for i in (0, 2):
        z = np.maximum(z @ state[f"head.{i}.weight"].T + state[f"head.{i}.bias"], np.float32(0))
    return (z @ state["head.4.weight"].T + state["head.4.bias"])[:, 0]


def _chunks(batch: ChainBatch) -> list[ChainBatch]:
    """The batch cut into runs of whole graphs of about CHUNK_NODES nodes."""
    bounds = [0]
    first = 0
    for g, start in enumerate(batch.starts.tolist()):
        if start - first >= CHUNK_NODES:
            bounds.append(g)
            first = start
    bounds.append(batch.counts.shape[0])
    parts = []
    for a, b in itertools.pairwise(bounds):
        lo = int(batch.starts[a]) if a < b else 0
        hi = lo + int(batch.counts[a:b].sum())
        parts.append(
            ChainBatch(
                batch.x[lo:hi], batch.has_prev[lo:hi], batch.starts[a:b] - lo, batch.counts[a:b]
            )
        )
    return parts


def predict_numpy(run: TrainedRun, graphs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, spread) in target units, as scorer.run.predict gives them, or None where
    this path does not apply (the caller runs the torch path)."""
    config = run.config.model
    if run.config.encoding != "sequence":
        return None
    batch = chain_batch(graphs, config.vocab_sizes)
    if batch is None:
        return None
    states = [member.numpy_state() for member in run.members]
    if not all(check_state(state, config) for state in states):
        return None
    plans = [plan(part, config.num_layers) for part in _chunks(batch)]
    rows = []
    for member, state in zip(run.members, states, strict=True):
        assert state is not None
        pred = [forward(state, config, planned) for planned in plans]
        rows.append(in_target_units(member, np.concatenate(pred) if pred else np.zeros(0)))
    return ensemble_moments(run.members, np.stack(rows))


__all__ = [
    "ChainBatch",
    "ChainPlan",
    "chain_batch",
    "check_state",
    "distinct_rows",
    "forward",
    "plan",
    "predict_numpy",
]
