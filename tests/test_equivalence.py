"""Equivalent architectures: the network key of space/equivalence.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from autobuild_dsl.compile.network import build_module
from autobuild_dsl.lang import compile_file, compile_text
from autobuild_dsl.space.decisions import canonicalize, iter_architectures, space_size
from autobuild_dsl.space.equivalence import (
    count_distinct_networks,
    distinct,
    may_have_equivalences,
    network_key,
    network_keys,
)
from autobuild_dsl.space.resolve import resolve

SPACES = Path(__file__).resolve().parent.parent / "spaces"
LABELS = {"0": "identity", "1": "mb_e3k3", "2": "mb_e6k5"}


@pytest.fixture(scope="module")
def macro():
    return compile_file(SPACES / "nas_bench_macro.abs")


def macro_arch(space, digits: str):
    stages, start = {}, 0
    for stage in space.stages:
        depth = stage.depths[0]
        layers = [{"op": LABELS[c]} for c in digits[start : start + depth]]
        stages[stage.name] = {"depth": depth, "layers": layers}
        start += depth
    return canonicalize(space, {"stages": stages})


def test_nas_bench_macro_holds_3969_distinct_networks(macro) -> None:
    # 3 stages; a stage's first layer has stride 2 (an identity there is a 1x1 conv), a
    # later identity is a no-op: 9 * 21 * 21 distinct networks among 3^8 architectures.
    archs = list(iter_architectures(macro))
    keys = network_keys(macro, archs)
    assert len(archs) == 6561
    assert len(set(keys)) == 3969
    # The largest classes: stages 2 and 3 each hold one mbconv in their two stride-1 slots,
    # before or after the identity (x0 = 0x) -> 2 * 2 choice vectors per network.
    assert max(Counter(keys).values()) == 4


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("22212220", "22212202", True),  # a stride-1 identity moved within stage 3
        ("10100000", "10010000", False),  # stage 2's first identity is a strided 1x1 conv
        ("12000000", "12000000", True),
        ("12101000", "12110000", True),
        ("12100000", "12200000", False),
        ("12120100", "12121000", False),  # the identity moves across a stage boundary
    ],
)
def test_network_key_pairs(macro, a: str, b: str, same: bool) -> None:
    ka, kb = network_key(macro, macro_arch(macro, a)), network_key(macro, macro_arch(macro, b))
    assert (ka == kb) is same
    assert len(ka) == 32


def test_equal_keys_compile_to_the_same_function(macro) -> None:
    torch.manual_seed(0)
    a = build_module(resolve(macro, macro_arch(macro, "22212220"))).eval()
    b = build_module(resolve(macro, macro_arch(macro, "22212202"))).eval()
    pa, pb = list(a.parameters()), list(b.parameters())
    assert [p.shape for p in pa] == [p.shape for p in pb]
    with torch.no_grad():
        for x, y in zip(pa, pb, strict=True):
            y.copy_(x)
        for x, y in zip(a.buffers(), b.buffers(), strict=True):
            y.copy_(x)
        image = torch.randn(2, 3, 32, 32)
        assert torch.allclose(a(image), b(image))


TINY = """
space tiny {
  input(channels = 3, size = 16)
  stem { conv(out = 8, kernel = 3) }
  stage e {
    depth 2
    layer conv(out = 8, kernel = 3) | identity() | dropout(p = {0.0, 0.5})
    after downsample()
  }
  stage d {
    depth 2
    before upsample()
    layer conv(out = 8, kernel = 3) | identity(out = 8)
  }
  SKIP
  head { pool() linear(out = 2) }
}
"""


def test_no_op_nodes_merge_outside_skip_stages_only() -> None:
    plain = compile_text(TINY.replace("SKIP", ""))
    # e: {conv, identity, dropout 0, dropout 0.5}^2 -> sequences of {conv, drop.5} of length
    # 0..2: 1 + 2 + 4 = 7; d: {conv, identity}^2 -> 3 (identity(out = 8) keeps 8 channels).
    assert space_size(plain) == 16 * 4
    assert count_distinct_networks(plain) == 7 * 3
    # A skip pushes and pops at layer boundaries: no layer of e or d is interchangeable.
    wired = compile_text(TINY.replace("SKIP", "skip e -> d"))
    assert count_distinct_networks(wired) == space_size(wired)


def test_the_key_ignores_the_space_name_and_repeats(macro) -> None:
    renamed = compile_text(
        (SPACES / "nas_bench_macro.abs").read_text().replace("space nas_bench_macro", "space x")
    )
    arch = macro_arch(macro, "21012010")
    assert network_key(macro, arch) == network_key(renamed, macro_arch(renamed, "21012010"))
    kept = [a for a, _ in distinct(macro, [arch, macro_arch(macro, "21012001"), arch])]
    assert kept == [arch]


def test_equivalence_helpers_on_large_spaces() -> None:
    space = compile_file(SPACES / "ofa_mbv3.abs")
    assert not may_have_equivalences(space)
    assert count_distinct_networks(space) is None  # far too many to enumerate
    assert may_have_equivalences(compile_file(SPACES / "nas_bench_macro.abs"))
