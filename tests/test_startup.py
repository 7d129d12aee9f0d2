"""`abc rank` and `abc build` start fast: the whole commands, run in a fresh process on a
small trained run, never import PyG (its import pulls in torch._dynamo, ~1 s) or scipy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autobuild_dsl.data import from_records
from autobuild_dsl.lang import compile_file
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, train_run
from autobuild_dsl.space.decisions import sample

HEAVY = ("torch_geometric", "torch._dynamo", "scipy")
MACRO_FILE = Path(__file__).resolve().parent.parent / "spaces" / "nas_bench_macro.abs"


@pytest.fixture(scope="module")
def macro():
    return compile_file(MACRO_FILE)


def test_rank_and_build_commands_import_no_pyg_or_scipy(macro, tmp_path: Path) -> None:
    archs = sample(macro, 24, seed=3)
    rows = [(a, {"acc": float(i % 7)}, 1, None) for i, a in enumerate(archs)]
    dataset, _ = from_records(macro, rows)
    data = tmp_path / "data.jsonl"
    data.write_text(dataset.to_jsonl())
    run = tmp_path / "run"
    train_run(
        macro,
        dataset,
        "acc",
        run,
        train=TrainConfig(epochs=1, batch_size=8, loss="mse"),
        ensemble=EnsembleConfig(folds=2, seeds=1),
        data_path=str(data),  # rank reads it back to mark unseen feature values
    )
    code = (
        "import json, sys\n"
        "from autobuild_dsl.cli import cli\n"
        "for args in (['rank', sys.argv[1]], ['build', sys.argv[1], '-k', '2', '-n', '3',"
        " '-o', sys.argv[2], '--space', sys.argv[3]]):\n"
        "    try:\n"
        "        cli.main(args, standalone_mode=False)\n"
        "    except SystemExit as stop:\n"
        "        assert not stop.code, stop.code\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(run), str(tmp_path / "built"), str(MACRO_FILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "built" / "architectures.jsonl").is_file()
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
