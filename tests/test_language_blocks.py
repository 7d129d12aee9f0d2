"""Issue 16: optional stages, families without columns, residual layers, grouped and shuffled
convolutions, the layer's input in expressions, and the two seed spaces built with them
(FBNet, TransNAS-Bench-101 macro), whose parameter counts are checked against small
independent PyTorch references written here from the papers."""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from torch import nn

from autobuild_dsl.compile import build_module
from autobuild_dsl.compile.network import NetworkBuildError, count_params, fast_params_and_macs
from autobuild_dsl.graphs.encode import GraphEncoder
from autobuild_dsl.lang import CompileError as AbsError
from autobuild_dsl.lang import compile_file, compile_text
from autobuild_dsl.space.decisions import (
    canonicalize,
    iter_architectures,
    mutate,
    sample,
    space_size,
)
from autobuild_dsl.space.expr import evaluate
from autobuild_dsl.space.resolve import resolve

SPACES = Path(__file__).resolve().parent.parent / "spaces"


# ----------------------------------------------------------------------- references


def _bn_conv(cin: int, cout: int, k: int, s: int = 1, g: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]


class RefBasic(nn.Module):
    """torchvision's BasicBlock, written out."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_bn_conv(cin, cout, 3, stride), nn.ReLU(), *_bn_conv(cout, cout, 3)
        )
        self.down = (
            nn.Sequential(*_bn_conv(cin, cout, 1, stride))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


@functools.cache
def _transnas_params(code: str) -> int:
    return _meta_params(lambda: ref_transnas(code))


def ref_transnas(code: str, classes: int = 100) -> nn.Module:
    """TransNAS-Bench-101 macro network for a digit string: 1 none, 2 widen, 3 down, 4 both."""
    layers: list[nn.Module] = [*_bn_conv(3, 64, 3, 2), nn.ReLU()]
    width = 64
    for digit in code:
        d = int(digit)
        out = width * (2 if d in (2, 4) else 1)
        layers += [RefBasic(width, out, 2 if d >= 3 else 1), RefBasic(out, out, 1)]
        width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
    return nn.Sequential(*layers)


class RefFBNetBlock(nn.Module):
    """FBNet's block (paper, fig. 3): 1x1 group conv, shuffle, kxk depthwise, 1x1 group conv."""

    def __init__(self, cin: int, cout: int, k: int, e: int, g: int, stride: int) -> None:
        super().__init__()
        mid = cin * e
        self.g = g
        self.pw = nn.Sequential(*_bn_conv(cin, mid, 1, 1, g), nn.ReLU())
        self.dw = nn.Sequential(*_bn_conv(mid, mid, k, stride, mid), nn.ReLU())
        self.pwl = nn.Sequential(*_bn_conv(mid, cout, 1, 1, g))
        self.res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pw(x)
        if self.g > 1:
            n, c, hh, ww = h.shape
            h = h.view(n, self.g, c // self.g, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
        h = self.pwl(self.dw(h))
        return h + x if self.res else h


FBNET_BLOCKS = {
    "k3_e1": (3, 1, 1),
    "k3_e1_g2": (3, 1, 2),
    "k3_e3": (3, 3, 1),
    "k3_e6": (3, 6, 1),
    "k5_e1": (5, 1, 1),
    "k5_e1_g2": (5, 1, 2),
    "k5_e3": (5, 3, 1),
    "k5_e6": (5, 6, 1),
}
FBNET_STAGES = [
    (16, 1, 1),
    (24, 4, 2),
    (32, 4, 2),
    (64, 4, 2),
    (112, 4, 1),
    (184, 4, 2),
    (352, 1, 1),
]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.cache
def _fbnet_layer_params(name: str, cin: int, cout: int, s: int) -> int:
    with torch.device("meta"):
        return _params(ref_fbnet_layer(name, cin, cout, s))


def ref_fbnet_layer(name: str, cin: int, cout: int, s: int) -> nn.Module:
    if name == "skip":
        return nn.Sequential(*_bn_conv(cin, cout, 1, s)) if s != 1 or cin != cout else nn.Identity()
    k, e, g = FBNET_BLOCKS[name]
    return RefFBNetBlock(cin, cout, k, e, g, s)


def ref_fbnet_params(blocks: list[str]) -> int:
    """The reference network's parameter count, layer by layer (each layer's own module)."""
    with torch.device("meta"):
        fixed = _params(nn.Sequential(*_bn_conv(3, 16, 3, 2), *_bn_conv(352, 1504, 1)))
        fixed += _params(nn.Linear(1504, 1000))
    total, cin, i = fixed, 16, 0
    for width, depth, stride in FBNET_STAGES:
        for j in range(depth):
            total += _fbnet_layer_params(blocks[i], cin, width, stride if j == 0 else 1)
            cin, i = width, i + 1
    return total


def ref_fbnet(blocks: list[str]) -> nn.Module:
    layers: list[nn.Module] = [*_bn_conv(3, 16, 3, 2), nn.ReLU()]
    cin, i = 16, 0
    for width, depth, stride in FBNET_STAGES:
        for j in range(depth):
            s = stride if j == 0 else 1
            layers.append(ref_fbnet_layer(blocks[i], cin, width, s))
            cin, i = width, i + 1
    layers += [*_bn_conv(cin, 1504, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers.append(nn.Linear(1504, 1000))
    return nn.Sequential(*layers)


def _meta_params(build) -> int:  # type: ignore[no-untyped-def]
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def _fbnet_name(layer: dict) -> str:
    if layer["op"] == "skip":
        return "skip"
    g = "_g2" if layer["op"] == "mb_g2" else ""
    return f"k{layer['kernel']}_e{int(layer.get('expand', 1))}{g}"


def _transnas_code(arch) -> str:  # type: ignore[no-untyped-def]
    digits = []
    for stage in arch.stages.values():
        if stage.depth:
            down, wide = stage.choices["down"] == 2, stage.choices["wide"] == 2
            digits.append(str(1 + wide + 2 * down))
    return "".join(digits)


# ----------------------------------------------------------------------- seed spaces


def test_fbnet_has_its_published_size_and_reference_parameter_counts() -> None:
    space = compile_file(SPACES / "fbnet.abs")
    assert space_size(space) == 9**22
    archs = sample(space, 100, seed=16)
    names = Counter()
    for number, arch in enumerate(archs):
        blocks = [_fbnet_name(layer) for s in arch.stages.values() for layer in s.layers]
        names.update(blocks)
        assert len(blocks) == 22
        net = resolve(space, arch)
        # The node-by-node count (cached per layer) for all, the whole module for a few.
        mine = fast_params_and_macs(net)[0]
        assert mine == ref_fbnet_params(blocks), blocks
        if number < 3:
            whole = count_params(build_module(net, device="meta"))
            assert whole == mine == _meta_params(lambda b=blocks: ref_fbnet(b))
    assert set(names) == {*FBNET_BLOCKS, "skip"}  # every block was exercised


def test_fbnet_layers_are_one_graph_node_each() -> None:
    space = compile_file(SPACES / "fbnet.abs")
    (arch,) = sample(space, 1, seed=2)
    assert GraphEncoder(space).encode(arch).num_nodes == 22


def test_fbnet_grouped_block_computes_like_the_reference() -> None:
    torch.manual_seed(0)
    space = compile_text(
        """space g {
          input(channels = 16, size = 8)
          stage s1 {
            depth 1
            layer mbconv(out = 16, kernel = 3, expand = 1, divisor = 1, groups = 2, shuffle = true, expand_conv = keep)
          }
        }"""
    )
    (arch,) = sample(space, 1)
    mine = build_module(resolve(space, arch)).eval()
    ref = RefFBNetBlock(16, 16, 3, 1, 2, 1).eval()
    # Copy parameters in order: both modules create them in the same order.
    with torch.no_grad():
        for a, b in zip(mine.parameters(), ref.parameters(), strict=True):
            b.copy_(torch.randn_like(a))
            a.copy_(b)
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(mine(x), ref(x), atol=1e-5)
    # Without the shuffle the output differs: the shuffle is really there.
    ref.g = 1
    assert not torch.allclose(mine(x), ref(x), atol=1e-3)


def test_transnas_macro_has_its_published_size_and_reference_parameter_counts() -> None:
    space = compile_file(SPACES / "transnas_macro.abs")
    assert space_size(space) == 3256
    codes = Counter()
    for arch in sample(space, 100, seed=16):
        code = _transnas_code(arch)
        codes[len(code)] += 1
        mine = count_params(build_module(resolve(space, arch), device="meta"))
        assert mine == _transnas_params(code), code
    assert set(codes) == {4, 5, 6}


def test_transnas_macro_counts_by_brute_force() -> None:
    """Every digit string of 4-6 modules with 1-4 downsamples and 1-3 widenings is one
    architecture of the space, and nothing else is."""
    expected = set()
    for n in (4, 5, 6):
        for code in itertools.product("1234", repeat=n):
            downs = sum(d in "34" for d in code)
            wides = sum(d in "24" for d in code)
            if 1 <= downs <= 4 and 1 <= wides <= 3:
                expected.add("".join(code))
    space = compile_file(SPACES / "transnas_macro.abs")
    got = [_transnas_code(a) for a in iter_architectures(space)]
    assert len(got) == len(set(got)) == len(expected) == 3256
    assert set(got) == expected


def test_absent_module_is_no_graph_node_and_no_network_node() -> None:
    space = compile_file(SPACES / "transnas_macro.abs")
    encoder = GraphEncoder(space)
    for arch in sample(space, 30, seed=1):
        present = sum(s.depth for s in arch.stages.values())
        assert encoder.encode(arch).num_nodes == 2 * present
        net = resolve(space, arch)
        assert sum(n.position.part == "stage" for n in net.nodes) == 2 * present


# ----------------------------------------------------------------------- optional stages


def test_absent_stage_has_no_choices_in_the_architecture() -> None:
    space = compile_file(SPACES / "transnas_macro.abs")
    archs = sample(space, 200, seed=4)
    absent = [a for a in archs if a.stages["m6"].depth == 0]
    assert absent
    for arch in absent:
        assert arch.stages["m6"].choices == {} and arch.stages["m6"].layers == []
    # Choices given for an absent stage are dropped, like unused layer slots.
    raw = absent[0].model_dump()
    raw["stages"]["m6"]["choices"] = {"down": 2, "wide": 2}
    assert canonicalize(space, raw) == absent[0]


def test_mutating_layers_adds_and_removes_optional_stages() -> None:
    space = compile_file(SPACES / "transnas_macro.abs")
    rng = random.Random(0)
    arch = sample(space, 1, seed=9)[0]
    depths = set()
    for _ in range(300):
        arch = mutate(space, arch, rng, mode="layer")
        canonicalize(space, arch)
        depths.add((arch.stages["m5"].depth, arch.stages["m6"].depth))
    assert depths == {(0, 0), (1, 0), (1, 1)}


OPTIONAL = """space opt {
  input(channels = 3, size = 16)
  stages () {
    s1 = ()
    s2 = ()
  } {
    depth 0..2
    choice w = {8, 16}
    layer conv(out = w, kernel = {1, 3})
  }
  require s2.depth <= s1.depth + 1
}
"""


def test_optional_stage_sampling_is_uniform() -> None:
    space = compile_text(OPTIONAL)
    everything = list(iter_architectures(space))
    assert len(everything) == space_size(space) == len({a.key() for a in everything})
    draws = Counter(a.key() for a in sample(space, 40 * len(everything), seed=7))
    assert set(draws) == {a.key() for a in everything}
    observed = [draws[a.key()] for a in everything]
    assert chisquare(observed).pvalue > 0.001


def _brute_force(stages: list[tuple[int, int, list[int], list[int]]], rule: str | None) -> int:
    """Count by listing every assignment: (low, high, stage choice domain, per-layer domain)
    per stage; an absent stage's choice reads as its first value."""
    per_stage = []
    for low, high, choice, layer in stages:
        options = []
        for depth in range(low, high + 1):
            for c in choice if depth else choice[:1]:
                for layers in itertools.product(layer, repeat=depth):
                    options.append((depth, c, layers))
        per_stage.append(options)
    check = compile_text(_space_text([], rule), "r").rules[0].expr if rule else None
    total = 0
    for combo in itertools.product(*per_stage):
        env = {}
        for i, (depth, c, _) in enumerate(combo, start=1):
            env[f"s{i}.depth"] = depth
            env[f"s{i}.c"] = c
        if check is None or evaluate(check, env.__getitem__):
            total += 1
    return total


def _space_text(stages: list[tuple[int, int, list[int], list[int]]], rule: str | None) -> str:
    if not stages:  # a placeholder space that carries only the rule, to parse it
        stages = [(1, 1, [1, 2], [1]), (1, 1, [1, 2], [1]), (1, 1, [1, 2], [1])]
    lines = ["space p {", "  input(channels = 3, size = 8)"]
    for i, (low, high, choice, layer) in enumerate(stages, start=1):
        lines += [
            f"  stage s{i} {{",
            f"    depth {low}..{high}",
            f"    choice c = {{{', '.join(map(str, choice))}}}",
            f"    layer conv(out = 4, kernel = {{{', '.join(map(str, layer))}}})",
            "  }",
        ]
    if rule:
        lines.append(f"  require {rule}")
    lines.append("}")
    return "\n".join(lines)


stage_strategy = st.tuples(
    st.integers(0, 1),
    st.integers(0, 2),
    st.sampled_from([[1], [1, 2], [1, 2, 3]]),
    st.sampled_from([[1], [1, 3], [1, 3, 5]]),
).filter(lambda s: s[1] >= max(s[0], 1))
RULES = [
    None,
    "s2.depth <= s1.depth",
    "s1.c + s2.c + s3.c >= 5",
    "s3.c == s1.c or s3.c == 2 * s1.c",
    "s1.depth + s2.depth + s3.depth == 3",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(stage_strategy, min_size=3, max_size=3), st.sampled_from(RULES))
def test_optional_stage_counts_match_brute_force(stages, rule) -> None:  # type: ignore[no-untyped-def]
    text = _space_text(stages, rule)
    try:
        space = compile_text(text, "p.abs")
    except AbsError:
        return  # a rule that merges two choices of different domains may be refused
    expected = _brute_force(stages, rule)
    assert space_size(space) == expected
    listed = list(iter_architectures(space))
    assert len(listed) == len({a.key() for a in listed}) == expected
    for arch in listed[:50]:
        assert canonicalize(space, arch) == arch


def test_a_stage_that_is_never_present_is_an_error() -> None:
    with pytest.raises(AbsError, match="at least one layer"):
        compile_text(
            "space z { input(channels = 3, size = 8) stage s1 { depth 0 layer conv(out = 4) } }"
        )


# ----------------------------------------------------------------------- residual, input


RESIDUAL = """space res {
  input(channels = 8, size = 8)
  stage s1 {
    depth 1..2
    choice w = {8, 16}
    layer {
      conv(out = w, kernel = 3, stride = 2)
      conv(out = w, kernel = 3, act = none)
    } residual(act = relu) as pair
    | {
      conv(out = in_channels * 2, kernel = 1)
      conv(out = in_channels, kernel = 3, act = none)
    } residual(shortcut = conv) as wide
  }
}
"""


def test_residual_layers_add_a_shortcut_with_projection_only_where_needed() -> None:
    space = compile_text(RESIDUAL)
    seen = set()
    for arch in iter_architectures(space):
        net = resolve(space, arch)
        stage = arch.stages["s1"]
        assert len(net.residuals) == stage.depth
        module = build_module(net)
        assert count_params(module) == fast_params_and_macs(net)[0]
        channels, projected = 8, []
        for index, layer in enumerate(stage.layers):
            if layer["op"] == "pair":
                # `auto`: a projection only where the layer changes the shape (the stage's
                # stride is on its first layer only).
                out = stage.choices["w"]
                projected.append(index == 0 or out != channels)
                channels = out
            else:
                projected.append(True)  # `shortcut = conv` always projects
        assert [s.projection is not None for s in module.shortcuts] == projected
        assert module(torch.randn(1, 8, 8, 8)).shape[1] == channels
        seen.update(projected)
    assert seen == {True, False}


def test_residual_forward_adds_the_input() -> None:
    space = compile_text(
        """space r {
          input(channels = 4, size = 4)
          stage s1 {
            depth 1
            layer conv(out = 4, kernel = 1, norm = none, act = none) residual
          }
        }"""
    )
    (arch,) = sample(space, 1)
    module = build_module(resolve(space, arch)).eval()
    with torch.no_grad():
        module.nodes[0].conv.weight.zero_()
    x = torch.randn(1, 4, 4, 4)
    assert torch.equal(module(x), x)


def test_identity_shortcut_on_a_shape_change_is_a_compile_error() -> None:
    space = compile_text(
        """space r {
          input(channels = 4, size = 4)
          stage s1 {
            depth 1
            layer conv(out = 8, kernel = 1) residual(shortcut = identity)
          }
        }"""
    )
    (arch,) = sample(space, 1)
    with pytest.raises(NetworkBuildError, match="keep its shape"):
        build_module(resolve(space, arch))


def test_bad_residual_setting_is_a_located_diagnostic() -> None:
    with pytest.raises(AbsError, match="shortcut must be one of auto, conv, identity") as info:
        compile_text(
            "space r {\n input(channels = 4, size = 4)\n stage s1 {\n depth 1\n"
            " layer conv(out = 8) residual(shortcut = proj)\n }\n}",
            "r.abs",
        )
    assert info.value.diagnostics[0].line == 5


def test_in_channels_follows_the_layer_input() -> None:
    space = compile_text(
        """space i {
          input(channels = 3, size = 8)
          stem {
            conv(out = 6, kernel = 3)
          }
          stage s1 {
            depth 1..3
            layer {
              conv(out = in_channels * 2, kernel = 1)
              conv(out = in_channels + in_size, kernel = 3)
            }
          }
        }"""
    )
    for arch in iter_architectures(space):
        net = resolve(space, arch)
        outs = [n.attrs["out"] for n in net.nodes[1:]]
        expected, channels = [], 6
        for _ in range(arch.stages["s1"].depth):
            expected += [channels * 2, channels + 8]
            channels += 8
        assert outs == expected


def test_basic_and_bottleneck_blocks_match_torchvision_shapes_and_counts() -> None:
    space = compile_text(
        """space b {
          input(channels = 64, size = 16)
          stage s1 {
            depth 1
            layer basic(out = 128, stride = 2) as basic
                | bottleneck(out = 256, stride = 2) as bottleneck
                | bottleneck(out = 256, mid = 128, groups = 32, stride = 2) as next
                | basic(out = 128, stride = 2, order = pre) as pre
          }
        }"""
    )
    counts = {}
    for arch in iter_architectures(space):
        module = build_module(resolve(space, arch)).eval()
        label = arch.stages["s1"].layers[0]["op"]
        counts[label] = count_params(module)
        assert module(torch.randn(1, 64, 16, 16)).shape[2] == 8
    basic = RefBasic(64, 128, 2)
    assert counts["basic"] == sum(p.numel() for p in basic.parameters())
    # torchvision Bottleneck(64, 64, stride 2, downsample 64->256): 1x1 64->64, 3x3, 1x1 64->256.
    bottleneck = 64 * 64 + 64 * 64 * 9 + 64 * 256 + 2 * (64 + 64 + 256) + 64 * 256 + 2 * 256
    assert counts["bottleneck"] == bottleneck
    resnext = 64 * 128 + 128 * (128 // 32) * 9 + 128 * 256 + 2 * (128 + 128 + 256)
    assert counts["next"] == resnext + 64 * 256 + 2 * 256
    # Pre-activation: BN on each conv's input; a projection without BN.
    assert counts["pre"] == 64 * 128 * 9 + 128 * 128 * 9 + 2 * (64 + 128) + 64 * 128


def test_family_without_columns_and_expand_conv_setting() -> None:
    space = compile_text(
        """space f {
          input(channels = 16, size = 8)
          stages () {
            a = ()
            b = ()
          } {
            depth 1
            layer mbconv(out = 16, expand = 1, expand_conv = {auto, keep})
          }
        }"""
    )
    assert [s.name for s in space.stages] == ["a", "b"]
    sizes = set()
    for arch in iter_architectures(space):
        keeps = sum(s.layers[0]["expand_conv"] == "keep" for s in arch.stages.values())
        sizes.add((keeps, count_params(build_module(resolve(space, arch), device="meta"))))
    # Keeping the 1x1 conv adds 16 * 16 weights and a 16-channel batch norm per layer.
    by_keeps = dict(sizes)
    assert by_keeps[1] - by_keeps[0] == by_keeps[2] - by_keeps[1] == 16 * 16 + 32


def test_grouped_mbconv_needs_divisible_widths() -> None:
    # The shape check of the space catches it at the `.abs` line, before any network.
    with pytest.raises(AbsError, match="output channels 18 are not divisible into 4 groups"):
        compile_text(
            """space d {
              input(channels = 12, size = 8)
              stage s1 {
                depth 1
                layer mbconv(out = 18, expand = 1, groups = 4, expand_conv = keep)
              }
            }"""
        )


# ----------------------------------------------------------------------- rule chains

CHAIN_RULES = [
    "s2.c == s1.c or s2.c == 2 * s1.c",
    "s3.c >= s2.c and s3.depth <= s1.depth + 1",
    "s1.depth + s2.depth + s3.depth <= 5",
    "not (s1.c == 2) or s3.c != 1",
    "max(s1.c, s2.c) - min(s2.c, s3.c) < 2",
    "s1.c / s2.c >= 1",
]


def _fresh(space):  # type: ignore[no-untyped-def]
    return type(space).model_validate_json(space.model_dump_json())


@pytest.mark.parametrize("rules", [CHAIN_RULES[:1], CHAIN_RULES[:3], CHAIN_RULES])
def test_rule_dp_counts_and_lists_what_listing_does(
    rules: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = [(0, 2, [1, 2, 3], [1, 3]), (1, 2, [1, 2, 4], [1]), (1, 3, [1, 2], [1, 3])]
    text = _space_text(stages, rules[0]).replace(
        f"  require {rules[0]}\n", "".join(f"  require {r}\n" for r in rules)
    )
    from autobuild_dsl.space import decisions
    from autobuild_dsl.space import index as space_index

    monkeypatch.setattr(space_index, "DP_THRESHOLD", 10**9)
    listed = compile_text(text, "c.abs")
    expected = space_size(listed)
    expected_archs = {a.key() for a in iter_architectures(listed)}
    monkeypatch.setattr(space_index, "DP_THRESHOLD", 0)
    chained = _fresh(listed)
    index = decisions.index_of(chained)
    assert any(c.dp is not None for c in index.components)
    assert space_size(chained) == expected > 0
    assert {a.key() for a in iter_architectures(chained)} == expected_archs
    # Uniform sampling through the DP.
    draws = Counter(a.key() for a in sample(chained, 30 * len(expected_archs), seed=3))
    assert set(draws) <= expected_archs
    assert chisquare([draws[k] for k in sorted(expected_archs)]).pvalue > 0.001
