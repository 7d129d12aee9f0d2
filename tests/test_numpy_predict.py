"""Ensemble predictions without torch (scorer/numpy_predict.py, scorer/state_file.py): the
weight files read as torch reads them, the same predictions as the torch path to float
rounding, and every graph or file the numpy path does not handle left to torch."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from autobuild_dsl.data.dataset import LabeledDataset
from autobuild_dsl.design import workflow
from autobuild_dsl.lang import compile_file
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, load_run, train_run
from autobuild_dsl.scorer import run as run_module
from autobuild_dsl.scorer.model import pack_graphs
from autobuild_dsl.scorer.numpy_predict import (
    chain_batch,
    check_state,
    forward,
    plan,
    predict_numpy,
)
from autobuild_dsl.scorer.records import LoadedMember
from autobuild_dsl.scorer.state_file import read_state
from autobuild_dsl.space.decisions import sample
from tests.test_scorer_shared import _model
from tests.test_speed import dag_graphs

SPACES = Path(__file__).resolve().parent.parent / "spaces"


def _dataset(space_name: str, count: int, seed: int) -> LabeledDataset:
    space = compile_file(SPACES / f"{space_name}.abs")
    archs = list({a.key(): a for a in sample(space, count, seed=seed)}.values())
    labels = np.random.default_rng(seed).normal(70.0, 3.0, size=(len(archs), 1))
    return LabeledDataset(space, archs, ["acc"], labels)


def _train(tmp: Path, space_name: str, batch_norm: bool) -> Path:
    data = _dataset(space_name, 40, seed=2)
    out = tmp / f"{space_name}-{batch_norm}"
    train = TrainConfig(epochs=3, batch_size=16, batch_norm=batch_norm)
    train_run(data.space, data, "acc", out, train=train, ensemble=EnsembleConfig(folds=3))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    return {
        "macro": _train(tmp, "nas_bench_macro", batch_norm=False),
        "macro-bn": _train(tmp, "nas_bench_macro", batch_norm=True),
        "mbv3": _train(tmp, "mbv3", batch_norm=False),
    }


def _saved(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_weight_files_read_as_torch_load_reads_them(runs: dict[str, Path]) -> None:
    for path in runs.values():
        for weights in sorted((path / "members").glob("*.pt")):
            expected = torch.load(weights, weights_only=True)
            got = read_state(weights.read_bytes())
            assert got is not None and list(got) == list(expected)
            for name, tensor in expected.items():
                assert got[name].dtype == tensor.numpy().dtype, name
                assert np.array_equal(got[name], tensor.numpy()), name
    # BatchNorm's step counter is an int64 scalar tensor.
    bn = read_state(next((runs["macro-bn"] / "members").glob("*.pt")).read_bytes())
    assert bn is not None and bn["norms.0.num_batches_tracked"].shape == ()


def test_views_are_read_with_their_offset_and_strides() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"t": base.T, "slice": base[1:3, 2:5], "long": torch.arange(5)[1:]}
    got = read_state(_saved(state))
    assert got is not None
    for name, tensor in state.items():
        assert np.array_equal(got[name], tensor.numpy()), name


def test_anything_but_plain_float32_and_int64_tensors_is_left_to_torch() -> None:
    assert read_state(_saved({"a": torch.zeros(3, dtype=torch.float64)})) is None
    assert read_state(_saved({"a": torch.nn.Parameter(torch.zeros(3))})) is None
    assert read_state(b"not a zip") is None
    assert read_state(_saved({"a": torch.zeros(3)})[:200]) is None  # truncated
    # A data.pkl that names any other global (here os.getcwd) is refused, never called.
    good = zipfile.ZipFile(io.BytesIO(_saved({"a": torch.zeros(3)})))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bad:
        for name in good.namelist():
            data = good.read(name)
            bad.writestr(name, b"cos\ngetcwd\n)R." if name.endswith("data.pkl") else data)
    assert read_state(buffer.getvalue()) is None


@pytest.mark.parametrize(
    ("residual", "batch_norm", "layers"), [(True, False, 4), (False, False, 3), (True, True, 2)]
)
def test_numpy_forward_equals_scorer_predict(residual: bool, batch_norm: bool, layers: int) -> None:
    # Chains of 1-12 nodes with random codes, each graph twice (shared contexts).
    graphs = dag_graphs(30, seed=layers, extra_edges=0) * 2
    model = _model([3, 4], layers, seed=7, batch_norm=batch_norm)
    config = model.config.model_copy(update={"residual": residual})
    model.config = config
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert check_state(state, config)
    batch = chain_batch(graphs, config.vocab_sizes)
    assert batch is not None
    with torch.inference_mode():
        expected = model.predict(pack_graphs(graphs).select(None)).numpy()
    got = forward(state, config, plan(batch, layers))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Another model shape is refused (the torch path reports it), not mis-read.
    other = config.model_copy(update={"num_layers": layers + 1})
    assert not check_state(state, other)


@pytest.mark.parametrize("name", ["macro", "macro-bn", "mbv3"])
def test_ensemble_predictions_equal_the_torch_path(runs: dict[str, Path], name: str) -> None:
    run = load_run(runs[name])
    archs = sample(run.space, 50, seed=9)
    graphs = [run.encoder().encode_arrays(a) for a in archs]
    got = predict_numpy(run, graphs)
    assert got is not None
    assert all(isinstance(g.x, np.ndarray) for g in graphs)  # encode_arrays: no torch
    mean, spread = run_module.predict(run, [g.tensors() for g in graphs])
    np.testing.assert_allclose(got[0], mean, rtol=1e-5)
    np.testing.assert_allclose(got[1], spread, rtol=1e-4, atol=1e-6)
    assert np.ptp(got[0]) > 0  # the networks are told apart


def test_graphs_it_does_not_handle_are_left_to_torch() -> None:
    unet = compile_file(SPACES / "sd14_unet.abs")
    from autobuild_dsl.graphs.encode import GraphEncoder

    encoder = GraphEncoder(unet)
    skips = [encoder.encode_arrays(a) for a in sample(unet, 3, seed=0)]
    sizes = [len(c.vocab) for c in encoder.categories]
    assert chain_batch(skips, sizes) is None  # U-Net skip links: more than one in-edge
    assert chain_batch(dag_graphs(8, seed=1, extra_edges=2), [3, 4]) is None
    chain = dag_graphs(4, seed=1, extra_edges=0)
    assert chain_batch(chain, [3, 4]) is not None
    assert chain_batch(chain, [3, 3]) is None  # a code outside its vocabulary
    assert chain_batch(chain, [3]) is None  # another number of categories


def test_build_predictions_need_no_torch_path(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = load_run(runs["macro"])
    archs = sample(run.space, 12, seed=4)
    expected = run_module.predict(run, [run.encoder().encode_tensors(a) for a in archs])

    def no_torch(*_: object, **__: object) -> None:
        raise AssertionError("the torch path ran")

    monkeypatch.setattr(run_module, "predict", no_torch)
    mean, spread = workflow.predict_architectures(load_run(runs["macro"]), archs, cache=False)
    np.testing.assert_allclose(mean, expected[0], rtol=1e-5)
    np.testing.assert_allclose(spread, expected[1], rtol=1e-4, atol=1e-6)
    # A weight file the numpy reader refuses: the torch path, with its numbers.
    monkeypatch.undo()
    monkeypatch.setattr(LoadedMember, "numpy_state", lambda self: None)
    mean, _ = workflow.predict_architectures(load_run(runs["macro"]), archs, cache=False)
    np.testing.assert_array_equal(mean, expected[0])


def test_a_model_loaded_and_changed_in_memory_is_what_is_predicted_with(
    runs: dict[str, Path],
) -> None:
    run = load_run(runs["macro"])
    archs = sample(run.space, 6, seed=5)
    graphs = [run.encoder().encode_arrays(a) for a in archs]
    before = predict_numpy(run, graphs)
    with torch.no_grad():
        for p in run.members[0].model.head.parameters():
            p.mul_(2.0)
    after = predict_numpy(run, graphs)
    assert before is not None and after is not None
    assert not np.allclose(before[0], after[0])
    np.testing.assert_allclose(after[0], run_module.predict(run, graphs)[0], rtol=1e-5)


def test_chunks_of_whole_graphs_give_the_same_predictions(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from autobuild_dsl.scorer import numpy_predict

    run = load_run(runs["mbv3"])
    graphs: list[object] = [run.encoder().encode_arrays(a) for a in sample(run.space, 40, seed=3)]
    width = len(run.config.model.vocab_sizes)
    empty = np.zeros((0, width), dtype=np.int64)
    graphs.insert(7, SimpleNamespace(x=empty, edge_index=np.zeros((2, 0), dtype=np.int64)))
    whole = predict_numpy(run, graphs)
    monkeypatch.setattr(numpy_predict, "CHUNK_NODES", 50)  # ~3 graphs a chunk
    assert len(numpy_predict._chunks(chain_batch(graphs, run.config.model.vocab_sizes))) > 10
    chunked = predict_numpy(run, graphs)
    assert whole is not None and chunked is not None
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)
    # The graph without nodes pools to zeros, as in the torch path.
    tensors = [g.tensors() if hasattr(g, "tensors") else g for g in graphs]
    np.testing.assert_allclose(whole[0], run_module.predict(run, tensors)[0], rtol=1e-5)


def test_distinct_rows_folded_and_unfolded_agree() -> None:
    """The one row-distinct step of both planners: equal rows share an id, ids follow the
    rows' sorted order, `first` points at a row of each id; rows too wide to fold into
    one int64 take `unique(axis=0)` and give the same ids."""
    from autobuild_dsl.scorer.numpy_predict import distinct_rows

    rng = np.random.default_rng(0)
    small = rng.integers(0, 4, size=(500, 3))
    ids, first = distinct_rows(small)
    values, expected = np.unique(small, axis=0, return_inverse=True)
    assert np.array_equal(ids, expected.reshape(-1))
    assert np.array_equal(small[first], values)
    wide = small * (2**40)  # radix product >= 2**62: no folding
    wide_ids, wide_first = distinct_rows(wide)
    assert np.array_equal(wide_ids, ids) and np.array_equal(wide[wide_first], values * 2**40)
    empty_ids, empty_first = distinct_rows(np.zeros((0, 3), dtype=np.int64))
    assert empty_ids.shape == (0,) and empty_first.shape == (0,)
