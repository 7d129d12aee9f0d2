"""`abc emit` and `abc measure`: files that reload, ONNX that matches, datasets that train,
parallel and resumable measuring that never measures an architecture twice, and user
mistakes that end in one clear line (exit 1, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from autobuild_dsl.cli import cli
from autobuild_dsl.compile import batch as batch_module
from autobuild_dsl.compile import build_module, check_onnx, load_emitted, params_and_macs
from autobuild_dsl.compile import onnx_export as onnx_export_module
from autobuild_dsl.compile.batch import BatchError, MeasureSettings, measure_file
from autobuild_dsl.compile.emit import (
    META_ARCH,
    EmitError,
    calibrate_norms,
    emit_onnx,
    onnx_metadata,
    read_emitted,
    space_hash,
)
from autobuild_dsl.data import load_dataset, parse_target
from autobuild_dsl.lang import compile_file
from autobuild_dsl.space.decisions import sample
from autobuild_dsl.space.resolve import resolve

ROOT = Path(__file__).resolve().parent.parent
MACRO = ROOT / "spaces" / "nas_bench_macro.abs"
SD14 = ROOT / "spaces" / "sd14_unet.abs"


@pytest.fixture(scope="module")
def macro():
    return compile_file(MACRO)


def _invoke(*args: object):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result, " ".join(result.output.split())  # rich wraps at the terminal width


def _clean_exit(result) -> bool:
    """Exited by itself (a message and a code), not by an uncaught exception."""
    return result.exception is None or isinstance(result.exception, SystemExit)


def _abc(*args: object) -> subprocess.CompletedProcess[str]:
    """As a user runs it: a fresh process, so a traceback would show in stderr."""
    return subprocess.run(
        [sys.executable, "-m", "autobuild_dsl", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def _write_archs(path: Path, archs, wrap: bool = True) -> Path:
    lines = [
        json.dumps({"arch": a.model_dump(mode="json")} if wrap else a.model_dump(mode="json"))
        for a in archs
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------- emit


def test_emit_torch_reloads_and_matches_the_onnx_file(macro, tmp_path: Path) -> None:
    arch = sample(macro, 1, seed=4)[0]
    arch_file = _write_archs(tmp_path / "arch.jsonl", [arch])
    pt, onnx_file = tmp_path / "net.pt", tmp_path / "net.onnx"
    result, text = _invoke("emit", MACRO, arch_file, "--format", "torch", "-o", pt)
    assert result.exit_code == 0, result.output
    assert f"wrote {pt}" in text
    result, text = _invoke("emit", MACRO, arch_file, "--format", "onnx", "-o", onnx_file)
    assert result.exit_code == 0, result.output
    diff = float(text.split("max abs difference ")[1].split()[0])
    assert 0 <= diff <= 1e-4

    header, state = read_emitted(pt)
    assert header.space == "nas_bench_macro" and header.space_hash == space_hash(macro)
    assert header.architecture() == arch and header.network == resolve(macro, arch)
    module = load_emitted(pt, space=macro)
    assert not module.training
    torch.manual_seed(0)  # the weights `emit` draws with its default --seed 0
    fresh = build_module(resolve(macro, arch))
    calibrate_norms(fresh, resolve(macro, arch), 0)  # and its batch-norm calibration
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(state[name], tensor), name
    # Both files hold the same network: ONNX Runtime on the .onnx equals the reloaded module.
    assert check_onnx(module, onnx_file, atol=1e-4, batch=3, seed=5) <= 1e-4
    assert json.loads(onnx_metadata(onnx_file)[META_ARCH]) == arch.model_dump(mode="json")


def test_load_emitted_checks_the_space(macro, tmp_path: Path) -> None:
    (arch,) = sample(macro, 1, seed=2)
    arch_file = _write_archs(tmp_path / "arch.json", [arch], wrap=False)
    pt = tmp_path / "net.pt"
    assert _invoke("emit", MACRO, arch_file, "--format", "torch", "-o", pt)[0].exit_code == 0
    changed = macro.model_copy(update={"description": "edited since"})
    with pytest.raises(EmitError, match="has changed"):
        load_emitted(pt, space=changed)
    with pytest.raises(EmitError, match="not 'ofa_mbv3'"):
        load_emitted(pt, space=compile_file(ROOT / "spaces" / "mbv3.abs"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EmitError, match="not an emitted PyTorch module"):
        load_emitted(tmp_path / "junk.pt")


def test_emit_refuses_to_overwrite_without_force(macro, tmp_path: Path) -> None:
    arch_file = _write_archs(tmp_path / "a.jsonl", sample(macro, 1, seed=1))
    out = tmp_path / "net.pt"
    out.write_text("keep me")
    result, text = _invoke("emit", MACRO, arch_file, "--format", "torch", "-o", out)
    assert result.exit_code == 1 and "--force" in text
    assert out.read_text() == "keep me"
    result, _ = _invoke("emit", MACRO, arch_file, "--format", "torch", "-o", out, "--force")
    assert result.exit_code == 0 and load_emitted(out) is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_emit_takes_a_line_of_a_dataset_file(macro, tmp_path: Path) -> None:
    archs = sample(macro, 3, seed=8)
    rows = [{"arch": a.model_dump(mode="json"), "metrics": {"acc": 0.5}} for a in archs]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "second.pt"
    result, text = _invoke("emit", MACRO, data, "--format", "torch", "-o", out)
    assert result.exit_code == 1 and "holds 3 architectures; choose one with --line N" in text
    result, _ = _invoke("emit", MACRO, data, "--format", "torch", "-o", out, "--line", "2")
    assert result.exit_code == 0, result.output
    assert read_emitted(out)[0].architecture() == archs[1]


def test_emit_onnx_over_the_protobuf_limit_uses_external_data(
    macro, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (arch,) = sample(macro, 1, seed=6)
    # Pretend 2 GB is 1 MB: the real path for the full-size SD U-Net (3.4 GB of weights).
    monkeypatch.setattr(onnx_export_module, "PROTOBUF_LIMIT", 1 << 20)
    out = tmp_path / "big.onnx"
    done = emit_onnx(out, macro, arch)
    assert done.data_path == tmp_path / "big.onnx.data" and done.max_abs_diff <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert out.stat().st_size < 1 << 20 < done.data_path.stat().st_size
    torch.manual_seed(0)
    module = build_module(resolve(macro, arch))
    calibrate_norms(module, resolve(macro, arch), 0)
    assert check_onnx(module, out, atol=1e-4, batch=2) <= 1e-4
    with pytest.raises(EmitError, match="exists"):
        emit_onnx(out, macro, arch)
    # Overwritten by a model under the limit: the stale .data file goes too.
    monkeypatch.setattr(onnx_export_module, "PROTOBUF_LIMIT", 2**31 - 1)
    again = emit_onnx(out, macro, arch, overwrite=True)
    assert again.data_path is None and sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]


def test_emit_onnx_writes_nothing_when_onnx_runtime_disagrees(
    macro, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autobuild_dsl.compile import emit as emit_module

    monkeypatch.setattr(emit_module, "check_onnx", lambda *args, **kwargs: 0.5)
    (arch,) = sample(macro, 1, seed=6)
    with pytest.raises(EmitError, match=r"differs from PyTorch by 0.5 > 0.0001"):
        emit_onnx(tmp_path / "net.onnx", macro, arch)
    assert list(tmp_path.iterdir()) == []  # not even the staging folder
    assert emit_onnx(tmp_path / "net.onnx", macro, arch, atol=None).max_abs_diff == 0.5


def test_emit_of_an_architecture_outside_the_space_names_the_field(macro, tmp_path: Path) -> None:
    arch = {"arch": sample(macro, 1, seed=3)[0].model_dump(mode="json")}
    arch["arch"]["stages"]["s2"]["layers"][1] = {"op": "mb_e9k9"}
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch))
    out = tmp_path / "net.onnx"
    result = _abc("emit", MACRO, path, "--format", "onnx", "-o", out)  # as a user runs it
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert message.startswith(f"error: {path}: stages.s2: layer 1")
    assert "mb_e9k9" in message and "Traceback" not in result.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------ measure


def test_measure_writes_a_dataset_that_trains(macro, tmp_path: Path) -> None:
    archs = sample(macro, 3, seed=9)
    source = _write_archs(tmp_path / "archs.jsonl", [*archs, archs[0]])  # one repeated
    out = tmp_path / "data.jsonl"
    result, text = _invoke(
        "measure", MACRO, source, "-o", out, "--metrics", "params,macs,latency",
        "--warmup", "1", "--repeats", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"measured 3 architectures into {out}, 1 repeated in the input" in text
    data = load_dataset(out, macro)
    assert data.metric_names == [
        "params", "macs", "latency", "latency_rel", "latency_anchor", "latency_spread",
        "latency_ci", "latency_runs", "latency_wall", "latency_threads", "latency_warmup",
        "latency_repeats",
    ]  # fmt: skip
    # Every row's anchor is the same network, so the relative latency is latency / anchor.
    assert (data.metric("latency_anchor") > 0).all() and (data.metric("latency_rel") > 0).all()
    assert sorted(a.key() for a in data.architectures) == sorted(a.key() for a in archs)
    for i, arch in enumerate(data.architectures):
        assert (data.metric("params")[i], data.metric("macs")[i]) == params_and_macs(
            resolve(macro, arch)
        )
    assert (data.metric("latency") > 0).all()
    assert set(data.metric("latency_threads")) == {1.0}
    assert set(data.metric("latency_repeats")) == {3.0}
    assert parse_target("-latency - 1e-9 * macs").evaluate(data).shape == (3,)


def test_measure_counts_the_full_sd14_unet_on_the_meta_device(tmp_path: Path) -> None:
    space = compile_file(SD14, "sd14_unet_inpaint")
    source = _write_archs(tmp_path / "sd.jsonl", sample(space, 1))
    out = tmp_path / "sd_counts.jsonl"
    args = ["measure", SD14, source, "--space", "sd14_unet_inpaint", "-o", out]
    result, _ = _invoke(*args, "--metrics", "params", "--device", "meta")
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    assert row["metrics"] == {"params": 859_535_364} and row["count"] == 1


def test_measure_resumes_without_measuring_anything_twice(
    macro, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archs = sample(macro, 6, seed=12)
    settings = MeasureSettings(metrics=("params", "macs"))
    calls: list[str] = []
    real = batch_module.prepare

    def counting(net, *args, **kwargs):
        calls.append(net.model_dump_json())
        return real(net, *args, **kwargs)

    monkeypatch.setattr(batch_module, "prepare", counting)
    out = tmp_path / "data.jsonl"

    def stop_after_three(event) -> None:
        if event.done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_file(macro, archs[:5], out, settings, progress=stop_after_three)
    assert len(out.read_text().splitlines()) == 3  # every finished row is on disk
    # A hard kill in the middle of a fourth line leaves it torn.
    with out.open("a") as handle:
        handle.write('{"arch": {"space": "nas_bench_macro", "glo')
    with pytest.raises(BatchError, match="exists") as refused:
        measure_file(macro, archs, out, settings)
    assert [r.parameter for r in refused.value.remedies] == ["resume", "force"]
    report = measure_file(macro, archs, out, settings, resume=True)
    assert report.repaired and report.already == 3 and report.measured == 3
    assert len(calls) == 6  # 3 before the interruption, 3 on resume: none twice
    assert len({*calls}) == 6
    lines = out.read_text().splitlines()
    keys = [json.dumps(json.loads(line)["arch"], sort_keys=True) for line in lines]
    assert len(keys) == len(set(keys)) == 6
    assert len(load_dataset(out, macro)) == 6
    # Nothing left to do: nothing measured, the file unchanged.
    before = out.read_text()
    assert measure_file(macro, archs, out, settings, resume=True).measured == 0
    assert out.read_text() == before and len(calls) == 6


def test_measure_with_two_jobs_resumes_a_partial_file(macro, tmp_path: Path) -> None:
    archs = sample(macro, 6, seed=21)
    out = tmp_path / "data.jsonl"
    common = ["--metrics", "params,macs", "--device", "meta", "-o", out]
    first = _write_archs(tmp_path / "first.jsonl", archs[:2])
    result, _ = _invoke("measure", MACRO, first, *common)
    assert result.exit_code == 0, result.output
    everything = _write_archs(tmp_path / "all.jsonl", archs)
    result, text = _invoke("measure", MACRO, everything, *common, "--jobs", "2")
    assert result.exit_code == 1 and "--resume" in text
    result, text = _invoke("measure", MACRO, everything, *common, "--jobs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert "measured 4 architectures" in text and "2 already there" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    keys = [json.dumps(r["arch"], sort_keys=True) for r in rows]
    assert len(keys) == len(set(keys)) == 6  # each measured once, by one worker or the other
    data = load_dataset(out, macro)
    for i, arch in enumerate(data.architectures):
        want = params_and_macs(resolve(macro, arch))
        assert (data.metric("params")[i], data.metric("macs")[i]) == want


def test_resume_refuses_rows_measured_differently(macro, tmp_path: Path) -> None:
    archs = sample(macro, 2, seed=1)
    out = tmp_path / "data.jsonl"
    quick = MeasureSettings(metrics=("params", "latency"), warmup=0, repeats=1)
    measure_file(macro, archs[:1], out, quick)
    with pytest.raises(BatchError, match="latency_threads = 1, this run uses 2"):
        measure_file(macro, archs, out, quick.model_copy(update={"threads": 2}), resume=True)
    with pytest.raises(BatchError, match="has no macs"):
        measure_file(macro, archs, out, MeasureSettings(metrics=("macs",)), resume=True)


# ------------------------------------------------------------------------- user errors


def test_measure_user_errors_are_one_clear_line(macro, tmp_path: Path) -> None:
    archs = _write_archs(tmp_path / "archs.jsonl", sample(macro, 2))
    out = tmp_path / "out.jsonl"
    unknown, text = _invoke("measure", MACRO, archs, "-o", out, "--metrics", "params,energy")
    assert unknown.exit_code == 1 and _clean_exit(unknown)
    assert "unknown metric(s) energy; known: params, macs, latency" in text
    meta, text = _invoke("measure", MACRO, archs, "-o", out, "--device", "meta")
    assert meta.exit_code == 1 and _clean_exit(meta)
    assert "latency needs a real network" in text
    both, text = _invoke("measure", MACRO, archs, "-o", out, "--resume", "--force")
    assert both.exit_code == 1 and "contradict" in text
    bad = tmp_path / "bad.jsonl"
    lines = archs.read_text().splitlines()
    broken = json.loads(lines[1])
    del broken["arch"]["stages"]["s3"]
    bad.write_text(f"{lines[0]}\n{json.dumps(broken)}\nnot json\n")
    result, text = _invoke("measure", MACRO, bad, "-o", out, "--metrics", "params")
    assert result.exit_code == 1 and _clean_exit(result)
    assert f"{bad}:3: not valid JSON" in text
    bad.write_text(f"{lines[0]}\n{json.dumps(broken)}\n")
    result, text = _invoke("measure", MACRO, bad, "-o", out, "--metrics", "params")
    assert result.exit_code == 1 and _clean_exit(result)
    assert f"1 architecture outside space nas_bench_macro: {bad}:2: stages.s3: missing" in text
    assert not out.exists()


def test_measure_on_ray_without_ray_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    archs = _write_archs(tmp_path / "archs.jsonl", sample(compile_file(MACRO), 1))
    result, text = _invoke(
        "measure", MACRO, archs, "-o", tmp_path / "o.jsonl", "--metrics", "params",
        "--ray", "auto",
    )  # fmt: skip
    assert result.exit_code == 1 and _clean_exit(result)
    assert "pip install 'autobuild-dsl[ray]'" in text
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_measure_on_a_local_ray_cluster(macro, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    archs = sample(macro, 4, seed=30)
    source = _write_archs(tmp_path / "archs.jsonl", archs)
    out = tmp_path / "data.jsonl"
    args = ["measure", MACRO, source, "-o", out, "--metrics", "params,macs", "--device", "meta"]
    result, text = _invoke(*args, "--ray", "local", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "measured 4 architectures" in text
    data = load_dataset(out, macro)
    for i, arch in enumerate(data.architectures):
        want = params_and_macs(resolve(macro, arch))
        assert (data.metric("params")[i], data.metric("macs")[i]) == want
