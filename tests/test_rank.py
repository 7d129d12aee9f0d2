"""Module ranking (Eq. 5 shift, ensemble weights), fast packing, building, `abc rank/build`."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from autobuild_dsl.cli import cli
from autobuild_dsl.data.dataset import LabeledDataset, save_dataset
from autobuild_dsl.design.builder import BuildError
from autobuild_dsl.design.construct import (
    build_from_rankings,
    normalize_top_k,
    reduced_space,
    valid_combinations,
)
from autobuild_dsl.design.packing import _chain_packed, _module_rows, _pack_slow
from autobuild_dsl.design.rank import (
    ModuleBatch,
    RankError,
    RankResult,
    ensemble,
    enumerate_modules,
    global_assignments,
    hop_weights,
    module_norms,
    pack_modules,
    rank_modules,
    shift,
    standardize,
)
from autobuild_dsl.graphs.encode import GraphEncoder
from autobuild_dsl.lang import compile_file
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, load_run, node_norms, train_run
from autobuild_dsl.scorer.model import ModelConfig, ScorerModel, pack_graphs
from autobuild_dsl.space.decisions import canonicalize, index_of, sample, space_size, unit_modules

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"
MACRO = SPACES / "nas_bench_macro.abs"
UNET_HW = SPACES / "sd14_unet_hw.abs"


# --------------------------------------------------------------------------- the maths


def test_shift_is_eq5() -> None:
    # norm 7 at a hop with N(5, 2) -> z = 1 -> label group N(70, 3) -> 73.
    z = standardize(np.array([7.0, 3.0]), np.array([5.0, 5.0]), np.array([2.0, 2.0]))
    assert z.tolist() == [1.0, -1.0]
    assert shift(z, np.array([70.0, 70.0]), np.array([3.0, 3.0])).tolist() == [73.0, 67.0]
    # A constant hop (sd 0) is not divided by zero.
    assert standardize(np.array([4.0]), np.array([3.0]), np.array([0.0])).tolist() == [1.0]


def test_hop_weights_normalise_per_hop_and_fall_back_to_equal() -> None:
    srcc = np.array([[0.9, -0.2, np.nan], [0.3, -0.5, np.nan]])
    w = hop_weights(srcc)
    np.testing.assert_allclose(w[:, 0], [0.75, 0.25])
    np.testing.assert_allclose(w[:, 1], [0.5, 0.5])  # nobody beats chance: equal weights
    np.testing.assert_allclose(w[:, 2], [0.5, 0.5])
    values = np.array([[10.0, 1.0], [20.0, 2.0]])
    # Module 0 scored at hop 0 (weights .75/.25), module 1 at hop 1 (.5/.5).
    np.testing.assert_allclose(ensemble(values, w, np.array([0, 1])), [12.5, 1.5])


# --------------------------------------------------------------------------- packing


def _subset(modules, count: int, seed: int = 0):
    if modules.count <= count:
        return modules
    rng = np.random.default_rng(seed)
    return modules.subset(np.sort(rng.choice(modules.count, count, replace=False)))


@pytest.mark.parametrize(
    ("name", "values", "layers"),
    [
        ("nas_bench_macro", {}, 4),
        ("ofa_proxyless", {}, 4),
        ("ofa_mbv3", {"resolution": 192}, 4),
        ("sd14_unet_fid", {"base": 192, "attn3": True, "attn4": False}, 6),
    ],
)
def test_fast_packing_equals_encoding_each_module(name: str, values: dict, layers: int) -> None:
    # The space ofa_mbv3 lives in spaces/mbv3.abs (the file name users type).
    space = compile_file(SPACES / ("mbv3.abs" if name == "ofa_mbv3" else f"{name}.abs"))
    encoder = GraphEncoder(space)
    torch.manual_seed(0)
    vocab = [len(c.vocab) for c in encoder.categories]
    model = ScorerModel(ModelConfig(vocab_sizes=vocab, num_layers=layers)).eval()
    for unit in index_of(space).units:
        modules = _subset(enumerate_modules(space, unit), 120)
        table, rows, counts = _module_rows(encoder, modules, values)
        chain = _chain_packed(table[rows], counts)
        slow = _pack_slow(encoder, modules, values)  # encode_module, one graph each
        for field in ("x", "node_ptr", "rel_nbr", "nbr_mask"):
            assert torch.equal(getattr(chain, field), getattr(slow, field)), (unit.name, field)
        # The prefix forest gives every module's last-node norm as its own graph does.
        forest = pack_modules(encoder, modules, values)
        assert int(forest.packed.node_ptr[-1]) <= int(counts.sum())
        hops = np.minimum(counts - 1, layers)
        graphs = ModuleBatch(slow, slow.node_ptr[1:].numpy() - 1, counts)
        np.testing.assert_allclose(
            module_norms(model, forest, hops), module_norms(model, graphs, hops), rtol=1e-5
        )
        # ... and every module's pooled norm as the model's forward over its own graph does.
        own = _graph_norms(
            model,
            [
                encoder.encode_module(unit.name, modules.parts(i), values)
                for i in range(modules.count)
            ],
        )
        expected = own[np.clip(hops, 0, None), np.arange(modules.count)]
        np.testing.assert_allclose(
            module_norms(model, forest, hops, score="pooled"), expected, rtol=1e-5, atol=1e-6
        )


def test_enumeration_follows_unit_modules_and_restrictions(tmp_path: Path) -> None:
    space = compile_file(SPACES / "sd14_unet_fid.abs")
    for unit in index_of(space).units:
        modules = enumerate_modules(space, unit)
        expected = list(unit_modules(space, unit))
        assert modules.count == len(expected)
        assert [modules.parts(i) for i in range(modules.count)] == expected
    reduced = tmp_path / "r.abs"
    reduced.write_text(
        f'space r extends nas_bench_macro from "{MACRO}" {{\n'
        "  restrict s2 to {\n"
        "    [(op = identity), (op = mb_e6k5), (op = mb_e3k3)],\n"
        "    [(op = mb_e3k3), (op = mb_e3k3), (op = mb_e3k3)],\n"
        "  }\n}\n"
    )
    small = compile_file(reduced)
    unit = next(u for u in index_of(small).units if u.name == "s2")
    modules = enumerate_modules(small, unit)
    assert [modules.parts(i) for i in range(modules.count)] == list(unit_modules(small, unit))


# --------------------------------------------------------------------------- trained runs


def _macro_data() -> LabeledDataset:
    """NAS-Bench-Macro architectures labeled by a made-up metric: MBConvs count, e6k5 more."""
    space = compile_file(MACRO)
    archs = list({a.key(): a for a in sample(space, 120, seed=1)}.values())[:80]
    rng = np.random.default_rng(0)
    weight = {"identity": 0.0, "mb_e3k3": 1.0, "mb_e6k5": 1.5}
    acc = [
        sum(weight[layer["op"]] for s in a.stages.values() for layer in s.layers)
        + rng.normal(scale=0.1)
        for a in archs
    ]
    return LabeledDataset(space, archs, ["acc"], np.array([acc]).T)


@pytest.fixture(scope="module")
def macro_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rank") / "run"
    data = _macro_data()
    train_run(
        data.space,
        data,
        "acc",
        out,
        train=TrainConfig(epochs=40, batch_size=16, lr=3e-3),
        ensemble=EnsembleConfig(folds=2, seeds=2),
        space_path=str(MACRO),
    )
    return out


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tens of U-Nets of the hardware space, labeled by a made-up cost (little data)."""
    space = compile_file(UNET_HW)
    archs = list({a.key(): a for a in sample(space, 40, seed=2)}.values())
    cost = [
        sum(s.depth * (1 + s.choices.get("mult", 1)) for s in a.stages.values())
        + 3 * a.globals["attn3"]
        for a in archs
    ]
    data = LabeledDataset(space, archs, ["cost"], np.array([cost], dtype=float).T)
    out = tmp_path_factory.mktemp("rank") / "unet"
    train_run(
        space,
        data,
        "-cost",
        out,
        train=TrainConfig(epochs=5, batch_size=16),
        ensemble=EnsembleConfig(folds=1, seeds=1),
        space_path=str(UNET_HW),
    )
    return out


def _graph_norms(model: ScorerModel, graphs: list) -> np.ndarray:
    """[hops, graphs]: each graph's mean-pooled embedding norm, through the model's forward."""
    with torch.no_grad():
        out = model.eval()(pack_graphs(graphs).select())
    return out.graph_norms(model.config.norm_ord).double().numpy()


@pytest.mark.parametrize("score", ["pooled", "last"])
def test_ranking_equals_a_brute_force_eq5(macro_run: Path, score: str) -> None:
    """Every module built alone, each member's norms (its pooled graph embedding, or its last
    node), Eq. 5 with the matching training statistics, and SRCC weights, by hand."""
    run = load_run(macro_run)
    result = rank_modules(run, score=score)
    assert result.mode == "shift" and result.members == 4 and result.modules == 9 + 27 + 27
    assert result.score_kind == score
    encoder = run.encoder()
    for table in result.tables:
        unit = next(u for u in index_of(run.space).units if u.name == table.unit)
        modules = list(unit_modules(run.space, unit))
        graphs = [encoder.encode_module(unit.name, m) for m in modules]
        per_member = [node_norms(member.model, graphs) for member in run.members]
        pooled = [_graph_norms(member.model, graphs) for member in run.members]
        expected = []
        for i, module in enumerate(modules):
            nodes = graphs[i].num_nodes
            hop = min(nodes - 1, run.config.model.num_layers)
            size = sum(p.depth for p in module)
            values, weights = [], []
            for m, (member, (norms, ptr)) in enumerate(zip(run.members, per_member, strict=True)):
                if score == "last":
                    norm = float(norms[hop, int(ptr[i + 1]) - 1])
                    moments = member.record.hop_norms[hop]
                else:
                    norm = float(pooled[m][hop, i])
                    moments = member.record.graph_norms[hop]
                group = member.record.label_stats.by_unit[unit.name][size]
                z = (norm - moments.mean) / moments.sd
                values.append(z * group.sd + group.mean)
                weights.append(member.hop_weight(hop))
            w = np.array(weights) / sum(weights)
            expected.append(float(w @ np.array(values)))
        np.testing.assert_allclose(table.score, expected, rtol=1e-5, atol=1e-5)
        # The order is the brute force's order.
        assert [table.parts(int(i)) for i in table.order()][:5] == [
            modules[i] for i in np.argsort(-np.array(expected), kind="stable")[:5]
        ]


def test_trained_scores_prefer_the_better_modules(macro_run: Path) -> None:
    """The made-up label rewards MBConvs: a stage's all-MBConv modules beat all-identity."""
    result = rank_modules(load_run(macro_run))
    for table in result.tables:
        texts = table.texts()
        score = dict(zip(texts, table.score.tolist(), strict=True))
        depth = 2 if table.unit == "s1" else 3
        best = "[" + ", ".join(["(op = mb_e6k5)"] * depth) + "]"
        worst = "[" + ", ".join(["(op = identity)"] * depth) + "]"
        assert score[best] > score[worst]


def test_standardize_mode_returns_z(macro_run: Path) -> None:
    result = rank_modules(load_run(macro_run), standardize=True)
    assert result.mode == "standardize"
    for table in result.tables:
        np.testing.assert_allclose(table.score, table.z)


def test_globals_are_checked(unet_run: Path) -> None:
    run = load_run(unet_run)
    assert global_assignments(run, [{"attn3": True, "attn4": False}]) == [
        {"base": 256, "attn3": True, "attn4": False}
    ]
    with pytest.raises(RankError, match="no value for the global choice 'attn4'"):
        global_assignments(run, [{"attn3": True}])
    with pytest.raises(RankError, match="is not one of"):
        global_assignments(run, [{"attn3": 3, "attn4": True}])
    with pytest.raises(RankError, match="unknown global choice 'width'"):
        global_assignments(run, [{"width": 3}])


def test_unet_modules_that_break_a_rule_are_left_out(unet_run: Path) -> None:
    run = load_run(unet_run)
    result = rank_modules(run, globals=[{"attn3": True, "attn4": True}])
    by_unit = {t.unit: t for t in result.tables}
    # e1.mult <= 1: of e1's 8 modules (depth 1-2 x mult 1-4) only mult 1 remains, and d1
    # (whose mult is e1's) likewise.
    for unit, allowed in (("e1", 1), ("e2", 2), ("e3", 3), ("e4", 4), ("d1", 1), ("d3", 3)):
        table = by_unit[unit]
        mults = {table.parts(i)[0].choices["mult"] for i in range(len(table))}
        assert mults == set(range(1, allowed + 1)), unit
        assert table.excluded == 8 - len(table)


def test_unet_build_satisfies_the_channel_rules(unet_run: Path, tmp_path: Path) -> None:
    run = load_run(unet_run)
    space = run.space
    result = build_from_rankings(space, [rank_modules(run, standardize=True)], top_k=2, n=6)
    assert len(result.architectures) == 6
    scores = [b.score for b in result.architectures]
    assert scores == sorted(scores, reverse=True)
    for built in result.architectures:
        arch = canonicalize(space, built.arch)
        for k in (1, 2, 3):
            assert arch.stages[f"e{k}"].choices["mult"] <= k
    # One global assignment is kept by default: the one with the best architecture.
    assert len(result.selections) == 1 and any("global choices fixed" in n for n in result.notes)
    assert len({json.dumps(b.globals, sort_keys=True) for b in result.architectures}) == 1
    text = reduced_space(space, UNET_HW, tmp_path / "u.abs", result, "u_top")
    (tmp_path / "u.abs").write_text(text)
    reduced = compile_file(tmp_path / "u.abs")
    for built in result.architectures:
        canonicalize(reduced, built.arch)
    # Every combination counted as valid really is (ties e_k.mult == d_k.mult hold).
    valid = valid_combinations(space, result)
    assert valid is not None and 0 < valid <= 2**8
    # The reduced space counts exactly those (restricted modules carry tied choices), and
    # every architecture sampled from it belongs to both spaces.
    assert space_size(reduced) == valid
    for arch in sample(reduced, 40, seed=1):
        canonicalize(reduced, arch)
        canonicalize(space, arch.model_dump(mode="json") | {"space": space.name})
    everything = build_from_rankings(
        space, [rank_modules(run, standardize=True)], top_k=2, n=6, all_globals=True
    )
    assert len(everything.selections) == len(run.config.globals_seen) > 1
    assert everything.architectures[0].score == pytest.approx(result.architectures[0].score)


def test_build_reduced_space_size_is_the_product_of_ks(macro_run: Path, tmp_path: Path) -> None:
    run = load_run(macro_run)
    space = run.space
    ranking = rank_modules(run)
    ks = {"s1": 2, "s2": 4, "s3": 3}
    result = build_from_rankings(space, [ranking], top_k=ks, n=10)
    out = tmp_path / "top.abs"
    out.write_text(reduced_space(space, MACRO, out, result, "macro_top"))
    reduced = compile_file(out)
    assert space_size(reduced) == 2 * 4 * 3 == valid_combinations(space, result)
    assert len(result.architectures) == 10
    for built in result.architectures:
        canonicalize(space, built.arch)
        canonicalize(reduced, built.arch)
    # The best architecture is the best module of every unit (no rule in this space).
    best = {t.unit: float(t.score.max()) for t in ranking.tables}
    assert result.architectures[0].score == pytest.approx(sum(best.values()))
    # Without top-k the n best are the same as a search over all 6561 architectures.
    full = build_from_rankings(space, [ranking], top_k=None, n=5)
    score = {t.unit: dict(zip(t.texts(), t.score.tolist(), strict=True)) for t in ranking.tables}
    from autobuild_dsl.design.builder import module_text
    from autobuild_dsl.space.decisions import iter_architectures

    totals = sorted(
        (
            sum(
                score[u][module_text(a.stages[u].model_copy())]  # type: ignore[arg-type]
                for u in ("s1", "s2", "s3")
            )
            for a in iter_architectures(space)
        ),
        reverse=True,
    )[:5]
    np.testing.assert_allclose([b.score for b in full.architectures], totals)


def test_constrained_mode_and_merged_runs(macro_run: Path, unet_run: Path) -> None:
    run = load_run(macro_run)
    ranking = rank_modules(run)
    merged = build_from_rankings(
        run.space, [ranking, rank_modules(run, standardize=True)], top_k=3, n=3
    )
    assert any("never added" in note for note in merged.notes)
    unet = load_run(unet_run)
    constrained = build_from_rankings(
        unet.space, [rank_modules(unet, standardize=True)], top_k=2, n=2, mode="constrained"
    )
    # Every unit has modules of two sizes: a quota of one each.
    for modules in constrained.selections[0].units.values():
        assert len({m.size for m in modules}) == 2
    with pytest.raises(BuildError, match="cannot keep 10"):
        build_from_rankings(run.space, [ranking], top_k=10, n=1)
    with pytest.raises(BuildError, match="2 k value"):
        normalize_top_k(run.space, [1, 2])
    with pytest.raises(BuildError, match="no unit 's9'"):
        normalize_top_k(run.space, {"s9": 1})


def _negated(ranking: RankResult) -> RankResult:
    """The same modules under an opposed target (what a latency run is to an accuracy run)."""
    tables = [
        t.model_copy(update={"score": -np.asarray(t.score), "member_scores": None})
        for t in ranking.tables
    ]
    return ranking.model_copy(update={"tables": tables, "run": "opposed"})


def test_several_runs_keep_each_runs_top_k_and_order_by_pareto(macro_run: Path) -> None:
    run = load_run(macro_run)
    ranking = rank_modules(run)
    opposed = _negated(ranking)
    merged = build_from_rankings(run.space, [ranking, opposed], top_k=2, n=6)
    for unit, modules in merged.kept().units.items():
        table = next(t for t in ranking.tables if t.unit == unit)
        own = {repr(m.parts) for m in table.top(2)}
        other = {repr(m.parts) for m in table.bottom(2)}
        assert {repr(m.parts) for m in modules} == own | other  # the union, 4 per unit
    fronts = [b.front for b in merged.architectures]
    assert fronts == sorted(fronts) and fronts[0] == 1
    best_a = build_from_rankings(run.space, [ranking], top_k=2, n=1).architectures[0]
    best_b = build_from_rankings(run.space, [opposed], top_k=2, n=1).architectures[0]
    first_front = {b.arch.key() for b in merged.architectures if b.front == 1}
    # Each run's own best is on the first front: neither target is traded away by a sum.
    assert best_a.arch.key() in first_front and best_b.arch.key() in first_front
    for built in merged.architectures:
        assert built.run_scores is not None and len(built.run_scores) == 2


def test_ir_runs_are_refused_with_a_reason(
    macro_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = load_run(macro_run)
    monkeypatch.setattr(run.config, "encoding", "ir", raising=False)
    with pytest.raises(RankError, match="module scoring needs sequence-graph runs"):
        rank_modules(run)


# --------------------------------------------------------------------------- CLI


def _abc(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `abc ARGS` through the real entry point (errors rendered, no traceback)."""
    from autobuild_dsl.cli.common import run_guarded

    old = sys.argv
    sys.argv = ["abc", *args]
    try:
        code = run_guarded(cli)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_rank_and_build_end_to_end(
    macro_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = tmp_path / "scores.csv"
    chart = tmp_path / "importance.svg"
    code, text = _abc(
        ["rank", str(macro_run), "-o", str(scores), "--chart", str(chart), "--quiet"], capsys
    )
    assert code == 0, text
    assert "unit s2: 27 modules" in text and "feature importance" in text
    rows = list(csv.DictReader(scores.open()))
    assert len(rows) == 63 and {r["unit"] for r in rows} == {"s1", "s2", "s3"}
    assert chart.read_text().lstrip().startswith("<?xml")
    code, text = _abc(["rank", str(macro_run), "--json", "--top", "2"], capsys)
    summary = json.loads(text)
    assert summary["modules"] == 63 and len(summary["units"][0]["best"]) == 2
    assert {r["category"] for r in summary["feature_importance"]} >= {"op", "stage"}

    out = tmp_path / "built"
    code, text = _abc(["build", str(macro_run), "-k", "2,3,2", "-n", "5", "-o", str(out)], capsys)
    assert code == 0, text
    reduced = compile_file(out / "nas_bench_macro_top.abs")
    assert space_size(reduced) == 12
    lines = (out / "architectures.jsonl").read_text().splitlines()
    assert len(lines) == 5
    # Every built network is shown with its summed score and the ensemble's prediction.
    assert "summed score" in text and "predicted" in text
    space = compile_file(MACRO)
    for line in lines:
        record = json.loads(line)
        canonicalize(space, record["arch"])
        assert len(record["predicted"]) == 1 and record["predicted_sd"][0] >= 0
        assert f"{record['score']:.4g}" in text and f"{record['predicted'][0]:.4g}" in text
    code, text = _abc(["validate", str(MACRO), str(out / "architectures.jsonl")], capsys)
    assert code == 0, text
    # Refuses to overwrite; --force does.
    code, text = _abc(["build", str(macro_run), "-k", "2", "-n", "5", "-o", str(out)], capsys)
    assert code == 1 and "--force" in text and "Traceback" not in text
    code, text = _abc(
        ["build", str(macro_run), "-k", "2", "-n", "5", "-o", str(out), "--force"], capsys
    )
    assert code == 0, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rank", "{missing}"], "no such run folder"),
        (["rank", "{run}", "--globals", "resolution=224"], "unknown global choice"),
        (["rank", "{run}", "--globals", "oops"], "expected NAME=VALUE"),
        (["rank", "{run}", "--target", "acc"], "--target is for SPACE.abs DATA"),
        (["rank", "{run}", "--chart", "{tmp}/x.gif"], "chart format"),
        (["build", "{run}", "-k", "100", "-o", "{tmp}/b"], "cannot keep 100"),
        (["build", "{run}", "-k", "2,2", "-o", "{tmp}/b"], "2 k value(s) for 3 units"),
        (["build", "{run}", "-k", "s9=2", "-o", "{tmp}/b"], "no unit 's9'"),
        (["build", "{run}", "-k", "two", "-o", "{tmp}/b"], "expected K"),
        (["build", "{run}", "-k", "2", "-o", "{tmp}/b", "--space", "{unet}"], "not the space"),
        (["build", "{missing}", "-o", "{tmp}/b"], "no such run folder"),
    ],
)
def test_cli_errors_exit_nonzero_without_traceback(
    macro_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    filled = [
        a.format(run=macro_run, missing=tmp_path / "nope", tmp=tmp_path, unet=UNET_HW) for a in args
    ]
    code, text = _abc(filled, capsys)
    assert code == 1, text
    assert message in text and "Traceback" not in text


def test_cli_ir_run_prints_importance_and_rooted_subgraphs(
    macro_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from autobuild_dsl.design import ranking_workflow

    calls: list[int] = []

    def fake_top(run: object, top: int = 10) -> list[dict]:
        calls.append(top)
        return [{"rank": 1, "hop": 2, "score": 1.5, "root": "Conv 12"}]

    module = types.ModuleType("autobuild_dsl.design.ir_rank")
    module.top_rooted_subgraphs = fake_top  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "autobuild_dsl.design.ir_rank", module)
    monkeypatch.setattr(ranking_workflow, "run_encoding", lambda run: "ir")
    code, text = _abc(["rank", str(macro_run), "--top", "3"], capsys)
    assert code == 0, text
    assert "module scoring does not apply" in text and "feature importance" in text
    assert "Conv 12" in text and calls == [3]


def test_cli_rank_trains_first_on_real_nas_bench_macro(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = shared_data / "nas_bench_macro" / "nas-bench-macro_cifar10.json"
    if not source.is_file():
        pytest.skip("NAS-Bench-Macro data absent")
    from autobuild_dsl.data import import_files

    imported = import_files("nas-bench-macro", [str(source)], compile_file(MACRO))
    assert imported.dataset is not None
    data = imported.dataset.subset(np.arange(0, len(imported.dataset), 20))  # 329 rows
    path = tmp_path / "macro.jsonl"
    save_dataset(data, path)
    run_dir = tmp_path / "run"
    code, text = _abc(
        [
            "rank",
            str(MACRO),
            str(path),
            "--target",
            "mean_acc",
            "--run-dir",
            str(run_dir),
            "--epochs",
            "5",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, text
    config = json.loads((run_dir / "config.json").read_text())
    assert config["space_file"] == str(MACRO) and config["target"] == "mean_acc"
    out = tmp_path / "b"
    # The run records its .abs file: no --space needed.
    code, text = _abc(["build", str(run_dir), "-k", "3", "-n", "4", "-o", str(out)], capsys)
    assert code == 0, text
    assert space_size(compile_file(out / "nas_bench_macro_top.abs")) == 27
