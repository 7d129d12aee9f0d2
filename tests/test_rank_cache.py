"""The rank cache (design.rank_cache): a warm call reads what a cold one computed, gives the
same bytes, and never returns numbers of a run, data file or module set that changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autobuild_dsl.data.dataset import LabeledDataset, load_dataset, save_dataset
from autobuild_dsl.design import rank as rank_module
from autobuild_dsl.design import rank_cache
from autobuild_dsl.design.importance import seen_values
from autobuild_dsl.design.packing import _graph_previous, apply_steps, jump_steps
from autobuild_dsl.design.ranking_workflow import prime_cache, scores_csv
from autobuild_dsl.lang import compile_file
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, load_run, train_run
from autobuild_dsl.space.decisions import sample

MACRO = Path(__file__).resolve().parent.parent / "spaces" / "nas_bench_macro.abs"


def _dataset(count: int, seed: int) -> LabeledDataset:
    space = compile_file(MACRO)
    archs = list({a.key(): a for a in sample(space, count, seed=seed)}.values())
    weight = {"identity": 0.0, "mb_e3k3": 1.0, "mb_e6k5": 1.5}
    acc = [sum(weight[x["op"]] for s in a.stages.values() for x in s.layers) for a in archs]
    return LabeledDataset(space, archs, ["acc"], np.array([acc]).T)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    data = _dataset(40, seed=4)
    data_file = tmp_path / "data.jsonl"
    save_dataset(data, data_file)
    out = tmp_path / "run"
    small = {"train": TrainConfig(epochs=3, batch_size=16), "ensemble": EnsembleConfig(folds=2)}
    files = {"space_path": str(MACRO), "data_path": str(data_file)}  # rank reads the data
    train_run(data.space, data, "acc", out, **small, **files)  # type: ignore[arg-type]
    return out


def _no_forward(*_: object, **__: object) -> None:
    raise AssertionError("the members ran: the cache was not used")


def test_warm_call_reads_the_cache_and_gives_the_same_bytes(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uncached = scores_csv(rank_module.rank_modules(load_run(run_dir), cache=False))
    assert not (run_dir / rank_cache.CACHE_DIR).exists()  # cache=False writes nothing
    cold = scores_csv(rank_module.rank_modules(load_run(run_dir)))
    assert list((run_dir / rank_cache.CACHE_DIR).glob("rank-pooled-*.npz"))
    monkeypatch.setattr(rank_module, "_member_norms", _no_forward)
    warm = scores_csv(rank_module.rank_modules(load_run(run_dir)))
    assert cold == uncached
    assert warm == uncached
    # Another score kind is another entry, not the pooled numbers.
    with pytest.raises(AssertionError, match="cache was not used"):
        rank_module.rank_modules(load_run(run_dir), score="last")


def test_changed_weights_are_never_served_from_the_cache(run_dir: Path) -> None:
    rank_module.rank_modules(load_run(run_dir))  # fill the cache
    member = load_run(run_dir).members[0]
    weights = run_dir / member.record.weights
    state = torch.load(weights, weights_only=True)
    first = next(k for k in state if k.startswith("convs."))
    state[first] = state[first] * 1.5 + 0.1
    torch.save(state, weights)  # a retrained member, same file name
    run = load_run(run_dir)
    fresh = rank_module.rank_modules(run, cache=False)
    served = rank_module.rank_modules(run)
    assert scores_csv(served) == scores_csv(fresh)
    # ... and a model changed in memory after loading counts as changed too.
    with torch.no_grad():
        next(run.members[1].model.parameters()).mul_(-1.0)
    changed = rank_module.rank_modules(run)
    assert scores_csv(changed) == scores_csv(rank_module.rank_modules(run, cache=False))
    assert not np.array_equal(changed.tables[0].score, served.tables[0].score)


def test_a_damaged_cache_entry_is_recomputed(run_dir: Path) -> None:
    expected = scores_csv(rank_module.rank_modules(load_run(run_dir)))
    for entry in (run_dir / rank_cache.CACHE_DIR).glob("rank-*.npz"):
        entry.write_bytes(entry.read_bytes()[:100])
    assert scores_csv(rank_module.rank_modules(load_run(run_dir))) == expected


def test_seen_values_from_the_loaded_rows_equal_those_read_from_the_file(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`abc train` hands prime_cache the rows it loaded: the file is not read again."""
    import autobuild_dsl.data.dataset as dataset_module

    run = load_run(run_dir)
    loaded = load_dataset(run.config.data, run.space)
    expected = seen_values(run)
    (run_dir / rank_cache.CACHE_DIR / "seen-values.json").unlink()
    monkeypatch.setattr(dataset_module, "load_dataset", _no_forward)
    assert seen_values(run, loaded=loaded) == expected


def test_seen_values_follow_the_data_file(run_dir: Path, tmp_path: Path) -> None:
    run = load_run(run_dir)
    data_file = Path(run.config.data)
    before = seen_values(run)
    assert (run_dir / rank_cache.CACHE_DIR / "seen-values.json").is_file()
    assert seen_values(run) == before  # from the cache
    # The same file name, other rows: none with an expand-6 layer (mb_e6k5).
    data = _dataset(40, seed=4)
    keep = [
        i
        for i, a in enumerate(data.architectures)
        if all(x["op"] != "mb_e6k5" for s in a.stages.values() for x in s.layers)
    ]
    save_dataset(data.subset(np.array(keep)), data_file)
    after = seen_values(run)
    expand = [c.name for c in run.config.categories].index("expand")
    six = list(run.config.categories[expand].vocab).index(6)  # mb_e6k5's expansion
    assert six in before[expand]
    assert six not in after[expand]


def _reference_path_sums(values: torch.Tensor, previous: np.ndarray) -> torch.Tensor:
    """The pointer jumping as it was written before the schedule was shared."""
    sums = values.clone()
    pointer = torch.from_numpy(np.array(previous, dtype=np.int64))
    active = torch.nonzero(pointer >= 0).squeeze(1)
    while len(active):
        target = pointer[active]
        sums[active] = sums[active] + sums[target]
        pointer[active] = pointer[target]
        active = active[pointer[active] >= 0]
    return sums


def test_shared_path_sum_schedule_is_bit_identical() -> None:
    rng = np.random.default_rng(7)
    # A forest: every node's predecessor comes before it (or -1).
    previous = np.array([-1] + [int(rng.integers(-1, i)) for i in range(1, 500)])
    values = torch.from_numpy(rng.normal(size=(500, 24)).astype(np.float32))
    steps = jump_steps(previous)
    got = apply_steps(values, steps)
    assert torch.equal(got, _reference_path_sums(values, previous))
    # Graph-ordered chains too (the slow packing path).
    chains = _graph_previous(types_packed([3, 1, 5, 4]))
    values = values[: len(chains)]
    assert torch.equal(
        apply_steps(values, jump_steps(chains)),
        _reference_path_sums(values, chains),
    )


def types_packed(counts: list[int]) -> object:
    """Just what `_graph_previous` reads of a PackedGraphs: its node_ptr."""

    class Packed:
        node_ptr = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.long)

    return Packed()


def test_cli_outputs_are_byte_identical_cold_warm_and_uncached(
    run_dir: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from autobuild_dsl.cli import cli

    def outputs(tag: str) -> list[bytes]:
        scores, built = tmp_path / f"{tag}.csv", tmp_path / f"{tag}-built"
        for args in (
            ["rank", str(run_dir), "-o", str(scores), "--quiet"],
            ["build", str(run_dir), "-k", "2", "-n", "5", "-o", str(built), "--quiet"],
        ):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
        names = ("architectures.jsonl", "modules.csv", "nas_bench_macro_top.abs")
        return [scores.read_bytes()] + [(built / n).read_bytes() for n in names]

    cold = outputs("cold")
    assert (run_dir / rank_cache.CACHE_DIR).is_dir()
    warm = outputs("warm")
    for entry in (run_dir / rank_cache.CACHE_DIR).iterdir():
        entry.unlink()  # as if never cached
    uncached = outputs("uncached")
    for entry in (run_dir / rank_cache.CACHE_DIR).iterdir():
        entry.unlink()
    assert prime_cache(load_run(run_dir))  # what `abc train` leaves
    after_train = outputs("after-train")
    assert cold == warm == uncached == after_train


def test_ranking_does_not_change_the_runs_search_fingerprint(run_dir: Path) -> None:
    """A search's evaluation cache keys on the run's files: what ranking adds under
    RUN/cache/ must not make the same run look retrained."""
    from autobuild_dsl.search.evaluators import PredictorConfig, PredictorEvaluator

    space = load_run(run_dir).space
    before = PredictorEvaluator(PredictorConfig(run=str(run_dir)), space).identity
    rank_module.rank_modules(load_run(run_dir))
    seen_values(load_run(run_dir))
    assert (run_dir / rank_cache.CACHE_DIR).is_dir()
    assert PredictorEvaluator(PredictorConfig(run=str(run_dir)), space).identity == before


def test_pooled_norms_equal_full_width_path_sums_bit_for_bit() -> None:
    """Pooled norms from per-hop plans (only the nodes on the modules' paths) are the same
    floats as the path sums over the whole batch at every hop side by side (the old way).
    OFA MobileNetV3 stage 1: 2-4 layers, so hops 1-3 in one prefix forest."""
    from autobuild_dsl.design.module_sets import enumerate_modules
    from autobuild_dsl.design.packing import pack_modules
    from autobuild_dsl.graphs.encode import GraphEncoder
    from autobuild_dsl.scorer.model import ModelConfig, ScorerModel

    space = compile_file(MACRO.parent / "mbv3.abs")
    encoder = GraphEncoder(space)
    torch.manual_seed(0)
    vocab = [len(c.vocab) for c in encoder.categories]
    model = ScorerModel(ModelConfig(vocab_sizes=vocab, num_layers=3)).eval()
    unit = rank_module._chosen_units(space, None)[0]
    batch = pack_modules(encoder, enumerate_modules(space, unit), {"resolution": 224}, None)
    hops = np.clip(np.minimum(batch.nodes - 1, 3), 0, None)
    got = rank_module.module_norms(model, batch, hops, score="pooled")
    needed = sorted({int(h) for h in hops})
    with torch.inference_mode():
        embeddings = model.node_embeddings(batch.packed.select())
        widths = [embeddings[h].shape[1] for h in needed]
        full = _reference_path_sums(torch.cat([embeddings[h] for h in needed], 1), batch.previous)
        pooled = dict(zip(needed, full.split(widths, 1), strict=True))
        expected = np.zeros(len(hops))
        for h in needed:
            pick = np.flatnonzero(hops == h)
            sizes = torch.from_numpy(batch.nodes[pick]).to(full.dtype).clamp(min=1)[:, None]
            rows = pooled[h][torch.from_numpy(batch.last[pick])] / sizes
            norms = torch.linalg.vector_norm(rows, ord=model.config.norm_ord, dim=-1)
            expected[pick] = norms.double().numpy()
    assert needed == [1, 2, 3]
    assert np.array_equal(got, expected)


def test_a_warm_call_loads_no_member_model(run_dir: Path) -> None:
    """Reading a run loads no weights; a cache hit (ranking, feature importance) never
    needs them, and so no torch."""
    from autobuild_dsl.design.ranking_workflow import rank_run

    rank_run(load_run(run_dir))  # fill the cache
    run = load_run(run_dir)
    assert all(m._model is None for m in run.members)  # type: ignore[attr-defined]
    rank_run(run)
    assert all(m._model is None for m in run.members)  # type: ignore[attr-defined]


def test_weight_file_digest_follows_the_bytes_and_the_model_in_memory(run_dir: Path) -> None:
    member = load_run(run_dir).members[0]
    on_disk = member.weights_digest()
    assert on_disk.startswith("file:")
    assert member.model is not None  # loads it
    assert member.weights_digest() == on_disk  # the same bytes, loaded
    with torch.no_grad():
        next(member.model.parameters()).add_(1.0)
    assert member.weights_digest().startswith("state:")
    weights = run_dir / member.record.weights
    weights.write_bytes(weights.read_bytes() + b"\0")  # other bytes, same name
    assert load_run(run_dir).members[0].weights_digest() != on_disk


def test_weights_replaced_while_ranking_are_not_cached_under_the_old_bytes(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = rank_module._member_norms
    weights = run_dir / load_run(run_dir).members[0].record.weights

    def retrain_meanwhile(*args: object, **kwargs: object) -> object:
        state = torch.load(weights, weights_only=True)
        torch.save({k: v * 1.5 + 0.1 for k, v in state.items()}, weights)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rank_module, "_member_norms", retrain_meanwhile)
    rank_module.rank_modules(load_run(run_dir))
    assert not list((run_dir / rank_cache.CACHE_DIR).glob("rank-*.npz"))


def test_damaged_importance_entry_is_recomputed(run_dir: Path) -> None:
    from autobuild_dsl.design.importance import run_importance

    expected = run_importance(load_run(run_dir))
    entry = run_dir / rank_cache.CACHE_DIR / "importance.json"
    assert entry.is_file()
    text = entry.read_text()
    entry.write_text(text.replace('"raw"', '"rwa"'))
    assert run_importance(load_run(run_dir)) == expected


def test_cached_predictions_follow_the_weights(run_dir: Path) -> None:
    from autobuild_dsl.design.workflow import predict_architectures

    run = load_run(run_dir)
    archs = sample(run.space, 6, seed=1)
    first = predict_architectures(run, archs)
    assert list((run_dir / rank_cache.CACHE_DIR).glob("predict-*.npz"))
    again = predict_architectures(load_run(run_dir), archs)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    with torch.no_grad():
        for p in run.members[0].model.parameters():
            p.mul_(1.5)
    changed = predict_architectures(run, archs)
    fresh = predict_architectures(run, archs, cache=False)
    assert np.array_equal(changed[0], fresh[0])
    assert not np.array_equal(changed[0], first[0])


def test_train_primes_the_cache_and_warm_commands_import_no_torch(
    run_dir: Path, tmp_path: Path
) -> None:
    """`abc train` ends by ranking with the defaults into RUN/cache/ (prime_cache); then
    `abc rank RUN` imports no torch, nor does `abc build` with other options (its
    predictions of chain graphs are numpy: scorer.numpy_predict), first or repeated."""
    import json
    import subprocess
    import sys

    assert prime_cache(load_run(run_dir))
    built = str(tmp_path / "built")
    code = (
        "import json, sys\n"
        "from autobuild_dsl.cli import cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:], standalone_mode=False)\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "print(json.dumps('torch' in sys.modules))\n"
    )

    def imports_torch(*args: str) -> bool:
        done = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    build = ["build", str(run_dir), "-k", "2", "-n", "3", "-o", built, "--force", "--quiet"]
    assert not imports_torch("rank", str(run_dir), "--quiet")
    assert not imports_torch("build", str(run_dir), "-o", built + "-default", "--quiet")
    assert not imports_torch(*build)  # a first call of other options predicts its networks
    assert not imports_torch(*build)


def test_abc_train_leaves_the_cache_of_the_default_ranking(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from autobuild_dsl.cli import cli

    data_file = tmp_path / "data.jsonl"
    save_dataset(_dataset(30, seed=5), data_file)
    out = tmp_path / "run"
    args = ["train", str(MACRO), str(data_file), "--target", "acc", "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--epochs", "2", "--batch-size", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    cached = {p.name.split("-")[0] for p in (out / rank_cache.CACHE_DIR).iterdir()}
    assert {"rank", "importance.json", "seen", "predict"} <= cached
