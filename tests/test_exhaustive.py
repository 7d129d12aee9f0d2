"""Exhaustive search: each worker enumerates its own index ranges and returns only its best
candidates; the merged top is the same as scoring everything in one place."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from autobuild_dsl.lang import compile_file, compile_text
from autobuild_dsl.space.decisions import iter_architectures, space_size
from autobuild_dsl.space.enumeration import product_from
from tests.test_search import REDUCED
from tests.test_space import CONSTRAINED

ROOT = Path(__file__).resolve().parent.parent
MACRO = ROOT / "spaces" / "nas_bench_macro.abs"


def test_product_from_is_the_product_from_a_position() -> None:
    lists = [[1, 2, 3], ["a"], [True, False], [7, 8, 9, 10]]
    everything = list(itertools.product(*lists))
    for position, expected in enumerate(everything):
        begin = [lists[i].index(v) for i, v in enumerate(expected)]
        assert list(product_from(lists, begin)) == everything[position:]
    assert list(product_from([], [])) == [()]


@pytest.mark.parametrize("which", ["macro", "constrained", "reduced", "hw"])
def test_a_range_of_the_enumeration_is_that_slice(which: str, tmp_path: Path) -> None:
    if which == "macro":  # layer choices: many architectures per scalar combination
        space = compile_file(MACRO)
    elif which == "constrained":  # rules over linked stages, absent choices
        space = compile_text(CONSTRAINED)
    elif which == "hw":  # 11 components of 1-8 joint states, one network per combination
        space = compile_file(ROOT / "spaces" / "sd14_unet_hw.abs")
    else:  # restricted units (modules listed by hand)
        (tmp_path / "r.abs").write_text(REDUCED.format(macro=MACRO))
        space = compile_file(tmp_path / "r.abs")
    everything = [a.key() for a in iter_architectures(space)]
    size = space_size(space)
    assert len(everything) == size
    step = size // 5 + 1  # ranges that tile the space, as exhaustive search cuts it
    tiled = [
        a.key() for s in range(0, size + 3, step) for a in iter_architectures(space, s, s + step)
    ]
    assert tiled == everything
    for start in range(0, size, max(1, size // 60)):  # across scalar combinations' edges
        assert [a.key() for a in iter_architectures(space, start, start + 3)] == everything[
            start : start + 3
        ]
    assert list(iter_architectures(space, 5, 5)) == []
    assert [a.key() for a in iter_architectures(space, size - 2)] == everything[-2:]


def test_ranges_deep_in_a_large_space_tile_it() -> None:
    """sd14_unet_fid (786,432; rules tie encoder and decoder): consecutive ranges anywhere
    continue each other, and the last one ends the space."""
    space = compile_file(ROOT / "spaces" / "sd14_unet_fid.abs")
    size = space_size(space)
    for start in (0, 4095, 100_003, 393_216, size - 3):
        both = [a.key() for a in iter_architectures(space, start, start + 6)]
        parts = [a.key() for a in iter_architectures(space, start, start + 2)] + [
            a.key() for a in iter_architectures(space, start + 2, start + 6)
        ]
        assert both == parts and len(set(both)) == len(both)
    assert len(list(iter_architectures(space, size - 3))) == 3


@pytest.fixture(scope="module")
def macro_pair_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny predictors (one fold, two seeds) on the toy metric of NAS-Bench-Macro."""
    from tests.test_search import train_toy_run

    out = tmp_path_factory.mktemp("run") / "run"
    return train_toy_run(compile_file(MACRO), out, seeds=2, epochs=2, count=80)


def test_workers_scoring_their_own_ranges_find_the_true_top(macro_pair_run: Path) -> None:
    """A 2-member predictor over the first 1,200 networks (in ranges of 250): one process
    and two workers (each enumerating its ranges, returning its best) give the top that
    scoring them all at once with the plain per-member forward gives (same networks, same
    values)."""
    import numpy as np

    from autobuild_dsl.scorer import load_run, pack_graphs
    from autobuild_dsl.scorer.train import predict_packed
    from autobuild_dsl.search.evaluators import PredictorConfig
    from autobuild_dsl.search.exhaustive import ExhaustiveConfig, exhaustive_search
    from autobuild_dsl.search.pareto import parse_objectives
    from autobuild_dsl.search.runner import EvaluationRunner
    from autobuild_dsl.space.equivalence import network_key

    space = compile_file(MACRO)
    archs = list(itertools.islice(iter_architectures(space), 1200))
    run = load_run(macro_pair_run)
    packed = pack_graphs(run.encoder().encode_many(archs))
    preds = np.stack(
        [
            predict_packed(m.model, packed).double().numpy() * m.record.label.sd
            + m.record.label.mean
            for m in run.members
        ]
    )
    weights = np.array([m.prediction_weight for m in run.members])
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(2, 0.5)
    mean = weights @ preds
    best: dict[str, tuple[float, str]] = {}
    for arch, value in zip(archs, mean, strict=True):
        net, key = network_key(space, arch), arch.key()
        if net not in best or (-value, key) < (-best[net][0], best[net][1]):
            best[net] = (float(value), key)
    truth = sorted(best.values(), key=lambda item: (-item[0], item[1]))[:6]
    config = ExhaustiveConfig(
        objective=parse_objectives("max acc")[0], top=6, batch_size=250, limit=1200
    )
    tops = []
    for jobs in (1, 2):
        predictor = PredictorConfig(run=str(macro_pair_run), batch_size=100)
        with EvaluationRunner(space, predictor, jobs=jobs) as runner:
            result = exhaustive_search(space, runner, config)
            assert runner.paid == result.evaluated == len(archs)
        tops.append([(r.key, r.value) for r in result.top])
    assert tops[0] == tops[1]  # the same ranges, computed alike wherever they run
    assert [k for k, _ in tops[0]] == [k for _, k in truth]
    assert [v for _, v in tops[0]] == pytest.approx([v for v, _ in truth], rel=1e-6)
