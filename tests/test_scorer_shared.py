"""Prediction over distinct node contexts (scorer/shared.py) gives the plain path's numbers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from autobuild_dsl.lang import compile_file
from autobuild_dsl.scorer import ModelConfig, ScorerModel, pack_graphs
from autobuild_dsl.scorer.shared import plan, predict_members, predict_planned
from autobuild_dsl.scorer.train import predict_packed
from autobuild_dsl.space.decisions import iter_architectures
from tests.test_speed import dag_graphs

ROOT = Path(__file__).resolve().parent.parent


def _model(vocab_sizes: list[int], layers: int, seed: int, batch_norm: bool = False) -> ScorerModel:
    """A model with every parameter (and BatchNorm statistic) random: the FE-MLP's
    near-equal start would hide a row taken from the wrong node."""
    torch.manual_seed(seed)
    model = ScorerModel(
        ModelConfig(vocab_sizes=vocab_sizes, num_layers=layers, batch_norm=batch_norm)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for norm in model.norms:
            if isinstance(norm, torch.nn.BatchNorm1d):
                norm.running_mean.copy_(torch.randn_like(norm.running_mean))
                norm.running_var.copy_(torch.rand_like(norm.running_var) + 0.5)
    return model.eval()


@pytest.mark.parametrize(("extra_edges", "batch_norm"), [(0, False), (2, False), (4, True)])
def test_planned_prediction_equals_the_plain_one(extra_edges: int, batch_norm: bool) -> None:
    # Few distinct graphs, each many times and shuffled: many nodes share their context.
    distinct = dag_graphs(6, seed=extra_edges, extra_edges=extra_edges)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0)) % 6
    packed = pack_graphs([distinct[int(i)] for i in order])
    planned = plan(packed, 3)
    assert planned.rows < planned.nodes  # contexts were shared
    for seed in range(2):
        model = _model([3, 4], 3, seed, batch_norm)
        expected = predict_packed(model, packed)
        torch.testing.assert_close(predict_planned(model, planned), expected)
        # A repeated graph gets one value wherever it stands.
        got = predict_members([model], packed)[0]
        torch.testing.assert_close(got, expected)
        assert torch.equal(got[order == 0], got[order == 0][:1].expand(int((order == 0).sum())))


def test_planned_prediction_on_a_unet_space_with_skips() -> None:
    """sd14_unet_fid: U-Net skips (3 neighbour slots), 6 layers; consecutive networks
    share most contexts; the same numbers as the plain path, chunked or not."""
    from autobuild_dsl.graphs.encode import GraphEncoder

    space = compile_file(ROOT / "spaces" / "sd14_unet_fid.abs")
    archs = list(itertools.islice(iter_architectures(space), 5000, 5192))
    encoder = GraphEncoder(space)
    packed = pack_graphs(encoder.encode_many(archs, as_data=False))
    assert packed.rel_nbr.shape[0] == 3
    vocab = [len(c.vocab) for c in encoder.categories]
    models = [_model(vocab, 6, seed) for seed in range(3)]
    planned = plan(packed, 6)
    assert planned.worthwhile and planned.rows * 5 < planned.nodes * 6
    expected = [predict_packed(m, packed) for m in models]
    for got, want in zip(predict_members(models, packed), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_graphs_that_share_nothing_take_the_plain_path(monkeypatch) -> None:
    packed = pack_graphs(dag_graphs(3, seed=9, extra_edges=1))
    model = _model([3, 4], 2, 0)
    assert not plan(packed, 2).worthwhile  # three different graphs: little to share
    calls = []
    monkeypatch.setattr(
        "autobuild_dsl.scorer.shared.predict_planned", lambda *a: calls.append(a) or None
    )
    torch.testing.assert_close(predict_members([model], packed)[0], predict_packed(model, packed))
    assert calls == []
