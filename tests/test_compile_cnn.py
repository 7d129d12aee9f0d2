"""The CNN compiler: exact parameter and MAC counts against NAS-Bench-Macro and DyNAS-T's
OFA MobileNetV3 data, the block structure (identity projection, residuals, SE, rounding),
the registry, meta-device counting, ONNX export against PyTorch, and measuring."""

from __future__ import annotations

import ast
import csv
import json
import random
from pathlib import Path

import pytest
import torch
from nets import (
    PROXYLESS_EXAMPLE,
    macro_arch,
    macro_network,
    node,
    ofa_mbv3_arch,
    ofa_mbv3_network,
    ofa_proxyless_arch,
    ofa_proxyless_network,
)

from autobuild_dsl.compile import (
    NetworkBuildError,
    build_module,
    check_onnx,
    count_macs,
    count_params,
    export_onnx,
    measure,
    params_and_macs,
    register_op,
)
from autobuild_dsl.compile import onnx_export as onnx_export_module
from autobuild_dsl.compile.network import fast_params_and_macs
from autobuild_dsl.compile.registry import UnknownOpError, full_attrs, get_factory
from autobuild_dsl.compile.torch_ops import MBConv, make_divisible, same_padding
from autobuild_dsl.space.ops import Shape
from autobuild_dsl.space.resolved import InputSpec, NodePosition, ResolvedNetwork

MACRO_FILE = Path("nas_bench_macro") / "nas-bench-macro_cifar10.json"
DYNAST_DIR = Path("dynast_ofa_mbv3_acc")
OFA_MAX = {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": [224]}
OFA_MIN = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [224]}


# ------------------------------------------------------------------------------ the data


@pytest.fixture(scope="module")
def macro_table(shared_data: Path) -> dict[str, dict]:
    path = shared_data / MACRO_FILE
    if not path.is_file():
        pytest.skip(f"NAS-Bench-Macro data not found at {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def dynast_rows(shared_data: Path) -> list[tuple[dict, int, int]]:
    folder = shared_data / DYNAST_DIR
    files = sorted(folder.glob("*.csv"))
    if not files:
        pytest.skip(f"DyNAS-T OFA data not found in {folder}")
    rows = []
    for path in files:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                subnet = ast.literal_eval(row["Sub-network"])
                rows.append((subnet, int(row["Model Parameters"]), int(float(row["MACs"]))))
    return rows


def _sample(items: list, n: int, seed: int = 0) -> list:
    return random.Random(seed).sample(items, min(n, len(items)))


# ------------------------------------------------------------------- exact outside truths


def test_macro_documented_example(macro_table: dict[str, dict]) -> None:
    # The example in the data README: "02012100" has 890666 params and 47327744 flops.
    assert params_and_macs(macro_network("02012100")) == (890666, 47327744)
    assert macro_table["02012100"]["params"] == 890666


def test_macro_sampled_keys_exact(macro_table: dict[str, dict]) -> None:
    keys = ["00000000", "11111111", "22222222", "20000000", *_sample(sorted(macro_table), 30)]
    for key in keys:
        want = (macro_table[key]["params"], macro_table[key]["flops"])
        assert params_and_macs(macro_network(key)) == want, key


def test_dynast_sampled_subnets_exact(dynast_rows: list[tuple[dict, int, int]]) -> None:
    for subnet, params, macs in _sample(dynast_rows, 24):
        assert params_and_macs(ofa_mbv3_network(subnet)) == (params, macs), subnet


def test_unused_slots_do_not_matter(dynast_rows: list[tuple[dict, int, int]]) -> None:
    subnet, params, macs = dynast_rows[0]
    changed = dict(subnet)
    d = subnet["d"]
    changed["ks"] = [k if i % 4 < d[i // 4] else 7 for i, k in enumerate(subnet["ks"])]
    changed["e"] = [e if i % 4 < d[i // 4] else 6 for i, e in enumerate(subnet["e"])]
    assert params_and_macs(ofa_mbv3_network(changed)) == (params, macs)


def test_fast_counts_equal_full_counts() -> None:
    nets = [
        macro_network("02012100"),
        macro_network("10201022"),
        ofa_mbv3_network(OFA_MAX),
        ofa_mbv3_network({**OFA_MIN, "r": [160]}),
        ofa_proxyless_network(PROXYLESS_EXAMPLE),
    ]
    for net in nets:
        assert fast_params_and_macs(net) == params_and_macs(net)


def test_meta_and_cpu_counts_agree() -> None:
    net = ofa_mbv3_network(OFA_MIN)
    cpu = build_module(net, device="cpu")
    meta = build_module(net, device="meta")
    assert next(meta.parameters()).is_meta
    assert (count_params(meta), count_macs(meta)) == (count_params(cpu), count_macs(cpu))


@pytest.mark.slow
def test_macro_all_6561_exact(macro_table: dict[str, dict]) -> None:
    assert len(macro_table) == 6561
    bad = [
        key
        for key, v in macro_table.items()
        if params_and_macs(macro_network(key)) != (v["params"], v["flops"])
    ]
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:5]}"


@pytest.mark.slow
def test_dynast_all_2223_exact(dynast_rows: list[tuple[dict, int, int]]) -> None:
    distinct = {json.dumps(s, sort_keys=True): (s, p, m) for s, p, m in dynast_rows}
    assert len(distinct) == 2223
    bad = [s for s, p, m in distinct.values() if params_and_macs(ofa_mbv3_network(s)) != (p, m)]
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]}"


# -------------------------------------------------- hand-built nets == the space files


@pytest.mark.parametrize(
    ("space_file", "hand", "arch", "point"),
    [
        ("nas_bench_macro.abs", macro_network, macro_arch, "02012100"),
        ("nas_bench_macro.abs", macro_network, macro_arch, "21000122"),
        ("mbv3.abs", ofa_mbv3_network, ofa_mbv3_arch, {**OFA_MIN, "d": [2, 3, 4, 2, 3]}),
        ("mbv3.abs", ofa_mbv3_network, ofa_mbv3_arch, {**OFA_MAX, "r": [192]}),
        ("ofa_proxyless.abs", ofa_proxyless_network, ofa_proxyless_arch, PROXYLESS_EXAMPLE),
    ],
)
def test_hand_built_nets_match_the_space_files(
    root: Path, space_file: str, hand, arch, point
) -> None:
    from autobuild_dsl.lang import compile_file
    from autobuild_dsl.space.decisions import validate
    from autobuild_dsl.space.resolve import resolve

    space = compile_file(root / "spaces" / space_file)
    resolved = resolve(space, validate(space, arch(point)))
    built = hand(point)
    assert resolved.input == built.input
    assert len(resolved.nodes) == len(built.nodes)
    for a, b in zip(resolved.nodes, built.nodes, strict=True):
        assert (a.op, a.position) == (b.op, b.position)
        assert full_attrs(a.op, a.attrs) == full_attrs(b.op, b.attrs)


# ---------------------------------------------------------------------- block structure


def _stage_modules(net: ResolvedNetwork, module, block: str) -> list:
    return [m for n, m in zip(net.nodes, module.nodes, strict=True) if n.position.block == block]


def test_first_layer_identity_is_a_projection() -> None:
    net = macro_network("00000000")
    module = build_module(net)
    first, second = _stage_modules(net, module, "s1")
    conv, bn = first.projection
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (
        32,
        64,
        (1, 1),
        (2, 2),
    )
    assert conv.bias is None and isinstance(bn, torch.nn.BatchNorm2d)
    assert second.projection is None and count_params(second) == 0
    x = torch.randn(2, 64, 16, 16)
    assert torch.equal(second(x, None), x)


def test_mbconv_residuals() -> None:
    net = macro_network("12112211")
    module = build_module(net)
    for block in ("s1", "s2", "s3"):
        blocks = _stage_modules(net, module, block)
        assert [b.residual for b in blocks] == [False] + [True] * (len(blocks) - 1)
    # With the projection's BN zeroed, a residual block passes its input through exactly.
    block = _stage_modules(net, module, "s2")[1].eval()
    torch.nn.init.zeros_(block.project.norm.weight)
    x = torch.randn(1, 128, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x, None), x)


def test_macro_mbconv_widths_are_not_rounded() -> None:
    module = build_module(macro_network("22222222"))
    hidden = [m.hidden for m in module.nodes if isinstance(m, MBConv)]
    assert hidden == [32 * 6, 64 * 6, 64 * 6, 64 * 6 * 2, 128 * 6, 128 * 6, 128 * 6 * 2, 256 * 6]


def test_ofa_mbv3_structure() -> None:
    net = ofa_mbv3_network({**OFA_MIN, "e": [4] * 20})
    module = build_module(net)
    stem_block = module.nodes[1]
    assert stem_block.expand is None and stem_block.residual and stem_block.se is None
    s2 = _stage_modules(net, module, "s2")
    # 24 * 4 = 96 hidden; SE to make_divisible(96 // 4, 8) = 24, both 1x1 convs with bias.
    assert s2[0].hidden == 96 and s2[0].se.reduce.out_channels == 24
    assert s2[0].se.reduce.bias is not None and s2[0].se.expand.bias is not None
    assert s2[1].se.reduce.out_channels == make_divisible(160 // 4, 8) == 40
    assert all(b.se is None for b in _stage_modules(net, module, "s3"))
    assert isinstance(s2[0].depthwise.act, torch.nn.ReLU)
    assert isinstance(_stage_modules(net, module, "s3")[0].depthwise.act, torch.nn.Hardswish)
    head_conv = module.nodes[-2]
    assert head_conv.conv.bias is None and isinstance(head_conv.norm, torch.nn.Identity)
    assert module.info[-1].out_shape == Shape(1000, 1)


def test_make_divisible_never_rounds_down_more_than_ten_percent() -> None:
    assert make_divisible(30, 8) == 32
    assert make_divisible(60, 8) == 64
    assert make_divisible(12, 8) == 16
    assert make_divisible(42, 1) == 42


def test_same_padding() -> None:
    assert same_padding(32, 3, 2) == 1
    assert same_padding(32, 1, 2) == 0
    assert same_padding(16, 2, 1) == (0, 1, 0, 1)
    assert same_padding(15, 4, 2) == 2
    assert same_padding(8, 4, 1) == (1, 2, 1, 2)


def test_even_kernels_windowed_pools_and_linears_follow_the_shape_rules() -> None:
    stem = NodePosition(part="stem", block="stem")
    nodes = [
        node("conv", stem, out=8, kernel=2),
        node("dwconv", stem, kernel=4, stride=2),
        node("pool", stem, kind="max", kernel=3, stride=2),
        node("pool", stem, kernel=2),
        node("norm", stem, kind="bn", act="relu"),
        node("linear", stem, out=12, act="gelu"),
        node("dropout", stem, p=0.1),
        node("linear", stem, out=5),
    ]
    net = ResolvedNetwork(space="t", input=InputSpec(channels=3, size=15), nodes=nodes)
    module = build_module(net).eval()
    sizes = [i.out_shape.size for i in module.info]
    assert sizes == [15, 8, 4, 2, 2, 1, 1, 1]
    assert module.nodes[5].fc.in_features == 8 * 2 * 2
    out = module(torch.randn(2, 3, 15, 15))
    assert out.shape == (2, 5)


def test_proxyless_builds_and_runs() -> None:
    net = ofa_proxyless_network(PROXYLESS_EXAMPLE)
    module = build_module(net).eval()
    assert [i.out_shape.channels for i in module.info][-4:] == [320, 1280, 1280, 1000]
    assert not any(isinstance(m, torch.nn.Hardswish) for m in module.modules())
    assert isinstance(module.nodes[0].act, torch.nn.ReLU6)
    with torch.no_grad():
        assert module(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


# ----------------------------------------------------------------------------- registry


def test_unknown_op_is_named() -> None:
    net = macro_network("00000000")
    bad = net.model_copy(
        update={"nodes": [*net.nodes[:1], net.nodes[1].model_copy(update={"op": "warp"})]}
    )
    with pytest.raises(NetworkBuildError, match="'warp'"):
        build_module(bad)
    with pytest.raises(UnknownOpError, match="no PyTorch implementation for operation 'warp'"):
        get_factory("warp")


def test_registering_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_op("conv", lambda shape, attrs, dims: torch.nn.Identity())


def test_missing_attributes_take_catalog_defaults() -> None:
    attrs = full_attrs("mbconv", {"out": 24})
    assert attrs["kernel"] == 3 and attrs["expand"] == 6 and attrs["divisor"] == 8
    stem = NodePosition(part="stem", block="stem")
    from autobuild_dsl.space.resolved import ResolvedNode

    net = ResolvedNetwork(
        space="t",
        input=InputSpec(channels=16, size=8),
        nodes=[ResolvedNode(op="mbconv", attrs={"out": 24}, position=stem)],
    )
    assert build_module(net).nodes[0].hidden == 96


# --------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize(
    "net",
    [
        macro_network("02012100"),
        ofa_mbv3_network({**OFA_MIN, "ks": [5] * 20, "e": [4] * 20, "r": [128]}),
    ],
    ids=["macro", "ofa_mbv3"],
)
def test_onnx_matches_pytorch(net: ResolvedNetwork) -> None:
    torch.manual_seed(0)
    module = build_module(net)
    with torch.no_grad():  # non-trivial BN statistics, so folding them is exercised
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model = export_onnx(module, net, None)
    assert isinstance(model, bytes)
    assert check_onnx(module, model, atol=1e-4) <= 1e-4
    assert check_onnx(module, model, atol=1e-4, batch=3, seed=1) <= 1e-4  # dynamic batch


def test_onnx_to_path_and_external_data(tmp_path: Path, monkeypatch) -> None:
    import onnx

    net = macro_network("10000000")
    module = build_module(net)
    path = export_onnx(module, net, tmp_path / "small.onnx")
    assert path == tmp_path / "small.onnx" and path.is_file()
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["x"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # Pretend the limit is tiny: the large-model path writes one .data file next to it.
    monkeypatch.setattr(onnx_export_module, "PROTOBUF_LIMIT", 1 << 20)
    with pytest.raises(onnx_export_module.OnnxExportError, match="give a path"):
        export_onnx(module, net, None)
    big = export_onnx(module, net, tmp_path / "big" / "model.onnx")
    assert sorted(p.name for p in big.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert check_onnx(module, big, atol=1e-4) <= 1e-4


def test_meta_modules_cannot_be_exported() -> None:
    net = macro_network("00000000")
    with pytest.raises(onnx_export_module.OnnxExportError, match="meta"):
        export_onnx(build_module(net, device="meta"), net, None)


# ------------------------------------------------------------------------------ measure


def test_measure() -> None:
    steps: list[str] = []
    result = measure(
        macro_network("02012100"),
        threads=1,
        warmup=1,
        repeats=3,
        progress=lambda step, fraction: steps.append(step),
    )
    assert result["params"] == 890666 and result["macs"] == 47327744
    assert result["latency"] > 0 and result["latency_threads"] == 1
    assert result["latency_repeats"] == 3
    assert steps[-1] == "done"
    assert measure(macro_network("00000000"), metrics=("params",)) == {"params": 387882}
    with pytest.raises(ValueError, match="unknown metric"):
        measure(macro_network("00000000"), metrics=("energy",))
