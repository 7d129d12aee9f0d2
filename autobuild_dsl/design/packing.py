"""Packing a unit's modules into one batch for the scorer (design.rank).

A module's node rows depend only on its unit's scalar state, the layer position and that
layer's choices, so a few probe modules per state give every row block; chain-shaped units
become one prefix forest (modules sharing first nodes share them), others are packed graph
by graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from autobuild_dsl.design.module_sets import _Modules
from autobuild_dsl.scorer.model import PackedGraphs, pack_graphs
from autobuild_dsl.space.expr import Value
from autobuild_dsl.space.model import Space, StageModule, Unit

# ----- packing a unit's modules into one batch ---------------------------------------------


def _fast_path(space: Space, unit: Unit) -> bool:
    """Row blocks can be cut from probe graphs when the unit's stages have distinct
    positions and no skip link joins two of its stages (then edges are a plain chain)."""
    stages = [space.stage(s) for s in unit.stages]
    if len({s.index for s in stages}) != len(stages):
        return False
    inside = set(unit.stages)
    return not any(s.source in inside and s.target in inside for s in space.skips)


def _pack_slow(
    encoder: Any,
    modules: _Modules,
    values: dict[str, Value],
    context: dict[str, Value] | None = None,
) -> PackedGraphs:
    graphs = [
        encoder.encode_module(modules.unit.name, modules.parts(i), values, context=context)
        for i in range(modules.count)
    ]
    return pack_graphs(graphs)


class _Blocks:
    """Row blocks cut out of probe graphs; block 0 is empty (a missing layer)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.items: list[np.ndarray] = [np.zeros((0, width), dtype=np.int64)]

    def add(self, rows: np.ndarray) -> int:
        self.items.append(np.asarray(rows, dtype=np.int64).reshape(-1, self.width))
        return len(self.items) - 1


def _module_rows(
    encoder: Any,
    modules: _Modules,
    values: dict[str, Value],
    context: dict[str, Value] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Every module's node rows without building its graph: (row table, row index of each
    node, module by module, nodes per module). Row blocks per (unit state, position, layer
    choice) are cut out of probe graphs. None if a probe does not split as expected."""
    blocks = _Blocks(len(encoder.categories))
    n_states, n_stages = len(modules.unit_states), len(modules.stages)
    before = np.zeros((n_states, n_stages), dtype=np.int64)
    after = np.zeros((n_states, n_stages), dtype=np.int64)
    layer_block = [
        np.zeros(
            (n_states, len(modules.configs[j]), max(len(slot) for slot in modules.configs[j])),
            dtype=np.int64,
        )
        for j in range(n_stages)
    ]
    for u, state in enumerate(modules.unit_states):
        ends = _probe_state(encoder, modules, values, context, u, state, blocks, layer_block)
        if ends is None:
            return None
        for j, (first, rest) in enumerate(ends):
            before[u, j] = blocks.add(first)
            after[u, j] = blocks.add(rest)
    return _assemble_rows(blocks.items, modules, before, after, layer_block)


def _probe_state(
    encoder: Any,
    modules: _Modules,
    values: dict[str, Value],
    context: dict[str, Value] | None,
    u: int,
    state: tuple[int, ...],
    blocks: _Blocks,
    layer_block: list[np.ndarray],
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Probe unit state u: record each layer choice's row block in `layer_block`, and
    return per stage its extras before the first layer node and after the last one."""
    stages, width = modules.stages, blocks.width
    # The extras do not depend on the layers, so any probe with a layer node tells; when no
    # layer choice gives a node, all extras go first (the order is then the same either way).
    split: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(stages)
    extras: list[np.ndarray | None] = [None] * len(stages)
    widest = max(len(slot) for slots in modules.configs for slot in slots)
    for k in range(widest):
        parts = []
        for j, s_index in enumerate(state):
            s = modules.stage_states[j][s_index]
            slots = modules.configs[j]
            layers = [dict(slots[p][min(k, len(slots[p]) - 1)]) for p in range(s.depth)]
            parts.append(
                StageModule.model_construct(depth=s.depth, choices=dict(s.choices), layers=layers)
            )
        graph = encoder.encode_module(modules.unit.name, parts, values, context=context)
        x = graph.x.numpy()
        stage_of = graph.stage_index.numpy()
        layer_of = graph.layer_index.numpy()
        pos = 0
        for j, stage in enumerate(stages):
            end = pos
            while end < len(stage_of) and stage_of[end] == stage.index:
                end += 1
            seg_x, seg_layer = x[pos:end], layer_of[pos:end]
            at = np.flatnonzero(seg_layer >= 0)
            if split[j] is None and len(at):
                split[j] = (seg_x[: at[0]], seg_x[at[-1] + 1 :])
            if extras[j] is None:
                extras[j] = seg_x[seg_layer < 0]
            depth = modules.stage_states[j][state[j]].depth
            for p in range(depth):
                if k < len(modules.configs[j][p]):
                    layer_block[j][u, p, k] = blocks.add(seg_x[seg_layer == p])
            pos = end
        if pos != len(stage_of):
            return None
    empty = np.zeros((0, width), dtype=np.int64)
    return [split[j] or (extras[j], empty) for j in range(len(stages))]  # type: ignore[misc]


def _assemble_rows(
    blocks: list[np.ndarray],
    modules: _Modules,
    before: np.ndarray,
    after: np.ndarray,
    layer_block: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each module's blocks in node order, as row indices into one table."""
    table = np.concatenate(blocks)
    lengths = np.array([b.shape[0] for b in blocks], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    columns = []
    m_state = modules.state
    for j in range(len(modules.stages)):
        columns.append(before[m_state, j])
        grid = modules.layers[j]
        for p in range(grid.shape[1]):
            choice = grid[:, p]
            ids = layer_block[j][m_state, p, np.clip(choice, 0, None)]
            columns.append(np.where(choice >= 0, ids, 0))
        columns.append(after[m_state, j])
    block_ids = np.stack(columns, axis=1)
    sequence = block_ids.reshape(-1)  # row-major: module by module, in node order
    owner = np.repeat(np.arange(modules.count), block_ids.shape[1])
    seq_len = lengths[sequence]
    counts = np.bincount(owner, weights=seq_len, minlength=modules.count).astype(np.int64)
    total = int(seq_len.sum())
    offsets = np.cumsum(seq_len) - seq_len
    rows = np.repeat(starts[sequence] - offsets, seq_len) + np.arange(total)
    return table, rows, counts


def _chain_packed(x: np.ndarray, counts: np.ndarray) -> PackedGraphs:
    """Graphs that are plain chains (node i -> i + 1), as `pack_graphs` would pack them."""
    total = int(counts.sum())
    node_ptr = torch.zeros(len(counts) + 1, dtype=torch.long)
    node_ptr[1:] = torch.from_numpy(np.cumsum(counts))
    follow = np.ones(total, dtype=bool)
    follow[(np.cumsum(counts) - counts)[counts > 0]] = False
    return _packed(x, np.where(follow, -1, 0), follow, node_ptr)


def _packed(
    x: np.ndarray, rel: np.ndarray, has_input: np.ndarray, node_ptr: torch.Tensor
) -> PackedGraphs:
    """Nodes with at most one in-neighbour (at offset `rel` where `has_input`)."""
    total = x.shape[0]
    if has_input.any():
        rel_nbr = torch.zeros(2, total, dtype=torch.long)
        mask = torch.zeros(2, total, dtype=torch.bool)
        mask[0] = True
        rel_nbr[1] = torch.from_numpy(np.where(has_input, rel, 0).astype(np.int64))
        mask[1] = torch.from_numpy(has_input)
    else:
        rel_nbr = torch.zeros(1, total, dtype=torch.long)
        mask = torch.ones(1, total, dtype=torch.bool)
    return PackedGraphs(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)),
        rel_nbr=rel_nbr,
        nbr_mask=mask,
        node_ptr=node_ptr,
    )


def _prefix_forest(
    table: np.ndarray, rows: np.ndarray, counts: np.ndarray
) -> tuple[PackedGraphs, np.ndarray, np.ndarray]:
    """Chain graphs merged along shared prefixes: (one forest graph, last node per module).

    In a chain, a node's embedding at every hop depends only on the nodes before it, so
    modules that start with the same node rows share those nodes' embeddings. The forest
    holds each distinct prefix once (OFA: 36,855 modules, 143k chain nodes, 37k forest
    nodes); a node's one in-neighbour is its prefix's last node, as in the chain.
    """
    unique, canonical = np.unique(table, axis=0, return_inverse=True)
    content = np.asarray(canonical, dtype=np.int64).reshape(-1)[rows]
    width = max(len(unique), 1)
    starts = np.cumsum(counts) - counts
    parent = np.full(len(counts), -1, dtype=np.int64)
    node_content: list[np.ndarray] = []
    node_parent: list[np.ndarray] = []
    total = 0
    for position in range(int(counts.max()) if len(counts) else 0):
        active = np.flatnonzero(counts > position)
        key = (parent[active] + 1) * width + content[starts[active] + position]
        keys, inverse = np.unique(key, return_inverse=True)
        node_content.append(keys % width)
        node_parent.append(keys // width - 1)
        parent[active] = total + np.asarray(inverse, dtype=np.int64).reshape(-1)
        total += len(keys)
    contents = np.concatenate(node_content) if node_content else np.zeros(0, dtype=np.int64)
    parents = np.concatenate(node_parent) if node_parent else np.zeros(0, dtype=np.int64)
    x = unique[contents] if total else np.zeros((0, table.shape[1]), dtype=np.int64)
    has_input = parents >= 0
    node_ptr = torch.tensor([0, total], dtype=torch.long)
    return _packed(x, parents - np.arange(total), has_input, node_ptr), parent, parents


Steps = list[tuple[torch.Tensor, torch.Tensor]]


def jump_steps(previous: np.ndarray) -> Steps:
    """The schedule of path sums along `previous` (every node: itself plus each node
    reached by following it) by pointer jumping, log2(longest path) steps: per step, (the
    nodes still summing, the node each adds). It depends on the batch only, so every
    member reuses it (`ModuleBatch.pooled_plan`)."""
    pointer = np.array(previous, dtype=np.int64)  # a copy: the caller's array stays
    active = np.flatnonzero(pointer >= 0)
    steps: Steps = []
    while len(active):
        target = pointer[active]
        steps.append((torch.from_numpy(active), torch.from_numpy(target)))
        pointer[active] = pointer[target]
        active = active[pointer[active] >= 0]
    return steps


def apply_steps(values: torch.Tensor, steps: Steps) -> torch.Tensor:
    """values [nodes, d] -> their path sums, following a `jump_steps` schedule."""
    sums = values.clone()
    for active, target in steps:
        # The right side reads the old sums (as one pointer-jumping step must).
        sums.index_copy_(0, active, sums.index_select(0, active) + sums.index_select(0, target))
    return sums


@dataclass
class ModuleBatch:
    """Graphs holding every module's nodes, and where each module's last node is.

    `previous[v]` is the node before v in its module's own node list (-1 for a first
    node): following it from a module's last node visits exactly that module's nodes,
    so sums along it pool a module even when modules share prefix nodes (the forest).
    """

    packed: PackedGraphs
    last: np.ndarray  # [M] node index in `packed` (-1: the module has no node)
    nodes: np.ndarray  # [M] nodes of the module's own graph
    previous: np.ndarray | None = None  # [nodes of `packed`]; None: graph order
    # Per (node range, hop): the pooled-sum plan (design.rank), the same for every member.
    plans: dict[tuple[int, int, int], Any] = field(default_factory=dict, repr=False)

    def pooled_plan(
        self, previous: np.ndarray, first: int, end: int, hop: int, last: np.ndarray
    ) -> tuple[torch.Tensor, Steps, torch.Tensor]:
        """For modules ending at `last` (node indices within first..end): (the nodes on
        their paths, the path-sum schedule over just those, where each module's last node
        is among them). Made once per range and hop, kept for the next member."""
        key = (first, end, hop)
        kept = self.plans.get(key)
        if kept is not None and np.array_equal(kept[0], last):
            return kept[1]
        local = np.where(previous[first:end] >= 0, previous[first:end] - first, -1)
        on_path = np.zeros(len(local), dtype=bool)
        frontier = np.unique(last)
        while len(frontier):  # the modules' last nodes, then their prefixes
            on_path[frontier] = True
            frontier = np.unique(local[frontier])
            frontier = frontier[frontier >= 0]
            frontier = frontier[~on_path[frontier]]
        nodes = np.flatnonzero(on_path)
        position = np.full(len(local), -1, dtype=np.int64)
        position[nodes] = np.arange(len(nodes))
        sub_previous = np.where(local[nodes] >= 0, position[local[nodes]], -1)
        plan = (torch.from_numpy(nodes), jump_steps(sub_previous), torch.from_numpy(position[last]))
        self.plans[key] = (np.array(last), plan)
        return plan


def _graph_previous(packed: PackedGraphs) -> np.ndarray:
    """Each node's predecessor in its own graph's node order (-1 at a graph's first node)."""
    total = int(packed.node_ptr[-1])
    previous = np.arange(total, dtype=np.int64) - 1
    starts = packed.node_ptr[:-1].numpy()
    previous[starts[starts < total]] = -1
    return previous


def pack_modules(
    encoder: Any,
    modules: _Modules,
    values: dict[str, Value],
    context: dict[str, Value] | None = None,
) -> ModuleBatch:
    """Every module's graph (as `encoder.encode_module` builds it), ready for one forward.

    Chain-shaped units become one prefix forest; others are packed graph by graph.
    `context`: values of other units' choices that the unit's layers read.
    """
    width = len(encoder.categories)
    if not modules.count:
        empty = np.zeros(0, dtype=np.int64)
        return ModuleBatch(
            _chain_packed(np.zeros((0, width), dtype=np.int64), empty), empty, empty, empty
        )
    if _fast_path(encoder.space, modules.unit):
        cut = _module_rows(encoder, modules, values, context)
        if cut is not None:
            table, rows, counts = cut
            packed, last, parents = _prefix_forest(table, rows, counts)
            return ModuleBatch(packed, np.where(counts > 0, last, -1), counts, parents)
    packed = _pack_slow(encoder, modules, values, context)
    counts = packed.counts.numpy()
    return ModuleBatch(
        packed,
        np.where(counts > 0, packed.node_ptr[1:].numpy() - 1, -1),
        counts,
        _graph_previous(packed),
    )


def _concat(batches: list[ModuleBatch]) -> ModuleBatch:
    """Several batches as one (neighbour offsets are relative, so they carry over)."""
    if len(batches) == 1:
        return batches[0]
    slots = max(int(b.packed.rel_nbr.shape[0]) for b in batches)
    xs, rels, masks, ptrs, lasts, previous = [], [], [], [torch.zeros(1, dtype=torch.long)], [], []
    offset = 0
    for b in batches:
        p = b.packed
        n = int(p.node_ptr[-1])
        pad = slots - int(p.rel_nbr.shape[0])
        rel, mask = p.rel_nbr, p.nbr_mask
        if pad:
            rel = torch.cat([rel, torch.zeros(pad, n, dtype=torch.long)])
            mask = torch.cat([mask, torch.zeros(pad, n, dtype=torch.bool)])
        xs.append(p.x)
        rels.append(rel)
        masks.append(mask)
        ptrs.append(p.node_ptr[1:] + offset)
        lasts.append(np.where(b.last >= 0, b.last + offset, -1))
        before = b.previous if b.previous is not None else _graph_previous(p)
        previous.append(np.where(before >= 0, before + offset, -1))
        offset += n
    packed = PackedGraphs(
        x=torch.cat(xs),
        rel_nbr=torch.cat(rels, dim=1),
        nbr_mask=torch.cat(masks, dim=1),
        node_ptr=torch.cat(ptrs),
    )
    return ModuleBatch(
        packed,
        np.concatenate(lasts),
        np.concatenate([b.nodes for b in batches]),
        np.concatenate(previous),
    )
