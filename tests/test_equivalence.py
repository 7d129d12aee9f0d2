"""Equivalent architectures: the network key of space/equivalence.py."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from autobuild_dsl.compile.network import build_module
from autobuild_dsl.data import load_dataset
from autobuild_dsl.lang import compile_file, compile_text
from autobuild_dsl.search.evaluators import (
    EvaluationError,
    Evaluator,
    LookupConfig,
    PythonConfig,
    make_evaluator,
)
from autobuild_dsl.search.evolution import SearchConfig, run_search
from autobuild_dsl.search.pareto import parse_objectives
from autobuild_dsl.search.runner import EvaluationRunner
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import canonicalize, iter_architectures, space_size
from autobuild_dsl.space.equivalence import (
    TooFewNetworks,
    count_distinct_networks,
    distinct,
    may_have_equivalences,
    network_key,
    network_keys,
    sample_distinct,
)
from autobuild_dsl.space.resolve import resolve

SPACES = Path(__file__).resolve().parent.parent / "spaces"
LABELS = {"0": "identity", "1": "mb_e3k3", "2": "mb_e6k5"}


@pytest.fixture(scope="module")
def macro():
    return compile_file(SPACES / "nas_bench_macro.abs")


def macro_arch(space, digits: str):
    stages, start = {}, 0
    for stage in space.stages:
        depth = stage.depths[0]
        layers = [{"op": LABELS[c]} for c in digits[start : start + depth]]
        stages[stage.name] = {"depth": depth, "layers": layers}
        start += depth
    return canonicalize(space, {"stages": stages})


def test_nas_bench_macro_holds_3969_distinct_networks(macro) -> None:
    # 3 stages; a stage's first layer has stride 2 (an identity there is a 1x1 conv), a
    # later identity is a no-op: 9 * 21 * 21 distinct networks among 3^8 architectures.
    archs = list(iter_architectures(macro))
    keys = network_keys(macro, archs)
    assert len(archs) == 6561
    assert len(set(keys)) == 3969
    # The largest classes: stages 2 and 3 each hold one mbconv in their two stride-1 slots,
    # before or after the identity (x0 = 0x) -> 2 * 2 choice vectors per network.
    assert max(Counter(keys).values()) == 4


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("22212220", "22212202", True),  # a stride-1 identity moved within stage 3
        ("10100000", "10010000", False),  # stage 2's first identity is a strided 1x1 conv
        ("12000000", "12000000", True),
        ("12101000", "12110000", True),
        ("12100000", "12200000", False),
        ("12120100", "12121000", False),  # the identity moves across a stage boundary
    ],
)
def test_network_key_pairs(macro, a: str, b: str, same: bool) -> None:
    ka, kb = network_key(macro, macro_arch(macro, a)), network_key(macro, macro_arch(macro, b))
    assert (ka == kb) is same
    assert len(ka) == 32


def test_equal_keys_compile_to_the_same_function(macro) -> None:
    torch.manual_seed(0)
    a = build_module(resolve(macro, macro_arch(macro, "22212220"))).eval()
    b = build_module(resolve(macro, macro_arch(macro, "22212202"))).eval()
    pa, pb = list(a.parameters()), list(b.parameters())
    assert [p.shape for p in pa] == [p.shape for p in pb]
    with torch.no_grad():
        for x, y in zip(pa, pb, strict=True):
            y.copy_(x)
        for x, y in zip(a.buffers(), b.buffers(), strict=True):
            y.copy_(x)
        image = torch.randn(2, 3, 32, 32)
        assert torch.allclose(a(image), b(image))


TINY = """
space tiny {
  input(channels = 3, size = 16)
  stem { conv(out = 8, kernel = 3) }
  stage e {
    depth 2
    layer conv(out = 8, kernel = 3) | identity() | dropout(p = {0.0, 0.5})
    after downsample()
  }
  stage d {
    depth 2
    before upsample()
    layer conv(out = 8, kernel = 3) | identity(out = 8)
  }
  SKIP
  head { pool() linear(out = 2) }
}
"""


def test_no_op_nodes_merge_outside_skip_stages_only() -> None:
    plain = compile_text(TINY.replace("SKIP", ""))
    # e: {conv, identity, dropout 0, dropout 0.5}^2 -> sequences of {conv, drop.5} of length
    # 0..2: 1 + 2 + 4 = 7; d: {conv, identity}^2 -> 3 (identity(out = 8) keeps 8 channels).
    assert space_size(plain) == 16 * 4
    assert count_distinct_networks(plain) == 7 * 3
    # A skip pushes and pops at layer boundaries: no layer of e or d is interchangeable.
    wired = compile_text(TINY.replace("SKIP", "skip e -> d"))
    assert count_distinct_networks(wired) == space_size(wired)


def test_the_key_ignores_the_space_name_and_repeats(macro) -> None:
    renamed = compile_text(
        (SPACES / "nas_bench_macro.abs").read_text().replace("space nas_bench_macro", "space x")
    )
    arch = macro_arch(macro, "21012010")
    assert network_key(macro, arch) == network_key(renamed, macro_arch(renamed, "21012010"))
    kept = [a for a, _ in distinct(macro, [arch, macro_arch(macro, "21012001"), arch])]
    assert kept == [arch]


def test_equivalence_helpers_on_large_spaces() -> None:
    space = compile_file(SPACES / "mbv3.abs")
    assert not may_have_equivalences(space)
    assert count_distinct_networks(space) is None  # far too many to enumerate
    assert may_have_equivalences(compile_file(SPACES / "nas_bench_macro.abs"))


# ----------------------------------------------------------------------------- uses


def macro_code(arch) -> str:
    code = {label: digit for digit, label in LABELS.items()}
    return "".join(code[layer["op"]] for s in arch.stages.values() for layer in s.layers)


def abc(*args: str):
    from click.testing import CliRunner

    from autobuild_dsl.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_import_merges_equivalent_rows_and_says_so(tmp_path: Path) -> None:
    source = tmp_path / "macro.json"
    rows = {"22212220": 91.5, "22212202": 91.5, "00000000": 45.4, "22212022": 92.0}
    source.write_text(json.dumps({k: {"mean_acc": v, "params": 7} for k, v in rows.items()}))
    out = tmp_path / "data.jsonl"
    args = ["--from", "nas-bench-macro", source, "--space", SPACES / "nas_bench_macro.abs"]
    done = abc("data", "import", *args, "-o", out)
    assert done.exit_code == 0, done.output
    assert "imported 3 networks, merged 1" in done.output
    assert "4 rows -> 3 distinct networks (1 architectures merged" in done.output
    data = load_dataset(out, compile_file(SPACES / "nas_bench_macro.abs"))
    assert [macro_code(a) for a in data.architectures] == ["22212220", "00000000", "22212022"]
    assert list(data.counts) == [2, 1, 1] and data.metric("mean_acc")[0] == 91.5


REDUCED = """space r extends nas_bench_macro from "{macro}" {{
  restrict s1 to {{ [(op = mb_e6k5), (op = mb_e6k5)] }}
  restrict s2 to {{ [(op = mb_e6k5), (op = mb_e6k5), (op = mb_e6k5)] }}
  restrict s3 to {{
    [(op = mb_e3k3), (op = mb_e6k5), (op = identity)],
    [(op = mb_e3k3), (op = identity), (op = mb_e6k5)],
    [(op = mb_e6k5), (op = mb_e6k5), (op = mb_e6k5)],
  }}
}}
"""


@pytest.fixture(scope="module")
def reduced():
    text = REDUCED.format(macro=SPACES / "nas_bench_macro.abs")
    return compile_text(text, "reduced.abs", space="r")


@pytest.fixture(scope="module")
def narrow():
    """The reduced space without the module 102 of s3 (120 is kept: the same network)."""
    text = REDUCED.format(macro=SPACES / "nas_bench_macro.abs")
    text = text.replace("    [(op = mb_e3k3), (op = identity), (op = mb_e6k5)],\n", "")
    return compile_text(text, "narrow.abs", space="r")


def full_table(tmp_path: Path, codes: dict[str, float]) -> Path:
    """A labeled dataset of the full NAS-Bench-Macro space, as `abc data import` writes."""
    macro = compile_file(SPACES / "nas_bench_macro.abs")
    lines = [
        json.dumps({"arch": macro_arch(macro, c).model_dump(mode="json"), "metrics": {"acc": v}})
        for c, v in codes.items()
    ]
    path = tmp_path / "table.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reduced_space_counts_and_samples_distinct_networks(reduced) -> None:
    assert space_size(reduced) == 3 and count_distinct_networks(reduced) == 2
    assert len({network_key(reduced, a) for a in sample_distinct(reduced, 2, seed=1)}) == 2
    with pytest.raises(TooFewNetworks, match="holds 2 distinct networks, not 3"):
        sample_distinct(reduced, 3)


def test_lookup_accepts_a_table_larger_than_the_space(narrow, tmp_path: Path) -> None:
    # 22222102 is outside the narrow space as written, but the same network as 22222120.
    table = full_table(tmp_path, {"22222102": 91.0, "11111111": 80.0, "00000000": 45.0})
    lookup = make_evaluator(LookupConfig(data=str(table)), narrow)
    assert len(lookup) == 3 and lookup.outside == 3
    assert len(lookup.notes) == 1 and lookup.notes[0].startswith(
        f"{table}: 3 rows are outside space r (e.g. {table}:1: stages.s3: "
    )
    assert lookup.notes[0].endswith("they answer only for an equivalent network of the space")
    by_code = {macro_code(a): a for a in iter_architectures(narrow)}
    assert set(by_code) == {"22222120", "22222222"}
    assert lookup.evaluate([by_code["22222120"]]) == [{"acc": 91.0}]
    with pytest.raises(EvaluationError, match=r"not in the table .*3 rows outside the space"):
        lookup.evaluate([by_code["22222222"]])


def test_cli_search_on_a_reduced_space_with_the_full_table(reduced, tmp_path: Path) -> None:
    table = full_table(tmp_path, {"22222102": 91.0, "22222222": 92.0, "11111111": 80.0})
    space_file = tmp_path / "reduced.abs"
    space_file.write_text(REDUCED.format(macro=SPACES / "nas_bench_macro.abs"))
    out = tmp_path / "search"
    done = abc(
        "search", space_file, "--space", "r", "--evaluator", f"lookup:{table}",
        "--objectives", "max acc", "--budget", "5", "--init", "5", "-o", out, "--no-cache",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "1 row is outside space r" in done.output
    records = [json.loads(line) for line in (out / "evaluated.jsonl").read_text().splitlines()]
    # Three architectures, two networks: the search evaluates each network once and stops.
    assert len(records) == 2 and sorted(r["metrics"]["acc"] for r in records) == [91.0, 92.0]


class Counting(Evaluator):
    def __init__(self, space) -> None:
        super().__init__(PythonConfig(function="counting:count"), space)
        self.calls: list[str] = []

    @property
    def identity(self) -> str:
        return "counting"

    def evaluate(self, archs):
        self.calls.extend(macro_code(a) for a in archs)
        return [{"n": float(len(self.calls))} for _ in archs]


def test_the_runner_pays_once_per_network(macro, tmp_path: Path) -> None:
    archs = [macro_arch(macro, c) for c in ("22212220", "22212202", "22212220", "22212022")]
    runner = EvaluationRunner(macro, evaluator=Counting(macro), cache_dir=tmp_path)
    first = runner.evaluate(archs)
    assert runner.evaluator.calls == ["22212220", "22212022"]
    assert first[0] == first[1] == first[2] != first[3]
    again = EvaluationRunner(macro, evaluator=Counting(macro), cache_dir=tmp_path)
    assert again.evaluate([macro_arch(macro, "22212202")]) == [first[0]]
    assert again.evaluator.calls == [] and again.hits == 1


def test_the_search_never_evaluates_two_equivalent_architectures(reduced) -> None:
    config = SearchConfig(
        objectives=parse_objectives("max n"), budget=10, init=10, per_generation=5
    )
    runner = EvaluationRunner(reduced, evaluator=Counting(reduced))
    result = run_search(reduced, runner, config)
    assert result.stopped == "exhausted" and len(result.records) == 2
    assert len(runner.evaluator.calls) == 2
    assert (
        len(
            {
                network_key(reduced, a)
                for a in map(Architecture.model_validate, (r.arch for r in result.records))
            }
        )
        == 2
    )


def test_compile_and_sample_report_distinct_networks(tmp_path: Path) -> None:
    done = abc("compile", SPACES / "nas_bench_macro.abs", "--json")
    assert json.loads(done.output)["networks"] == 3969
    assert "networks" not in json.loads(abc("compile", SPACES / "mbv3.abs", "--json").output)
    done = abc("compile", SPACES / "nas_bench_macro.abs")
    assert "distinct networks: 3,969" in done.output
    big = tmp_path / "big.abs"
    big.write_text(
        TINY.replace("SKIP", "").replace("depth 2\n    layer conv", "depth 1..7\n    layer conv")
    )
    assert (
        "distinct networks: not counted (over 10,000 architectures)" in abc("compile", big).output
    )
    out = tmp_path / "s.jsonl"
    done = abc("sample", SPACES / "nas_bench_macro.abs", "-n", "50", "--distinct", "-o", out)
    assert done.exit_code == 0 and "(50 distinct networks)" in done.output
    done = abc("sample", SPACES / "nas_bench_macro.abs", "-n", "4000", "--distinct")
    assert done.exit_code == 1 and "holds 3,969 distinct networks" in done.output


def test_equivalent_architectures_have_equal_benchmark_results(shared_data: Path, macro) -> None:
    """NAS-Bench-Macro trained every architecture: one network, one set of results."""
    table = json.loads(
        (shared_data / "nas_bench_macro" / "nas-bench-macro_cifar10.json").read_text()
    )
    groups: dict[str, list[dict]] = {}
    for code, row in table.items():
        groups.setdefault(network_key(macro, macro_arch(macro, code)), []).append(row)
    assert len(table) == 6561 and len(groups) == 3969
    for rows in groups.values():
        assert all(row == rows[0] for row in rows)  # accuracies, params and flops alike
