"""Architecture codes (issue 16): a space declares how data sets write its architectures
compactly, and `abc data import --from generic`, `abc validate` read them with no Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autobuild_dsl.cli import cli
from autobuild_dsl.data import GenericMapping, import_files
from autobuild_dsl.data.dataset import DatasetError
from autobuild_dsl.lang import CompileError, compile_file, compile_text
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize

SPACES = Path(__file__).resolve().parent.parent / "spaces"
FBNET = SPACES / "fbnet.abs"
TRANSNAS = SPACES / "transnas_macro.abs"


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_digit_string_data_set_imports_with_a_mapping_file(tmp_path: Path) -> None:
    table = tmp_path / "transnas.csv"
    table.write_text(
        "arch,top1\n64-41414-basic,51.2\n64-1234-basic,47.0\n64-413132-basic,50.5\n"
        "64-41414-basic,51.4\n",
        encoding="utf-8",
    )
    mapping = tmp_path / "map.json"
    mapping.write_text(
        json.dumps(
            {
                "arch": "arch",
                "arch_format": "code",
                "code": "digits",
                "code_pattern": r"^\d+-(\d+)-",
                "metrics": {"top1": "top1"},
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "data.jsonl"
    result = run(
        "data", "import", str(table), "--from", "generic", "--space", str(TRANSNAS),
        "--map", str(mapping), "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3  # the repeated 41414 is merged
    first = rows[0]["arch"]["stages"]
    assert [first[m]["depth"] for m in ("m1", "m2", "m3", "m4", "m5", "m6")] == [1] * 5 + [0]
    # 4 = downsample and widen, 1 = neither.
    assert first["m1"]["choices"] == {"down": 2, "wide": 2}
    assert first["m2"]["choices"] == {"down": 1, "wide": 1}


def test_op_index_list_data_set_imports(tmp_path: Path) -> None:
    space = compile_file(FBNET)
    records = [
        {"blocks": [i % 9 for i in range(22)], "acc": 70.1},
        {"blocks": [8] * 22, "acc": 50.0},
        {
            "blocks": "[0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3]",
            "acc": 70.1,
        },
    ]
    path = tmp_path / "fbnet.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    mapping = GenericMapping(arch="blocks", arch_format="code", metrics={"acc": "acc"})
    result = import_files("generic", [str(path)], space, mapping=mapping)
    assert not result.report.rejected
    assert result.report.imported == 2 and result.report.merged == 1
    arch = result.dataset.architectures[0]
    assert arch.stages["s1"].layers == [{"op": "mb", "kernel": 3, "expand": 1}]
    assert arch.stages["s2"].layers[0] == {"op": "mb_g2", "kernel": 3}
    assert arch.stages["s2"].layers[1] == {"op": "mb", "kernel": 3, "expand": 3}
    assert result.dataset.architectures[1].stages["s7"].layers == [{"op": "skip"}]


def test_bad_codes_are_rejected_with_row_and_reason(tmp_path: Path) -> None:
    space = compile_file(FBNET)
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps([{"b": [0] * 21, "acc": 1.0}, {"b": [9] * 22, "acc": 1.0}, {"b": 12, "acc": 1}]),
        encoding="utf-8",
    )
    mapping = GenericMapping(arch="b", arch_format="code", metrics={"acc": "acc"})
    result = import_files("generic", [str(path)], space, mapping=mapping)
    reasons = [r.reason for r in result.report.rejected]
    assert len(reasons) == 3
    assert "21 tokens for a space of 22 layers" in reasons[0]
    assert "token 1 '9' is not one of" in reasons[1]
    assert "leading zeros" in reasons[2]


def test_a_mapping_to_a_missing_code_is_an_error(tmp_path: Path) -> None:
    space = compile_file(FBNET)
    path = tmp_path / "x.json"
    path.write_text('[{"b": [8], "a": 1}]', encoding="utf-8")
    mapping = GenericMapping(arch="b", arch_format="code", code="digits", metrics={"a": "a"})
    with pytest.raises(DatasetError, match="no code 'digits'"):
        import_files("generic", [str(path)], space, mapping=mapping)


def test_validate_accepts_codes(tmp_path: Path) -> None:
    archs = tmp_path / "codes.jsonl"
    archs.write_text('{"code": "41414"}\n{"code": "1234", "scheme": "digits"}\n', encoding="utf-8")
    result = run("validate", str(TRANSNAS), str(archs))
    assert result.exit_code == 0, result.output
    archs.write_text('{"code": "111111"}\n', encoding="utf-8")
    result = run("validate", str(TRANSNAS), str(archs))
    assert result.exit_code == 1 and "breaks the rule" in result.output


def test_code_decodes_to_the_same_architecture_as_its_json() -> None:
    space = compile_file(TRANSNAS)
    arch = canonicalize(space, {"code": "2143"})
    assert arch.stages["m5"].depth == 0
    assert [arch.stages[m].choices for m in ("m1", "m2", "m3", "m4")] == [
        {"down": 1, "wide": 2},
        {"down": 1, "wide": 1},
        {"down": 2, "wide": 2},
        {"down": 2, "wide": 1},
    ]
    with pytest.raises(ArchitectureError, match="7 tokens for a space of 6 stages"):
        canonicalize(space, {"code": "1111111"})


def test_code_declarations_are_checked() -> None:
    with pytest.raises(CompileError, match="token '1' is given twice"):
        compile_text(
            "space c {\n input(channels = 3, size = 8)\n stage s1 {\n depth 1\n"
            " layer conv(out = 4, kernel = {1, 3})\n }\n"
            " code k = layers {\n 1 -> (kernel = 1)\n 1 -> (kernel = 3)\n }\n}"
        )


# ----------------------------------------------------------------------- emit's check


def _plant(path: Path, stage_prefix: str) -> str:
    """Swap one ReLU for a sigmoid inside the nodes under `stage_prefix`."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.name.startswith(stage_prefix) and node.op_type == "Relu":
            node.op_type = "Sigmoid"
            onnx.save(model, str(path))
            return node.name
    raise AssertionError(f"no ReLU under {stage_prefix}")


def test_emit_check_catches_a_wrong_operation_deep_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autobuild_dsl.compile import emit
    from autobuild_dsl.space.decisions import sample
    from autobuild_dsl.space.resolve import resolve

    space = compile_file(SPACES / "nas_bench_macro.abs")
    arch = canonicalize(space, {"code": "12121212"}) if space.codes else None
    if arch is None:
        arch = next(
            a
            for a in sample(space, 50, seed=1)
            if all(layer["op"] != "identity" for layer in a.stages["s2"].layers)
        )
    net = resolve(space, arch)
    middle = max(i for i, n in enumerate(net.nodes) if n.position.block == "s2")
    clean = emit.emit_onnx(tmp_path / "clean.onnx", space, arch)
    assert clean.path.exists()

    real_export = emit.export_onnx
    planted: list[str] = []

    def export_and_plant(module, net, path):  # type: ignore[no-untyped-def]
        result = real_export(module, net, path)
        planted.append(_plant(Path(path), f"/nodes.{middle}/"))
        return result

    monkeypatch.setattr(emit, "export_onnx", export_and_plant)
    with pytest.raises(emit.EmitError, match="at stage s2") as info:
        emit.emit_onnx(tmp_path / "bad.onnx", space, arch)
    assert planted and "nothing was written" in str(info.value)
    assert not (tmp_path / "bad.onnx").exists()
