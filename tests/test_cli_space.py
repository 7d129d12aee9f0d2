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
    result = abc("compile", str(SPACES / "ofa_mbv3.abs"), "--json")
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
    result = abc("compile", str(tmp_path / "nope.abs"))
    assert result.returncode == 2
    assert "cannot read the file" in result.stderr and "Traceback" not in result.stderr


def test_sample_then_validate(tmp_path: Path) -> None:
    out = tmp_path / "archs.jsonl"
    result = abc("sample", str(SPACES / "ofa_mbv3.abs"), "-n", "5", "--seed", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and all("arch" in json.loads(line) for line in lines)
    again = abc("sample", str(SPACES / "ofa_mbv3.abs"), "-n", "5", "--seed", "3", "-o", str(out))
    assert again.returncode == 1 and "--force" in again.stderr
    ok = abc("validate", str(SPACES / "ofa_mbv3.abs"), str(out))
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
