"""The AutoBuild scorer: model pieces, the ranked embedding space, training, run folders, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import spearmanr
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GATv2Conv

from autobuild_dsl.cli import cli
from autobuild_dsl.data.dataset import LabeledDataset, save_dataset
from autobuild_dsl.graphs.encode import GraphEncoder
from autobuild_dsl.lang import compile_file
from autobuild_dsl.scorer import (
    EnsembleConfig,
    FeatureScore,
    GATv2Layer,
    MemberDone,
    ModelConfig,
    RunError,
    ScorerModel,
    TrainConfig,
    default_num_layers,
    feature_importance,
    load_run,
    node_norms,
    pack_graphs,
    predict,
    run_feature_importance,
    train_member,
    train_run,
)
from autobuild_dsl.scorer.ensemble import plan_members
from autobuild_dsl.scorer.model import FeatureEmbedding, check_codes
from autobuild_dsl.scorer.train import MemberMetrics, _batches, evaluate, label_moments
from autobuild_dsl.space.decisions import sample

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"


def chain_graphs(count: int, vocab: tuple[int, ...], lo: int, hi: int, seed: int = 0) -> list[Data]:
    """Random sequence graphs with categorical features (codes 1..V, 0 = n/a)."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(count):
        n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        x = torch.stack([torch.randint(0, v + 1, (n,), generator=gen) for v in vocab], dim=1)
        edges = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
        graphs.append(Data(x=x, edge_index=edges))
    return graphs


# --------------------------------------------------------------------------- model pieces


@pytest.mark.parametrize("skips", [False, True])
def test_gatv2_layer_matches_pyg(skips: bool) -> None:
    graphs = chain_graphs(6, (3, 4), 2, 9, seed=1)
    if skips:  # a U-Net-like long edge and a node with two extra inputs
        graphs[0].edge_index = torch.cat(
            [graphs[0].edge_index, torch.tensor([[0, 0], [3, 4]])], dim=1
        )
        graphs[2].edge_index = torch.cat(
            [graphs[2].edge_index, torch.tensor([[0], [graphs[2].num_nodes - 1]])], dim=1
        )
    picked = [4, 0, 2, 5]
    batch = pack_graphs(graphs).select(torch.tensor(picked))
    reference = Batch.from_data_list([graphs[i] for i in picked])
    assert torch.equal(batch.x, reference.x)
    assert torch.equal(batch.batch, reference.batch)
    torch.manual_seed(0)
    pyg = GATv2Conv(5, 7)
    mine = GATv2Layer(5, 7)
    mine.load_state_dict(pyg.state_dict())
    h = torch.randn(reference.num_nodes, 5, dtype=torch.float64, requires_grad=True)
    pyg, mine = pyg.double(), mine.double()
    expected = pyg(h, reference.edge_index)
    got = mine(h, batch.nbr, batch.nbr_mask)
    torch.testing.assert_close(got, expected)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), h)
    (grad_got,) = torch.autograd.grad(got.square().sum(), h)
    torch.testing.assert_close(grad_got, grad_expected)


def test_feature_embedding_is_one_linear_module_per_category() -> None:
    vocab = [2, 5, 3]
    fe = FeatureEmbedding(vocab, dim=4)
    x = torch.tensor([[0, 1, 3], [2, 5, 0], [1, 0, 1]])
    out = fe(x)
    for c in range(len(vocab)):
        one_hot = torch.nn.functional.one_hot(x[:, c], fe.slots).float()
        # The per-category module: one-hot -> embedding -> linear -> scalar, then abs.
        scalar = one_hot @ fe.embed[c] @ fe.weight[c] + fe.bias[c]
        torch.testing.assert_close(out[:, c], scalar.abs())


def test_feature_importance_lists_every_value() -> None:
    class Category:
        def __init__(self, name: str, group: str, vocab: list[object]) -> None:
            self.name, self.group, self.vocab = name, group, vocab

    categories = [Category("kernel", "attr", [3, 5, 7]), Category("stage", "position", [0, 1])]
    model = ScorerModel(ModelConfig(vocab_sizes=[3, 2], num_layers=1))
    rows = feature_importance(model, categories)
    assert [(r.category, r.value) for r in rows] == [
        ("kernel", 3),
        ("kernel", 5),
        ("kernel", 7),
        ("stage", 0),
        ("stage", 1),
    ]
    x = torch.tensor([[2, 1]])  # kernel 5, stage 0
    hop0 = model.features(x)[0]
    assert hop0[0].item() == pytest.approx(rows[1].score)
    assert hop0[1].item() == pytest.approx(rows[3].score)
    assert all(isinstance(r, FeatureScore) and r.score == abs(r.raw) for r in rows)


def test_forward_pools_every_hop_and_norms_match() -> None:
    graphs = chain_graphs(5, (3, 3), 3, 6)
    packed = pack_graphs(graphs)
    model = ScorerModel(ModelConfig(vocab_sizes=[3, 3], num_layers=3)).eval()
    out = model(packed.select())
    assert out.prediction.shape == (5,)
    assert len(out.node_embeddings) == 4 and len(out.graph_embeddings) == 4
    counts = packed.counts.tolist()
    for hop, (nodes, pooled) in enumerate(
        zip(out.node_embeddings, out.graph_embeddings, strict=True)
    ):
        expected = torch.stack([part.mean(0) for part in nodes.split(counts)])
        torch.testing.assert_close(pooled, expected)
        torch.testing.assert_close(out.graph_norms(1)[hop], pooled.abs().sum(-1))
        torch.testing.assert_close(out.graph_norms(2)[hop], pooled.norm(dim=-1))
    norms, ptr = node_norms(model, graphs)
    assert norms.shape == (4, sum(counts)) and ptr.tolist()[-1] == sum(counts)


def test_codes_outside_a_vocabulary_are_refused() -> None:
    graphs = chain_graphs(3, (3, 2), 2, 4)
    graphs[1].x[0, 1] = 3  # category 1 has 2 values: codes 0..2
    with pytest.raises(ValueError, match="column 1 holds code 3"):
        check_codes(pack_graphs(graphs), [3, 2])
    with pytest.raises(ValueError, match="feature columns"):
        check_codes(pack_graphs(graphs), [3, 2, 4])


def test_batches_fold_a_trailing_single_graph() -> None:
    sizes = [b.shape[0] for b in _batches(torch.arange(9), 4)]
    assert sizes == [4, 5]
    assert [b.shape[0] for b in _batches(torch.arange(20), 128)] == [20]  # full batch


# --------------------------------------------------------------------------- the method


def _sum_target_data() -> tuple[list[Data], np.ndarray, tuple[int, ...]]:
    """Fixed-length chains whose target is the sum of hidden per-value node scores."""
    vocab = (3, 4, 5)
    graphs = chain_graphs(300, vocab, 6, 6, seed=1)
    rng = np.random.default_rng(0)
    value_scores = [rng.uniform(0, 1, v + 1) for v in vocab]
    y = np.array(
        [sum(value_scores[c][g.x[:, c].numpy()].sum() for c in range(len(vocab))) for g in graphs]
    )
    return graphs, y, vocab


def test_ranking_loss_makes_embedding_norms_rank_like_the_target() -> None:
    graphs, y, vocab = _sum_target_data()
    packed = pack_graphs(graphs)
    train, test = list(range(240)), list(range(240, 300))
    # The pure-PyTorch soft rank: the same numbers whether or not torchsort is installed.
    # Over seeds 0-9 these settings gave every hop >= 0.97 (untrained: <= 0.51; MSE only:
    # mean over hops >= 0.11 lower), so the thresholds below are far from where float noise
    # between machines could move them.
    config = TrainConfig(
        epochs=80,
        num_layers=2,
        lr=1e-2,
        batch_size=64,
        eval_every=0,
        softrank_backend="torch",
    )
    ranked = train_member(packed, y, train, test, vocab, config, seed=0)
    assert all(s is not None and s > 0.9 for s in ranked.metrics.hop_srcc), ranked.metrics
    assert ranked.metrics.pred_srcc > 0.9
    torch.manual_seed(0)
    untrained = ScorerModel(config.model_config_for(vocab))
    hop, _, _ = evaluate(untrained, packed, y, test, label_moments(y[train]))
    assert all(s is None or s < 0.9 for s in hop), hop
    # MSE alone predicts as well but does not order the embedding norms as much.
    mse = train_member(
        packed, y, train, test, vocab, config.model_copy(update={"loss": "mse"}), seed=0
    )
    assert mse.metrics.pred_srcc > 0.9
    assert np.mean(mse.metrics.hop_srcc) < np.mean(ranked.metrics.hop_srcc) - 0.05


def test_metrics_written_before_cpu_time_existed_still_load() -> None:
    old = {
        "hop_srcc": [0.9, 0.8],
        "pred_srcc": 0.9,
        "mae": 0.1,
        "n_train": 9,
        "n_test": 1,
        "epochs": 2,
        "train_seconds": 0.2,
        "seconds_per_epoch": 0.1,
    }
    assert MemberMetrics.model_validate(old).cpu_seconds_per_epoch is None


def test_training_is_reproducible_for_a_seed() -> None:
    graphs = chain_graphs(40, (3, 2), 3, 7)
    packed = pack_graphs(graphs)
    y = np.array([float(g.x.sum()) for g in graphs])
    config = TrainConfig(epochs=3, num_layers=2, batch_size=16)
    a = train_member(packed, y, range(30), range(30, 40), (3, 2), config, seed=7)
    b = train_member(packed, y, range(30), range(30, 40), (3, 2), config, seed=7)
    c = train_member(packed, y, range(30), range(30, 40), (3, 2), config, seed=8)
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    assert a.metrics.hop_srcc == b.metrics.hop_srcc
    assert not torch.equal(a.model.features.embed, c.model.features.embed)


def test_progress_reports_every_epoch() -> None:
    graphs = chain_graphs(30, (3,), 3, 5)
    y = np.arange(30, dtype=float)
    events = []
    config = TrainConfig(epochs=4, num_layers=1, batch_size=8, eval_every=2)
    train_member(
        pack_graphs(graphs),
        y,
        range(24),
        range(24, 30),
        (3,),
        config,
        seed=0,
        progress=events.append,
    )
    assert [e.epoch for e in events] == [1, 2, 3, 4]
    assert [e.test_srcc is not None for e in events] == [False, True, False, True]


def test_plan_members_folds_times_seeds() -> None:
    members = plan_members(50, folds=5, seeds=4, seed=3)
    assert len(members) == 20 and len({m.name for m in members}) == 20
    for fold in range(5):
        held = [m.test for m in members if m.fold == fold]
        assert all(h == held[0] for h in held)  # every seed of a fold sees the same rows
    all_test = sorted(i for m in members if m.seed == 3 for i in m.test)
    assert all_test == list(range(50))
    single = plan_members(50, folds=1, seeds=2, test_fraction=0.1)
    assert [len(m.test) for m in single] == [5, 5]


# --------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def macro_data() -> LabeledDataset:
    """60 NAS-Bench-Macro architectures labeled by a made-up metric (count of MBConvs)."""
    space = compile_file(str(SPACES / "nas_bench_macro.abs"))
    archs = list({a.key(): a for a in sample(space, 80, seed=0)}.values())[:60]
    rng = np.random.default_rng(0)
    acc = [
        sum(layer["op"] != "identity" for s in a.stages.values() for layer in s.layers)
        + rng.normal(scale=0.1)
        for a in archs
    ]
    lat = [2.0 + 0.1 * v for v in acc]
    return LabeledDataset(space, archs, ["acc", "lat"], np.array([acc, lat]).T)


def test_train_run_writes_a_loadable_run(macro_data: LabeledDataset, tmp_path: Path) -> None:
    out = tmp_path / "run"
    events: list[object] = []
    run = train_run(
        macro_data.space,
        macro_data,
        "acc - 0.5*lat",
        out,
        train=TrainConfig(epochs=3, batch_size=16),
        ensemble=EnsembleConfig(folds=2, seeds=2),
        progress=events.append,
    )
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "members", "metrics.json"]
    assert len(list((out / "members").glob("*.pt"))) == 4
    config = json.loads((out / "config.json").read_text())
    assert config["target"] == "acc - 0.5 * lat" or "acc" in config["target"]
    assert config["softrank_backend"] in ("torchsort", "torch")
    assert config["model"]["num_layers"] == default_num_layers(macro_data.space) == 4
    record = json.loads((out / "members" / "f0s0.json").read_text())
    assert len(record["hop_norms"]) == 5 and len(record["metrics"]["hop_srcc"]) == 5
    assert set(record["label_stats"]["by_stage"]) == {"s1", "s2", "s3"}
    assert sum(isinstance(e, MemberDone) for e in events) == 4

    loaded = load_run(out)
    assert [m.name for m in loaded.members] == ["f0s0", "f0s1", "f1s0", "f1s1"]
    graphs = loaded.encoder().encode_many(macro_data.architectures[:7])
    mean, spread = predict(loaded, graphs)
    assert mean.shape == spread.shape == (7,)
    assert np.all(spread >= 0) and np.all(np.isfinite(mean))
    importance = run_feature_importance(loaded)
    assert {r.category for r in importance} == {c.name for c in loaded.categories}
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["members"]) == 4 and metrics["mean"]["seconds_per_epoch"] > 0
    assert run.metrics is not None


def test_run_folder_is_protected_and_resumes(macro_data: LabeledDataset, tmp_path: Path) -> None:
    out = tmp_path / "run"
    kwargs = dict(
        train=TrainConfig(epochs=2, batch_size=16), ensemble=EnsembleConfig(folds=2, seeds=1)
    )
    train_run(macro_data.space, macro_data, "acc", out, **kwargs)
    with pytest.raises(RunError, match="exists and is not empty") as refused:
        train_run(macro_data.space, macro_data, "acc", out, **kwargs)
    assert [r.parameter for r in refused.value.remedies] == ["force", "resume"]
    # An interrupted run: one member never finished.
    (out / "members" / "f1s0.json").unlink()
    # ... is no ensemble to predict with (1 member: no spread), until it is finished.
    with pytest.raises(RunError, match="only 1 of 2 members finished"):
        load_run(out)
    assert len(load_run(out, partial=True).members) == 1
    weights = (out / "members" / "f0s0.pt").read_bytes()
    events: list[MemberDone] = []
    train_run(
        macro_data.space, macro_data, "acc", out, resume=True, progress=events.append, **kwargs
    )
    done = [(e.name, e.skipped) for e in events if isinstance(e, MemberDone)]
    assert done == [("f0s0", True), ("f1s0", False)]
    assert (out / "members" / "f0s0.pt").read_bytes() == weights
    with pytest.raises(RunError, match="other settings"):
        train_run(macro_data.space, macro_data, "lat", out, resume=True, **kwargs)
    (out / "notes.txt").write_text("mine")
    train_run(macro_data.space, macro_data, "lat", out, force=True, **kwargs)
    assert (out / "notes.txt").read_text() == "mine"  # --force removes only run files
    assert load_run(out).config.target == "lat"


def test_mse_baseline_weights_members_by_prediction_srcc(
    macro_data: LabeledDataset, tmp_path: Path
) -> None:
    run = train_run(
        macro_data.space,
        macro_data,
        "acc",
        tmp_path / "es",
        train=TrainConfig(epochs=2, batch_size=16, loss="mse"),
        ensemble=EnsembleConfig(folds=2, seeds=1),
    )
    assert run.config.train.loss == "mse"
    weights = [m.prediction_weight for m in run.members]
    assert weights == [max(m.record.metrics.pred_srcc or 0.0, 0.0) for m in run.members]


@pytest.mark.slow
def test_local_workers_give_the_same_members(macro_data: LabeledDataset, tmp_path: Path) -> None:
    kwargs = dict(
        train=TrainConfig(epochs=2, batch_size=16), ensemble=EnsembleConfig(folds=2, seeds=1)
    )
    serial = train_run(macro_data.space, macro_data, "acc", tmp_path / "a", **kwargs)
    parallel = train_run(macro_data.space, macro_data, "acc", tmp_path / "b", jobs=2, **kwargs)
    for a, b in zip(serial.members, parallel.members, strict=True):
        assert a.record.metrics.hop_srcc == b.record.metrics.hop_srcc
        for key, value in a.model.state_dict().items():
            assert torch.equal(value, b.model.state_dict()[key])


def test_ray_cluster_trains_members(macro_data: LabeledDataset, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    run = train_run(
        macro_data.space,
        macro_data,
        "acc",
        tmp_path / "ray",
        train=TrainConfig(epochs=2, batch_size=16),
        ensemble=EnsembleConfig(folds=2, seeds=1),
        ray_address="local",
    )
    assert len(run.members) == 2


# --------------------------------------------------------------------------- CLI


def test_cli_train_json_and_predict(macro_data: LabeledDataset, tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data.jsonl"
    save_dataset(macro_data, data)
    out = tmp_path / "run"
    space = str(SPACES / "nas_bench_macro.abs")
    args = ["train", space, str(data), "--target", "acc", "-o", str(out), "--epochs", "2"]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {
        "hop_srcc",
        "pred_srcc",
        "mae",
        "seconds_per_epoch",
        "cpu_seconds_per_epoch",
    }
    assert len(payload["hop_srcc"]) == 5
    assert payload["cpu_seconds_per_epoch"] > 0
    again = runner.invoke(cli, [*args, "--quiet"])
    assert again.exit_code == 1 and "--force" in " ".join(again.output.split())
    table = runner.invoke(cli, [*args, "--force"])
    assert table.exit_code == 0 and "held-out metrics" in table.stdout
    predicted = runner.invoke(cli, ["predict", str(out), str(data), "--json"])
    assert predicted.exit_code == 0, predicted.output
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(lines) == len(macro_data) and set(lines[0]) == {"row", "mean", "std"}
    bad = runner.invoke(
        cli, ["train", space, str(data), "--target", "nope", "-o", str(tmp_path / "x")]
    )
    assert bad.exit_code == 1 and "nope" in bad.output


def test_trained_norms_rank_the_test_split(macro_data: LabeledDataset) -> None:
    """Sanity: the held-out hop SRCCs are real Spearman correlations of embedding norms."""
    encoder = GraphEncoder(macro_data.space)
    encoder_graphs = macro_data.graphs(encoder)
    packed = pack_graphs(encoder_graphs)
    y = macro_data.metric("acc")
    config = TrainConfig(epochs=5, batch_size=16, num_layers=2)
    member = train_member(
        packed,
        y,
        range(45),
        range(45, 60),
        [len(c.vocab) for c in encoder.categories],
        config,
        seed=0,
    )
    model = member.model.eval()
    with torch.no_grad():
        norms = model(packed.select(torch.arange(45, 60))).graph_norms()
    for hop, value in enumerate(member.metrics.hop_srcc):
        expected = spearmanr(norms[hop].numpy(), y[45:60]).statistic
        assert value == pytest.approx(expected)


def test_a_constant_target_is_refused(macro_data: LabeledDataset, tmp_path: Path) -> None:
    # `acc - acc` is 0 everywhere: nothing to rank, so no run (and nothing to build from).
    with pytest.raises(RunError, match="nothing to learn"):
        train_run(macro_data.space, macro_data, "acc - acc", tmp_path / "run")
    assert not (tmp_path / "run").exists()
