"""IR graphs assembled from per-layer ONNX fragments (graphs/ir_fragments.py) are the
whole-network exports, node for node: ops, every feature column, layer indices, places and
edges (what the IR encoder reads). Whole exports are the slow part, so samples are small.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autobuild_dsl.data import import_files
from autobuild_dsl.graphs import ir_fragments
from autobuild_dsl.graphs.ir import IrEncoder, cache_tag, space_hash
from autobuild_dsl.graphs.ir_export import export_ir
from autobuild_dsl.graphs.ir_fragments import FragmentAssembler
from autobuild_dsl.lang import compile_file, compile_text
from autobuild_dsl.space.decisions import canonicalize, iter_architectures, sample

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"

# Residual spans (a shortcut module after the layer, with and without a projection), an
# h-swish stem and squeeze-excite: every way a fragment is wired in.
RESIDUAL = """space res_frag {
  input(channels = 3, size = 16)
  stem { conv(out = 8, kernel = 3, stride = 2, act = hswish) }
  stage s1 {
    depth 1..2
    choice c = {8, 16}
    layer { conv(out = c, kernel = 3, stride = 2) conv(out = c, kernel = 3, act = none) }
      residual(act = relu) as two
    | { conv(out = in_channels * 2, kernel = 1) conv(out = in_channels, act = none) }
      residual(shortcut = conv) as proj
    | mbconv(out = 16, kernel = 3, expand = 3, act = hswish, se = true) as mb
  }
  head { pool() linear(out = 4) }
}
"""


def _macro(macro, *stages: tuple[str, ...]):
    """A NAS-Bench-Macro architecture from its layer ops, stage by stage."""
    return canonicalize(
        macro,
        {
            "stages": {
                f"s{i}": {"depth": len(ops), "layers": [{"op": op} for op in ops]}
                for i, ops in enumerate(stages, 1)
            }
        },
    )


def _memory_only() -> FragmentAssembler:
    return FragmentAssembler(lambda space: None)


def _assert_same_as_whole(space, archs) -> FragmentAssembler:
    assembler = _memory_only()
    for arch in archs:
        assembled = assembler._assemble(space, arch)
        assert assembled is not None
        whole = export_ir(space, arch)
        for name in type(whole).model_fields:  # one field at a time: a clear failure
            assert getattr(assembled, name) == getattr(whole, name), (arch.key(), name)
    return assembler


@pytest.fixture(scope="module")
def macro():
    return compile_file(SPACES / "nas_bench_macro.abs")


def test_residual_spans_and_se_layers_match_the_whole_export() -> None:
    space = compile_text(RESIDUAL)
    archs = sample(space, 5, seed=3)
    assert {layer.get("op") for a in archs for layer in a.stages["s1"].layers} >= {"proj"}
    assembler = _assert_same_as_whole(space, archs)
    assert assembler.stats.fragments <= 4 * len(archs)  # shared contexts exported once


def test_identity_layers_match_the_whole_export(macro) -> None:
    # s1.0: a 1x1 conv (identity with a shape change); s1.1, s2.1, s3.2: no op at all.
    layers = (("identity", "identity"), ("mb_e3k3", "identity", "mb_e6k5"))
    archs = [_macro(macro, *layers, ("mb_e6k5", "mb_e3k3", "identity"))]
    archs += [a for i, a in enumerate(iter_architectures(macro)) if i % 2187 == 5]
    _assert_same_as_whole(macro, archs)


def test_dynast_networks_match_the_whole_export(shared_data: Path) -> None:
    mbv3 = compile_file(SPACES / "mbv3.abs")
    files = sorted(str(p) for p in (shared_data / "dynast_ofa_mbv3_acc").glob("*.csv"))
    if not files:
        pytest.skip("no DyNAS-T CSVs in the shared data")
    archs = import_files("ofa", files[:1], mbv3).dataset.architectures  # one file: enough
    rng = np.random.default_rng(0)
    _assert_same_as_whole(mbv3, [archs[i] for i in rng.choice(len(archs), 2, replace=False)])


def test_skip_links_and_side_inputs_are_not_assembled() -> None:
    unet = compile_file(SPACES / "sd14_unet.abs")
    assembler = _memory_only()
    assert assembler.assemble(unet, sample(unet, 1, seed=0)[0]) is None
    assert assembler.stats.fragments == 0


def test_fragments_are_cached_on_disk_and_checked_once(macro, tmp_path: Path) -> None:
    archs = [a for i, a in enumerate(iter_architectures(macro)) if i % 1500 == 11]
    first = IrEncoder(macro, cache_dir=tmp_path)
    graphs = first.graphs(archs)
    stats = first.stats
    assert stats.assembled == len(archs) and stats.exported == 0 and stats.checked == 1
    folder = tmp_path / cache_tag() / space_hash(macro) / "fragments"
    assert json.loads((folder / "check.json").read_text(encoding="utf-8"))["match"] is True
    files = [p for p in folder.glob("*.json") if p.name != "check.json"]
    assert len(files) == stats.fragments > 0
    files[0].write_text("{torn", encoding="utf-8")  # re-exported, not trusted
    # A fresh encoder without the graph cache: every graph re-assembled from disk fragments.
    for path in (tmp_path / cache_tag() / space_hash(macro)).glob("*.json"):
        path.unlink()
    second = IrEncoder(macro, cache_dir=tmp_path)
    assert second.graphs(archs) == graphs
    assert second.stats.assembled == len(archs) and second.stats.fragments == 1
    assert second.stats.checked == 0  # the space was checked already


def test_a_mismatch_turns_fragments_off_for_the_space(macro, tmp_path: Path, monkeypatch) -> None:
    archs = [a for i, a in enumerate(iter_architectures(macro)) if i % 1500 == 11][:3]
    real = ir_fragments.export_ir

    def different(space, arch):
        graph = real(space, arch)
        return graph.model_copy(update={"edges": graph.edges[:-1]})

    monkeypatch.setattr(ir_fragments, "export_ir", different)
    encoder = IrEncoder(macro, cache_dir=tmp_path)
    encoder.graphs(archs)
    assert encoder.stats.checked == 1 and encoder.stats.exported == len(archs) - 1
    folder = tmp_path / cache_tag() / space_hash(macro) / "fragments"
    assert json.loads((folder / "check.json").read_text(encoding="utf-8"))["match"] is False
    monkeypatch.undo()
    later = IrEncoder(macro, cache_dir=tmp_path)  # the recorded mismatch holds
    later.graphs(archs[:1], None)
    assert later.stats.memory + later.stats.disk == 1
    fresh = [a for i, a in enumerate(iter_architectures(macro)) if i % 1500 == 12][:1]
    later.graphs(fresh)
    assert later.stats.exported == 1 and later.stats.assembled == 0


def test_a_layer_that_fails_to_export_falls_back_to_the_whole_network(
    macro, tmp_path: Path, monkeypatch
) -> None:
    def broken(context):
        raise RuntimeError("exporter failure")

    monkeypatch.setattr(ir_fragments, "export_fragment", broken)
    arch = _macro(macro, ("mb_e3k3", "identity"), ("mb_e6k5",) * 3, ("mb_e6k5",) * 3)
    encoder = IrEncoder(macro, cache_dir=tmp_path)
    graph = encoder.graph(arch)
    assert encoder.stats.exported == 1 and encoder.stats.assembled == 0
    assert graph == export_ir(macro, arch)
