"""Building without search: top-k modules per unit, reduced spaces, and the N best networks.

Input is a table of scored modules per unit (from `abc rank`), one table per assignment of
the global choices that was scored. Everything here is exact and cheap: the N best
architectures come from a best-first merge of the per-unit sorted lists (a k-best sum), so
the product of all units is never enumerated; rules and ties are checked on the way.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import architecture_from_modules, index_of
from autobuild_dsl.space.expr import Value, format_value
from autobuild_dsl.space.model import Space, StageModule

# Best-first pops before giving up on finding N rule-satisfying combinations.
MAX_POPS = 5_000_000


class BuildError(AbcError, ValueError):
    """The request cannot be met (unknown unit, k too large, no combination satisfies the rules)."""

    code = "build"


class ScoredModule(BaseModel):
    """One module of a unit with its comparable score (higher is better)."""

    unit: str
    parts: list[StageModule]
    score: float
    size: int = Field(description="number of layers across the unit's stages (its depth)")
    members: list[float] | None = Field(
        default=None, description="each ensemble member's score (None: not kept)"
    )


class ModuleTable(BaseModel):
    """Scores of every module of every unit, for one assignment of the global choices
    (and, when some unit's layers read another unit's choices, one assignment of those:
    the context every module here was scored in)."""

    globals: dict[str, Value] = Field(default_factory=dict)
    context: dict[str, Value] = Field(default_factory=dict)
    units: dict[str, list[ScoredModule]]

    def sorted(self) -> ModuleTable:
        return self.model_copy(
            update={
                "units": {u: sorted(ms, key=lambda m: -m.score) for u, ms in self.units.items()}
            }
        )


class BuiltArchitecture(BaseModel):
    arch: Architecture
    score: float = Field(description="summed module score (the first run's, with several)")
    module_scores: dict[str, float]
    globals: dict[str, Value]
    context: dict[str, Value] = Field(
        default_factory=dict, description="the other-unit choices the module scores assume"
    )
    score_sd: float | None = Field(
        default=None, description="spread of the summed score over ensemble members"
    )
    run_scores: list[float] | None = Field(
        default=None, description="summed score under each run (several runs)"
    )
    predicted: list[float] | None = Field(
        default=None, description="each run's ensemble prediction of its target"
    )
    predicted_sd: list[float] | None = Field(
        default=None, description="spread of each run's members' predictions"
    )
    front: int | None = Field(
        default=None, description="several runs: Pareto front over the runs (1 = best)"
    )


def same_globals(a: dict[str, Value], b: dict[str, Value]) -> bool:
    """The same global assignment (True is not 1: a flag and a number are different)."""
    return a.keys() == b.keys() and all(type(a[k]) is type(b[k]) and a[k] == b[k] for k in a)


def _even_quotas(sizes: list[int], k: int) -> dict[int, int]:
    """Spread k picks over module sizes as evenly as possible, extra picks to larger sizes."""
    base, extra = divmod(k, len(sizes))
    quotas = {size: base for size in sizes}
    for size in sorted(sizes, reverse=True)[:extra]:
        quotas[size] += 1
    return quotas


def select_top_k(
    table: ModuleTable,
    top_k: int | dict[str, int],
    mode: str = "unconstrained",
    quotas: dict[str, dict[int, int]] | None = None,
) -> ModuleTable:
    """Keep the best k modules of each unit.

    mode "unconstrained" takes the k highest scores (scores must already be comparable
    across sizes); "constrained" gives each module size a quota (even by default, or as
    given) and takes the best of each size, as the paper's supplementary 7.9/7.10 does.
    """
    if mode not in ("unconstrained", "constrained"):
        raise BuildError(f"unknown selection mode '{mode}' (unconstrained, constrained)")
    table = table.sorted()
    kept: dict[str, list[ScoredModule]] = {}
    for unit, modules in table.units.items():
        k = top_k.get(unit) if isinstance(top_k, dict) else top_k
        if k is None:
            raise BuildError(f"no k given for unit '{unit}'")
        if k < 1:
            raise BuildError(f"k for unit '{unit}' must be at least 1, got {k}")
        if k > len(modules):
            raise BuildError(f"unit '{unit}' has {len(modules)} modules; cannot keep {k}")
        if mode == "unconstrained":
            kept[unit] = modules[:k]
            continue
        sizes = sorted({m.size for m in modules})
        unit_quotas = (quotas or {}).get(unit) or _even_quotas(sizes, k)
        unknown = [s for s in unit_quotas if s not in sizes]
        if unknown:
            raise BuildError(f"unit '{unit}' has no module of size {unknown[0]} (sizes: {sizes})")
        picks: list[ScoredModule] = []
        for size, count in unit_quotas.items():
            of_size = [m for m in modules if m.size == size]
            if count > len(of_size):
                raise BuildError(f"unit '{unit}' has only {len(of_size)} modules of size {size}")
            picks.extend(of_size[:count])
        kept[unit] = sorted(picks, key=lambda m: -m.score)
    return ModuleTable(globals=table.globals, context=table.context, units=kept)


def merge_selections(tables: list[ModuleTable]) -> ModuleTable:
    """The union of several runs' selections per unit (the paper's Pareto experiments).

    A module kept by several runs appears once, with the best score it received.
    """
    if not tables:
        raise BuildError("nothing to merge")
    merged: dict[str, dict[str, ScoredModule]] = {}
    for table in tables:
        for unit, modules in table.units.items():
            slot = merged.setdefault(unit, {})
            for module in modules:
                key = repr([p.model_dump() for p in module.parts])
                if key not in slot or slot[key].score < module.score:
                    slot[key] = module
    return ModuleTable(
        globals=tables[0].globals,
        units={u: sorted(ms.values(), key=lambda m: -m.score) for u, ms in merged.items()},
    )


def best_architectures(space: Space, tables: list[ModuleTable], n: int) -> list[BuiltArchitecture]:
    """The n architectures with the highest summed module score that satisfy every rule."""
    return list(itertools.islice(_best_first(space, tables), n))


def _best_first(space: Space, tables: list[ModuleTable]) -> Iterator[BuiltArchitecture]:
    units = [u.name for u in index_of(space).units]
    tables = [t.sorted() for t in tables]
    for table in tables:
        missing = [u for u in units if not table.units.get(u)]
        if missing:
            raise BuildError(f"no scored module for unit '{missing[0]}'")
    # Heap of (-score, table index, tuple of per-unit positions, last incremented unit).
    heap: list[tuple[float, int, tuple[int, ...], int]] = []
    for t, table in enumerate(tables):
        start = (0,) * len(units)
        heapq.heappush(heap, (-_total(table, units, start), t, start, 0))
    pops = 0
    while heap:
        negative, t, positions, last = heapq.heappop(heap)
        pops += 1
        if pops > MAX_POPS:
            raise BuildError(
                f"searched {MAX_POPS:,} combinations without finding enough that satisfy the rules"
            )
        table = tables[t]
        # Each tuple has one parent (increment only at or after the last changed unit).
        for j in range(last, len(units)):
            if positions[j] + 1 < len(table.units[units[j]]):
                child = (*positions[:j], positions[j] + 1, *positions[j + 1 :])
                heapq.heappush(heap, (-_total(table, units, child), t, child, j))
        chosen = {u: table.units[u][i] for u, i in zip(units, positions, strict=True)}
        arch = architecture_from_modules(
            space, dict(table.globals), {u: m.parts for u, m in chosen.items()}
        )
        if arch is None:
            continue
        members = [m.members for m in chosen.values()]
        spread = None
        if all(v is not None for v in members) and len(members[0] or []) > 1:
            sums = [math.fsum(values) for values in zip(*members, strict=True)]  # type: ignore[misc]
            mean = math.fsum(sums) / len(sums)
            spread = math.sqrt(math.fsum((v - mean) ** 2 for v in sums) / len(sums))
        yield BuiltArchitecture(
            arch=arch,
            score=-negative,
            module_scores={u: m.score for u, m in chosen.items()},
            globals=dict(table.globals),
            context=dict(table.context),
            score_sd=spread,
        )


def _total(table: ModuleTable, units: list[str], positions: tuple[int, ...]) -> float:
    return math.fsum(table.units[u][i].score for u, i in zip(units, positions, strict=True))


# ----- writing a reduced space ----------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYWORDS = {"true", "false", "and", "or", "not"}


def _value_text(value: Value) -> str:
    if isinstance(value, str) and (not _IDENTIFIER.match(value) or value in _KEYWORDS):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return format_value(value)


def _assignment_text(values: dict[str, Value]) -> str:
    return "(" + ", ".join(f"{k} = {_value_text(v)}" for k, v in values.items()) + ")"


def assignment_text(values: dict[str, Value]) -> str:
    """`(kernel = 3, expand = 4)`: choices as the `.abs` language writes them."""
    return _assignment_text(values)


def module_text(part: StageModule) -> str:
    """One stage's module in the `restrict` syntax: `(choices) [(layer), ...]`."""
    layers = ", ".join(_assignment_text(layer) for layer in part.layers)
    prefix = f"{_assignment_text(part.choices)} " if part.choices else ""
    return f"{prefix}[{layers}]"


def reduced_space_text(
    space: Space,
    space_file: Path,
    output_file: Path,
    selection: ModuleTable,
    name: str,
    header: list[str] | None = None,
    global_values: dict[str, list[Value]] | None = None,
) -> str:
    """A `.abs` file that extends the original space and restricts every unit.

    Global choices are fixed to the values the modules were scored with, so the reduced
    space holds exactly the products of the kept modules (less any that break a rule).
    `global_values` narrows each global to several values instead (modules scored under
    several assignments of the globals).
    """
    relative = Path(_relative_path(space_file.resolve(), output_file.resolve().parent))
    lines = [f"# {line}" if line else "#" for line in header or []]
    if lines:
        lines.append("")
    lines.append(f'space {name} extends {space.name} from "{relative.as_posix()}" {{')
    values = (
        global_values
        if global_values is not None
        else {key: [value] for key, value in selection.globals.items()}
    )
    for key, domain in values.items():
        lines.append(f"  choice {key} = {{{', '.join(_value_text(v) for v in domain)}}}")
    if values:
        lines.append("")
    units = index_of(space).units
    for number, unit in enumerate(units):
        modules = selection.units.get(unit.name, [])
        if not modules:
            raise BuildError(f"no module selected for unit '{unit.name}'")
        lines.append(f"  restrict {unit.name} to {{")
        for module in modules:
            text = " + ".join(module_text(p) for p in module.parts)
            lines.append(f"    {text},")
        lines.append("  }")
        if number + 1 < len(units):
            lines.append("")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _relative_path(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target, start)
