"""Sequence-graph encoding: categories from the space, codes, edges, modules, properties."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch

from autobuild_dsl.graphs import EncodeError, GraphEncoder
from autobuild_dsl.lang import compile_file
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import (
    canonicalize,
    index_of,
    mutate,
    sample,
    unit_modules,
)
from autobuild_dsl.space.model import Space, StageModule
from autobuild_dsl.space.resolve import resolve

SPACES = Path(__file__).resolve().parent.parent / "spaces"

SPACE_NAMES = ["ofa_mbv3", "nas_bench_macro", "sd14_unet_fid", "ofa_proxyless"]


@cache
def space_of(name: str) -> Space:
    # The space ofa_mbv3 lives in spaces/mbv3.abs (the file name users type).
    return compile_file(SPACES / ("mbv3.abs" if name == "ofa_mbv3" else f"{name}.abs"))


@cache
def encoder_of(name: str) -> GraphEncoder:
    return GraphEncoder(space_of(name))


def summary(encoder: GraphEncoder) -> list[tuple[str, str, list]]:
    return [(c.name, c.group, c.vocab) for c in encoder.categories]


def test_ofa_categories_come_from_the_space() -> None:
    assert summary(encoder_of("ofa_mbv3")) == [
        ("expand", "attr", [3, 4, 6]),
        ("kernel", "attr", [3, 5, 7]),
        ("stage", "position", [0, 1, 2, 3, 4]),
        ("layer", "position", [0, 1, 2, 3]),
        ("resolution", "global", list(range(128, 225, 4))),
    ]


def test_nas_bench_macro_alternatives_are_op_plus_attributes() -> None:
    encoder = encoder_of("nas_bench_macro")
    assert summary(encoder) == [
        ("op", "op", ["identity", "mbconv"]),
        ("expand", "attr", [3, 6]),
        ("kernel", "attr", [3, 5]),
        ("stage", "position", [0, 1, 2]),
        ("layer", "position", [0, 1, 2]),
    ]
    labels = {"0": "identity", "1": "mb_e3k3", "2": "mb_e6k5"}
    digits = "02012100"
    raw = {"stages": {}}
    start = 0
    for name, depth in (("s1", 2), ("s2", 3), ("s3", 3)):
        layers = [{"op": labels[c]} for c in digits[start : start + depth]]
        raw["stages"][name] = {"depth": depth, "layers": layers}
        start += depth
    graph = encoder.encode(canonicalize(space_of("nas_bench_macro"), raw))
    # op, expand, kernel, stage, layer: identity has no expand/kernel (0 = n/a).
    assert graph.x.tolist() == [
        [1, 0, 0, 1, 1],  # 0 identity
        [2, 2, 2, 1, 2],  # 2 mb_e6k5
        [1, 0, 0, 2, 1],  # 0
        [2, 1, 1, 2, 2],  # 1 mb_e3k3
        [2, 2, 2, 2, 3],  # 2
        [2, 1, 1, 3, 1],  # 1
        [1, 0, 0, 3, 2],  # 0
        [1, 0, 0, 3, 3],  # 0
    ]
    assert graph.edge_index.tolist() == [list(range(7)), list(range(1, 8))]
    assert graph.stage_index.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert graph.layer_index.tolist() == [0, 1, 0, 1, 2, 0, 1, 2]
    assert graph.x.dtype == torch.long


def test_unet_categories_edges_and_extras() -> None:
    encoder = encoder_of("sd14_unet_fid")
    names = {c.name: c for c in encoder.categories}
    assert names["op"].vocab == ["attention", "downsample", "resblock", "upsample"]
    # Only the resblock's width varies (base * mult); heads and groups are fixed.
    assert names["out"].group == "attr" and names["out"].ops == ["resblock"]
    assert names["out"].vocab == [128, 192, 256, 384, 512, 576, 768, 1024]
    assert names["section"].vocab == ["decoder", "encoder"]
    assert [c.name for c in encoder.categories if c.group == "global"] == [
        "base",
        "attn3",
        "attn4",
    ]
    assert "heads" not in names
    arch = sample(space_of("sd14_unet_fid"), 1, seed=3)[0]
    graph = encoder.encode(arch)
    stage_of = graph.stage_index.tolist()
    first = {s: stage_of.index(s) for s in set(stage_of)}
    last = {s: len(stage_of) - 1 - stage_of[::-1].index(s) for s in set(stage_of)}
    edges = list(zip(*graph.edge_index.tolist(), strict=True))
    assert len(edges) == len(set(edges)), "no duplicated edge"
    chain = {(i, i + 1) for i in range(graph.num_nodes - 1)}
    assert chain <= set(edges)
    # Skips e1->d1 (stage 0 -> 7), e2->d2 (1 -> 6), e3->d3 (2 -> 5); e4->d4 is the chain.
    assert set(edges) - chain == {(last[0], first[7]), (last[1], first[6]), (last[2], first[5])}
    downsample = names["op"].vocab.index("downsample") + 1
    rows = graph.x[:, 0] == downsample
    assert rows.sum() == 3 and (graph.layer_index[rows] == -1).all()


def expected_rows(encoder: GraphEncoder, space: Space, arch: Architecture) -> list[list[int]]:
    """The features computed the slow way, from `resolve` (an independent oracle)."""
    net = resolve(space, arch)
    rows = []
    for node in net.nodes:
        pos = node.position
        if pos.part != "stage":
            continue
        row = []
        for c in encoder.categories:
            code = {repr(v): i + 1 for i, v in enumerate(c.vocab)}
            if c.group == "op":
                value = node.op
            elif c.group == "attr":
                value = node.attrs.get(c.name) if node.op in c.ops else None
            elif c.name == "section":
                value = pos.section
            elif c.name == "stage":
                value = pos.stage_index
            elif c.name == "layer":
                value = pos.layer_index
            else:
                value = arch.globals[c.name]
            row.append(0 if value is None else code[repr(value)])
        rows.append(row)
    return rows


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_encoding_matches_the_resolved_network(name: str) -> None:
    space, encoder = space_of(name), encoder_of(name)
    for arch in sample(space, 15, seed=11):
        graph = encoder.encode(arch)
        assert graph.x.tolist() == expected_rows(encoder, space, arch)
        assert graph.x.shape[1] == len(encoder.categories)


def test_encode_many_reports_progress_and_matches_encode() -> None:
    space, encoder = space_of("ofa_mbv3"), encoder_of("ofa_mbv3")
    archs = sample(space, 40, seed=5)
    seen: list[tuple[int, int]] = []
    graphs = encoder.encode_many(archs, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (40, 40)
    assert all(torch.equal(g.x, encoder.encode(a).x) for g, a in zip(graphs, archs, strict=True))


def test_batching_keeps_stage_and_layer_indices() -> None:
    space, encoder = space_of("nas_bench_macro"), encoder_of("nas_bench_macro")
    graphs = encoder.encode_many(sample(space, 3, seed=1))
    batch = Batch.from_data_list(graphs)
    assert batch.stage_index.tolist() == [0, 0, 1, 1, 1, 2, 2, 2] * 3
    assert batch.layer_index.tolist() == [0, 1, 0, 1, 2, 0, 1, 2] * 3
    assert int(batch.edge_index.max()) == 23  # edge_index is offset, the labels are not


def module_of(arch: Architecture, stages: list[str]) -> list[StageModule]:
    return [
        StageModule(depth=s.depth, choices=dict(s.choices), layers=s.layers)
        for s in (arch.stages[name] for name in stages)
    ]


@pytest.mark.parametrize("name", ["ofa_mbv3", "ofa_proxyless", "nas_bench_macro"])
def test_module_graph_is_its_slice_of_the_architecture(name: str) -> None:
    space, encoder = space_of(name), encoder_of(name)
    for arch in sample(space, 5, seed=2):
        full = encoder.encode(arch)
        for unit in index_of(space).units:
            stage_ids = [space.stage(s).index for s in unit.stages]
            keep = torch.isin(full.stage_index, torch.tensor(stage_ids))
            graph = encoder.encode_module(unit.name, module_of(arch, unit.stages), arch.globals)
            assert torch.equal(graph.x, full.x[keep])
            assert torch.equal(graph.stage_index, full.stage_index[keep])
            assert graph.edge_index.tolist() == [
                list(range(graph.num_nodes - 1)),
                list(range(1, graph.num_nodes)),
            ]


def test_module_globals_default_to_the_first_value() -> None:
    encoder = encoder_of("ofa_mbv3")
    module = next(unit_modules(space_of("ofa_mbv3"), index_of(space_of("ofa_mbv3")).units[2]))
    graph = encoder.encode_module("s3", module)
    assert graph.num_nodes == module[0].depth == 2
    resolution = [c.name for c in encoder.categories].index("resolution")
    stage = [c.name for c in encoder.categories].index("stage")
    assert graph.x[:, resolution].tolist() == [1, 1]  # 128, the first value
    assert graph.x[:, stage].tolist() == [3, 3]  # stage index 2 -> code 3
    with_224 = encoder.encode_module("s3", module, {"resolution": 224})
    assert with_224.x[:, resolution].tolist() == [25, 25]


def test_tied_module_choice_sets_the_width() -> None:
    space, encoder = space_of("sd14_unet_fid"), encoder_of("sd14_unet_fid")
    names = [c.name for c in encoder.categories]
    out = encoder.categories[names.index("out")]
    layers = [{}, {}, {}]
    module = [StageModule(depth=3, choices={"mult": 3}, layers=layers)]
    graph = encoder.encode_module("d1", module, {"base": 192, "attn3": True, "attn4": True})
    resblock = graph.x[:, names.index("op")] == 3
    widths = {out.vocab[c - 1] for c in graph.x[resblock, names.index("out")].tolist()}
    assert widths == {576}  # 192 * 3: d1.mult is tied to e1.mult, the module decides it
    assert set(graph.stage_index.tolist()) == {space.stage("d1").index}


def test_bad_values_are_clear_errors() -> None:
    space, encoder = space_of("ofa_mbv3"), encoder_of("ofa_mbv3")
    arch = sample(space, 1, seed=0)[0]
    bad = arch.model_copy(update={"globals": {"resolution": 999}})
    with pytest.raises(EncodeError, match="resolution"):
        encoder.encode(bad)
    layers = [{"kernel": 9, "expand": 3}, {"kernel": 3, "expand": 3}]
    with pytest.raises(EncodeError, match="kernel = 9"):
        encoder.encode_module("s1", [StageModule(depth=2, layers=layers)])
    with pytest.raises(EncodeError, match="no unit or stage 'zz'"):
        encoder.encode_module("zz", [])


# ----- properties ------------------------------------------------------------------


def with_unused_slots(space: Space, arch: Architecture, rng: random.Random) -> dict:
    """The raw dict of `arch` with random extra layers appended past each stage's depth."""
    raw = arch.model_dump(mode="python")
    configs = index_of(space).layer_configs
    for name, stage in raw["stages"].items():
        extra = rng.randrange(0, 3)
        stage["layers"] = stage["layers"] + [
            dict(configs[name][rng.randrange(len(configs[name]))]) for _ in range(extra)
        ]
    return raw


def same_graph(a, b) -> bool:  # type: ignore[no-untyped-def]
    return (
        torch.equal(a.x, b.x)
        and torch.equal(a.edge_index, b.edge_index)
        and torch.equal(a.stage_index, b.stage_index)
        and torch.equal(a.layer_index, b.layer_index)
    )


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    name=st.sampled_from(["ofa_mbv3", "nas_bench_macro", "sd14_unet_fid"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_unused_slots_never_change_the_graph(name: str, seed: int) -> None:
    space, encoder = space_of(name), encoder_of(name)
    rng = random.Random(seed)
    arch = sample(space, 1, seed=seed)[0]
    first = canonicalize(space, with_unused_slots(space, arch, rng))
    second = canonicalize(space, with_unused_slots(space, arch, rng))
    assert same_graph(encoder.encode(first), encoder.encode(second))


@settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    name=st.sampled_from(["ofa_mbv3", "nas_bench_macro", "sd14_unet_fid"]),
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(["layer", "stage"]),
)
def test_any_used_choice_changes_the_graph(name: str, seed: int, mode: str) -> None:
    space, encoder = space_of(name), encoder_of(name)
    rng = random.Random(seed)
    arch = sample(space, 1, seed=seed)[0]
    other = mutate(space, arch, rng, mode=mode)
    # A mutation may land back on an equal network; only different ones must differ.
    assert same_graph(encoder.encode(arch), encoder.encode(other)) == (arch.key() == other.key())
