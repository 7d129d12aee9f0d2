"""The `abc` language commands, run as a user runs them: exit codes, stdout, stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"


def abc(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autobuild_dsl", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def test_compile_json_prints_only_the_summary() -> None:
    result = abc("compile", str(SPACES / "mbv3.abs"), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload == {
        "space": "ofa_mbv3",
        "size": 25 * 7371**5,
        "stages": [{"name": f"s{i}", "modules": 7371} for i in range(1, 6)],
    }


def test_compile_rich_summary_names_the_size() -> None:
    result = abc("compile", str(SPACES / "nas_bench_macro.abs"))
    assert result.returncode == 0
    assert "6,561" in result.stdout and "mb_e3k3" in result.stdout


def test_broken_file_exits_2_with_located_diagnostics(tmp_path: Path) -> None:
    bad = tmp_path / "bad.abs"
    line = "  stage s { depth 2 layer conv(out = 4, kernal = 3) }"
    bad.write_text(f"space x {{\n  input(channels = 3, size = 8)\n{line}\n}}\n")
    result = abc("compile", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    column = line.index("kernal") + 1
    assert f"{bad}:3:{column}: error: 'conv' has no attribute 'kernal'" in result.stderr
    assert result.stderr.rstrip().endswith("1 error")
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    # A file that cannot be read is bad input (exit 1), not an .abs diagnostic (exit 2)
    # with a made-up position.
    result = abc("compile", str(tmp_path / "nope.abs"))
    assert result.returncode == 1
    assert "nope.abs: no such file" in result.stderr and "Traceback" not in result.stderr
    assert "holds no .abs files" in result.stderr and ":1:1" not in result.stderr


def test_sample_then_validate(tmp_path: Path) -> None:
    out = tmp_path / "archs.jsonl"
    result = abc("sample", str(SPACES / "mbv3.abs"), "-n", "5", "--seed", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and all("arch" in json.loads(line) for line in lines)
    again = abc("sample", str(SPACES / "mbv3.abs"), "-n", "5", "--seed", "3", "-o", str(out))
    assert again.returncode == 1 and "--force" in again.stderr
    ok = abc("validate", str(SPACES / "mbv3.abs"), str(out))
    assert ok.returncode == 0 and "5 architectures" in ok.stdout


def test_validate_reports_where_an_architecture_leaves_its_space(tmp_path: Path) -> None:
    arch = json.loads(abc("sample", str(SPACES / "nas_bench_macro.abs"), "-n", "1").stdout)["arch"]
    arch["stages"]["s2"]["layers"][1] = {"op": "mb_e9k9"}
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch))
    result = abc("validate", str(SPACES / "nas_bench_macro.abs"), str(path))
    assert result.returncode == 1
    assert (
        "stages.s2: layer 1: op 'mb_e9k9' is not one of identity, mb_e3k3, mb_e6k5" in result.stderr
    )


def test_fmt_check(tmp_path: Path) -> None:
    result = abc("fmt", "--check", *map(str, sorted(SPACES.glob("*.abs"))))
    assert result.returncode == 0, result.stderr
    messy = tmp_path / "m.abs"
    messy.write_text((SPACES / "nas_bench_macro.abs").read_text().replace("  input", "input"))
    assert abc("fmt", "--check", str(messy)).returncode == 1
    assert abc("fmt", "--write", str(messy)).returncode == 0
    assert abc("fmt", "--check", str(messy)).returncode == 0


@pytest.mark.parametrize("space", ["sd14_unet_hw.abs", "ofa_proxyless.abs"])
def test_compile_spaces_that_extend_or_merge(space: str) -> None:
    result = abc("compile", str(SPACES / space), "--json")
    assert result.returncode == 0, result.stderr


TIED = """space t {
  input(channels = 3, size = 32)
  choice a = {1, 2}
  choice b = {1, 2, 3}
  stage s1 {
    depth 1
    layer conv(out = 8 * a)
  }
  require b == a
}
"""


def test_validate_rejects_an_architecture_of_another_space(tmp_path: Path) -> None:
    out = tmp_path / "fid.jsonl"
    result = abc("sample", str(SPACES / "sd14_unet_fid.abs"), "-n", "1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    wrong = abc("validate", str(SPACES / "sd14_unet.abs"), str(out))
    assert wrong.returncode == 1
    assert "the architecture is of space 'sd14_unet_fid', not 'sd14_unet'" in wrong.stderr


def test_validate_checks_a_merged_global_given_under_its_alias(tmp_path: Path) -> None:
    space = tmp_path / "t.abs"
    space.write_text(TIED)
    arch = {"space": "t", "globals": {"a": 1}, "stages": {"s1": {"depth": 1, "layers": [{}]}}}
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({**arch, "globals": {"a": 1, "b": 1}}))
    bad.write_text(json.dumps({**arch, "globals": {"a": 1, "b": 2}}))
    assert abc("validate", str(space), str(good)).returncode == 0
    result = abc("validate", str(space), str(bad))
    assert result.returncode == 1
    assert "globals.b: 2 differs from a = 1, which it must equal" in result.stderr


def test_long_error_messages_are_not_wrapped(tmp_path: Path) -> None:
    folder = tmp_path / ("a_folder_with_a_long_name_" * 3)
    folder.mkdir()
    space = folder / "t.abs"
    space.write_text(TIED)
    arch = folder / "arch.json"
    arch.write_text(json.dumps({"space": "t", "globals": {"a": 1, "b": 2}, "stages": {}}))
    result = abc("validate", str(space), str(arch))
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(line) > 120 and line.startswith("error: ") and str(arch) in line


def test_error_messages_with_brackets_are_printed_verbatim(tmp_path: Path) -> None:
    arch = tmp_path / "arch.json"
    arch.write_text(
        json.dumps({"space": "nas_bench_macro", "globals": {"[bold]x": 1}, "stages": {}})
    )
    result = abc("validate", str(SPACES / "nas_bench_macro.abs"), str(arch))
    assert result.returncode == 1
    assert "globals.[bold]x: unknown choice" in result.stderr


def test_fmt_keeps_quoted_strings_in_rules(tmp_path: Path) -> None:
    path = tmp_path / "q.abs"
    path.write_text(
        "space q {\n  input(channels = 3, size = 8)\n  choice act = {relu, hswish}\n"
        "  stage s { depth 1 layer conv(out = 4, act = act) }\n"
        '  require act == "relu"\n}\n'
    )
    assert abc("fmt", "--write", str(path)).returncode == 0
    assert 'require act == "relu"' in path.read_text()
    compiled = abc("compile", str(path), "--json")
    assert compiled.returncode == 0, compiled.stderr
    assert json.loads(compiled.stdout)["size"] == 1
