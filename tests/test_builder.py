"""Building without search: top-k selection, the k-best merge under rules, reduced spaces."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from autobuild_dsl.design.builder import (
    BuildError,
    ModuleTable,
    ScoredModule,
    best_architectures,
    merge_selections,
    reduced_space_text,
    select_top_k,
)
from autobuild_dsl.lang import compile_file
from autobuild_dsl.space.decisions import (
    canonicalize,
    index_of,
    iter_architectures,
    space_size,
    unit_modules,
)
from autobuild_dsl.space.model import Space

SPACES = Path(__file__).resolve().parent.parent / "spaces"


def random_table(space: Space, seed: int, globals_: dict | None = None) -> ModuleTable:
    rng = random.Random(seed)
    units = {}
    for unit in index_of(space).units:
        units[unit.name] = [
            ScoredModule(
                unit=unit.name, parts=parts, score=rng.gauss(0, 1), size=sum(p.depth for p in parts)
            )
            for parts in unit_modules(space, unit)
        ]
    if globals_ is None:
        globals_ = {name: domain[0] for name, domain in space.choices.items()}
    return ModuleTable(globals=globals_, units=units)


def brute_force_top(space: Space, table: ModuleTable, n: int) -> list[float]:
    scores = {
        unit: {repr([p.model_dump() for p in m.parts]): m.score for m in modules}
        for unit, modules in table.units.items()
    }
    totals = []
    for arch in iter_architectures(space):
        if any(arch.globals[k] != v for k, v in table.globals.items()):
            continue
        total = 0.0
        for unit in index_of(space).units:
            parts = [arch.stages[s] for s in unit.stages]
            key = repr(
                [{"depth": p.depth, "choices": dict(p.choices), "layers": p.layers} for p in parts]
            )
            total += scores[unit.name][key]
        totals.append(total)
    return sorted(totals, reverse=True)[:n]


def test_best_architectures_equal_brute_force_on_nas_bench_macro() -> None:
    space = compile_file(SPACES / "nas_bench_macro.abs")
    table = random_table(space, seed=1)
    built = best_architectures(space, [table], 25)
    assert [round(b.score, 9) for b in built] == [
        round(s, 9) for s in brute_force_top(space, table, 25)
    ]
    assert len({b.arch.key() for b in built}) == 25
    for b in built:
        assert canonicalize(space, b.arch) == b.arch


def test_best_architectures_respect_ties_on_the_unet_space() -> None:
    space = compile_file(SPACES / "sd14_unet_hw.abs")
    table = random_table(space, seed=2)
    built = best_architectures(space, [table], 10)
    assert len(built) == 10
    scores = [b.score for b in built]
    assert scores == sorted(scores, reverse=True)
    for b in built:
        canonicalize(space, b.arch)
        for k in (1, 2, 3):
            assert b.arch.stages[f"e{k}"].choices["mult"] <= k


def test_several_global_assignments_merge() -> None:
    space = compile_file(SPACES / "sd14_unet_fid.abs")
    tables = [
        random_table(space, seed=3 + i, globals_={"base": b, "attn3": True, "attn4": False})
        for i, b in enumerate((128, 192, 256))
    ]
    built = best_architectures(space, tables, 6)
    assert [b.score for b in built] == sorted((b.score for b in built), reverse=True)
    best_per_table = [best_architectures(space, [t], 1)[0].score for t in tables]
    assert built[0].score == pytest.approx(max(best_per_table))


def test_top_k_reduced_space_compiles_to_the_product_of_ks(tmp_path: Path) -> None:
    space = compile_file(SPACES / "mbv3.abs")
    rng = random.Random(0)
    units = {}
    for unit in index_of(space).units:
        modules = list(unit_modules(space, unit))[:300]
        units[unit.name] = [
            ScoredModule(unit=unit.name, parts=m, score=rng.random(), size=m[0].depth)
            for m in modules
        ]
    table = ModuleTable(globals={"resolution": 224}, units=units)
    ks = {"s1": 2, "s2": 3, "s3": 1, "s4": 4, "s5": 2}
    selection = select_top_k(table, ks)
    out = tmp_path / "reduced" / "ofa_top.abs"
    out.parent.mkdir()
    out.write_text(
        reduced_space_text(space, SPACES / "mbv3.abs", out, selection, "ofa_top", header=["test"])
    )
    reduced = compile_file(out)
    assert space_size(reduced) == 2 * 3 * 1 * 4 * 2
    for b in best_architectures(reduced, [selection], 5):
        canonicalize(space, b.arch)
        canonicalize(reduced, b.arch)


def test_constrained_selection_spreads_over_sizes() -> None:
    space = compile_file(SPACES / "sd14_unet_fid.abs")
    table = random_table(space, seed=5)
    selection = select_top_k(table, 4, mode="constrained")
    for modules in selection.units.values():
        sizes = sorted(m.size for m in modules)
        assert len(set(sizes)) == 2 and sizes.count(sizes[0]) == 2
    with pytest.raises(BuildError, match="cannot keep 9"):
        select_top_k(table, 9)


def test_merge_is_a_union_per_unit() -> None:
    space = compile_file(SPACES / "nas_bench_macro.abs")
    a = select_top_k(random_table(space, seed=6), 2)
    b = select_top_k(random_table(space, seed=7), 2)
    merged = merge_selections([a, b])
    for unit in merged.units:
        keys = {repr(m.parts) for m in a.units[unit]} | {repr(m.parts) for m in b.units[unit]}
        assert {repr(m.parts) for m in merged.units[unit]} == keys
