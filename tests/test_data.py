"""Labeled datasets: the JSON-lines format, importers, merging, splits, the CLI."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autobuild_dsl.cli import cli
from autobuild_dsl.data import (
    DatasetError,
    GenericMapping,
    LabeledDataset,
    from_records,
    import_files,
    kfold_splits,
    label_stats,
    load_dataset,
    ofa_subnet_to_arch,
    save_dataset,
    train_test_split,
)
from autobuild_dsl.data.describe import describe
from autobuild_dsl.data.target import parse_target
from autobuild_dsl.lang import compile_file
from autobuild_dsl.space.decisions import canonicalize, sample
from autobuild_dsl.space.model import Space

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"
SHARED_DATA = Path(os.environ.get("ABC_SHARED_DATA") or ROOT.parent / "shared" / "data")

OFA = str(SPACES / "mbv3.abs")
MACRO = str(SPACES / "nas_bench_macro.abs")


@cache
def space_of(path: str) -> Space:
    return compile_file(path)


def rows_file(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def macro_arch(digits: str) -> dict:
    labels = {"0": "identity", "1": "mb_e3k3", "2": "mb_e6k5"}
    stages, start = {}, 0
    for name, depth in (("s1", 2), ("s2", 3), ("s3", 3)):
        stages[name] = {
            "depth": depth,
            "layers": [{"op": labels[c]} for c in digits[start:][:depth]],
        }
        start += depth
    return {"stages": stages}


# ----- format: save / load ---------------------------------------------------------


def test_merge_averages_metrics_weighted_by_count() -> None:
    space = space_of(MACRO)
    a = canonicalize(space, macro_arch("00000000"))
    b = canonicalize(space, macro_arch("12121212"))
    dataset, merged = from_records(
        space,
        [
            (a, {"acc": 1.0, "lat": 5.0}, 1, None),
            (b, {"acc": 7.0}, 1, None),
            (a, {"acc": 4.0}, 2, None),
        ],
    )
    assert merged == 1 and len(dataset) == 2
    assert dataset.metric_names == ["acc", "lat"]
    assert dataset.values[0].tolist() == [3.0, 5.0]  # (1 + 2 * 4) / 3; lat from one row
    assert dataset.counts.tolist() == [3, 1]
    assert np.isnan(dataset.values[1, 1])


def test_save_then_load_is_lossless(tmp_path: Path) -> None:
    space = space_of(OFA)
    archs = sample(space, 30, seed=4)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 3)) * [1.0, 1e8, 1e-9]
    values[3, 1] = np.nan  # a metric one row lacks
    values[4, 0] = 5_000_000.0  # integral: written as an int, read back equal
    dataset = LabeledDataset(
        space=space,
        architectures=archs,
        metric_names=["top1", "macs", "tiny"],
        values=values,
        counts=np.arange(1, 31),
    )
    path = tmp_path / "d.jsonl"
    save_dataset(dataset, path)
    loaded = load_dataset(path, space)
    assert [a.key() for a in loaded.architectures] == [a.key() for a in archs]
    assert loaded.metric_names == dataset.metric_names
    assert np.array_equal(loaded.values, dataset.values, equal_nan=True)
    assert loaded.counts.tolist() == list(range(1, 31))
    assert loaded.sources is not None and loaded.sources[2] == f"{path}:3"
    first = json.loads(path.read_text().split("\n")[0])
    assert set(first) == {"arch", "metrics", "count"}
    assert "macs" in first["metrics"]
    assert "macs" not in json.loads(path.read_text().split("\n")[3])["metrics"]


def test_load_reports_every_bad_row_with_its_line(tmp_path: Path) -> None:
    space = space_of(MACRO)
    good = {"arch": macro_arch("01201201"), "metrics": {"acc": 1.0}}
    outside = {"arch": macro_arch("01201201"), "metrics": {"acc": 1.0}}
    outside["arch"]["stages"]["s2"]["layers"][1] = {"op": "conv"}
    path = rows_file(
        tmp_path / "d.jsonl",
        [
            good,
            "{not json",
            outside,
            "",
            {"arch": macro_arch("00000000"), "metrics": {"acc": "high"}},
            {"arch": macro_arch("00000000"), "metrics": {"2x": 1.0}},
            {"arch": macro_arch("00000000"), "metrics": {}, "count": 0},
            {"arch": macro_arch("00000000"), "metric": {}},
        ],
    )
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, space)
    message = str(caught.value)
    lines = message.split("\n")
    assert lines[0] == f"{path}: 6 bad rows for space nas_bench_macro:"
    assert lines[1].startswith(f"{path}:2: not valid JSON")
    assert lines[2] == (
        f"{path}:3: arch: stages.s2: layer 1: op 'conv' is not one of identity, mb_e3k3, mb_e6k5"
    )
    assert lines[3] == f"{path}:5: metrics.acc: 'high' is not a finite number"
    assert lines[4].startswith(f"{path}:6: metric name '2x' is not a plain name")
    assert lines[5] == f"{path}:7: count: 0 is not a positive integer"
    assert lines[6].startswith(f"{path}:8: unknown field 'metric'")


def test_load_errors_for_missing_or_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope.jsonl", space_of(MACRO))
    with pytest.raises(DatasetError, match="holds no rows"):
        load_dataset(rows_file(tmp_path / "e.jsonl", [""]), space_of(MACRO))


def test_graphs_are_encoded_once_per_encoder() -> None:
    from autobuild_dsl.graphs import GraphEncoder

    space = space_of(MACRO)
    dataset = LabeledDataset(
        space=space, architectures=sample(space, 5, seed=1), metric_names=["a"], values=[[1.0]] * 5
    )
    encoder = GraphEncoder(space)
    first = dataset.graphs(encoder)
    assert dataset.graphs(encoder) is first
    assert len(first) == 5 and first[0].num_nodes == 8
    assert dataset.graphs(GraphEncoder(space)) is not first


def test_training_graphs_are_plain_tensors_packing_like_pyg_graphs() -> None:
    """`graphs` gives what the scorer packs without PyG objects: the same packed tensors."""
    from autobuild_dsl.graphs import GraphEncoder
    from autobuild_dsl.graphs.encode import GraphTensors
    from autobuild_dsl.scorer.model import pack_graphs

    space = space_of(MACRO)
    archs = sample(space, 6, seed=2)
    dataset = LabeledDataset(
        space=space, architectures=archs, metric_names=["a"], values=[[1.0]] * 6
    )
    encoder = GraphEncoder(space)
    plain = dataset.graphs(encoder)
    assert all(isinstance(g, GraphTensors) for g in plain)
    ours, theirs = pack_graphs(plain), pack_graphs(encoder.encode_many(archs))
    for name in ("x", "rel_nbr", "nbr_mask", "node_ptr", "stage_index", "layer_index"):
        assert getattr(ours, name).equal(getattr(theirs, name)), name


# ----- importers (synthetic files) -------------------------------------------------


def test_ofa_subnet_uses_the_first_d_slots_of_each_stage() -> None:
    space = space_of(OFA)
    subnet = {
        "wid": None,
        "ks": [3, 5, 7, 7] * 5,
        "e": [3, 4, 6, 6] * 5,
        "d": [2, 3, 3, 2, 2],
        "r": [192],
    }
    arch = canonicalize(space, ofa_subnet_to_arch(space, subnet))
    assert arch.globals == {"resolution": 192}
    assert arch.stages["s2"].layers == [
        {"kernel": 3, "expand": 3},
        {"kernel": 5, "expand": 4},
        {"kernel": 7, "expand": 6},
    ]
    changed = dict(subnet, ks=[3, 5, 7, 3] * 5)  # only unused slots (the 4th of each) change
    other = canonicalize(space, ofa_subnet_to_arch(space, changed))
    assert other.key() == arch.key()
    with pytest.raises(ValueError, match="d has 4 entries; the space has 5 stages"):
        ofa_subnet_to_arch(space, dict(subnet, d=[2, 2, 2, 2]))
    with pytest.raises(ValueError, match="wid"):
        ofa_subnet_to_arch(space, dict(subnet, wid=1.2))


def test_dynast_style_csv_merges_and_rejects_with_line_numbers(tmp_path: Path) -> None:
    ks, e = [3] * 20, [4] * 20
    sub = {"wid": None, "ks": ks, "e": e, "d": [2, 2, 2, 2, 2], "r": [224]}
    unused = dict(sub, ks=[3, 3, 7, 7] * 5)  # same network, different don't-care slots
    csv = tmp_path / "runs.csv"
    csv.write_text(
        "Sub-network,Date,Model Parameters,Latency (ms),MACs,Top-1 Acc (%)\n"
        f'"{sub}",x,100,0,1000,75.0\n'
        f'"{unused}",x,100,0,1000,76.0\n'
        f'"{dict(sub, d=[2, 2, 2, 2, 5])}",x,100,0,1000,70.0\n'
        f"\"__import__('os')\",x,100,0,1000,70.0\n"
        f'"{dict(sub, d=[3, 2, 2, 2, 2])}",x,100,0,1000,oops\n'
    )
    result = import_files("ofa", [csv], space_of(OFA))
    report = result.report
    assert (report.read, report.distinct_raw, report.imported, report.merged) == (5, 5, 1, 1)
    assert [(r.row, r.reason.split(":")[0]) for r in report.rejected] == [
        (4, "arch"),
        (5, "Sub-network"),
        (6, "Top-1 Acc (%)"),
    ]
    assert "depth 5 is not one of {2, 3, 4}" in report.rejected[0].reason
    assert result.dataset is not None
    assert result.dataset.metric_names == ["top1", "macs", "params"]  # latency: all zero
    assert result.dataset.values[0].tolist() == [75.5, 1000.0, 100.0]
    assert result.dataset.counts.tolist() == [2]
    assert any("Latency (ms)" in note for note in report.notes)


def test_help_style_json_names_latency_metrics(tmp_path: Path) -> None:
    records = [
        {"idx": 0, "ks": [5] * 20, "e": [6] * 20, "d": [4] * 5, "r": 160,
         "latency_ms": {"v100_1": 7.5, "2080ti_32": 9.0}},
        {"idx": 1, "ks": [5] * 20, "e": [6] * 20, "d": [4] * 5, "r": 130,
         "latency_ms": {"v100_1": 7.5, "2080ti_32": 9.0}},
    ]  # fmt: skip
    path = tmp_path / "help.json"
    path.write_text(json.dumps(records))
    result = import_files("ofa", [path], space_of(OFA))
    assert result.dataset is not None
    assert result.dataset.metric_names == ["lat_v100_1", "lat_2080ti_32"]
    assert [(r.row, "130 is not one of" in r.reason) for r in result.report.rejected] == [(1, True)]


def test_nas_bench_macro_importer(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    entry = {"test_acc": [1.0, 2.0, 3.0], "mean_acc": 2.0, "std": 0.8, "params": 5, "flops": 9}
    path.write_text(json.dumps({"02012100": entry, "0201210": entry, "02012103": entry}))
    result = import_files("nas-bench-macro", [path], space_of(MACRO))
    assert result.dataset is not None and result.report.imported == 1
    arch = result.dataset.architectures[0]
    assert [layer["op"] for layer in arch.stages["s2"].layers] == ["identity", "mb_e3k3", "mb_e6k5"]
    assert result.dataset.row_metrics(0) == {
        "mean_acc": 2.0,
        "std": 0.8,
        "acc_seed0": 1.0,
        "acc_seed1": 2.0,
        "acc_seed2": 3.0,
        "params": 5.0,
        "flops": 9.0,
    }
    assert sorted(r.row for r in result.report.rejected) == ["0201210", "02012103"]
    with pytest.raises(DatasetError, match="cannot take NAS-Bench-Macro rows"):
        import_files("nas-bench-macro", [path], space_of(OFA))


def test_generic_csv_with_canonical_architectures(tmp_path: Path) -> None:
    space = space_of(MACRO)
    a = json.dumps(macro_arch("11111111")).replace('"', '""')
    b = json.dumps(macro_arch("22222222")).replace('"', '""')
    csv = tmp_path / "mine.csv"
    csv.write_text(f'net,acc,lat\n"{a}",90.5,3\n"{b}",91,\n"{a}",89.5,5\n"{{}}",1,1\n')
    mapping = GenericMapping(arch="net", metrics={"accuracy": "acc", "latency": "lat"})
    result = import_files("generic", [csv], space, mapping=mapping)
    data = result.dataset
    assert data is not None and len(data) == 2 and result.report.merged == 1
    assert data.metric_names == ["accuracy", "latency"]
    assert data.values[0].tolist() == [90.0, 4.0]
    assert data.row_metrics(1) == {"accuracy": 91.0}  # an empty cell: not measured
    assert [r.row for r in result.report.rejected] == [5]
    assert "stages" in result.report.rejected[0].reason


def test_generic_json_object_with_nested_metrics_and_ofa_subnets(tmp_path: Path) -> None:
    space = space_of(OFA)
    sub = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 224}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"results": {"n1": {"cfg": sub, "lat": {"gpu": [1.5, 2.5]}}}}))
    mapping = GenericMapping(
        arch="cfg", arch_format="ofa", records="results", metrics={"lat": "lat.gpu.1"}
    )
    result = import_files("generic", [path], space, mapping=mapping)
    assert result.dataset is not None
    assert result.dataset.row_metrics(0) == {"lat": 2.5}
    assert result.dataset.architectures[0].globals == {"resolution": 224}


def test_generic_jsonl_takes_sample_output(tmp_path: Path) -> None:
    space = space_of(MACRO)
    archs = sample(space, 3, seed=9)
    path = rows_file(
        tmp_path / "s.jsonl",
        [{"arch": a.model_dump(mode="json"), "acc": i} for i, a in enumerate(archs)],
    )
    result = import_files("generic", [path], space, mapping=GenericMapping(metrics={"acc": "acc"}))
    assert result.dataset is not None
    assert [a.key() for a in result.dataset.architectures] == [a.key() for a in archs]


def test_generic_mapping_errors_are_clear(tmp_path: Path) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match=r"no column 'net' \(columns: a, b\)"):
        import_files(
            "generic", [csv], space_of(MACRO), GenericMapping(arch="net", metrics={"m": "a"})
        )
    with pytest.raises(DatasetError, match="not a plain name"):
        import_files("generic", [csv], space_of(MACRO), GenericMapping(metrics={"top-1": "a"}))
    # A JSON-lines mapping to a column no row has is a wrong mapping, not empty values.
    archs = sample(space_of(MACRO), 2, seed=9)
    lines = rows_file(
        tmp_path / "s.jsonl",
        [{"arch": a.model_dump(mode="json"), "acc": 1.0} for a in archs],
    )
    with pytest.raises(DatasetError, match=r"reads column\(s\) accuracy, which no row has"):
        import_files(
            "generic", [lines], space_of(MACRO), GenericMapping(metrics={"acc": "accuracy"})
        )


# ----- CLI -------------------------------------------------------------------------


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_import_refuses_to_write_when_rows_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    entry = {"test_acc": [1.0, 2.0, 3.0], "mean_acc": 2.0, "std": 0.8, "params": 5, "flops": 9}
    path.write_text(json.dumps({"02012100": entry, "9": entry}))
    out = tmp_path / "out.jsonl"
    result = run(
        "data", "import", "--from", "nas-bench-macro", str(path), "--space", MACRO, "-o", str(out)
    )
    assert result.exit_code == 1
    assert f"{path}:9: key '9': expected 8 digits" in result.output
    assert (
        "read 2 rows (2 distinct as written), imported 1 networks, merged 0, rejected 1"
        in result.output
    )
    assert "nothing written" in result.output and not out.exists()
    args = [
        "data",
        "import",
        "--from",
        "nas-bench-macro",
        str(path),
        "--space",
        MACRO,
        "-o",
        str(out),
    ]
    assert run(*args, "--skip-bad").exit_code == 0 and out.exists()
    again = run(*args, "--skip-bad")
    assert again.exit_code == 1 and "exists; pass --force" in again.output
    assert run(*args, "--skip-bad", "--force").exit_code == 0
    assert len(load_dataset(out, space_of(MACRO))) == 1


def test_cli_generic_import_with_metric_options_and_describe(tmp_path: Path) -> None:
    space = space_of(MACRO)
    path = rows_file(
        tmp_path / "s.jsonl",
        [
            {"arch": a.model_dump(mode="json"), "acc": 90 + i, "lat": 1 + i}
            for i, a in enumerate(sample(space, 4, seed=2))
        ],
    )
    out = tmp_path / "d.jsonl"
    result = run(
        "data", "import", "--from", "generic", str(path), "--space", MACRO, "-o", str(out),
        "--metric", "acc=acc", "--metric", "lat=lat",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    described = run(
        "data", "describe", str(out), "--space", MACRO, "--json", "--target", "acc - lat"
    )
    info = json.loads(described.output)
    assert info["rows"] == 4 and info["metrics"]["acc"]["max"] == 93.0
    assert info["stage_depths"]["s2"] == {"3": 4}
    assert info["target_summary"]["min"] == 89.0
    table = run("data", "describe", str(out), "--space", MACRO)
    assert table.exit_code == 0 and "depth 3" in table.output and "acc" in table.output
    bad = run("data", "describe", str(out), "--space", MACRO, "--target", "acc - * lat")
    assert bad.exit_code == 1
    assert "error: invalid target expression (column 7)" in bad.output
    assert "    acc - * lat\n          ^" in bad.output
    unknown = run("data", "describe", str(out), "--space", MACRO, "--target", "top1")
    assert unknown.exit_code == 1 and "the data has: acc, lat" in unknown.output


def test_cli_generic_needs_a_mapping(tmp_path: Path) -> None:
    result = run(
        "data", "import", "--from", "generic", MACRO, "--space", MACRO, "-o", str(tmp_path / "o")
    )
    assert result.exit_code == 1 and "needs --map" in result.output


# ----- splits and statistics -------------------------------------------------------


def test_train_test_split_is_seeded_disjoint_and_90_10() -> None:
    split = train_test_split(1000, seed=3)
    assert len(split.test) == 100 and len(split.train) == 900
    assert sorted(split.train + split.test) == list(range(1000))
    assert train_test_split(1000, seed=3) == split
    assert train_test_split(1000, seed=4) != split
    tiny = train_test_split(3, test_fraction=0.01)
    assert len(tiny.test) == 1 and len(tiny.train) == 2
    with pytest.raises(ValueError):
        train_test_split(1)


def test_kfold_holds_every_row_out_once() -> None:
    folds = kfold_splits(23, k=5, seed=1)
    held = [i for f in folds for i in f.test]
    assert sorted(held) == list(range(23))
    assert {len(f.test) for f in folds} == {4, 5}
    assert all(set(f.train).isdisjoint(f.test) and len(f.train) + len(f.test) == 23 for f in folds)
    assert kfold_splits(23, k=5, seed=1) == folds
    with pytest.raises(ValueError):
        kfold_splits(3, k=5)


def test_label_stats_use_training_rows_only() -> None:
    space = space_of(OFA)
    archs = sample(space, 200, seed=8)
    labels = np.random.default_rng(1).normal(size=200)
    dataset = LabeledDataset(space=space, architectures=archs, metric_names=["y"], values=labels)
    split = train_test_split(200, seed=0)
    stats = label_stats(dataset, labels, split.train)
    train = np.array(split.train)
    assert stats.count == 180
    assert stats.mean == pytest.approx(labels[train].mean())
    assert stats.sd == pytest.approx(labels[train].std())
    for stage in ("s1", "s4"):
        for depth in (2, 3, 4):
            members = [i for i in split.train if archs[i].stages[stage].depth == depth]
            group = stats.by_stage[stage][depth]
            assert group.count == len(members)
            assert group.mean == pytest.approx(labels[members].mean())
            assert group.sd == pytest.approx(labels[members].std())
    assert stats.by_unit["s1"] == stats.by_stage["s1"]
    # Held-out labels never reach the statistics.
    changed = labels.copy()
    changed[split.test] += 100.0
    assert label_stats(dataset, changed, split.train) == stats


def test_label_stats_for_a_two_stage_unit_count_its_layers() -> None:
    space = space_of(str(SPACES / "ofa_proxyless.abs"))
    archs = sample(space, 60, seed=2)
    labels = np.arange(60, dtype=float)
    dataset = LabeledDataset(space=space, architectures=archs, metric_names=["y"], values=labels)
    stats = label_stats(dataset, labels)
    assert sorted(stats.by_unit["s56"]) == [3, 4, 5]  # s5 (2-4) + s6 (1)
    members = [i for i, a in enumerate(archs) if a.stages["s5"].depth + a.stages["s6"].depth == 4]
    assert stats.by_unit["s56"][4].count == len(members)
    assert stats.by_unit["s56"][4].mean == pytest.approx(labels[members].mean())


# ----- the shared benchmark data (acceptance) --------------------------------------


@cache
def imported(fmt: str, pattern: str, space: str):  # type: ignore[no-untyped-def]
    files = sorted(SHARED_DATA.glob(pattern))
    return import_files(fmt, files, space_of(space))


def check_round_trip(result, tmp_path: Path, space: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "data.jsonl"
    save_dataset(result.dataset, path)
    loaded = load_dataset(path, space_of(space))
    assert [a.key() for a in loaded.architectures] == [
        a.key() for a in result.dataset.architectures
    ]
    assert loaded.metric_names == result.dataset.metric_names
    assert np.array_equal(loaded.values, result.dataset.values, equal_nan=True)
    assert np.array_equal(loaded.counts, result.dataset.counts)


def test_dynast_ofa_csvs(shared_data: Path, tmp_path: Path) -> None:
    result = imported("ofa", "dynast_ofa_mbv3_acc/*.csv", OFA)
    report = result.report
    assert (report.read, report.distinct_raw, report.imported) == (2373, 2223, 2162)
    assert report.merged == 2373 - 2162 and report.rejected == []
    data = result.dataset
    assert data.metric_names == ["top1", "macs", "params"]
    assert int(data.counts.sum()) == 2373
    top1 = data.metric("top1")
    assert 70.9 < top1.min() < 71.1 and 77.4 < top1.max() < 77.6
    assert {a.globals["resolution"] for a in data.architectures} == {224}
    check_round_trip(result, tmp_path, OFA)


def test_help_ofa_latency_json(shared_data: Path, tmp_path: Path) -> None:
    result = imported("ofa", "help_ofa_latency/*.json", OFA)
    report = result.report
    assert (report.read, report.imported, report.merged, len(report.rejected)) == (5000, 5000, 0, 0)
    data = result.dataset
    assert len(data.metric_names) == 12 and "lat_2080ti_1" in data.metric_names
    assert not np.isnan(data.values).any()
    resolutions = {a.globals["resolution"] for a in data.architectures}
    assert min(resolutions) == 128 and max(resolutions) == 224
    assert describe(data).globals["resolution"].distinct == len(resolutions)
    check_round_trip(result, tmp_path, OFA)


def test_nas_bench_macro_json(shared_data: Path, tmp_path: Path) -> None:
    result = imported("nas-bench-macro", "nas_bench_macro/*.json", MACRO)
    report = result.report
    # 6561 architectures, 3969 networks: a stride-1 identity moved within a stage is one.
    assert (report.read, report.imported, report.merged, len(report.rejected)) == (
        6561,
        3969,
        2592,
        0,
    )
    assert (report.architectures, report.equivalent) == (6561, 2592)
    data = result.dataset
    keys = {a.key() for a in data.architectures}
    assert len(keys) == 3969 and data.counts.max() == 4
    row = next(
        i
        for i, a in enumerate(data.architectures)
        if a.key() == canonicalize(space_of(MACRO), macro_arch("02012100")).key()
    )
    assert data.row_metrics(row)["params"] == 890666 and data.row_metrics(row)["flops"] == 47327744
    assert parse_target("mean_acc").evaluate(data).min() == pytest.approx(45.363, abs=1e-3)
    check_round_trip(result, tmp_path, MACRO)
