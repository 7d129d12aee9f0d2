"""The fast paths give the same numbers as the plain ones, and startup stays light."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GATv2Conv

from autobuild_dsl.scorer import GATv2Layer, ModelConfig, ScorerModel, pack_graphs
from autobuild_dsl.scorer.train import embed, predict_packed, spearman, thread_note

ROOT = Path(__file__).resolve().parent.parent


def dag_graphs(count: int, seed: int, extra_edges: int) -> list[Data]:
    """Chains of 1-12 nodes plus random forward edges (in-degree up to ~4)."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(count):
        n = int(torch.randint(1, 13, (1,), generator=gen))
        edges = {(i, i + 1) for i in range(n - 1)}
        for _ in range(extra_edges if n > 2 else 0):
            a, b = sorted(torch.randperm(n, generator=gen)[:2].tolist())
            edges.add((a, b))
        index = torch.tensor(sorted(edges), dtype=torch.long).reshape(-1, 2).T
        x = torch.stack([torch.randint(0, v + 1, (n,), generator=gen) for v in (3, 4)], dim=1)
        graphs.append(Data(x=x, edge_index=index, num_nodes=n))
    return graphs


@pytest.mark.parametrize("extra_edges", [0, 1, 4])
def test_gatv2_matches_pyg_with_any_in_degree(extra_edges: int) -> None:
    graphs = dag_graphs(9, seed=extra_edges, extra_edges=extra_edges)
    packed = pack_graphs(graphs)
    if extra_edges == 4:
        assert packed.rel_nbr.shape[0] >= 4  # some node really has 3+ in-edges
    batch = packed.select(None)
    reference = Batch.from_data_list(graphs)
    torch.manual_seed(0)
    pyg = GATv2Conv(5, 6).double()
    mine = GATv2Layer(5, 6).double()
    mine.load_state_dict(pyg.state_dict())
    h = torch.randn(reference.num_nodes, 5, dtype=torch.float64, requires_grad=True)
    expected = pyg(h, reference.edge_index)
    got = mine(h, batch.nbr, batch.nbr_mask)
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(got)
    grads_expected = torch.autograd.grad((expected * weights).sum(), [h, *pyg.parameters()])
    grads_got = torch.autograd.grad((got * weights).sum(), [h, *mine.parameters()])
    for a, b in zip(grads_got, grads_expected, strict=True):
        torch.testing.assert_close(a.reshape(b.shape), b)


@pytest.mark.parametrize("extra_edges", [0, 2])
def test_prediction_only_path_equals_the_full_forward(extra_edges: int) -> None:
    graphs = dag_graphs(40, seed=3, extra_edges=extra_edges)
    packed = pack_graphs(graphs)
    torch.manual_seed(1)
    model = ScorerModel(ModelConfig(vocab_sizes=[3, 4], num_layers=3))
    full, norms, nodes = embed(model, packed)
    assert len(nodes) == model.num_hops
    _, norms_only, no_nodes = embed(model, packed, with_node_norms=False)
    assert no_nodes == []
    torch.testing.assert_close(norms_only, norms)
    for chunk in (None, 1, 7, 100):  # chunks that cut graphs at every boundary
        torch.testing.assert_close(predict_packed(model, packed, chunk=chunk), full)
    picked = [5, 2, 2, 39, 0]
    torch.testing.assert_close(predict_packed(model, packed, picked, chunk=2), full[picked])


def test_slice_is_select_of_a_range() -> None:
    packed = pack_graphs(dag_graphs(12, seed=5, extra_edges=2))
    by_slice = packed.slice(3, 9)
    by_select = packed.select(torch.tensor([3, 4, 5, 6, 7, 8]))
    gathered = packed.select(torch.tensor([8, 3]))  # not a range: the gather path
    for name in ("x", "nbr", "nbr_mask", "batch", "counts"):
        assert torch.equal(getattr(by_slice, name), getattr(by_select, name)), name
    assert gathered.num_graphs == 2
    assert int(gathered.counts[0]) == int(packed.counts[8])


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 5, 50, 500):
        a = rng.integers(0, 4, n).astype(float)  # many ties
        b = rng.normal(size=n)
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))
    assert np.isnan(spearman(np.array([1.0, np.nan]), np.array([1.0, 2.0])))


def test_thread_note_only_when_threads_would_oversubscribe() -> None:
    assert thread_note(1) is None
    note = thread_note(10_000)
    assert note is not None and "10000 torch threads" in note


def test_sequence_graphs_still_pickle_under_their_name() -> None:
    from autobuild_dsl.graphs.encode import SequenceGraph

    graph = SequenceGraph(x=torch.zeros(3, 2, dtype=torch.long), stage_index=torch.arange(3))
    again = pickle.loads(pickle.dumps(graph))
    assert type(again).__qualname__ == "SequenceGraph"
    assert type(again).__module__ == "autobuild_dsl.graphs.encode"
    assert torch.equal(again.stage_index, graph.stage_index)


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout


def test_rank_and_cli_paths_import_no_pyg_dynamo_or_scipy() -> None:
    out = _run(
        "import sys, json\n"
        "import autobuild_dsl.cli.build_cmds, autobuild_dsl.cli.train_cmds\n"
        "import autobuild_dsl.cli.graph_cmds, autobuild_dsl.cli.search_cmds\n"
        "import autobuild_dsl.design.rank, autobuild_dsl.scorer.run, autobuild_dsl.graphs\n"
        "from autobuild_dsl.graphs.encode import EncodeError, GraphEncoder\n"
        "heavy = ('torch_geometric', 'torch._dynamo', 'scipy', 'scipy.stats', 'onnx')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    assert json.loads(out) == []
    # The help listing loads every command module: still no torch at all.
    out = _run(
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from autobuild_dsl.cli import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    assert out.strip() == "False"


def test_cli_exits_with_the_command_status() -> None:
    abc = [sys.executable, "-m", "autobuild_dsl"]
    ok = subprocess.run([*abc, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "Commands:" in ok.stdout
    # A file that cannot be read is bad input (exit 1), not an .abs diagnostic (exit 2).
    bad = subprocess.run([*abc, "compile", "no-such.abs"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "no-such.abs" in bad.stderr
    broken = Path(tempfile.mkdtemp()) / "broken.abs"
    broken.write_text("space x {\n")
    diagnostic = subprocess.run([*abc, "compile", str(broken)], capture_output=True, text=True)
    assert diagnostic.returncode == 2 and "broken.abs:" in diagnostic.stderr


def test_bench_vs_authors_skips_without_a_checkout(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_vs_authors.py"),
            "--authors",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("skipped:")
