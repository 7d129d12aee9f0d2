"""ONNX-IR graphs (graphs/ir.py), mixed-space datasets (data/mixed.py), IR runs and their
rooted subgraphs (build/ir_rank.py).

Exports are the slow part (about 0.1-1 s each), so the module exports a handful of small
networks once into a shared cache folder and every test reads them from there.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autobuild_dsl.cli import cli
from autobuild_dsl.data.dataset import DatasetError, LabeledDataset, save_dataset
from autobuild_dsl.data.mixed import MixedDataset, load_mixed_dataset
from autobuild_dsl.data.splits import label_stats
from autobuild_dsl.design.ir_rank import _wl_ids, top_rooted_subgraphs
from autobuild_dsl.graphs.ir import (
    IrEncoder,
    IrError,
    IrGraph,
    cache_tag,
    fit_categories,
    op_presence,
    space_hash,
)
from autobuild_dsl.lang import compile_file, compile_text
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, load_run, predict, train_run
from autobuild_dsl.scorer.run import run_feature_importance
from autobuild_dsl.space.decisions import canonicalize, iter_architectures

SPACES = Path(__file__).resolve().parent.parent / "spaces"

# A second small space with MobileNetV3's h-swish and squeeze-excite (NAS-Bench-Macro has
# neither): 20 architectures at 32x32, quick to export.
TINY_SE = """
space tiny_se {
  input(channels = 3, size = 32)

  stem {
    conv(out = 16, kernel = 3, stride = 2, act = hswish)
  }

  stage s1 {
    depth 1..2
    layer mbconv(out = 24, stride = 2, kernel = {3, 5}, expand = {3, 6}, act = hswish, se = true)
  }

  head {
    pool()
    linear(out = 10)
  }
}
"""

# s1: identity (a 1x1 conv: stride 2 and 32 -> 64 channels), MB e3k3; s2: e6k5, e3k3, e6k5;
# s3: e6k5, identity (nothing: same shape), e6k5.
MACRO_ARCH = {
    "stages": {
        "s1": {"depth": 2, "layers": [{"op": "identity"}, {"op": "mb_e3k3"}]},
        "s2": {"depth": 3, "layers": [{"op": "mb_e6k5"}, {"op": "mb_e3k3"}, {"op": "mb_e6k5"}]},
        "s3": {"depth": 3, "layers": [{"op": "mb_e6k5"}, {"op": "identity"}, {"op": "mb_e6k5"}]},
    }
}


def _label(arch) -> float:
    """A synthetic metric: heavier layers score more."""
    weights = {"mb_e6k5": 1.0, "mb_e3k3": 0.5, "identity": 0.0}
    total = 0.0
    for stage in arch.stages.values():
        for layer in stage.layers:
            total += weights.get(str(layer.get("op")), 0.2 * float(layer.get("expand", 0)))
    return total


@pytest.fixture(scope="module")
def macro():
    return compile_file(SPACES / "nas_bench_macro.abs")


@pytest.fixture(scope="module")
def tiny():
    return compile_text(TINY_SE)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ir-cache")


@pytest.fixture(autouse=True, scope="module")
def _default_cache(cache: Path):
    """Encoders made without a folder (a loaded run's) use the test cache, never ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ABC_IR_CACHE", str(cache))
        yield


@pytest.fixture(scope="module")
def macro_archs(macro):
    # Every 1200th of the 6561 networks (deterministic), plus the hand-picked one.
    archs = [a for i, a in enumerate(iter_architectures(macro)) if i % 1200 == 7]
    return [canonicalize(macro, MACRO_ARCH), *archs]


@pytest.fixture(scope="module")
def tiny_archs(tiny):
    return list(iter_architectures(tiny))[2:8]


@pytest.fixture(scope="module")
def warm(macro, tiny, macro_archs, tiny_archs, cache) -> IrEncoder:
    """An encoder over both spaces whose cache holds every test architecture."""
    encoder = IrEncoder([macro, tiny], cache_dir=cache)
    encoder.graphs([*macro_archs, *tiny_archs])
    return encoder


# ----- the IR graph -------------------------------------------------------------------------


def test_macro_ir_graph_has_the_expected_ops_and_edges(macro, warm) -> None:
    graph = warm.graph(canonicalize(macro, MACRO_ARCH))
    counts = Counter(graph.ops)
    # stem conv + identity's 1x1 conv + 6 MBConvs x 3 convs + head conv; BatchNorm folded.
    assert counts == {
        "Conv": 21,
        "Relu": 14,
        "Add": 4,  # residuals of the stride-1 MBConvs: s1.1, s2.1, s2.2, s3.2
        "GlobalAveragePool": 1,
        "Flatten": 1,
        "Gemm": 1,
    }
    assert graph.num_nodes == 42
    n = graph.num_nodes
    indegree = Counter(b for _, b in graph.edges)
    assert all(a < b for a, b in graph.edges)  # ONNX order is topological
    assert len(graph.edges) == (n - 1) + 4  # a chain plus one skip per residual Add
    for i, op in enumerate(graph.ops):
        assert indegree[i] == (2 if op == "Add" else 0 if i == 0 else 1), (i, op)
    first = 0
    assert (graph.ops[first], graph.kernel[first], graph.stride[first]) == ("Conv", 3, 1)
    assert (graph.channels[first], graph.height[first]) == (32, 32)
    # The identity of s1.0 is a dense 1x1 stride-2 conv to 64 channels.
    s10 = [i for i in range(n) if graph.place(i) == "s1.0"]
    assert [(graph.ops[i], graph.kernel[i], graph.stride[i]) for i in s10] == [("Conv", 1, 2)]
    assert graph.channels[s10[0]] == 64 and graph.height[s10[0]] == 16
    # Each MBConv's middle conv is depthwise with the layer's kernel; s3.1 has no node.
    depthwise = [i for i in range(n) if graph.groups[i] == "depthwise"]
    assert [graph.kernel[i] for i in depthwise] == [3, 5, 3, 5, 5, 5]
    assert not any(graph.place(i) == "s3.1" for i in range(n))
    assert graph.ops[-1] == "Gemm" and graph.channels[-1] == 10 and graph.height[-1] is None
    # An Add joins its layer's input (the previous layer's output) and its projection.
    add = graph.ops.index("Add")
    sources = sorted(a for a, b in graph.edges if b == add)
    assert graph.place(sources[0]) == "s1.0" and graph.place(sources[1]) == "s1.1"


def test_mobilenet_ops_from_hswish_and_squeeze_excite(warm, tiny_archs, macro_archs) -> None:
    graph = warm.graph(tiny_archs[0])
    ops = set(graph.ops)
    # h-swish, and squeeze-excite's mean, gate (relu6(x + 3) / 6) and scale.
    assert {"HardSwish", "ReduceMean", "Mul", "Div", "Clip"} <= ops
    assert not ops & {"BatchNormalization", "Constant", "Identity"}
    presence = op_presence([graph, *warm.graphs(macro_archs)])
    assert presence["HardSwish"] == {"tiny_se"} and presence["Div"] == {"tiny_se"}
    assert presence["Conv"] == {"tiny_se", "nas_bench_macro"}


# ----- the cache --------------------------------------------------------------------------------


def test_second_encoder_reads_the_disk_cache(macro, macro_archs, cache, warm) -> None:
    fresh = IrEncoder(macro, cache_dir=cache)
    graphs = fresh.graphs(macro_archs[:3])
    assert fresh.stats.exported == 0 and fresh.stats.disk == 3
    assert graphs == [warm.graph(a) for a in macro_archs[:3]]
    again = fresh.graphs(macro_archs[:3])
    assert fresh.stats.memory == 3 and again == graphs
    files = list((cache / cache_tag() / space_hash(macro)).glob("*.json"))
    assert len(files) == len(macro_archs)


def test_cache_is_keyed_by_space_text_and_survives_corruption(
    macro, macro_archs, tmp_path: Path
) -> None:
    encoder = IrEncoder(macro, cache_dir=tmp_path)
    arch = macro_archs[0]
    encoder.graphs([arch])
    assert encoder.stats.exported + encoder.stats.assembled == 1
    (path,) = (tmp_path / cache_tag() / space_hash(macro)).glob("*.json")
    path.write_text("{torn", encoding="utf-8")
    fresh = IrEncoder(macro, cache_dir=tmp_path)
    graph = fresh.graph(arch)
    assert fresh.stats.exported + fresh.stats.assembled == 1 and graph.num_nodes == 42
    assert json.loads(path.read_text(encoding="utf-8"))["key"] == arch.key()
    # Another space text (a description) is another cache folder: no stale graph.
    other = compile_text(
        (SPACES / "nas_bench_macro.abs")
        .read_text(encoding="utf-8")
        .replace('description "', 'description "changed: ')
    )
    assert space_hash(other) != space_hash(macro)
    assert not IrEncoder(other, cache_dir=tmp_path, use_cache=True)._read_cached(other, arch)


@pytest.mark.slow  # spawning worker processes (each imports torch) takes 10-30 s
def test_parallel_export_matches_serial(
    macro, tiny, macro_archs, tiny_archs, warm, tmp_path: Path
) -> None:
    # Whole-network exports only: fragments would leave the pool nothing to do.
    encoder = IrEncoder([macro, tiny], cache_dir=tmp_path, jobs=2, fragments=False)
    seen: list[tuple[int, int]] = []
    unique = [*macro_archs, *tiny_archs]
    archs = [*unique, *macro_archs[:2]]  # a repeat is exported once, delivered twice
    graphs = encoder.graphs(archs, progress=lambda d, t: seen.append((d, t)))
    assert encoder.stats.exported == len(unique) >= 8  # enough for the worker pool
    assert encoder.stats.export_cpu_seconds > 0
    assert graphs == [warm.graph(a) for a in archs]
    assert seen[-1] == (len(archs), len(archs))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


# ----- vocabularies -------------------------------------------------------------------------------


def _graph(ops: list[str], channels: list[int | None], space: str = "x") -> IrGraph:
    n = len(ops)
    none: list = [None] * n
    return IrGraph(
        space=space,
        ops=ops,
        channels=channels,
        height=[8] * n,
        width=[8] * n,
        kernel=none,
        stride=none,
        groups=none,
        module=none,
        places=[],
        edges=[(i, i + 1) for i in range(n - 1)],
    )


def test_vocabularies_union_buckets_and_nearest_codes(macro) -> None:
    graphs = [_graph(["Conv", "Relu"], [16, 32], "a"), _graph(["Conv", "Add"], [64, 128], "b")]
    categories = fit_categories(graphs)
    names = [c.name for c in categories]
    assert names == ["op", "channels"]  # size is the same everywhere: dropped
    assert categories[0].vocab == ["Add", "Conv", "Relu"]  # the union of both spaces
    assert categories[1].vocab == [16, 32, 64, 128]
    encoder = IrEncoder(macro, use_cache=False, categories=categories)
    data = encoder.encode_graph(_graph(["Relu", "Conv", "Add"], [16, 100, 1000]))
    # 100 is nearest 128 in log scale (log2 6.64: 6.5 is the cut); 1000 -> 128 too.
    assert data.x.tolist() == [[3, 1], [2, 4], [1, 4]]
    assert data.edge_index.tolist() == [[0, 1], [1, 2]]
    few = fit_categories(graphs, max_values=2)
    assert few[1].vocab == [16, 128]
    with pytest.raises(IrError, match="Gemm"):
        encoder.encode_graph(_graph(["Gemm"], [10]))


def test_encoder_state_round_trips(macro, tiny, warm, macro_archs, tiny_archs, cache) -> None:
    encoder = IrEncoder([macro, tiny], cache_dir=cache).fit([*macro_archs, *tiny_archs])
    state = json.loads(json.dumps(encoder.run_state().model_dump(mode="json")))
    again = IrEncoder.from_state(state, cache_dir=cache)
    assert [s.name for s in again.spaces] == ["nas_bench_macro", "tiny_se"]
    assert again.categories == encoder.categories
    arch = tiny_archs[3]
    assert again.encode(arch).x.tolist() == encoder.encode(arch).x.tolist()
    with pytest.raises(IrError, match="version"):
        IrEncoder.from_state({**state, "version": 0})
    with pytest.raises(IrError, match="no vocabularies"):
        _ = IrEncoder(macro, use_cache=False).categories
    with pytest.raises(IrError, match="module"):
        encoder.encode_module("s1", [])


# ----- mixed datasets ---------------------------------------------------------------------------


def _write_mixed(path: Path, macro, tiny, macro_archs, tiny_archs) -> Path:
    rows = []
    for space, archs in ((macro, macro_archs), (tiny, tiny_archs)):
        values = np.array([[_label(a), 100.0 + i] for i, a in enumerate(archs)])
        data = LabeledDataset(
            space=space, architectures=archs, metric_names=["acc", "macs"], values=values
        )
        rows.append(data.to_jsonl())
    path.write_text("".join(rows), encoding="utf-8")
    return path


def test_mixed_dataset_routes_rows_by_arch_space(
    macro, tiny, macro_archs, tiny_archs, tmp_path: Path
) -> None:
    path = _write_mixed(tmp_path / "mixed.jsonl", macro, tiny, macro_archs, tiny_archs)
    data = load_mixed_dataset(path, [macro, tiny])
    assert isinstance(data, MixedDataset) and len(data) == len(macro_archs) + len(tiny_archs)
    assert data.space_names().count("tiny_se") == len(tiny_archs)
    sub = data.subset([0, len(data) - 1])
    assert isinstance(sub, MixedDataset) and sub.space_names() == ["nas_bench_macro", "tiny_se"]
    stats = data.label_stats(data.metric("acc"))
    # Overall statistics cover both spaces; per-stage ones the primary space's rows only.
    assert stats.count == len(data)
    assert sum(g.count for g in stats.by_stage["s1"].values()) == len(macro_archs)
    # A row of a space not given, or with no space at all, is reported with its line.
    lines = path.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[-1])
    bad["arch"]["space"] = "elsewhere"
    missing = json.loads(lines[0])
    del missing["arch"]["space"]
    (tmp_path / "bad.jsonl").write_text(
        "\n".join([*lines[:-1], json.dumps(bad), json.dumps(missing)]) + "\n", encoding="utf-8"
    )
    with pytest.raises(DatasetError) as error:
        load_mixed_dataset(tmp_path / "bad.jsonl", [macro, tiny])
    text = str(error.value)
    assert f"bad.jsonl:{len(lines)}: arch.space 'elsewhere'" in text
    assert f"bad.jsonl:{len(lines) + 1}: arch has no 'space' field" in text


# ----- IR runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ir_run(macro, tiny, macro_archs, tiny_archs, cache, warm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ir-run")
    path = _write_mixed(folder / "mixed.jsonl", macro, tiny, macro_archs, tiny_archs)
    data = load_mixed_dataset(path, [macro, tiny])
    encoder = IrEncoder([macro, tiny], cache_dir=cache)
    run = train_run(
        macro,
        data,
        "acc",
        folder / "run",
        train=TrainConfig(epochs=4, batch_size=8),
        ensemble=EnsembleConfig(folds=2, seeds=1),
        encoder=encoder,
        data_path=str(path),
    )
    assert encoder.stats.exported == 0  # everything came from the cache
    return run


def test_ir_run_trains_saves_its_vocabulary_and_predicts(ir_run, tiny_archs, cache) -> None:
    run = load_run(ir_run.path)
    assert run.config.encoding == "ir" and run.config.encoder_state is not None
    assert run.config.categories[0].name == "op"
    ops = run.config.categories[0].vocab
    assert {"Conv", "HardSwish", "Add", "Gemm"} <= set(ops)
    encoder = run.encoder()
    assert isinstance(encoder, IrEncoder) and [s.name for s in encoder.spaces] == [
        "nas_bench_macro",
        "tiny_se",
    ]
    mean, spread = predict(run, encoder.encode_many(tiny_archs[:2]))
    assert mean.shape == (2,) and np.all(np.isfinite(mean)) and np.all(spread >= 0)
    importance = run_feature_importance(run)
    op_rows = {r.value for r in importance if r.category == "op"}
    assert op_rows == set(ops)  # every op type gets an FE-MLP score
    assert {r.category for r in importance} >= {"op", "channels", "kernel", "groups"}


def test_top_rooted_subgraphs(ir_run, macro_archs, tiny_archs, cache) -> None:
    run = load_run(ir_run.path)
    assert run.encoder().cache_dir == cache  # $ABC_IR_CACHE
    report = top_rooted_subgraphs(run, 4, archs=[*macro_archs, *tiny_archs])
    assert report.graphs == len(macro_archs) + len(tiny_archs)
    assert report.hops == list(range(1, run.num_hops))
    assert [s.rank for s in report.subgraphs] == [1, 2, 3, 4]
    scores = [s.score for s in report.subgraphs]
    assert scores == sorted(scores, reverse=True)
    for sub in report.subgraphs:
        distances = {n.index: n.distance for n in sub.nodes}
        assert distances[sub.root.index] == 0 and max(distances.values()) <= sub.hop
        assert sum(sub.ops.values()) == len(sub.nodes) and sub.occurrences >= 1
        assert sub.spaces and sub.example_space in sub.spaces
    locations = [(s.example_space, s.root.op, s.root.place) for s in report.subgraphs]
    assert len(set(locations)) == len(locations)  # one row per root location
    finer = top_rooted_subgraphs(run, 4, archs=[*macro_archs, *tiny_archs], per_location=False)
    assert finer.subgraphs[0].score == report.subgraphs[0].score  # the same best subgraph
    assert {o.op for o in report.op_types} == set(run.config.categories[0].vocab)
    assert next(o for o in report.op_types if o.op == "HardSwish").spaces == ["tiny_se"]
    # Default graphs: the run's data file.
    assert top_rooted_subgraphs(run, 1).graphs == report.graphs
    with pytest.raises(IrError, match="hop"):
        top_rooted_subgraphs(run, 2, archs=tiny_archs, hops=[run.num_hops])


def test_wl_ids_tell_upstream_structure_apart() -> None:
    # Two chains a->b and c->b' where a and c differ: b and b' look alike at hop 0 only.
    x = np.array([[1], [2], [3], [2]])
    in_nbrs = np.array([[-1], [0], [-1], [2]])
    hop0, hop1 = _wl_ids(x, in_nbrs, 1)
    assert hop0[1] == hop0[3] and hop1[1] != hop1[3]
    assert hop0[0] != hop0[2]


def test_cli_train_and_predict_with_ir(
    macro, tiny, macro_archs, tiny_archs, cache, warm, tmp_path: Path
) -> None:
    path = _write_mixed(tmp_path / "mixed.jsonl", macro, tiny, macro_archs, tiny_archs)
    tiny_file = tmp_path / "tiny.abs"
    tiny_file.write_text(TINY_SE, encoding="utf-8")
    runner = CliRunner()
    base = ["train", str(SPACES / "nas_bench_macro.abs"), str(path), "--target", "acc"]
    # Several spaces need --encoding ir.
    result = runner.invoke(cli, [*base, "-o", str(tmp_path / "r0"), "--add-space", str(tiny_file)])
    assert result.exit_code == 1 and "--encoding ir" in result.output
    args = [*base, "-o", str(tmp_path / "run"), "--add-space", str(tiny_file), "--encoding", "ir"]
    args += ["--cache", str(cache), "--epochs", "2", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output.strip().splitlines()[-1])["hop_srcc"]) == 5
    archs = tmp_path / "archs.jsonl"
    archs.write_text(
        "".join(a.to_json() + "\n" for a in [tiny_archs[0], macro_archs[0]]), encoding="utf-8"
    )
    result = runner.invoke(
        cli,
        ["predict", str(tmp_path / "run"), str(archs), "--json"],
        env={"ABC_IR_CACHE": str(cache)},
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["row"] for line in result.output.strip().splitlines()] == [0, 1]


def test_single_space_dataset_file_still_loads(macro, macro_archs, tmp_path: Path) -> None:
    data = LabeledDataset(
        space=macro,
        architectures=macro_archs,
        metric_names=["acc"],
        values=np.array([[_label(a)] for a in macro_archs]),
    )
    save_dataset(data, tmp_path / "d.jsonl")
    mixed = load_mixed_dataset(tmp_path / "d.jsonl", [macro])
    assert mixed.space_names() == ["nas_bench_macro"] * len(macro_archs)
    y = mixed.metric("acc")
    assert mixed.label_stats(y) == label_stats(data, y)


def test_architecture_of_an_unknown_space_is_refused(macro, tiny_archs) -> None:
    with pytest.raises(IrError, match=r"tiny_se.*knows: nas_bench_macro"):
        IrEncoder(macro, use_cache=False).graph(tiny_archs[0])
