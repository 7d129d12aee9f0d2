"""`abc graph`: the graph of one architecture, as the scorer sees it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"


def abc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autobuild_dsl", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def _macro_arch(ops: str) -> dict:
    names = {"0": "identity", "1": "mb_e3k3", "2": "mb_e6k5", "9": "conv9"}
    stages, start = {}, 0
    for stage, depth in (("s1", 2), ("s2", 3), ("s3", 3)):
        layers = [{"op": names[c]} for c in ops[start : start + depth]]
        stages[stage] = {"depth": depth, "layers": layers}
        start += depth
    return {"space": "nas_bench_macro", "stages": stages}


def test_graph_json_has_one_node_per_layer_and_a_chain(tmp_path: Path) -> None:
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(_macro_arch("01201212")))
    result = abc("graph", str(SPACES / "nas_bench_macro.abs"), str(arch), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    ops = [node["op"] for node in payload["nodes"]]
    assert ops == [
        "identity",
        "mbconv",
        "mbconv",
        "identity",
        "mbconv",
        "mbconv",
        "mbconv",
        "mbconv",
    ]
    kernels = [node.get("kernel") for node in payload["nodes"]]
    assert kernels == [None, 3, 5, None, 3, 5, 3, 5]
    assert payload["edges"] == [[i, i + 1] for i in range(7)]
    assert [n["stage"] for n in payload["nodes"]] == [0, 0, 1, 1, 1, 2, 2, 2]


def test_graph_table_and_skips_of_a_unet(tmp_path: Path) -> None:
    sample = abc("sample", str(SPACES / "sd14_unet_fid.abs"), "-n", "2", "--seed", "4")
    assert sample.returncode == 0, sample.stderr
    archs = tmp_path / "archs.jsonl"
    archs.write_text(sample.stdout)
    result = abc("graph", str(SPACES / "sd14_unet_fid.abs"), str(archs), "--line", "2")
    assert result.returncode == 0, result.stderr
    assert "resblock" in result.stdout and "plus skips" in result.stdout


def test_graph_of_an_architecture_outside_the_space_is_a_clear_error(tmp_path: Path) -> None:
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(_macro_arch("01201219")))
    result = abc("graph", str(SPACES / "nas_bench_macro.abs"), str(arch))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(arch) in result.stderr
    out_of_range = abc("graph", str(SPACES / "nas_bench_macro.abs"), str(arch), "--line", "3")
    assert out_of_range.returncode == 1 and "out of range" in out_of_range.stderr
