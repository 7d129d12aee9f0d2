"""A space's identity is its meaning: comments and layout of the `.abs` file are not part of
it (`Space.digest()`, equality, hashing), so emitted files, caches and search resumes keep
accepting an edited-but-equal space and still refuse a real change."""

from __future__ import annotations

from pathlib import Path

import pytest

from autobuild_dsl.compile.emit import EmitError, emit_torch, load_emitted
from autobuild_dsl.graphs.ir import space_hash as ir_space_hash
from autobuild_dsl.lang import compile_text
from autobuild_dsl.search.evaluators import PythonConfig, make_evaluator
from autobuild_dsl.search.evolution import SearchConfig, SearchStateError, run_search
from autobuild_dsl.search.pareto import parse_objectives
from autobuild_dsl.search.runner import EvaluationRunner
from autobuild_dsl.space.decisions import sample

MACRO = Path(__file__).resolve().parent.parent / "spaces" / "nas_bench_macro.abs"
TEXT = MACRO.read_text(encoding="utf-8")


def reformatted(text: str) -> str:
    """The same space: a new comment, blank lines, other indentation and spacing."""
    text = "# edited: a comment and some blank lines\n\n\n" + text
    text = text.replace("  stem {", "\n  # the stem\n  stem    {")
    return text.replace(
        "conv(out = 1280, kernel = 1, act = relu)", "conv(out=1280,kernel=1,act=relu)"
    )


def score(arch) -> dict[str, float]:
    """A module-level evaluator for the search below."""
    layers = [layer["op"] for stage in arch.stages.values() for layer in stage.layers]
    return {"acc": float(sum(op != "identity" for op in layers)), "lat": float(len(set(layers)))}


@pytest.fixture(scope="module")
def spaces():
    original = compile_text(TEXT, str(MACRO))
    edited = compile_text(reformatted(TEXT), "/elsewhere/edited.abs")
    changed = compile_text(TEXT.replace("linear(out = 10)", "linear(out = 11)"), str(MACRO))
    return original, edited, changed


def test_positions_take_no_part_in_identity(spaces) -> None:
    original, edited, changed = spaces
    assert original.stages[0].where != edited.stages[0].where  # the positions did move
    assert original == edited and hash(original.stages[0]) == hash(edited.stages[0])
    assert original.digest() == edited.digest() and len(original.digest()) == 64
    assert ir_space_hash(original) == ir_space_hash(edited)
    # The positions are still there for diagnostics, and survive JSON.
    assert type(original).from_json(original.to_json()).stages[0].where == original.stages[0].where
    # A real change is a different space.
    assert original != changed and original.digest() != changed.digest()
    described = original.model_copy(update={"description": "another description"})
    assert described.digest() != original.digest()


def test_emitted_files_accept_an_edited_space_and_refuse_a_changed_one(
    spaces, tmp_path: Path
) -> None:
    original, edited, changed = spaces
    (arch,) = sample(original, 1, seed=3)
    path = emit_torch(tmp_path / "net.pt", original, arch)
    assert load_emitted(path, space=edited) is not None
    with pytest.raises(EmitError, match="has changed"):
        load_emitted(path, space=changed)


def test_caches_and_search_resume_accept_an_edited_space(spaces, tmp_path: Path) -> None:
    original, edited, changed = spaces
    config = PythonConfig(function=f"{__file__}:score")
    identity = make_evaluator(config, original).identity
    assert make_evaluator(config, edited).identity == identity
    assert make_evaluator(config, changed).identity != identity

    search = SearchConfig(
        objectives=parse_objectives("max acc, min lat"), budget=12, init=8, per_generation=4
    )
    out, cache = tmp_path / "search", tmp_path / "cache"
    run_search(original, EvaluationRunner(original, config, cache_dir=cache), search, out)
    runner = EvaluationRunner(edited, config, cache_dir=cache)
    resumed = run_search(edited, runner, search.model_copy(update={"budget": 16}), out)
    assert resumed.resumed_from == 12 and len(resumed.records) == 16
    assert runner.hits == 0 and runner.paid == 4  # only the new generation was evaluated
    with pytest.raises(SearchStateError, match="the space or the evaluator differ"):
        run_search(changed, EvaluationRunner(changed, config), search, out)


def test_measure_resume_and_loop_identity_accept_an_edited_space(spaces, tmp_path: Path) -> None:
    from autobuild_dsl.compile.batch import BatchError, MeasureSettings, measure_file
    from autobuild_dsl.data.dataset import LabeledDataset
    from autobuild_dsl.search.loop_state import LoopConfig, fingerprint

    original, edited, changed = spaces
    archs = sample(original, 3, seed=5)
    settings = MeasureSettings(metrics=("params",))
    out = tmp_path / "counts.jsonl"
    measure_file(original, archs[:2], out, settings)
    report = measure_file(edited, archs, out, settings, resume=True)
    assert (report.already, report.measured) == (2, 1)  # nothing measured twice
    with pytest.raises(BatchError, match="other settings"):
        measure_file(changed, archs, out, settings, resume=True)

    labels = LabeledDataset(original, archs, ["acc"], [[1.0], [2.0], [3.0]])
    config = LoopConfig(targets=["acc"], budget=8)
    assert fingerprint(original, labels, config, "e") == fingerprint(edited, labels, config, "e")
    assert fingerprint(original, labels, config, "e") != fingerprint(changed, labels, config, "e")


def test_a_training_run_resumes_with_an_edited_space(spaces, tmp_path: Path) -> None:
    from autobuild_dsl.data.dataset import LabeledDataset
    from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, train_run
    from autobuild_dsl.scorer.records import RunError

    original, edited, changed = spaces
    archs = sample(original, 24, seed=2)
    acc = [[float(sum(op != "identity" for op in _ops(a)))] for a in archs]
    kwargs = dict(
        train=TrainConfig(epochs=1, batch_size=8), ensemble=EnsembleConfig(folds=2, seeds=1)
    )
    out = tmp_path / "run"
    train_run(original, LabeledDataset(original, archs, ["acc"], acc), "acc", out, **kwargs)
    (out / "members" / "f1s0.json").unlink()  # interrupted: one member to finish
    weights = (out / "members" / "f0s0.pt").read_bytes()
    data = LabeledDataset(edited, archs, ["acc"], acc)
    train_run(edited, data, "acc", out, resume=True, **kwargs)
    assert (out / "members" / "f0s0.pt").read_bytes() == weights  # not trained again
    with pytest.raises(RunError, match="space differs"):
        data = LabeledDataset(changed, archs, ["acc"], acc)
        train_run(changed, data, "acc", out, resume=True, **kwargs)


def _ops(arch) -> list[str]:
    return [layer["op"] for stage in arch.stages.values() for layer in stage.layers]
