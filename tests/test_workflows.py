"""The rank, build and train workflows are library calls: Python gets what `abc` gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autobuild_dsl.cli import cli
from autobuild_dsl.design.build_output import build_to_folder
from autobuild_dsl.design.ranking_workflow import rank_run, scores_csv, write_scores
from autobuild_dsl.lang import compile_file
from autobuild_dsl.scorer.run import EnsembleConfig, load_run
from autobuild_dsl.scorer.train import TrainConfig
from autobuild_dsl.scorer.workflow import TrainNote, train_from_file

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces" / "nas_bench_macro.abs"
DATA = ROOT / "examples" / "nas_bench_macro" / "sample_lat.jsonl"
TARGET = "acc - 0.5*lat"


def _abc(*args: object):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[TrainNote]]:
    """The same training twice: once through `abc train`, once through the library."""
    folder = tmp_path_factory.mktemp("workflows")
    by_cli, by_library = folder / "cli", folder / "library"
    _abc("train", SPACE, DATA, "--target", TARGET, "-o", by_cli, "--epochs", "3", "--quiet")
    notes: list[TrainNote] = []
    outcome = train_from_file(
        compile_file(SPACE),
        str(DATA),
        TARGET,
        str(by_library),
        train=TrainConfig(epochs=3),
        ensemble=EnsembleConfig(),
        notes=notes.append,
    )
    assert outcome.run.config.rows == outcome.rows_given - outcome.left_out
    return by_cli, by_library, notes


def test_train_from_file_matches_abc_train(runs) -> None:
    by_cli, by_library, _ = runs
    cli_metrics = load_run(by_cli).metrics
    library_metrics = load_run(by_library).metrics
    assert cli_metrics is not None and library_metrics is not None
    assert library_metrics.mean.pred_srcc == pytest.approx(cli_metrics.mean.pred_srcc)
    assert library_metrics.mean.hop_srcc == pytest.approx(cli_metrics.mean.hop_srcc)


def test_rank_run_matches_abc_rank(runs, tmp_path: Path) -> None:
    by_cli, _, _ = runs
    _abc("rank", by_cli, "-o", tmp_path / "cli.csv", "--quiet")
    report = rank_run(load_run(by_cli))
    assert report.result is not None
    assert scores_csv(report.result) == (tmp_path / "cli.csv").read_text()
    write_scores(tmp_path / "library.csv", report.result)
    assert (tmp_path / "library.csv").read_text() == (tmp_path / "cli.csv").read_text()
    assert report.importance and report.title.startswith("feature importance: ")


def test_build_to_folder_matches_abc_build(runs, tmp_path: Path) -> None:
    by_cli, _, _ = runs
    _abc("build", by_cli, "-k", "2", "-n", "4", "-o", tmp_path / "cli", "--quiet")
    report = build_to_folder([load_run(by_cli)], tmp_path / "library", top_k=2, n=4)
    for name in ("architectures.jsonl", "modules.csv", "nas_bench_macro_top.abs"):
        assert (tmp_path / "library" / name).read_text() == (tmp_path / "cli" / name).read_text()
    cli_summary = json.loads((tmp_path / "cli" / "build.json").read_text())
    assert report.summary["architectures"] == cli_summary["architectures"] == 4
    assert report.summary["reduced_size"] == cli_summary["reduced_size"]


def test_build_refuses_to_overwrite_and_names_the_flag(runs, tmp_path: Path) -> None:
    by_cli, _, _ = runs
    _abc("build", by_cli, "-n", "1", "-o", tmp_path, "--quiet")
    again = CliRunner().invoke(cli, ["build", str(by_cli), "-n", "1", "-o", str(tmp_path)])
    assert again.exit_code == 1
    assert "exists; pass --force to overwrite it" in " ".join(again.output.split())


def test_head_note_only_when_no_member_head_beats_chance() -> None:
    """`abc train` warns when every member's prediction head is anti-ranked on its held-out
    rows (seen on NAS-Bench-Macro with 30 epochs of 133 rows), and only then."""
    from types import SimpleNamespace

    from autobuild_dsl.scorer.workflow import head_note

    def run(*heads: float | None) -> object:
        members = {f"m{i}": SimpleNamespace(pred_srcc=h) for i, h in enumerate(heads)}
        return SimpleNamespace(metrics=SimpleNamespace(members=members))

    note = head_note(run(-0.95, -0.91, None))  # type: ignore[arg-type]
    assert note is not None and "-0.95 to -0.91" in note and "epochs" in note
    assert head_note(run(-0.95, 0.2)) is None  # type: ignore[arg-type]
    assert head_note(run(None, None)) is None  # type: ignore[arg-type]
    assert head_note(SimpleNamespace(metrics=None)) is None  # type: ignore[arg-type]
