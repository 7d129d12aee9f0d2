"""The Space operations: counting, enumeration, uniform sampling, validation, mutation."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from scipy.stats import chisquare

from autobuild_dsl.lang import compile_file, compile_text
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import (
    ArchitectureError,
    canonicalize,
    iter_architectures,
    mutate,
    sample,
    space_size,
    unit_module_count,
    unit_modules,
)
from autobuild_dsl.space.resolve import flow_shapes, resolve

SPACES = Path(__file__).resolve().parent.parent / "spaces"

CONSTRAINED = """
space constrained {
  input(channels = 3, size = 16)
  choice width = {8, 16}
  stage a {
    depth 1..2
    choice m = {1, 2}
    layer conv(out = width * m, kernel = {1, 3}) | identity(out = width * m)
  }
  stage b {
    depth 1..2
    choice m = {1, 2, 3}
    layer conv(out = width * m, kernel = 3)
  }
  require b.m == a.m
  require a.depth + b.depth <= 3
  require width * a.m != 32
}
"""


@pytest.fixture(scope="module")
def constrained():
    return compile_text(CONSTRAINED)


def test_size_matches_brute_force_enumeration(constrained) -> None:
    archs = list(iter_architectures(constrained))
    assert len(archs) == space_size(constrained)
    assert len({a.key() for a in archs}) == len(archs)
    for arch in archs:
        assert canonicalize(constrained, arch) == arch


def test_sampling_yields_only_valid_architectures(constrained) -> None:
    for arch in sample(constrained, 10_000, seed=7):
        canonicalize(constrained, arch)


def test_sampling_is_uniform_chi_square(constrained) -> None:
    size = space_size(constrained)
    draws = 200 * size
    counts = Counter(a.key() for a in sample(constrained, draws, seed=11))
    assert len(counts) == size
    observed = [counts[a.key()] for a in iter_architectures(constrained)]
    result = chisquare(observed)
    assert result.pvalue > 0.001, result


def test_sampling_is_deterministic_for_a_seed(constrained) -> None:
    assert sample(constrained, 20, seed=3) == sample(constrained, 20, seed=3)
    assert sample(constrained, 20, seed=3) != sample(constrained, 20, seed=4)


def test_unused_slots_are_dropped_so_equal_networks_are_equal() -> None:
    space = compile_file(SPACES / "mbv3.abs")
    arch = sample(space, 1, seed=1)[0]
    raw = arch.model_dump(mode="json")
    stage = raw["stages"]["s1"]
    padded = {
        **stage,
        "layers": stage["layers"] + [{"kernel": 7, "expand": 6}] * (4 - stage["depth"]),
    }
    raw_padded = {**raw, "stages": {**raw["stages"], "s1": padded}}
    assert canonicalize(space, raw_padded) == arch
    assert canonicalize(space, raw_padded).key() == arch.key()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda r: r["globals"].update(resolution=225), "globals.resolution: 225 is not one of"),
        (lambda r: r["stages"]["s2"].update(depth=5), "stages.s2: depth 5 is not one of {2, 3, 4}"),
        (
            lambda r: r["stages"]["s3"]["layers"][0].update(kernel=9),
            "stages.s3: layer 0: kernel = 9",
        ),
        (lambda r: r["stages"]["s3"]["layers"][0].update(width=9), "unknown choice 'width'"),
        (lambda r: r["stages"].pop("s4"), "stages.s4: missing"),
        (lambda r: r["stages"].update(s9={}), "stages.s9: no such stage"),
        (lambda r: r["stages"]["s1"]["layers"].clear(), "needs"),
    ],
)
def test_architectures_outside_the_space_get_located_errors(change, needle: str) -> None:
    space = compile_file(SPACES / "mbv3.abs")
    raw = sample(space, 1, seed=2)[0].model_dump(mode="json")
    change(raw)
    with pytest.raises(ArchitectureError, match=None) as info:
        canonicalize(space, raw)
    assert needle in str(info.value)


def test_tied_choices_are_stored_once_and_must_agree(constrained) -> None:
    arch = sample(constrained, 1, seed=5)[0]
    assert "m" in arch.stages["a"].choices and "m" not in arch.stages["b"].choices
    raw = arch.model_dump(mode="json")
    raw["stages"]["b"]["choices"]["m"] = arch.stages["a"].choices["m"]
    assert canonicalize(constrained, raw) == arch
    other = 1 if arch.stages["a"].choices["m"] == 2 else 2
    raw["stages"]["b"]["choices"]["m"] = other
    with pytest.raises(ArchitectureError, match="must equal"):
        canonicalize(constrained, raw)


def test_rules_are_checked_on_validation(constrained) -> None:
    arch = next(a for a in iter_architectures(constrained) if a.stages["a"].depth == 1)
    raw = arch.model_dump(mode="json")
    raw["stages"]["a"]["depth"] = 2
    raw["stages"]["a"]["layers"] = raw["stages"]["a"]["layers"] * 2
    raw["stages"]["b"]["depth"] = 2
    raw["stages"]["b"]["layers"] = raw["stages"]["b"]["layers"] * 2
    with pytest.raises(ArchitectureError, match="breaks the rule"):
        canonicalize(constrained, raw)


def test_module_enumeration_matches_counts() -> None:
    space = compile_file(SPACES / "nas_bench_macro.abs")
    for unit in space.module_units():
        modules = list(unit_modules(space, unit))
        assert len(modules) == unit_module_count(space, unit)
        assert len({repr(m) for m in modules}) == len(modules)
    first = next(unit_modules(space, space.module_units()[0]))
    assert first[0].layers == [{"op": "identity"}, {"op": "identity"}]


@pytest.mark.parametrize("mode", ["stage", "layer"])
def test_mutations_stay_in_the_space_and_change_something(constrained, mode: str) -> None:
    rng = random.Random(0)
    arch = sample(constrained, 1, seed=0)[0]
    changed = 0
    for _ in range(300):
        child = mutate(constrained, arch, rng, mode=mode)
        assert canonicalize(constrained, child) == child
        changed += child != arch
        arch = child
    assert changed > 250


def test_layer_mutation_changes_at_most_one_layer() -> None:
    space = compile_file(SPACES / "mbv3.abs")
    rng = random.Random(1)
    arch = sample(space, 1, seed=9)[0]
    for _ in range(50):
        child = mutate(space, arch, rng, mode="layer")
        differing = [s for s in arch.stages if arch.stages[s] != child.stages[s]]
        assert len(differing) == 1
        before, after = arch.stages[differing[0]], child.stages[differing[0]]
        assert abs(before.depth - after.depth) <= 1
        arch = child


def test_stride_applies_to_the_first_layer_of_a_stage_only() -> None:
    space = compile_file(SPACES / "mbv3.abs")
    arch = sample(space, 1, seed=4)[0]
    net = resolve(space, arch)
    s1 = [n for n in net.nodes if n.position.block == "s1"]
    assert [n.attrs["stride"] for n in s1] == [2] + [1] * (len(s1) - 1)
    shapes = flow_shapes(net)
    assert shapes[-1].channels == 1000
    assert shapes[0].size == -(-arch.globals["resolution"] // 2)


def test_architecture_json_round_trip() -> None:
    space = compile_file(SPACES / "sd14_unet_fid.abs")
    for arch in sample(space, 50, seed=1):
        again = Architecture.model_validate_json(arch.to_json())
        assert again == arch and again.key() == arch.key()
        assert canonicalize(space, again.model_dump(mode="json")) == arch


def test_unet_ties_reach_the_decoder_channels() -> None:
    space = compile_file(SPACES / "sd14_unet_fid.abs")
    for arch in sample(space, 20, seed=2):
        net = resolve(space, arch)
        base = arch.globals["base"]
        for k in (1, 2, 3, 4):
            mult = arch.stages[f"e{k}"].choices["mult"]
            outs = {
                n.attrs["out"]
                for n in net.nodes
                if n.position.block == f"d{k}" and n.op == "resblock"
            }
            assert outs == {base * mult}
        flow_shapes(net)
