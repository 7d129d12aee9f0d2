"""The one value-equality policy, decision keys, the decision index a Space holds, and
the one shape/skip plan that the shape checks and the compiler share."""

from __future__ import annotations

import pickle
import random

import pytest
from unet_nets import tiny_unet

from autobuild_dsl.compile.network import NetworkBuildError, build_module
from autobuild_dsl.graphs.encode import GraphEncoder
from autobuild_dsl.lang import compile_text
from autobuild_dsl.space.decisions import (
    DecisionKey,
    canonicalize,
    find_value,
    index_of,
    mutate,
    same_value,
    sample,
    space_size,
    value_key,
)
from autobuild_dsl.space.flow import plan_steps
from autobuild_dsl.space.resolve import ResolveError, flow_shapes
from autobuild_dsl.space.resolved import SkipLink

# `3` and `3.0` are two values of the language (docs/language.md), so this global has two.
TWO_THREES = """
space threes {
  input(channels = 3, size = 8)
  choice scale = {3, 3.0}
  stage s {
    depth 1..2
    layer conv(out = 8, kernel = {1, 3})
  }
  head {
    linear(out = 2)
  }
}
"""


def test_three_and_three_point_zero_are_different_values() -> None:
    assert same_value(3, 3) and same_value(2.5, 2.5) and same_value("a", "a")
    assert not same_value(3, 3.0) and not same_value(True, 1) and not same_value("3", 3)
    keys = {value_key(v) for v in (3, 3.0, True, 1.0, "3", False, 0)}
    assert len(keys) == 7
    # JSON input has one number type: it spells a domain's own value, of the domain's type.
    assert find_value([3, 4], 4.0) == 4 and type(find_value([3, 4], 4.0)) is int
    assert type(find_value([3.0, 4], 3)) is float
    assert type(find_value([3, 3.0], 3.0)) is float and type(find_value([3, 3.0], 3)) is int
    assert find_value([1, 2], True) is None and find_value(["1"], 1) is None


def test_a_space_counts_encodes_and_validates_3_and_3_0_apart() -> None:
    space = compile_text(TWO_THREES, "threes.abs")
    assert space.choices["scale"] == [3, 3.0]
    assert space_size(space) == 2 * (2 + 2 * 2)
    arch = sample(space, 1, seed=0)[0].model_dump(mode="python")
    as_int = canonicalize(space, {**arch, "globals": {"scale": 3}})
    as_float = canonicalize(space, {**arch, "globals": {"scale": 3.0}})
    assert type(as_int.globals["scale"]) is int and type(as_float.globals["scale"]) is float
    assert as_int != as_float
    encoder = GraphEncoder(space)
    category = next(c for c in encoder.categories if c.group == "global")
    assert len(category.vocab) == 2
    column = encoder.categories.index(category)
    codes = {int(encoder.encode_tensors(a).x[0, column]) for a in (as_int, as_float)}
    assert codes == {1, 2}


def test_decision_keys_build_and_split_as_rules_name_them() -> None:
    assert DecisionKey.depth("s1") == "s1.depth"
    assert DecisionKey.choice("s1", "mult") == "s1.mult"
    key = DecisionKey.parse("s1.depth")
    assert key.owner == "s1" and key.is_depth and not key.is_global and str(key) == "s1.depth"
    glob = DecisionKey.parse("resolution")
    assert glob.is_global and not glob.is_depth and str(glob) == "resolution"
    assert DecisionKey.parse("e1.mult") == ("e1", "mult")


def test_the_space_holds_its_index_without_changing_its_identity() -> None:
    space = compile_text(TWO_THREES, "threes.abs")
    fresh = compile_text(TWO_THREES, "threes.abs")
    index = index_of(space)
    assert index_of(space) is index and index.space is space
    assert space == fresh  # an index held by one side takes no part in equality
    # A copy gets an index of its own: the original's is never read for another space.
    copy = space.model_copy(update={"choices": {"scale": [3]}})
    assert index_of(copy) is not index and index_of(copy).size() == space_size(space) // 2
    # Pickling (worker processes) leaves the index behind; it is rebuilt where needed.
    again = pickle.loads(pickle.dumps(space))
    assert again == space and again._decision_index is None
    assert index_of(again).size() == index.size()
    # A space pickled by a version that held no index (no private state) still works.
    state = space.__getstate__()
    state["__pydantic_private__"] = None
    older = type(space).__new__(type(space))
    older.__setstate__(state)
    assert older == space and index_of(older).size() == index.size()
    rng = random.Random(0)
    arch = sample(space, 1, seed=1)[0]
    assert canonicalize(space, mutate(space, arch, rng, mode="layer")) is not None


def test_shape_checks_and_compiler_share_one_skip_plan() -> None:
    net = tiny_unet()
    steps = plan_steps(net)
    assert sum(len(s.pop) for s in steps) > 0 and sum(len(s.push_out) for s in steps) > 0
    compiled = build_module(net, device="meta")
    assert compiled._steps == steps
    assert flow_shapes(net) == [info.out_shape for info in compiled.info]
    assert compiled.info[0].in_shape.channels == net.input.channels
    # Where a skip is popped, the node receives the concatenation.
    for i, step in enumerate(steps):
        if step.pop:
            assert compiled.info[i].in_shape.channels > compiled.info[i - 1].out_shape.channels


def test_a_skip_of_another_size_is_refused_where_it_is_wired() -> None:
    # e1 (16x16) wired into d3 (4x4): both the shape check and the compiler refuse it,
    # at the same node, from the one plan.
    broken = tiny_unet().model_copy(update={"skips": [SkipLink(source="e1", target="d3")]})
    with pytest.raises(
        ResolveError, match="d3: the skip from e1 is 16x16 but the feature map is 4x4"
    ):
        flow_shapes(broken)
    with pytest.raises(NetworkBuildError, match=r"in d3 layer 0\): the skip from e1 is 16x16"):
        build_module(broken, device="meta")
