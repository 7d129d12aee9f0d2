"""The CLI's shared layer: library errors become messages with flag hints, exit codes by kind."""

from __future__ import annotations

import sys

import click
from click.testing import CliRunner

from autobuild_dsl.cli.common import GuardedGroup, error_text, flag_of, run_guarded
from autobuild_dsl.errors import AbcError, Remedy


class _Exists(AbcError):
    code = "exists"


def _group(error: BaseException) -> click.Group:
    @click.group(cls=GuardedGroup)
    def group() -> None:
        pass

    @group.command("go")
    def go() -> None:
        raise error

    return group


def _run(capsys, monkeypatch, error: BaseException) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["abc", "go"])
    code = run_guarded(_group(error))
    return code, capsys.readouterr().err


def test_remedy_is_rendered_as_the_flag_a_user_types(capsys, monkeypatch):
    error = _Exists("out.csv exists", remedies=(Remedy("force", "to overwrite it"),))
    code, err = _run(capsys, monkeypatch, error)
    assert code == 1
    assert "error: out.csv exists; pass --force to overwrite it" in err
    assert "Traceback" not in err


def test_several_remedies_and_values(capsys, monkeypatch):
    remedies = (
        Remedy("resume", "to continue it"),
        Remedy("space_file", "to name the space file", value="SPACE.abs"),
    )
    code, err = _run(capsys, monkeypatch, _Exists("run folder is not empty", remedies=remedies))
    assert code == 1
    assert (
        "run folder is not empty; pass --resume to continue it, or pass --space SPACE.abs "
        "to name the space file"
    ) in err


def test_flag_names_and_plain_messages():
    assert flag_of("force") == "--force"
    assert flag_of("export_jobs") == "--export-jobs"
    assert flag_of("overwrite") == "--force"
    assert flag_of("num_layers") == "--layers"
    assert error_text(AbcError("bad input")) == "bad input"


def test_an_unexpected_exception_is_an_internal_error(capsys, monkeypatch):
    monkeypatch.delenv("ABC_DEBUG", raising=False)
    code, err = _run(capsys, monkeypatch, KeyError("x"))
    assert code == 3
    assert "internal error" in err


def test_click_runner_sees_the_same_message():
    error = _Exists("out.csv exists", remedies=(Remedy("force", "to overwrite it"),))
    result = CliRunner().invoke(_group(error), ["go"])
    assert result.exit_code == 1
    assert "out.csv exists; pass --force to overwrite it" in result.output


def test_the_progress_renderer_follows_library_events():
    from autobuild_dsl.cli.progress import ProgressView, RankView, counting
    from autobuild_dsl.design.rank import RankProgress

    with counting("importing") as update:
        update(3, 10)
    with RankView() as view:
        view(RankProgress("encode", 1, 2, "s1"))
        view(RankProgress("encode", 2, 2, "s2"))
        view(RankProgress("score", 1, 1, "m0"))
        tasks = {t.description: t for t in view.bar.tasks}
    assert tasks["packing modules"].completed == 2
    assert tasks["scoring (members)"].total == 1
    with ProgressView() as view:
        step = view.phase("graphs")
        assert not view.bar.tasks  # a step that never reports shows nothing
        step(1, 4)
        assert view.bar.tasks[0].completed == 1
        step(4, 4)
        assert not view.bar.tasks[0].visible
