"""Hostile inputs, as issue 18 found them: nothing lost, nothing silently wrong, no exit 3.

One test per reproducer of the issue, plus generated attacks per class (seeded, bounded in
size): mutated `.abs` files, corrupted import files, hostile targets, malformed
architectures, foreign files given to `--resume`. Every case must end as a clear error
(exit 1, or 2 for `.abs` diagnostics), never as an internal error (exit 3), a hang or a
changed file. Commands run in this process (`run_guarded`), as `abc` runs them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autobuild_dsl import io as abc_io
from autobuild_dsl.cli import cli
from autobuild_dsl.cli.common import run_guarded
from autobuild_dsl.compile.batch import (
    BatchError,
    MeasureSettings,
    canonical_arch,
    dataset_row,
    measure_file,
    measured_keys,
)
from autobuild_dsl.data.dataset import DatasetError, from_records, metric_value
from autobuild_dsl.data.importers import (
    GenericMapping,
    import_generic,
    import_nas_bench_macro,
    ofa_subnet_to_arch,
)
from autobuild_dsl.data.target import TargetError, parse_target
from autobuild_dsl.lang import CompileError, compile_file, compile_text
from autobuild_dsl.search.pareto import ObjectiveError, parse_objectives
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize, sample
from autobuild_dsl.space.summary import grouped, scientific

ROOT = Path(__file__).resolve().parent.parent
MACRO_FILE = ROOT / "spaces" / "nas_bench_macro.abs"
MACRO_TEXT = MACRO_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def macro():
    return compile_file(MACRO_FILE)


def abc(capsys, monkeypatch, *args: object) -> tuple[int, str, str]:
    """Run `abc ARGS` in this process; (exit code, stdout, stderr)."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["abc", *map(str, args)])
    code = run_guarded(cli)
    out, err = capsys.readouterr()
    assert code != 3, err
    assert "Traceback" not in err
    return code, out, err


def _macro_with(old: str, new: str) -> str:
    assert old in MACRO_TEXT
    return MACRO_TEXT.replace(old, new, 1)


def _arch_rows(macro, n: int = 3) -> list[dict]:
    return [a.model_dump(mode="json") for a in sample(macro, n, seed=3)]


# ============================================================ data loss, silently wrong


def test_measure_output_is_locked_against_a_second_writer(macro, tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    archs = sample(macro, 2, seed=1)
    with abc_io.output_lock(out), pytest.raises(abc_io.OutputBusy, match="another abc process"):
        measure_file(macro, archs, out, MeasureSettings(metrics=("params",)), resume=True)
    assert not out.exists()
    assert not abc_io.lock_path(out).exists()  # released and removed


def test_measure_cli_busy_output_is_exit_1(macro, tmp_path, capsys, monkeypatch) -> None:
    archs = tmp_path / "a.jsonl"
    archs.write_text("".join(json.dumps(r) + "\n" for r in _arch_rows(macro, 2)))
    out = tmp_path / "m.jsonl"
    with abc_io.output_lock(out):
        code, _, err = abc(
            capsys, monkeypatch, "measure", MACRO_FILE, archs, "--metrics", "params", "-o", out
        )
    assert code == 1 and "being written by another abc process" in err


@pytest.mark.parametrize(
    "text",
    [
        "my notes\nsecond line without newline",
        '{"a": 1}\n{"b": 2}\ntorn',
        "only one torn line",
        '{"arch": {"globals": {}, "stages": {}}, "metrics": {"params": 1}}\n{"arch": ',
    ],
)
def test_resume_never_cuts_a_foreign_file(macro, tmp_path: Path, text: str) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text(text)
    before = notes.read_bytes()
    with pytest.raises(BatchError, match="cannot resume"):
        measure_file(
            macro, sample(macro, 1), notes, MeasureSettings(metrics=("params",)), resume=True
        )
    assert notes.read_bytes() == before


def test_resume_cuts_a_torn_row_of_its_own_output(macro, tmp_path: Path) -> None:
    arch = sample(macro, 1, seed=5)[0]
    out = tmp_path / "m.jsonl"
    row = dataset_row(arch, {"params": 7})
    out.write_text(row + row[:20])
    keys, repaired = measured_keys(out, macro, MeasureSettings(metrics=("params",)))
    assert keys == {arch.key()} and repaired and out.read_text() == row


def test_resume_with_fewer_or_other_metrics_is_refused(macro, tmp_path: Path) -> None:
    from autobuild_dsl.compile.batch import measure_file

    archs = sample(macro, 2, seed=5)
    out = tmp_path / "m.jsonl"
    both = MeasureSettings(metrics=("params", "macs"), device="meta")
    measure_file(macro, archs[:1], out, both)
    before = out.read_bytes()
    # Rows may carry the input rows' own metrics too, so the sidecar says what was measured.
    with pytest.raises(BatchError, match="macs"):
        measure_file(macro, archs, out, MeasureSettings(metrics=("params",), device="meta"),
                     resume=True)  # fmt: skip
    with pytest.raises(BatchError, match="has no latency"):
        measured_keys(out, macro, MeasureSettings(metrics=("params", "macs", "latency")))
    assert out.read_bytes() == before


def test_resume_checks_the_claim_sidecar(macro, tmp_path: Path) -> None:
    arch = sample(macro, 1, seed=5)[0]
    out = tmp_path / "m.jsonl"
    out.write_text(dataset_row(arch, {"params": 7}))
    abc_io.write_claim(out, "search", metrics=["params"])
    with pytest.raises(BatchError, match="abc search"):
        measured_keys(out, macro, MeasureSettings(metrics=("params",)))


def test_search_never_overwrites_stray_records_without_force(macro, tmp_path: Path) -> None:
    from autobuild_dsl.search.evolution import SearchConfig, SearchStateError, run_search

    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "evaluated.jsonl").write_text("precious\n")
    (folder / "front.jsonl").write_text("also precious\n")
    config = SearchConfig(objectives=parse_objectives("max acc"), budget=4, init=2)

    class Runner:
        identity = "toy"

        def evaluate(self, archs, progress=None):
            return [{"acc": float(i)} for i, _ in enumerate(archs)]

    with pytest.raises(SearchStateError, match="not a checkpoint") as refused:
        run_search(macro, Runner(), config, folder)
    assert [r.parameter for r in refused.value.remedies] == ["force"]
    assert (folder / "evaluated.jsonl").read_text() == "precious\n"
    assert (folder / "front.jsonl").read_text() == "also precious\n"
    with abc_io.output_lock(folder / "search.json"), pytest.raises(abc_io.OutputBusy):
        run_search(macro, Runner(), config, folder, force=True)
    assert (folder / "evaluated.jsonl").read_text() == "precious\n"
    result = run_search(macro, Runner(), config, folder, force=True)
    assert len(result.records) == 4


def test_atomic_writes_keep_mode_and_follow_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_text("old")
    os.chmod(target, 0o664)
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    abc_io.write_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o664
    fresh = tmp_path / "fresh.txt"
    old = os.umask(0o022)
    try:
        abc_io.write_atomic(fresh, "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.txt", "link.txt", "real.txt"]


def test_fmt_write_keeps_a_symlink(tmp_path, capsys, monkeypatch) -> None:
    real = tmp_path / "real.abs"
    real.write_text(MACRO_TEXT.replace("  stem {", "  stem   {"))
    link = tmp_path / "link.abs"
    link.symlink_to(real)
    code, _, _ = abc(capsys, monkeypatch, "fmt", "-w", link)
    assert code == 0 and link.is_symlink() and "stem {" in real.read_text()


def test_workers_die_with_their_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import multiprocessing, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from autobuild_dsl.io import die_with_parent
        if __name__ == "__main__":
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=die_with_parent)
            print(pool.submit(os.getpid).result(), flush=True)
            os.kill(os.getpid(), 9)
        """
    )
    (tmp_path / "parent.py").write_text(script)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "parent.py")], capture_output=True, text=True, timeout=60
    )
    worker = int(done.stdout.split()[0])
    import time

    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(worker, 9)
    pytest.fail("the worker outlived its parent")


# ----- imports


def _csv(path: Path, header: list[str], rows: list[list[object]], tail: str = "") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
        handle.write(tail)
    return path


def _accounted(result) -> bool:
    r = result.report
    return r.read == r.imported + r.merged + len(r.rejected)


def test_import_csv_rows_of_the_wrong_length_are_rejected_and_counted(
    macro, tmp_path: Path
) -> None:
    rows = [json.dumps(a) for a in _arch_rows(macro)]
    path = _csv(
        tmp_path / "t.csv",
        ["arch", "acc"],
        [[rows[0], 1], [rows[1], 2, 99], [rows[2]]],
        tail='"' + rows[0].replace('"', '""') + '"',  # cut mid-row: no metric
    )
    mapping = GenericMapping(arch="arch", metrics={"acc": "acc"})
    result = import_generic([str(path)], macro, mapping)
    assert _accounted(result)
    assert result.report.imported == 1 and len(result.report.rejected) == 3
    assert all("cells" in r.reason for r in result.report.rejected)


def test_import_duplicate_csv_header_is_an_error(macro, tmp_path: Path) -> None:
    row = json.dumps(_arch_rows(macro)[0])
    path = _csv(tmp_path / "t.csv", ["arch", "acc", "acc"], [[row, 1, 2]])
    with pytest.raises(DatasetError, match="'acc' twice"):
        import_generic([str(path)], macro, GenericMapping(arch="arch", metrics={"acc": "acc"}))


def test_import_duplicate_json_keys_are_rejected(macro, tmp_path: Path) -> None:
    arch = json.dumps(_arch_rows(macro)[0])
    path = tmp_path / "t.jsonl"
    path.write_text(f'{{"arch": {arch}, "acc": 1, "acc": 2}}\n{{"arch": {arch}, "acc": 3}}\n')
    result = import_generic([str(path)], macro, GenericMapping(arch="arch", metrics={"acc": "acc"}))
    assert _accounted(result) and len(result.report.rejected) == 1
    assert "twice" in result.report.rejected[0].reason
    whole = tmp_path / "nbm.json"
    whole.write_text('{"00000000": {"params": 1}, "00000000": {"params": 2}}')
    with pytest.raises(DatasetError, match="twice"):
        import_nas_bench_macro([str(whole)], macro)


def test_import_metric_names_that_sanitise_alike_are_rejected(macro, tmp_path: Path) -> None:
    path = tmp_path / "nbm.json"
    path.write_text(json.dumps({"00000000": {"top-1": 1, "top_1": 2}, "11111111": {"x": 1}}))
    result = import_nas_bench_macro([str(path)], macro)
    assert _accounted(result) and len(result.report.rejected) == 1
    assert "top_1" in result.report.rejected[0].reason


def test_import_encodings(macro, tmp_path: Path) -> None:
    row = json.dumps(_arch_rows(macro)[0])
    mapping = GenericMapping(arch="arch", metrics={"acc": "acc"})
    bom = _csv(tmp_path / "bom.csv", ["arch", "acc"], [[row, 1]])
    bom.write_bytes(b"\xef\xbb\xbf" + bom.read_bytes())
    assert import_generic([str(bom)], macro, mapping).report.imported == 1
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"arch,acc\n\xe9,1\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        import_generic([str(latin)], macro, mapping)
    with pytest.raises(DatasetError, match="one character"):
        import_generic([str(bom)], macro, mapping.model_copy(update={"delimiter": ";;"}))


def test_averaging_huge_values_stays_finite(macro) -> None:
    arch = sample(macro, 1)[0]
    big = 1.7e308
    dataset, merged = from_records(
        macro, [(arch, {"x": big}, 1, None), (arch, {"x": big}, 3, None)]
    )
    assert merged == 1 and dataset.values[0, 0] == big
    assert metric_value(10**400) is None  # an integer beyond floats is no metric


def test_ofa_subnet_with_non_string_keys_is_a_clear_error(macro) -> None:
    with pytest.raises(ValueError, match="must be strings"):
        ofa_subnet_to_arch(macro, {1: 2, "ks": [3]})


# ----- language: rules are truth values


@pytest.mark.parametrize("rule", ["s1.depth - 1", '"no"', "not s2.depth", "1"])
def test_rules_must_be_truth_values(rule: str) -> None:
    text = _macro_with("  head {", f"  require {rule}\n  head {{")
    with pytest.raises(CompileError, match="not a truth value"):
        compile_text(text, "t.abs")


def test_boolean_rules_still_compile() -> None:
    text = _macro_with("  head {", "  require s1.depth >= 2 and not (s2.depth == 1)\n  head {")
    compile_text(text, "t.abs")


# ----- architectures


def test_architectures_of_another_space_or_with_unknown_fields(macro) -> None:
    raw = _arch_rows(macro)[0]
    with pytest.raises(BatchError, match="of space 'other'"):
        canonical_arch(macro, "a.json", {**raw, "space": "other"})
    stage = dict(raw["stages"]["s1"], bogus=1)
    with pytest.raises(ArchitectureError, match="unknown field 'bogus'"):
        canonicalize(macro, {**raw, "stages": {**raw["stages"], "s1": stage}})
    stage = dict(raw["stages"]["s1"], choices=[1])
    with pytest.raises(ArchitectureError, match="expected an object"):
        canonicalize(macro, {**raw, "stages": {**raw["stages"], "s1": stage}})


# ============================================================ exit 3, hangs, blow-ups


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("s1 = (64, 2)", "s1 = (64, 2147483648)", "at most 64 layers"),
        ("  stem {", "  choice w = 1..100000000\n  stem {", "100000000 values"),
        ("  stem {", "  choice w = 1.." + "1" + "0" * 40 + "\n  stem {", "too large"),
        (
            "  stem {",
            "  choice w = {" + ", ".join(map(str, range(5000))) + "}\n  stem {",
            "5000 values",
        ),
        ("out = 1280", "out = 1e309", "not a finite float"),
        ("out = 1280", "out = " + "9" * 5000, "too large"),
        ("out = 1280", "out = " + "(" * 1000 + "1280" + ")" * 1000, "nested"),
        ("out = 1280", "out = " + "- " * 10000 + "1280", "nested"),
        ("out = 1280", "out = " + " + ".join(["1"] * 1200), "nested"),
    ],
)
def test_language_limits_are_located_errors(old: str, new: str, message: str) -> None:
    with pytest.raises(CompileError) as caught:
        compile_text(_macro_with(old, new), "t.abs")
    diagnostic = caught.value.diagnostics[0]
    assert message in diagnostic.message and diagnostic.line > 1


@pytest.mark.parametrize("depth", ["1..100000", "2..2147483648", "1.." + "1" + "0" * 40])
def test_huge_depths_are_refused(depth: str) -> None:
    text = textwrap.dedent(
        f"""
        space deep {{
          input(channels = 3, size = 32)
          stage s {{
            depth {depth}
            layer conv(out = 8, kernel = 3)
          }}
        }}
        """
    )
    with pytest.raises(CompileError):
        compile_text(text, "d.abs")


def test_a_space_larger_than_floats_is_summarised(tmp_path, capsys, monkeypatch) -> None:
    stages = "\n".join(
        f"  stage s{i} {{\n    depth 64\n    layer conv(out = 8, kernel = {{1, 3, 5}})\n  }}"
        for i in range(12)
    )
    path = tmp_path / "huge.abs"
    path.write_text(f"space huge {{\n  input(channels = 3, size = 8)\n{stages}\n}}\n")
    code, out, _ = abc(capsys, monkeypatch, "compile", path)
    assert code == 0 and "e+366" in out
    assert scientific(3**768) == "2.686e+366" and grouped(3**9000) == scientific(3**9000)
    assert scientific(999999999999999999) == "1.000e+18"


def test_bom_in_every_input(macro, tmp_path, capsys, monkeypatch) -> None:
    abs_file = tmp_path / "bom.abs"
    abs_file.write_bytes(b"\xef\xbb\xbf" + MACRO_TEXT.encode())
    arch = tmp_path / "a.jsonl"
    arch.write_bytes(b"\xef\xbb\xbf" + json.dumps(_arch_rows(macro)[0]).encode() + b"\n")
    assert abc(capsys, monkeypatch, "compile", abs_file)[0] == 0
    assert abc(capsys, monkeypatch, "validate", abs_file, arch)[0] == 0


@pytest.mark.parametrize(
    "content",
    [
        "[" * 5000 + "]" * 5000,
        '{"globals": {"x": ' + "9" * 5000 + '}, "stages": {}}',
        b"\xff\xfe not utf-8",
        '{"space": "nas_bench_macro", "globals": {}, "stages": {"s1": {"depth": 2, "choices": [1], "layers": []}}}',
    ],
)
def test_hostile_architecture_files_are_exit_1(content, tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "a.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    for command in ("validate", "graph"):
        assert abc(capsys, monkeypatch, command, MACRO_FILE, path)[0] == 1


@pytest.mark.parametrize(
    "text",
    [
        "1e309 * acc",
        "(" * 1000 + "acc" + ")" * 1000,
        " + ".join(["acc"] * 1200),
        "- " * 10000 + "acc",
    ],
)
def test_hostile_targets_and_objectives(text: str) -> None:
    with pytest.raises(TargetError):
        parse_target(text)
    with pytest.raises(ObjectiveError):
        parse_objectives(f"max {text}")


def test_empty_objectives_is_exit_1(tmp_path, capsys, monkeypatch) -> None:
    code, _, err = abc(
        capsys, monkeypatch, "search", MACRO_FILE, "-e", "lookup:x.jsonl",
        "--objectives", "", "--budget", 4, "-o", tmp_path / "s",
    )  # fmt: skip
    assert code == 1 and "no objectives" in err


def test_unwritable_outputs_are_exit_1(macro, tmp_path, capsys, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = blocker / "sub"
    archs = tmp_path / "a.jsonl"
    archs.write_text("".join(json.dumps(r) + "\n" for r in _arch_rows(macro, 2)))
    for args in (
        ("sample", MACRO_FILE, "-n", 2, "-o", bad / "x.jsonl"),
        ("compile", MACRO_FILE, "--spec", bad / "x.json"),
        ("measure", MACRO_FILE, archs, "--metrics", "params", "--device", "meta", "-o", bad / "m"),
    ):
        code, _, err = abc(capsys, monkeypatch, *args)
        assert code == 1 and "error:" in err


def test_command_evaluator_with_long_words(macro) -> None:
    from autobuild_dsl.search.evaluators import make_evaluator, parse_evaluator_spec

    config = parse_evaluator_spec("command:echo " + "x" * 300 + " " + "/y" * 200)
    assert make_evaluator(config, macro).identity


def test_broken_pipe_is_a_quiet_exit_0() -> None:
    done = subprocess.run(
        f"{sys.executable} -m autobuild_dsl sample {MACRO_FILE} -n 3000 | head -1",
        shell=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # The only stderr line is sample's own summary: no traceback, no pipe error.
    assert done.stdout.count("\n") == 1
    assert [line for line in done.stderr.splitlines() if "architectures" not in line] == []

    from autobuild_dsl.cli.common import _Console

    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError

        def flush(self) -> None:
            raise BrokenPipeError

    with pytest.raises(BrokenPipeError):
        _Console(file=Closed()).print("x")


# ============================================================ contract


def test_usage_errors_are_exit_1_and_diagnostics_exit_2(tmp_path, capsys, monkeypatch) -> None:
    assert abc(capsys, monkeypatch, "compile", MACRO_FILE, "--bogus")[0] == 1
    assert abc(capsys, monkeypatch, "compile")[0] == 1
    bad = tmp_path / "bad.abs"
    bad.write_text("space x {")
    assert abc(capsys, monkeypatch, "compile", bad)[0] == 2


def test_user_text_is_not_markup(macro, tmp_path, capsys, monkeypatch) -> None:
    name = tmp_path / "n[bold]x.json:smile:"
    code, _, err = abc(capsys, monkeypatch, "validate", MACRO_FILE, name)
    assert code == 1 and "n[bold]x.json:smile:" in err.replace("\n", "")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    pool()", "    dropout(p = 2)\n    pool()", "between 0 and 1"),
        (
            "conv(out = 32, kernel = 3, act = relu)",
            "conv(out = 32, kernel = 3, groups = 7)",
            "groups",
        ),
        (
            "conv(out = 32, kernel = 3, act = relu)",
            "conv(out = 16)\n    norm(kind = gn, groups = 5)",
            "groups",
        ),
        ("input(channels = 3", "input(channels = 0", "0 channels"),
        ("    pool()", "    upsample()\n" * 60 + "    pool()", "pixels a side"),
    ],
)
def test_op_build_rules_on_every_space_of_a_file(old: str, new: str, message: str) -> None:
    broken = _macro_with(old, new).replace("space nas_bench_macro", "space second")
    with pytest.raises(CompileError) as caught:
        compile_text(MACRO_TEXT + "\n" + broken, "two.abs", "nas_bench_macro")
    assert message in caught.value.render()


# ============================================================ generated attacks


_NOISE = [
    "1e309", "9" * 40, "((((", "))", "{", "}", "..", "\ufeff", '"x"', "-", "not", "require",
    "depth 1..100000", "1..", ",", "= {1, 2}", "\x00", "é", "#", "\n", "if", "::", "[", "]",
]  # fmt: skip


def test_generated_abs_mutations_never_crash() -> None:
    rng = random.Random(18)
    lines = MACRO_TEXT.split("\n")
    for _ in range(120):
        mutated = list(lines)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(mutated))
            line = mutated[i]
            action = rng.random()
            if action < 0.4 and line:
                j = rng.randrange(len(line) + 1)
                mutated[i] = line[:j] + rng.choice(_NOISE) + line[j:]
            elif action < 0.6:
                mutated.insert(i, mutated[rng.randrange(len(mutated))])
            elif action < 0.8:
                del mutated[i]
            elif line:
                j = rng.randrange(len(line))
                mutated[i] = line[:j] + line[j + 1 :]
        try:
            compile_text("\n".join(mutated), "m.abs")
        except CompileError as error:
            assert all(d.line >= 1 for d in error.diagnostics)


def test_generated_import_corruptions_account_for_every_row(macro, tmp_path: Path) -> None:
    rng = random.Random(18)
    rows = [[json.dumps(a), rng.random(), rng.randint(1, 9)] for a in _arch_rows(macro, 6)]
    clean = _csv(tmp_path / "clean.csv", ["arch", "acc", "lat"], rows).read_bytes()
    mapping = GenericMapping(arch="arch", metrics={"acc": "acc", "lat": "lat"})
    for case in range(80):
        data = bytearray(clean)
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            at = rng.randrange(len(data))
            if kind < 0.3:
                data = data[:at]  # truncated
            elif kind < 0.6:
                data[at : at + 1] = rng.choice([b",", b'"', b"\n", b"\xff", b"1e999", b"\r"])
            else:
                data.insert(at, rng.randrange(256))
        path = tmp_path / f"c{case}.csv"
        path.write_bytes(bytes(data))
        try:
            result = import_generic([str(path)], macro, mapping)
        except DatasetError:
            continue
        assert _accounted(result)
        if result.dataset is not None:
            import numpy as np

            assert not np.isinf(result.dataset.values).any()


def test_generated_targets_never_crash() -> None:
    rng = random.Random(18)
    atoms = ["acc", "lat", "1", "2.5", "1e309", "9" * 30, "max(acc, lat)", "log(acc)", '"s"']
    ops = [" + ", " - ", " * ", " / ", " and ", " < "]
    for _ in range(150):
        parts = [rng.choice(atoms)]
        for _ in range(rng.randint(0, 300)):
            parts.append(rng.choice(ops) + rng.choice(atoms))
        text = "".join(parts)
        depth = rng.choice([0, 5, 150])
        text = "(" * depth + text + ")" * depth
        with contextlib.suppress(TargetError):
            parse_target(text)


def test_generated_architecture_mutations_never_crash(macro) -> None:
    rng = random.Random(18)
    base = _arch_rows(macro, 4)
    hostile = [None, [], {}, "x", 10**400, 1e308, -1, True, {"a": [1]}, "ÿ", [[[]]]]
    for _ in range(300):
        raw = json.loads(json.dumps(rng.choice(base)))
        target = raw
        path = []
        for _ in range(rng.randint(1, 4)):
            if isinstance(target, dict) and target:
                key = rng.choice(list(target))
            elif isinstance(target, list) and target:
                key = rng.randrange(len(target))
            else:
                break
            path.append((target, key))
            target = target[key]
        if not path:
            continue
        holder, key = path[-1]
        if rng.random() < 0.8:
            holder[key] = rng.choice(hostile)
        elif isinstance(holder, dict):
            holder[rng.choice(["bogus", "space", "depth", 7])] = rng.choice(hostile)
        with contextlib.suppress(ArchitectureError):
            canonicalize(macro, raw)


def test_generated_foreign_files_are_never_changed_by_resume(macro, tmp_path: Path) -> None:
    rng = random.Random(18)
    arch = sample(macro, 1)[0]
    good = dataset_row(arch, {"params": 1})
    settings = MeasureSettings(metrics=("params",))
    pieces = ["notes", "{", "}", '{"a": 1}', good.strip(), "\n", "\xe9", '{"arch": 1}', "[]"]
    for case in range(60):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        path = tmp_path / f"f{case}.txt"
        path.write_text(text)
        before = path.read_bytes()
        try:
            measured_keys(path, macro, settings)
        except BatchError:
            assert path.read_bytes() == before


def test_a_long_extends_chain_is_exit_1(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "s0.abs").write_text(MACRO_TEXT.replace("space nas_bench_macro", "space s0"))
    for i in range(1, 500):
        (tmp_path / f"s{i}.abs").write_text(
            f'space s{i} extends s{i - 1} from "s{i - 1}.abs" {{\n}}\n'
        )
    code, _, err = abc(capsys, monkeypatch, "compile", tmp_path / "s499.abs")
    assert code in (1, 2) and "error" in err


def test_a_lookup_table_that_cannot_be_read_is_exit_1(tmp_path, capsys, monkeypatch) -> None:
    code, _, err = abc(
        capsys, monkeypatch, "search", MACRO_FILE, "-e", f"lookup:{tmp_path}",
        "--objectives", "max acc", "--budget", 4, "-o", tmp_path / "s", "--no-cache",
    )  # fmt: skip
    assert code == 1 and "error" in err


def test_graph_refuses_another_space_architecture(macro, tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({**_arch_rows(macro)[0], "space": "other"}))
    code, _, err = abc(capsys, monkeypatch, "graph", MACRO_FILE, path)
    assert code == 1 and "of space 'other'" in err


def test_generated_cli_inputs_never_exit_3(macro, tmp_path, capsys, monkeypatch) -> None:
    rng = random.Random(18)
    arch = json.dumps(_arch_rows(macro)[0])
    contents: list[bytes] = [
        b"",
        b"\xef\xbb\xbf" + arch.encode(),
        b"\xff\xfe\x00garbage",
        b"[" * 3000,
        ('{"globals": {"x": ' + "9" * 4400 + "}}").encode(),
        arch.encode()[: len(arch) // 2],
        (arch + "\n" + arch[:-1] + ', "x": 1}').encode(),
        b"null",
        b'{"arch": 5}',
        MACRO_TEXT.replace("{", "", 1).encode(),
        MACRO_TEXT.replace("out = 1280", "out = 1e999").encode(),
    ]
    files = []
    for i, data in enumerate(contents):
        path = tmp_path / f"in{i}.{rng.choice(['json', 'jsonl', 'abs', 'csv'])}"
        path.write_bytes(data)
        files.append(path)
    for path in files:
        for args in (
            ("compile", path),
            ("fmt", path),
            ("validate", MACRO_FILE, path),
            ("graph", MACRO_FILE, path),
            ("sample", path, "-n", 2),
            ("emit", MACRO_FILE, path, "--format", "torch", "-o", tmp_path / "e.pt", "--force"),
            (
                "measure", MACRO_FILE, path, "--metrics", "params", "--device", "meta",
                "-o", tmp_path / "m.jsonl", "--force",
            ),
            (
                "data", "import", "--from", "generic", "--space", MACRO_FILE, "-o",
                tmp_path / "o.jsonl", "--arch", "arch", "--metric", "acc=acc", "--force", path,
            ),
        ):  # fmt: skip
            code, _, _ = abc(capsys, monkeypatch, *args)
            assert code in (0, 1, 2), args


def test_generated_hostile_runs_specs_and_formats(macro, tmp_path, capsys, monkeypatch) -> None:
    hostile = [
        b"",
        b"\xef\xbb\xbf{}",
        b"\xff\xfe",
        b"[" * 3000,
        b'{"00000000": {"params": ' + b"9" * 4400 + b"}}",
        b'{"a": 1, "a": 2}',
        b"Sub-network,Top-1 Acc (%)\n\"{1: 2, 'ks': [3]}\",1\n",
        b'Sub-network,MACs,MACs\n"{}",1,2\n',
    ]
    files = []
    for i, data in enumerate(hostile):
        path = tmp_path / f"h{i}.{['json', 'csv'][i % 2]}"
        path.write_bytes(data)
        files.append(path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"space": 1}')
    ofa = ROOT / "spaces" / "mbv3.abs"
    for path in files:
        for fmt, space in (("ofa", ofa), ("nas-bench-macro", MACRO_FILE)):
            args = ("data", "import", "--from", fmt, "--space", space, "-o", tmp_path / "o.jsonl")
            assert abc(capsys, monkeypatch, *args, "--force", path)[0] in (0, 1)
        for command in ("predict", "rank"):
            args = (command, run, path) if command == "predict" else (command, path.parent / "no")
            assert abc(capsys, monkeypatch, *args)[0] == 1
        plot = ("plot", path, "--x", "min lat", "--y", "max acc", "-o", tmp_path / "p.png")
        assert abc(capsys, monkeypatch, *plot)[0] in (0, 1)  # an empty file: an empty chart
    for spec, objectives in (
        (f"lookup:{files[3]}", "max acc"),
        (f"lookup:{files[1]}", "max " + "(" * 500 + "acc" + ")" * 500),
        ("command:" + "x" * 300, "max 1e309"),
        ("python:nope.module:fn", "min acc, min acc"),
        ("@" + str(files[5]), "max acc"),
        ("bogus", ","),
        ("{", "max"),
    ):
        code, _, _ = abc(
            capsys, monkeypatch, "search", MACRO_FILE, "-e", spec, "--objectives", objectives,
            "--budget", 3, "-o", tmp_path / "s", "--no-cache", "--force",
        )  # fmt: skip
        assert code == 1


def test_a_bad_saved_space_is_one_plain_line(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "sp.json"
    path.write_text('{"name": 5}')
    code, _, err = abc(capsys, monkeypatch, "compile", path)
    assert code == 1 and "name: Input should be a valid string" in err
    assert "For further information" not in err and "input_value" not in err


# ============================================================ fresh hostile run (issue 18b)
# benchmarks/attack_run.py found these; one regression test each.


def _peeled_fronts(values):
    """The reference: peel the non-dominated points off, one scan per point per front."""
    import numpy as np

    front = np.zeros(len(values), dtype=int)
    remaining = list(range(len(values)))
    number = 1
    while remaining:
        top = [
            i
            for i in remaining
            if not any(
                (values[j] >= values[i]).all() and (values[j] > values[i]).any() for j in remaining
            )
        ]
        front[top] = number
        remaining = [i for i in remaining if i not in top]
        number += 1
    return front


def test_pareto_fronts_match_peeling_and_scale_to_long_chains() -> None:
    import numpy as np

    from autobuild_dsl.design.construct import pareto_fronts

    rng = np.random.default_rng(18)
    for _ in range(40):
        values = rng.integers(0, 4, size=(int(rng.integers(0, 30)), int(rng.integers(1, 4))))
        values = values.astype(float)
        if len(values) and rng.random() < 0.3:
            values[0] = -np.inf  # a run that does not score an architecture
        got = pareto_fronts(values, chunk=int(rng.integers(1, 8)))
        assert got.tolist() == _peeled_fronts(values).tolist()
    # Each point dominates the next: as many fronts as points (a scan per front per point
    # was cubic here: `abc build RUN1 RUN2 -n 100000` ran for minutes).
    chain = np.stack([np.arange(1000.0, 0, -1), np.arange(1000.0, 0, -1)], axis=1)
    assert pareto_fronts(chain).tolist() == list(range(1, 1001))


@pytest.fixture(scope="module")
def tiny_macro_run(macro, tmp_path_factory) -> Path:
    import numpy as np

    from autobuild_dsl.data.dataset import LabeledDataset
    from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, train_run

    archs = list({a.key(): a for a in sample(macro, 60, seed=2)}.values())
    rng = np.random.default_rng(0)
    acc = [[sum(layer["op"] != "identity" for s in a.stages.values() for layer in s.layers)
            + rng.normal(scale=0.1)] for a in archs]  # fmt: skip
    out = tmp_path_factory.mktemp("attack-run") / "run"
    data = LabeledDataset(macro, archs, ["acc"], np.array(acc))
    train_run(macro, data, "acc", out, train=TrainConfig(epochs=2, batch_size=16),
              ensemble=EnsembleConfig(folds=2, seeds=1), space_path=str(MACRO_FILE))  # fmt: skip
    return out


def test_build_with_a_huge_n_checks_one_module_changes_of_the_best_only(
    tiny_macro_run: Path, monkeypatch
) -> None:
    from autobuild_dsl.design import workflow
    from autobuild_dsl.scorer import load_run

    seen: list[int] = []
    original = workflow._one_module_changes

    def spy(space, run, ranking, result, built, *rest):
        seen.append(len(built))
        return original(space, run, ranking, result, built, *rest)

    monkeypatch.setattr(workflow, "_one_module_changes", spy)
    run = load_run(tiny_macro_run)
    result, _ = workflow.build_networks([run, run], top_k=None, n=workflow.CHANGE_CHECKED + 30)
    # Only the best builds are checked against their one-module neighbours (checking all
    # 6561 of `-n 100000` took minutes).
    assert len(result.architectures) > workflow.CHANGE_CHECKED
    assert seen == [workflow.CHANGE_CHECKED]
