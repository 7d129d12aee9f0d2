"""`read_architecture_records`: the architecture files `abc predict`, `validate` and `graph` read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autobuild_dsl.space.architecture import ArchitectureFileError, read_architecture_records

ARCH = {"space": "s", "globals": {}, "stages": {"a": {"depth": 1, "layers": [{}]}}}


def test_one_json_object_even_over_several_lines(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(ARCH, indent=2), encoding="utf-8")
    assert read_architecture_records(path) == [(str(path), ARCH)]


def test_json_lines_bare_or_under_arch_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    lines = [json.dumps({"arch": ARCH, "metrics": {"acc": 1}}), "", json.dumps(ARCH)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_architecture_records(path) == [(f"{path}:1", ARCH), (f"{path}:3", ARCH)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"arch": 1}\n{"x": \n', ":2: not valid JSON"),
        ("[1, 2]", "expected an architecture object"),
        ("\n\n", "holds no architecture"),
    ],
)
def test_bad_files_say_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ArchitectureFileError, match=message):
        read_architecture_records(path)
    with pytest.raises(ArchitectureFileError, match="no such file"):
        read_architecture_records(tmp_path / "missing.jsonl")
