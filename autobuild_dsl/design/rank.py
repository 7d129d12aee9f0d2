"""Scoring every module of every unit with a trained run (paper Sec. 4.2, supp. 7.3, 7.9, 7.10).

A module is one unit's part of an architecture (a stage's depth, stage choices and layers;
ProxylessNAS's stages 5 and 6 together). It is built alone, with its stages' real
positions, run through every member of the run's ensemble, and read at hop
h = min(nodes - 1, L), the hop whose receptive field is the whole module. Two readings:

  pooled (default)  the norm of the mean of the module's node embeddings at hop h: the
                    module-graph embedding, which is what the hop-level ranking loss trains
                    (a graph's pooled norm must rank like the target);
  last              the norm of the module's last node embedding at hop h, as the paper and
                    its authors' code do. It favours modules that end in a big layer: on
                    NAS-Bench-Macro its Spearman against the true module means is 0.66-0.84
                    in the 3-layer stages, against 0.96-0.98 for the pooled reading
                    (docs/ranking.md, benchmarks/bench_build_quality.py).

Context: when a unit's layers read another unit's choice (a width chain
`out = s1.width * 2`), the unit's modules are scored once per value of what they read
(their context), each in the graph it would really have there; builds then use the score
of each module in the context the rest of the architecture gives it.

Norms at different hops have different distributions, so scores of modules of different
sizes are made comparable (Eq. 5):

    z       = (norm - mu_h) / sd_h            node-embedding norms at hop h, training graphs
    shifted = z * sd_(u,d) + mu_(u,d)         labels of training architectures whose unit u
                                              has d layers (the module's size)

or, with little data, left as z (`standardize=True`, supplementary 7.9). Members are
combined by a weighted mean whose weights are their held-out SRCC at the module's hop.

Speed: a module's node rows depend only on its unit's scalar state (depths and stage
choices), the layer position and that layer's choices, so a few probe modules per state
give every row block, and all modules of a unit are packed into one `PackedGraphs` with
numpy indexing; each member then runs one batched forward over all of them.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from autobuild_dsl.design import rank_cache
from autobuild_dsl.design.module_sets import _feasible, _Modules, enumerate_modules
from autobuild_dsl.design.rank_model import (
    SCORE_KINDS,
    Mode,
    ProgressFn,
    RankedModule,
    RankError,
    RankProgress,
    RankResult,
    ScoreKind,
    StageState,
    UnitScores,
    _globals_key,
    layer_text,
    module_description,
)
from autobuild_dsl.scorer.records import TrainedRun
from autobuild_dsl.space.decisions import index_of, stage_module_choices
from autobuild_dsl.space.expr import Value, format_value
from autobuild_dsl.space.keys import DEPTH, DecisionKey
from autobuild_dsl.space.model import Space, Unit
from autobuild_dsl.space.values import find_value

if TYPE_CHECKING:  # torch: imported only when the members run (not on a cache hit)
    from autobuild_dsl.design.packing import ModuleBatch, pack_modules
    from autobuild_dsl.scorer.model import ScorerModel

# A (unit, size) label group needs this many training labels for Eq. 5; smaller groups
# fall back to the overall label statistics (and the result says so).
MIN_GROUP = 2
# Graphs per forward pass (bounds memory: ProxylessNAS's s5+s6 unit alone has 66,339).
GRAPH_CHUNK = 65_536
# Above this many contexts (values of other units' choices a unit's layers read), one unit
# is not scored context by context: ranking refuses and says which choices are read.
MAX_CONTEXTS = 4_096

# ----- the maths (vectorised over members and modules) ------------------------------------


def standardize(norms: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """(norm - mu_h) / sd_h; a zero sd counts as 1 (a constant hop carries no spread)."""
    sd = np.where(np.asarray(sd) > 0, sd, 1.0)
    return (np.asarray(norms, dtype=np.float64) - mean) / sd


def shift(z: np.ndarray, label_mean: np.ndarray, label_sd: np.ndarray) -> np.ndarray:
    """Eq. 5's second half: a standardised score in the label units of its size group."""
    return np.asarray(z, dtype=np.float64) * label_sd + label_mean


def hop_weights(srcc: np.ndarray) -> np.ndarray:
    """[members, hops] held-out SRCCs -> weights that sum to 1 over members at each hop.

    Negative or missing (NaN) SRCCs weigh 0; a hop where no member beats chance falls back
    to equal weights.
    """
    w = np.nan_to_num(np.asarray(srcc, dtype=np.float64), nan=0.0).clip(min=0.0)
    totals = w.sum(axis=0, keepdims=True)
    equal = np.full_like(w, 1.0 / w.shape[0])
    return np.where(totals > 0, w / np.where(totals > 0, totals, 1.0), equal)


def ensemble(values: np.ndarray, weights: np.ndarray, hops: np.ndarray) -> np.ndarray:
    """values [members, M], weights [members, hops], hops [M] -> weighted mean [M]."""
    return np.einsum("mi,mi->i", values, weights[:, hops])


# ----- which global assignments ------------------------------------------------------------


def _canonical_globals(space: Space, values: dict[str, Any]) -> dict[str, Value]:
    unknown = [k for k in values if k not in space.choices]
    if unknown:
        known = ", ".join(space.choices) or "none"
        raise RankError(f"unknown global choice '{unknown[0]}' (global choices: {known})")
    result: dict[str, Value] = {}
    for name, domain in space.choices.items():
        if name not in values:
            if len(domain) == 1:
                result[name] = domain[0]
                continue
            shown = ", ".join(format_value(v) for v in domain)
            raise RankError(f"no value for the global choice '{name}' (one of {shown})")
        match = find_value(domain, values[name])
        if match is None:
            shown = ", ".join(format_value(v) for v in domain)
            raise RankError(f"global {name} = {values[name]!r} is not one of {shown}")
        result[name] = match
    return result


def global_assignments(
    run: TrainedRun, given: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Value]]:
    """The assignments to score: the given ones, else those of the run's labeled data
    (most frequent first), else (older runs) every assignment of the space."""
    space = run.space
    if given:
        raw = list(given)
    elif run.config.globals_seen:
        raw = [g.values for g in run.config.globals_seen]
    else:
        names = list(space.choices)
        raw = [
            dict(zip(names, values, strict=True))
            for values in itertools.product(*space.choices.values())
        ]
    out: dict[tuple, dict[str, Value]] = {}
    for values in raw:
        canonical = _canonical_globals(space, values)
        out.setdefault(_globals_key(canonical), canonical)
    return list(out.values())


# ----- ranking -----------------------------------------------------------------------------


def _encoding(run: TrainedRun) -> str:
    return str(getattr(run.config, "encoding", "sequence") or "sequence")


def _label_groups(
    run: TrainedRun, unit: str, sizes: np.ndarray, notes: set[str]
) -> tuple[np.ndarray, np.ndarray]:
    """[members, len(sizes)] label mean and sd of each size's group (Eq. 5's mu_(u,d))."""
    means = np.zeros((len(run.members), len(sizes)))
    sds = np.zeros((len(run.members), len(sizes)))
    for m, member in enumerate(run.members):
        stats = member.record.label_stats
        groups = stats.by_unit.get(unit, {})
        for i, size in enumerate(sizes.tolist()):
            group = groups.get(int(size))
            if group is None or group.count < MIN_GROUP or group.mean is None or group.sd is None:
                count = 0 if group is None else group.count
                notes.add(
                    f"unit {unit}, {size} layer(s): {count} training label(s); "
                    "the overall label statistics stand in (the standardize option needs none)"
                )
                means[m, i], sds[m, i] = stats.mean, stats.sd
            else:
                means[m, i], sds[m, i] = group.mean, group.sd
    return means, sds


def context_domain(space: Space, name: str) -> list[Value]:
    """The values a stage decision (`STAGE.depth`, `STAGE.CHOICE`) can take."""
    owner, choice = DecisionKey.parse(name)
    stage = space.stage(owner)
    if choice == DEPTH:
        return list(stage.depths)
    return list(stage_module_choices(space, stage).get(choice, []))


def context_names(space: Space, encoder: Any, unit: Unit) -> list[str]:
    """Other units' choices that this unit's layers read (tied aliases as their keeper)."""
    own: set[str] = set()
    for name in unit.stages:
        stage = space.stage(name)
        own.add(DecisionKey.depth(name))
        own.update(DecisionKey.choice(name, c) for c in stage_module_choices(space, stage))
    own |= {space.ties.get(n, n) for n in own}
    names: dict[str, None] = {}
    for name in unit.stages:
        for ref in encoder.stage_refs(name):
            keeper = space.ties.get(ref, ref)
            if ref in space.choices or ref in own or keeper in own:
                continue
            names[keeper] = None
    return sorted(names)


def unit_contexts(space: Space, encoder: Any, unit: Unit) -> list[dict[str, Value]]:
    """Every assignment of the unit's context (one empty one for a context-free unit)."""
    names = context_names(space, encoder, unit)
    domains = [context_domain(space, n) for n in names]
    total = math.prod(len(d) for d in domains)
    if total > MAX_CONTEXTS:
        raise RankError(
            f"unit {unit.name} reads {', '.join(names)} of other stages: {total:,} contexts "
            f"to score it in (more than {MAX_CONTEXTS:,}). Narrow those choices, or score "
            "a reduced space"
        )
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*domains)]


def rank_modules(
    run: TrainedRun,
    *,
    standardize: bool = False,
    score: ScoreKind = "pooled",
    globals: Sequence[dict[str, Any]] | None = None,
    units: Sequence[str] | None = None,
    threads: int = 1,
    progress: ProgressFn | None = None,
    cache: bool = True,
) -> RankResult:
    """Score every module of every unit of the run's space with the run's ensemble.

    `score`: how a module is read (pooled module-graph embedding, or its last node);
    `globals`: the global assignments to score (default: those of the labeled data);
    `units`: only these units (default: all); `threads`: torch threads for the forward
    passes (one is fastest on a shared machine). A unit whose layers read other units'
    choices is scored in every context it can be built into. `cache`: keep the members'
    module norms in the run folder and reuse them while the run is unchanged
    (design.rank_cache).
    """
    _check_rankable(run, score)
    started = time.perf_counter()
    space = run.space
    encoder = run.encoder()
    assignments = global_assignments(run, globals)
    all_units = _chosen_units(space, units)
    num_layers = run.config.model.num_layers
    srcc = _hop_srcc(run, num_layers + 1)
    weights = hop_weights(srcc)
    mu, sd = _norm_moments(run, score, num_layers + 1)
    contexts = {u.name: unit_contexts(space, encoder, u) for u in all_units}
    jobs = _plan_jobs(space, assignments, all_units, contexts)
    name, key = rank_cache.norms_entry(run, score, jobs)
    stored = rank_cache.load_arrays(run.path, name, key) if cache else None
    if stored is None:
        stored = _member_norms(run, encoder, jobs, score, threads, progress)
        # Kept only if the weights it ran with are the ones keyed (a file replaced
        # between the check and the loading is not filed under the old bytes).
        if cache and rank_cache.norms_entry(run, score, jobs)[1] == key:
            rank_cache.save_arrays(run.path, name, key, stored)
    raw, nodes = stored["raw"], stored["nodes"]
    hop = np.clip(np.minimum(nodes - 1, num_layers), 0, None)
    z = standardize_members(raw, mu, sd, hop)
    # A module with no node (a depth-0 stage without extras) is average: z = 0.
    z[:, ~stored["has_node"]] = 0.0
    notes: set[str] = set()
    tables = _unit_tables(run, jobs, z, hop, nodes, weights, standardize, notes)
    low = _ranking_notes(run, globals, assignments, all_units, contexts, srcc, hop)
    return RankResult(
        run=str(run.path),
        target=run.config.target,
        mode="standardize" if standardize else "shift",
        score_kind=score,
        members=len(run.members),
        num_layers=num_layers,
        tables=tables,
        notes=sorted(notes) + low,
        seconds=time.perf_counter() - started,
    )


def _check_rankable(run: TrainedRun, score: str) -> None:
    if _encoding(run) != "sequence":
        raise RankError(
            f"{run.path}: this run uses the '{_encoding(run)}' graph encoding; module scoring "
            "needs sequence-graph runs (one node per layer). Train with the sequence encoding "
            "to rank and build modules"
        )
    if score not in SCORE_KINDS:
        raise RankError(f"unknown module score '{score}' (one of {', '.join(SCORE_KINDS)})")


def _chosen_units(space: Space, units: Sequence[str] | None) -> list[Unit]:
    all_units = index_of(space).units
    if not units:
        return list(all_units)
    known = {u.name for u in all_units}
    missing = [u for u in units if u not in known]
    if missing:
        raise RankError(f"no unit '{missing[0]}' (units: {', '.join(sorted(known))})")
    return [u for u in all_units if u.name in set(units)]


def _hop_srcc(run: TrainedRun, hops: int) -> np.ndarray:
    """[members, hops] held-out SRCC of each member at each hop (NaN where unknown)."""
    return np.array(
        [
            [np.nan if m.hop_srcc(h) is None else m.hop_srcc(h) for h in range(hops)]
            for m in run.members
        ],
        dtype=np.float64,
    )


def _norm_moments(run: TrainedRun, score: str, hops: int) -> tuple[np.ndarray, np.ndarray]:
    """[members, hops] mean and sd of the training graphs' norms the score is read from."""
    if score == "pooled":
        if any(m.record.graph_norms is None for m in run.members):
            raise RankError(
                f"{run.path}: this run was trained before pooled norm statistics were "
                "recorded; retrain it, or score modules by their last node (score 'last')"
            )
        moments = [m.record.graph_norms or [] for m in run.members]
    else:
        moments = [m.record.hop_norms for m in run.members]
    mu = np.array([[hm.mean for hm in ms] for ms in moments])
    sd = np.array([[hm.sd for hm in ms] for ms in moments])
    if mu.shape[1] < hops:
        raise RankError(f"{run.path}: members record {mu.shape[1]} hop statistics, need {hops}")
    return mu, sd


Job = tuple[dict[str, Value], dict[str, Value], _Modules, int]


def _plan_jobs(
    space: Space,
    assignments: list[dict[str, Value]],
    units: list[Unit],
    contexts: dict[str, list[dict[str, Value]]],
) -> list[Job]:
    """Each (assignment, unit, context) with the modules usable there."""
    enumerated = {u.name: enumerate_modules(space, u) for u in units}
    jobs: list[Job] = []
    for values in assignments:
        for unit in units:
            modules = enumerated[unit.name]
            for context in contexts[unit.name]:
                feasible = _feasible(space, modules, {**values, **context})
                keep = feasible[modules.state] if modules.count else np.zeros(0, dtype=bool)
                if context and not keep.any():
                    continue  # no architecture with these globals has this context
                kept = modules.subset(keep)
                jobs.append((values, context, kept, int(modules.count - kept.count)))
    return jobs


def _member_norms(
    run: TrainedRun,
    encoder: Any,
    jobs: list[Job],
    score: str,
    threads: int,
    progress: ProgressFn | None,
) -> dict[str, np.ndarray]:
    """Every job's modules in one batch, and one forward per member over all of them:
    raw [members, M] norms, nodes [M] per module, has_node [M]."""
    from autobuild_dsl.design.packing import _concat, pack_modules
    from autobuild_dsl.parallel import torch_threads

    batches: list[ModuleBatch] = []
    for values, context, kept, _ in jobs:
        batches.append(pack_modules(encoder, kept, values, context or None))
        if progress is not None:
            progress(RankProgress("encode", len(batches), len(jobs), kept.unit.name))
    batch = _concat(batches)
    hop = np.clip(np.minimum(batch.nodes - 1, run.config.model.num_layers), 0, None)
    raw = np.zeros((len(run.members), len(batch.nodes)))
    with torch_threads(threads):
        for m, member in enumerate(run.members):
            raw[m] = module_norms(member.model, batch, hop, score=score)  # type: ignore[arg-type]
            if progress is not None:
                progress(RankProgress("score", m + 1, len(run.members), member.name))
    return {"raw": raw, "nodes": np.asarray(batch.nodes), "has_node": batch.last >= 0}


def _unit_tables(
    run: TrainedRun,
    jobs: list[Job],
    z: np.ndarray,
    hop: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray,
    standardize: bool,
    notes: set[str],
) -> list[UnitScores]:
    """One UnitScores per job: its slice of the batch, shifted to label units (Eq. 5)."""
    tables: list[UnitScores] = []
    offset = 0
    for values, context, modules, excluded in jobs:
        span = slice(offset, offset + modules.count)
        offset += modules.count
        size = modules.size()
        h = hop[span]
        zm = z[:, span]
        if standardize:
            member_scores = zm
        else:
            unique_sizes, where = np.unique(size, return_inverse=True)
            means, sds = _label_groups(run, modules.unit.name, unique_sizes, notes)
            member_scores = shift(zm, means[:, where], sds[:, where])
        tables.append(
            UnitScores(
                unit=modules.unit.name,
                stages=list(modules.unit.stages),
                globals=dict(values),
                context=dict(context),
                configs=modules.configs,
                stage_states=modules.stage_states,
                unit_states=modules.unit_states,
                state=modules.state,
                module_id=modules.module_ids(),
                member_scores=member_scores,
                layers=modules.layers,
                size=size,
                nodes=counts[span],
                hop=h,
                z=ensemble(zm, weights, h),
                score=ensemble(member_scores, weights, h),
                excluded=excluded,
            )
        )
    return tables


def _ranking_notes(
    run: TrainedRun,
    globals: Sequence[dict[str, Any]] | None,
    assignments: list[dict[str, Value]],
    units: list[Unit],
    contexts: dict[str, list[dict[str, Value]]],
    srcc: np.ndarray,
    hop: np.ndarray,
) -> list[str]:
    low = [
        f"hop {h}: no member has a positive held-out SRCC; members weigh equally there"
        for h in sorted({int(v) for v in hop.tolist()})
        if not np.any(np.nan_to_num(srcc[:, h]) > 0)
    ]
    if not globals and not run.config.globals_seen and len(assignments) > 1:
        low.append(
            f"the run does not record the global choices of its data (trained by an older "
            f"version): scored all {len(assignments)} assignments; the globals option picks some"
        )
    encoder = run.encoder()
    for unit in units:
        names = context_names(run.space, encoder, unit)
        if names:
            low.append(
                f"unit {unit.name} reads {', '.join(names)}: its modules are scored in each "
                f"of {len(contexts[unit.name])} context(s), and builds use the score of the "
                "context they are built into"
            )
    return low


def module_norms(
    model: ScorerModel,
    batch: ModuleBatch,
    hops: np.ndarray,
    chunk: int = GRAPH_CHUNK,
    *,
    score: ScoreKind = "last",
) -> np.ndarray:
    """[modules]: each module's norm at hop `hops[m]`, read as `score` says.

    last: the norm of the module's last node embedding, the same numbers as
    `scorer.node_norms(model, graphs)[hop, last node]`; pooled: the norm of the mean of
    the module's node embeddings, the same numbers as the model's graph norm of the module
    built alone. No prediction head, and no norm that no score reads. 0 for a module with
    no node.
    """
    import torch

    from autobuild_dsl.design.packing import _graph_previous, apply_steps
    from autobuild_dsl.scorer.model import check_codes

    if score not in SCORE_KINDS:
        raise RankError(f"unknown module score '{score}' (one of {', '.join(SCORE_KINDS)})")
    packed = batch.packed
    check_codes(packed, model.config.vocab_sizes)
    hops = np.asarray(hops, dtype=np.int64)
    out = np.zeros(len(batch.last), dtype=np.float64)
    node_ptr = packed.node_ptr.numpy()
    previous = batch.previous if batch.previous is not None else _graph_previous(packed)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, packed.num_graphs, chunk):
                stop = min(start + chunk, packed.num_graphs)
                first, end = int(node_ptr[start]), int(node_ptr[stop])
                mine = np.flatnonzero((batch.last >= first) & (batch.last < end))
                if not len(mine):
                    continue
                embeddings = model.node_embeddings(packed.select(torch.arange(start, stop)))
                local = batch.last[mine] - first
                for h in [int(h) for h in np.unique(hops[mine])]:
                    pick = hops[mine] == h
                    if score == "last":
                        rows = embeddings[h][torch.from_numpy(local[pick])]
                    else:
                        # Path sums over just these modules' nodes and their prefixes, at
                        # this hop only (each element is summed in the same order as over
                        # the whole batch: the same numbers, a third of the work or less).
                        nodes, steps, at = batch.pooled_plan(previous, first, end, h, local[pick])
                        sums = apply_steps(embeddings[h].index_select(0, nodes), steps)
                        sizes = torch.from_numpy(batch.nodes[mine[pick]]).to(sums.dtype)
                        rows = sums.index_select(0, at) / sizes.clamp(min=1)[:, None]
                    norms = torch.linalg.vector_norm(rows, ord=model.config.norm_ord, dim=-1)
                    out[mine[pick]] = norms.double().numpy()
    finally:
        model.train(was_training)
    return out


def __getattr__(name: str) -> Any:
    """`ModuleBatch` and `pack_modules` (design.packing, which imports torch) on first use."""
    if name in ("ModuleBatch", "pack_modules"):
        from autobuild_dsl.design import packing

        return getattr(packing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def standardize_members(
    raw: np.ndarray, mean: np.ndarray, sd: np.ndarray, hops: np.ndarray
) -> np.ndarray:
    """raw [members, M] norms, mean/sd [members, hops], hops [M] -> z [members, M]."""
    return standardize(raw, mean[:, hops], sd[:, hops])


# The ranking API in one place: the models and helpers live in rank_model, module_sets and
# packing, and are re-exported here for callers of `design.rank` (packing's names on first
# use, by `__getattr__`: it imports torch).
__all__ = [
    "GRAPH_CHUNK",
    "MAX_CONTEXTS",
    "MIN_GROUP",
    "SCORE_KINDS",
    "Mode",
    "ModuleBatch",
    "ProgressFn",
    "RankError",
    "RankProgress",
    "RankResult",
    "RankedModule",
    "ScoreKind",
    "StageState",
    "UnitScores",
    "context_domain",
    "context_names",
    "ensemble",
    "enumerate_modules",
    "global_assignments",
    "hop_weights",
    "layer_text",
    "module_description",
    "module_norms",
    "pack_modules",
    "rank_modules",
    "shift",
    "standardize",
    "standardize_members",
    "unit_contexts",
]
