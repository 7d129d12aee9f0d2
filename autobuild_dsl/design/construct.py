"""From module scores to built networks: top-k per unit, merged runs, the N best architectures.

    rankings = [rank_modules(load_run("runs/acc"))]
    result = build_from_rankings(space, rankings, top_k=4, n=100)
    result.architectures            # the 100 best by summed module score, rules satisfied
    reduced_space(space, "spaces/mbv3.abs", "out/top4.abs", result, "ofa_top4")

Only the modules a selection can use are built as objects (a unit can have tens of
thousands): for a top-k selection the best k of each size, and without one the best n of
each unit when the space has no rule that could reject a combination (no architecture in
the n best can use a module ranked below n in its unit: swapping it for any of the n
better ones gives n better combinations).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from autobuild_dsl.design.builder import (
    BuildError,
    BuiltArchitecture,
    ModuleTable,
    ScoredModule,
    best_architectures,
    merge_selections,
    reduced_space_text,
    same_globals,
    select_top_k,
)
from autobuild_dsl.design.multi_run import pareto_candidates, pareto_fronts
from autobuild_dsl.design.rank import RankResult, UnitScores, context_domain
from autobuild_dsl.errors import Remedy
from autobuild_dsl.space.decisions import (
    ArchitectureError,
    architecture_from_modules,
    canonicalize,
    index_of,
    same_value,
)
from autobuild_dsl.space.expr import Value
from autobuild_dsl.space.keys import DecisionKey
from autobuild_dsl.space.model import Space

SelectionMode = Literal["unconstrained", "constrained"]
_NEED_TOP_K = Remedy("top_k", "(the modules kept per unit)", "K")


class BuildResult(BaseModel):
    """What `abc build` writes: the kept modules and the best architectures."""

    space: str
    runs: list[str]
    top_k: dict[str, int] | None = Field(description="modules kept per unit (None: all)")
    mode: SelectionMode
    selections: list[ModuleTable] = Field(description="kept modules, one table per globals")
    architectures: list[BuiltArchitecture]
    notes: list[str] = Field(default_factory=list)

    def kept(self) -> ModuleTable:
        """Every unit's kept modules over all global assignments (a module once)."""
        return merge_selections(self.selections)

    def global_values(self) -> dict[str, list[Value]]:
        """Each global choice's values over the selections, in first-seen order."""
        values: dict[str, list[Value]] = {}
        for table in self.selections:
            for name, value in table.globals.items():
                seen = values.setdefault(name, [])
                if not any(type(v) is type(value) and v == value for v in seen):
                    seen.append(value)
        return values


def normalize_top_k(space: Space, top_k: int | dict[str, int] | Sequence[int]) -> dict[str, int]:
    """k per unit from one k, a list in unit order, or a {unit: k} map (every unit named)."""
    units = [u.name for u in index_of(space).units]
    if isinstance(top_k, int):
        ks = dict.fromkeys(units, top_k)
    elif isinstance(top_k, dict):
        unknown = [u for u in top_k if u not in units]
        if unknown:
            raise BuildError(f"no unit '{unknown[0]}' (units: {', '.join(units)})")
        missing = [u for u in units if u not in top_k]
        if missing:
            raise BuildError(f"no k given for unit '{missing[0]}' (units: {', '.join(units)})")
        ks = {u: int(top_k[u]) for u in units}
    else:
        values = list(top_k)
        if len(values) != len(units):
            raise BuildError(
                f"{len(values)} k value(s) for {len(units)} units ({', '.join(units)})"
            )
        ks = {u: int(k) for u, k in zip(units, values, strict=True)}
    bad = [u for u, k in ks.items() if k < 1]
    if bad:
        raise BuildError(f"k for unit '{bad[0]}' must be at least 1, got {ks[bad[0]]}")
    return ks


def _key(values: dict[str, Value]) -> tuple:
    return tuple(sorted((k, type(v).__name__, v) for k, v in values.items()))


class _UnitView:
    """One unit's scores under one global assignment, over all the contexts it was scored in."""

    def __init__(self, tables: list[UnitScores]) -> None:
        self.tables = tables
        self.by_context = {_key(t.context): t for t in tables}
        ids = np.concatenate([_ids(t) for t in tables])
        scores = np.concatenate([np.asarray(t.score, dtype=np.float64) for t in tables])
        self.ids, inverse = np.unique(ids, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        # A module's overall score: its mean over the contexts it can be built into.
        self.mean = np.bincount(inverse, weights=scores) / np.bincount(inverse)
        where = np.full(len(self.ids), -1, dtype=np.int64)
        table_of = np.concatenate([np.full(len(t), i) for i, t in enumerate(tables)])
        row_of = np.concatenate([np.arange(len(t)) for t in tables])
        where[inverse[::-1]] = np.arange(len(inverse))[::-1]  # first occurrence
        self.first_table = table_of[where]
        self.first_row = row_of[where]
        self.sizes = np.array(
            [int(tables[t].size[r]) for t, r in zip(self.first_table, self.first_row, strict=True)],
            dtype=np.int64,
        )

    def kept_ids(self, k: int | None, per_size: bool) -> np.ndarray:
        """The ids of the best k modules by overall score (k of every size with per_size)."""
        order = np.argsort(-self.mean, kind="stable")
        if k is None:
            return self.ids[order]
        if not per_size:
            return self.ids[order[:k]]
        keep = np.zeros(len(order), dtype=bool)
        sizes = self.sizes[order]
        for size in np.unique(sizes):
            keep[np.flatnonzero(sizes == size)[:k]] = True
        return self.ids[order[keep]]

    def overall(self, ids: np.ndarray) -> list[ScoredModule]:
        """Modules by id with their overall score (for selections and reduced spaces)."""
        position = {int(v): i for i, v in enumerate(self.ids.tolist())}
        out = []
        for module_id in ids.tolist():
            i = position[int(module_id)]
            table = self.tables[int(self.first_table[i])]
            module = table.module(int(self.first_row[i]))
            out.append(module.model_copy(update={"score": float(self.mean[i])}))
        return out


def _ids(table: UnitScores) -> np.ndarray:
    if table.module_id is not None:
        return np.asarray(table.module_id, dtype=np.int64)
    return np.arange(len(table), dtype=np.int64)


def _owned(space: Space, stages: Sequence[str], table: UnitScores, names: Sequence[str]) -> list:
    """Per unit state of the table: its own values of the context names it decides."""
    mine = [n for n in names if DecisionKey.parse(n).owner in stages]
    values = []
    for state in table.unit_states:
        own: dict[str, Value] = {}
        for j, s_index in enumerate(state):
            s = table.stage_states[j][s_index]
            own[DecisionKey.depth(stages[j])] = s.depth
            for choice, value in s.choices.items():
                key = DecisionKey.choice(stages[j], choice)
                own[space.ties.get(key, key)] = value
        values.append({n: own.get(n) for n in mine})
    return values


def _tables_for(
    space: Space,
    ranking: RankResult,
    values: dict[str, Value],
    kept: dict[str, np.ndarray] | None,
    keep: int | None,
) -> list[ModuleTable]:
    """Builder tables for one global assignment of one ranking: one per joint context.

    kept: per unit, the module ids allowed (a top-k selection); otherwise each unit's best
    `keep` modules in each context (all when None).
    """
    units = index_of(space).units
    tables = ranking.for_globals(values)
    names = list(dict.fromkeys(n for t in tables for n in t.context))
    by_unit = {u.name: [t for t in tables if t.unit == u.name] for u in units}
    joints = (
        [
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(context_domain(space, n) for n in names))
        ]
        if names
        else [{}]
    )
    out: list[ModuleTable] = []
    for joint in joints:
        chosen: dict[str, list[ScoredModule]] = {}
        for unit in units:
            scored = by_unit.get(unit.name, [])
            if not scored:
                break
            want = {n: joint[n] for n in scored[0].context}
            table = next((t for t in scored if _key(t.context) == _key(want)), None)
            if table is None:
                break  # nothing of this unit can be built into this context
            rows = np.arange(len(table))
            owned = _owned(space, unit.stages, table, names)
            if any(owned):
                ok = np.array(
                    [
                        all(v is None or same_value(v, joint[n]) for n, v in own.items())
                        for own in owned
                    ],
                    dtype=bool,
                )
                rows = rows[ok[np.asarray(table.state)]]
            if kept is not None:
                rows = rows[np.isin(_ids(table)[rows], kept[unit.name])]
            rows = rows[np.argsort(-np.asarray(table.score)[rows], kind="stable")]
            if kept is None and keep is not None:
                rows = rows[:keep]
            if not len(rows):
                break
            chosen[unit.name] = [table.module(int(r)) for r in rows]
        else:
            out.append(ModuleTable(globals=dict(values), context=joint, units=chosen))
    return out


def build_from_rankings(
    space: Space,
    rankings: Sequence[RankResult],
    *,
    top_k: int | dict[str, int] | Sequence[int] | None,
    n: int,
    mode: SelectionMode = "unconstrained",
    quotas: dict[str, dict[int, int]] | None = None,
    all_globals: bool = False,
) -> BuildResult:
    """Keep each unit's top-k modules, then take the n architectures with the highest
    summed module score that satisfy every rule of the space.

    Several runs (one per target): the kept modules are the union of each run's own top-k
    per unit (the paper's AutoBuild-NAS space). Scores of different targets are never added:
    each run proposes its own n best (by its own summed score, inside the union), and the
    candidates are ordered by Pareto front over the runs' summed scores, then by the best
    rank they reach in any run, then by their mean rank across the runs (`front` and `run_scores` on each built architecture).

    Contexts: a unit whose layers read another unit's choice has one score per context;
    each combination is scored with every module in the context the others give it.

    Modules scored under several assignments of the global choices: by default the
    assignment whose best architecture scores highest is kept (so the reduced space has
    exactly the product of the k's); `all_globals` keeps every assignment.
    """
    ks, units = _checked(space, rankings, top_k, n, mode)
    assignments: list[dict[str, Value]] = []
    for ranking in rankings:
        for values in ranking.assignments():
            if not any(same_globals(values, seen) for seen in assignments):
                assignments.append(values)
    if ks is None and (space.rules or space.ties or len(rankings) > 1):
        keep: int | None = None  # a rule can reject combinations: every module may be needed
    else:
        keep = max(n, 1) if ks is None else None
    selections: list[ModuleTable] = []  # kept modules (overall scores), one per globals
    per_run_tables: list[list[ModuleTable]] = [[] for _ in rankings]
    for values in assignments:
        kept: dict[str, np.ndarray] | None = None
        if ks is not None:
            kept, selection = {}, {}
            for unit in units:
                kept[unit], selection[unit] = _kept_modules(
                    rankings, values, unit, ks[unit], mode, quotas
                )
            selections.append(ModuleTable(globals=dict(values), units=selection))
        for r, ranking in enumerate(rankings):
            if ranking.for_globals(values):
                per_run_tables[r].extend(_tables_for(space, ranking, values, kept, keep))
    notes: list[str] = []
    if len(assignments) > 1 and not all_globals:
        chosen_globals, note = _best_assignment(space, per_run_tables[0])
        notes.append(note)
        per_run_tables = [
            [t for t in tables if same_globals(t.globals, chosen_globals)]
            for tables in per_run_tables
        ]
        selections = [t for t in selections if same_globals(t.globals, chosen_globals)]
    if not selections:
        selections = _selection_of(per_run_tables[0])
    architectures = _built(space, per_run_tables, n)
    notes += _build_notes(len(architectures), n, len(rankings))
    return BuildResult(
        space=space.name,
        runs=[r.run for r in rankings],
        top_k=ks,
        mode=mode,
        selections=selections,
        architectures=architectures,
        notes=notes,
    )


def _checked(
    space: Space,
    rankings: Sequence[RankResult],
    top_k: int | dict[str, int] | Sequence[int] | None,
    n: int,
    mode: str,
) -> tuple[dict[str, int] | None, list[str]]:
    """The k per unit (None: no top-k) and the space's units, once the inputs are checked."""
    if not rankings:
        raise BuildError("no ranking to build from")
    if n < 0:
        raise BuildError(f"n must be at least 0, got {n}")
    if mode not in ("unconstrained", "constrained"):
        raise BuildError(f"unknown selection mode '{mode}' (unconstrained, constrained)")
    ks = normalize_top_k(space, top_k) if top_k is not None else None
    if mode == "constrained" and ks is None:
        raise BuildError("the constrained selection needs top_k", remedies=(_NEED_TOP_K,))
    units = [u.name for u in index_of(space).units]
    for ranking in rankings:
        scored = {t.unit for t in ranking.tables}
        missing = [u for u in units if u not in scored]
        if missing:
            raise BuildError(f"{ranking.run}: no scores for unit '{missing[0]}'")
    return ks, units


def _kept_modules(
    rankings: Sequence[RankResult],
    values: dict[str, Value],
    unit: str,
    k: int,
    mode: SelectionMode,
    quotas: dict[str, dict[int, int]] | None,
) -> tuple[np.ndarray, list[ScoredModule]]:
    """The unit's kept module ids under these globals (the union of each run's top k) and
    the kept modules, each with the first run's overall score that has it."""
    ids: list[np.ndarray] = []
    for ranking in rankings:
        tables = [t for t in ranking.for_globals(values) if t.unit == unit]
        if not tables:
            continue
        view = _UnitView(tables)
        if k > len(view.ids):
            raise BuildError(
                f"unit '{unit}'{_where(tables[0])} has {len(view.ids):,} module(s); cannot keep {k}"
            )
        if mode == "constrained":
            ids.append(_quota_ids(view, unit, k, mode, quotas))
        else:
            ids.append(view.kept_ids(k, False))
    union = np.array(list(dict.fromkeys(np.concatenate(ids).tolist())), np.int64)
    views = [
        _UnitView(tables)
        for ranking in rankings
        if (tables := [t for t in ranking.for_globals(values) if t.unit == unit])
    ]
    held = [set(v.ids.tolist()) for v in views]
    selection: list[ScoredModule] = []
    for module_id in union.tolist():
        view = next(v for v, ids in zip(views, held, strict=True) if module_id in ids)
        selection.extend(view.overall(np.array([module_id], dtype=np.int64)))
    return union, selection


def _quota_ids(
    view: _UnitView,
    unit: str,
    k: int,
    mode: SelectionMode,
    quotas: dict[str, dict[int, int]] | None,
) -> np.ndarray:
    """The constrained selection's module ids: an even quota of each module size."""
    every = view.overall(view.ids)
    picked = select_top_k(
        ModuleTable(units={unit: every}), {unit: k}, mode=mode, quotas=quotas
    ).units[unit]
    wanted = {repr([p.model_dump() for p in m.parts]) for m in picked}
    return np.array(
        [
            i
            for i, m in zip(view.ids.tolist(), every, strict=True)
            if repr([p.model_dump() for p in m.parts]) in wanted
        ],
        dtype=np.int64,
    )


def _built(
    space: Space, per_run_tables: list[list[ModuleTable]], n: int
) -> list[BuiltArchitecture]:
    if len(per_run_tables) == 1:
        architectures = best_architectures(space, per_run_tables[0], n) if n else []
    else:
        architectures = pareto_candidates(space, per_run_tables, n)
    if n and not architectures:
        raise BuildError(_no_combination(space))
    for built in architectures:
        try:
            canonicalize(space, built.arch)
        except ArchitectureError as error:  # the builder's own guarantee: a bug if it fails
            raise BuildError(f"a built architecture is not in the space: {error}") from None
    return architectures


def _build_notes(built: int, n: int, runs: int) -> list[str]:
    notes = []
    if n and built < n:
        notes.append(
            f"only {built} combination(s) of the kept modules satisfy the "
            f"space's rules (asked for {n}); keep more modules per unit"
        )
    if runs > 1:
        notes.append(
            "several runs: the kept modules are the union of each run's top-k; each run "
            "proposes its best architectures by its own scores, ordered by Pareto front over "
            "the runs (scores of different targets are never added)"
        )
    return notes


def _selection_of(tables: list[ModuleTable]) -> list[ModuleTable]:
    """Without a top-k: the modules the builder used, one table per global assignment."""
    grouped: list[ModuleTable] = []
    for table in tables:
        for i, seen in enumerate(grouped):
            if same_globals(seen.globals, table.globals):
                grouped[i] = merge_selections([seen, table.model_copy(update={"context": {}})])
                break
        else:
            grouped.append(table.model_copy(update={"context": {}}))
    return grouped


def _no_combination(space: Space) -> str:
    rules = "; ".join(f"`{rule.text}`" for rule in space.rules) or "the ties"
    return (
        "no combination of the kept modules satisfies the space's rules "
        f"({rules}): the best modules of different units disagree under them. Keep more "
        "modules per unit (a larger top_k), or no top_k to build from every module"
    )


def _best_assignment(space: Space, tables: list[ModuleTable]) -> tuple[dict[str, Value], str]:
    """The global assignment whose best architecture scores highest."""
    best: list[tuple[float, dict[str, Value]]] = []
    groups: list[tuple[dict[str, Value], list[ModuleTable]]] = []
    for table in tables:
        for values, members in groups:
            if same_globals(values, table.globals):
                members.append(table)
                break
        else:
            groups.append((table.globals, [table]))
    for values, members in groups:
        top = best_architectures(space, members, 1)
        if top:
            best.append((top[0].score, values))
    if not best:
        raise BuildError(_no_combination(space))
    best.sort(key=lambda item: -item[0])
    chosen = best[0][1]
    shown = ", ".join(f"{k} = {v}" for k, v in chosen.items())
    note = f"global choices fixed to {shown} (best architecture {best[0][0]:.4g}"
    if len(best) > 1:
        other = ", ".join(f"{k} = {v}" for k, v in best[1][1].items())
        note += f"; next: {other} at {best[1][0]:.4g}"
    note += f"; {len(groups)} assignments scored); the all_globals option keeps them all"
    return chosen, note


def _where(table: UnitScores) -> str:
    if not table.globals:
        return ""
    shown = ", ".join(f"{k} = {v}" for k, v in table.globals.items())
    return f" (with {shown})"


def reduced_space(
    space: Space,
    space_file: str | Path,
    out_file: str | Path,
    result: BuildResult,
    name: str,
    header: list[str] | None = None,
) -> str:
    """The `.abs` text of the reduced space: it extends the original and restricts every
    unit to its kept modules (and each global to the values they were scored with)."""
    if result.top_k is None:
        raise BuildError("a reduced space needs a top-k selection")
    kept = result.kept()
    many = len(result.selections) > 1
    return reduced_space_text(
        space,
        Path(space_file),
        Path(out_file),
        kept,
        name,
        header=header,
        global_values=result.global_values() if many else None,
    )


# Above this many combinations of kept modules, valid ones are not counted one by one.
MAX_COUNTED = 50_000


def valid_combinations(space: Space, result: BuildResult) -> int | None:
    """How many combinations of the kept modules satisfy the ties and rules (None: too many
    to count). Without ties or rules, all of them: the product of the kept counts."""
    kept = result.kept()
    units = [u.name for u in index_of(space).units]
    product = 1
    for unit in units:
        product *= len(kept.units.get(unit, []))
    if not space.ties and not space.rules:
        return product * max(1, len(result.selections))
    total = 0
    for table in result.selections:
        lists = [table.units.get(u, []) for u in units]
        count = 1
        for modules in lists:
            count *= len(modules)
        if count > MAX_COUNTED:
            return None
        for combo in itertools.product(*lists):
            modules = {u: m.parts for u, m in zip(units, combo, strict=True)}
            if architecture_from_modules(space, dict(table.globals), modules) is not None:
                total += 1
    return total


def architecture_lines(result: BuildResult) -> list[str]:
    """JSON lines `{"rank", "score", "module_scores", "predicted", ..., "arch"}` (`abc
    validate` and `abc measure` read them)."""
    lines = []
    for rank, built in enumerate(result.architectures, start=1):
        record: dict[str, object] = {
            "rank": rank,
            "score": built.score,
            "score_sd": built.score_sd,
            "module_scores": built.module_scores,
        }
        if built.run_scores is not None:
            record["run_scores"] = built.run_scores
            record["front"] = built.front
        if built.predicted is not None:
            record["predicted"] = built.predicted
            record["predicted_sd"] = built.predicted_sd
        if built.context:
            record["context"] = built.context
        record["arch"] = built.arch.model_dump(mode="json")
        lines.append(json.dumps(record))
    return lines


__all__ = [
    "BuildResult",
    "SelectionMode",
    "architecture_lines",
    "build_from_rankings",
    "normalize_top_k",
    "pareto_fronts",
    "reduced_space",
    "valid_combinations",
]
