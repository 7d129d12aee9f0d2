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

from autobuild_dsl.build.builder import (
    BuildError,
    BuiltArchitecture,
    ModuleTable,
    best_architectures,
    merge_selections,
    reduced_space_text,
    select_top_k,
)
from autobuild_dsl.build.rank import RankResult, UnitScores
from autobuild_dsl.space.decisions import (
    ArchitectureError,
    architecture_from_modules,
    canonicalize,
    index_of,
)
from autobuild_dsl.space.expr import Value
from autobuild_dsl.space.model import Space

SelectionMode = Literal["unconstrained", "constrained"]


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


def _standardized(ranking: RankResult) -> RankResult:
    """Scores as z-scores within each (unit, globals) table: targets of different runs
    (accuracy, latency, ...) become comparable before their selections are merged."""
    tables: list[UnitScores] = []
    for table in ranking.tables:
        score = np.asarray(table.score, dtype=np.float64)
        sd = float(score.std()) if len(score) > 1 else 0.0
        scaled = (score - score.mean()) / sd if sd > 0 else score - score.mean()
        tables.append(table.model_copy(update={"score": scaled}))
    return ranking.model_copy(update={"tables": tables})


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


def _same_globals(a: dict[str, Value], b: dict[str, Value]) -> bool:
    return a.keys() == b.keys() and all(type(a[k]) is type(b[k]) and a[k] == b[k] for k in a)


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
    """Keep each unit's top-k modules (of every run, merged), then take the n architectures
    with the highest summed module score that satisfy every rule of the space.

    Several runs (one per target) are merged as the paper's Pareto experiments do: the
    union of each run's top-k per unit; their scores are standardised per unit first so
    that summed scores mix targets on one scale.

    Modules scored under several assignments of the global choices: by default the
    assignment whose best architecture scores highest is kept (so the reduced space has
    exactly the product of the k's); `all_globals` keeps every assignment (the n best come
    from all of them, and the reduced space keeps each unit's union).
    """
    if not rankings:
        raise BuildError("no ranking to build from")
    if n < 0:
        raise BuildError(f"n must be at least 0, got {n}")
    if mode not in ("unconstrained", "constrained"):
        raise BuildError(f"unknown selection mode '{mode}' (unconstrained, constrained)")
    ks = normalize_top_k(space, top_k) if top_k is not None else None
    if mode == "constrained" and ks is None:
        raise BuildError("the constrained selection needs --top-k (the modules kept per unit)")
    units = [u.name for u in index_of(space).units]
    several = len(rankings) > 1
    used = [_standardized(r) if several else r for r in rankings]
    for ranking in used:
        scored = {t.unit for t in ranking.tables}
        missing = [u for u in units if u not in scored]
        if missing:
            raise BuildError(f"{ranking.run}: no scores for unit '{missing[0]}'")
    if ks is not None:
        keep: int | None = max(ks.values())
        for ranking in used:
            for table in ranking.tables:
                if ks[table.unit] > len(table):
                    where = _where(table)
                    raise BuildError(
                        f"unit '{table.unit}'{where} has {len(table):,} module(s); "
                        f"cannot keep {ks[table.unit]}"
                    )
    elif space.rules or space.ties:
        keep = None  # a rule can reject combinations: every module may be needed
    else:
        keep = max(n, 1)
    per_size = mode == "constrained"
    assignments: list[dict[str, Value]] = []
    for ranking in used:
        for values in ranking.assignments():
            if not any(_same_globals(values, seen) for seen in assignments):
                assignments.append(values)
    selections: list[ModuleTable] = []
    for values in assignments:
        per_run = []
        for ranking in used:
            if not ranking.for_globals(values):
                continue
            table = ranking.module_table(values, keep, per_size=per_size)
            if ks is not None:
                table = select_top_k(table, ks, mode=mode, quotas=quotas)
            per_run.append(table)
        selections.append(merge_selections(per_run) if len(per_run) > 1 else per_run[0])
    notes = []
    if len(selections) > 1 and not all_globals:
        selections, note = _best_assignment(space, selections)
        notes.append(note)
    architectures = best_architectures(space, selections, n) if n else []
    if n and not architectures:
        raise BuildError(_no_combination(space))
    for built in architectures:
        try:
            canonicalize(space, built.arch)
        except ArchitectureError as error:  # the builder's own guarantee: a bug if it fails
            raise BuildError(f"a built architecture is not in the space: {error}") from None
    if n and len(architectures) < n:
        notes.append(
            f"only {len(architectures)} combination(s) of the kept modules satisfy the "
            f"space's rules (asked for {n}); keep more modules per unit"
        )
    if several:
        notes.append(
            "several runs: scores are z-scores within each unit and run, so summed scores "
            "compare modules of different targets on one scale"
        )
    return BuildResult(
        space=space.name,
        runs=[r.run for r in rankings],
        top_k=ks,
        mode=mode,
        selections=selections,
        architectures=architectures,
        notes=notes,
    )


def _no_combination(space: Space) -> str:
    rules = "; ".join(f"`{rule.text}`" for rule in space.rules) or "the ties"
    return (
        "no combination of the kept modules satisfies the space's rules "
        f"({rules}): the best modules of different units disagree under them. Keep more "
        "modules per unit (a larger --top-k), or leave --top-k out to build from every module"
    )


def _best_assignment(space: Space, selections: list[ModuleTable]) -> tuple[list[ModuleTable], str]:
    """The selection (one per global assignment) whose best architecture scores highest."""
    best: list[tuple[float, int]] = []
    for i, table in enumerate(selections):
        top = best_architectures(space, [table], 1)
        if top:
            best.append((top[0].score, i))
    if not best:
        raise BuildError(_no_combination(space))
    best.sort(key=lambda item: -item[0])
    chosen = selections[best[0][1]]
    shown = ", ".join(f"{k} = {v}" for k, v in chosen.globals.items())
    note = f"global choices fixed to {shown} (best architecture {best[0][0]:.4g}"
    if len(best) > 1:
        runner = selections[best[1][1]]
        other = ", ".join(f"{k} = {v}" for k, v in runner.globals.items())
        note += f"; next: {other} at {best[1][0]:.4g}"
    note += f"; {len(selections)} assignments scored); --all-globals keeps them all"
    return [chosen], note


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
    """JSON lines `{"rank", "score", "module_scores", "arch"}` (`abc validate` reads them)."""
    lines = []
    for rank, built in enumerate(result.architectures, start=1):
        record = {
            "rank": rank,
            "score": built.score,
            "module_scores": built.module_scores,
            "arch": built.arch.model_dump(mode="json"),
        }
        lines.append(json.dumps(record))
    return lines


__all__ = [
    "BuildResult",
    "SelectionMode",
    "architecture_lines",
    "build_from_rankings",
    "normalize_top_k",
    "reduced_space",
    "valid_combinations",
]
