"""Build quality on NAS-Bench-Macro: from N labels, does AutoBuild build better networks?

NAS-Bench-Macro holds the CIFAR-10 accuracy of every architecture of its space, so the true
accuracy and rank of anything a method returns is known. Ranks are among *distinct
networks* when `space.equivalence.network_key` is available (3969 of the 6561 rows: a
stride-1 identity at different places of a stage is one network), else among the rows.

For each label budget N and seed, N random distinct networks (with their true `mean_acc`)
go to every method, which returns an ordered list; like is compared with like:

- labeled: the labels themselves, best first (what a user already has);
- AutoBuild pooled (the product's default): a 5-fold ranking-loss ensemble, modules read by
  their pooled module-graph embedding, `build_networks(top_k=3, n=4)` (near-ties broken by
  prediction);
- AutoBuild last node (the paper's reading), same ensemble, same build;
- ES (the paper's Exhaustive Search): a 5-fold MSE-only ensemble on the same labels scores
  every network of the space; its top 4.

Reported per method: the true accuracy of #1, the best of the top 4, and the mean of the
top 4 (the paper's Table 1 figure), each with its true rank; medians over seeds. Also the
Spearman correlation of each unit's module scores with the true module marginals (mean
accuracy of all networks holding the module).

    python benchmarks/bench_build_quality.py --budgets 200 --seeds 5 --markdown docs/results/build_quality.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autobuild_dsl.data.dataset import LabeledDataset  # noqa: E402
from autobuild_dsl.design.workflow import build_networks  # noqa: E402
from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, load_run, train_run  # noqa: E402
from autobuild_dsl.scorer.run import predict  # noqa: E402
from autobuild_dsl.space.architecture import Architecture  # noqa: E402
from autobuild_dsl.space.decisions import canonicalize  # noqa: E402

SPACE = ROOT / "spaces" / "nas_bench_macro.abs"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nas_bench_macro" / "nas-bench-macro_cifar10.json"
LABELS = {"0": "identity", "1": "mb_e3k3", "2": "mb_e6k5"}
DEPTHS = [("s1", 2), ("s2", 3), ("s3", 3)]
METHODS = ["labeled", "AutoBuild pooled", "AutoBuild last node", "ES"]
FIGURES = ["#1", "best of 4", "mean of top 4"]


def arch_of(code: str) -> Architecture:
    stages, start = {}, 0
    for name, depth in DEPTHS:
        layers = [{"op": LABELS[c]} for c in code[start : start + depth]]
        stages[name] = {"depth": depth, "choices": {}, "layers": layers}
        start += depth
    return Architecture.model_validate(
        {"space": "nas_bench_macro", "globals": {}, "stages": stages}
    )


def network_key_function(space: object):  # type: ignore[no-untyped-def]
    try:
        from autobuild_dsl.space.equivalence import network_key
    except ImportError:  # before equivalence landed: every row is its own network
        return None
    return lambda arch: network_key(space, arch)  # type: ignore[arg-type]


class Truth:
    """True accuracy, distinct networks, ranks, and module marginals of the whole table."""

    def __init__(self, table: dict[str, dict], space: object) -> None:
        self.space = space
        self.codes = sorted(table)
        self.acc = {c: float(table[c]["mean_acc"]) for c in self.codes}
        keyer = network_key_function(space)
        self.network = {c: (keyer(arch_of(c)) if keyer else c) for c in self.codes}
        by_network: dict[str, str] = {}
        for code in self.codes:
            by_network.setdefault(self.network[code], code)
        self.distinct = list(by_network.values())  # one code per network
        self.distinct_keys = keyer is not None
        values = np.array([self.acc[c] for c in self.distinct])
        self.sorted = np.sort(values)[::-1]
        self.by_key = {arch_of(c).key(): c for c in self.codes}
        # Module marginals: mean accuracy over every row holding the module in its stage.
        self.marginal: dict[str, dict[str, float]] = {}
        start = 0
        for name, depth in DEPTHS:
            groups: dict[str, list[float]] = defaultdict(list)
            for code in self.codes:
                groups[code[start : start + depth]].append(self.acc[code])
            self.marginal[name] = {k: float(np.mean(v)) for k, v in groups.items()}
            start += depth

    def code(self, arch: Architecture | dict) -> str:
        canonical = canonicalize(self.space, arch)  # type: ignore[arg-type]
        return self.by_key[canonical.key()]

    def rank(self, value: float) -> int:
        return int((self.sorted > value + 1e-9).sum()) + 1


def distinct_top(codes: list[str], truth: Truth, k: int) -> list[str]:
    seen: set[str] = set()
    out = []
    for code in codes:
        if truth.network[code] in seen:
            continue
        seen.add(truth.network[code])
        out.append(code)
        if len(out) == k:
            break
    return out


def figures(codes: list[str], truth: Truth) -> dict[str, float]:
    accs = [truth.acc[c] for c in codes[:4]]
    return {"#1": accs[0], "best of 4": max(accs), "mean of top 4": float(np.mean(accs))}


def module_code(parts: list) -> str:
    digits = {v: k for k, v in LABELS.items()}
    return "".join(digits[layer["op"]] for p in parts for layer in p.layers[: p.depth])


def module_spearman(ranking: object, truth: Truth) -> dict[str, float]:
    out = {}
    for table in ranking.tables:  # type: ignore[attr-defined]
        codes = [module_code(table.parts(i)) for i in range(len(table))]
        true = [truth.marginal[table.unit][c] for c in codes]
        out[table.unit] = float(spearmanr(np.asarray(table.score), true).statistic)
    return out


def cpu_seconds() -> float:
    """CPU time of this process and of the worker processes it waited for."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def one_trial(
    work: Path, truth: Truth, space: object, n: int, seed: int, epochs: int, jobs: int
) -> dict:
    folder = work / f"n{n}_s{seed}"
    picked = random.Random(seed).sample(truth.distinct, n)
    archs = [arch_of(c) for c in picked]
    y = np.array([[truth.acc[c]] for c in picked])
    data = LabeledDataset(space, archs, ["mean_acc"], y)  # type: ignore[arg-type]
    ensemble = EnsembleConfig(folds=5, seeds=1)
    timing: dict[str, float] = {}
    result: dict[str, dict[str, float]] = {}
    ordered_labels = sorted(picked, key=lambda c: -truth.acc[c])
    result["labeled"] = figures(distinct_top(ordered_labels, truth, 4), truth)

    start = time.process_time()
    run = train_run(
        space,  # type: ignore[arg-type]
        data,
        "mean_acc",
        folder / "run",
        train=TrainConfig(epochs=epochs),
        ensemble=ensemble,
        jobs=jobs,
        force=True,
        space_path=str(SPACE),
    )
    timing["train ranked"] = time.process_time() - start
    spearman: dict[str, dict[str, float]] = {}
    for label, score in (("AutoBuild pooled", "pooled"), ("AutoBuild last node", "last")):
        start = time.process_time()
        built, rankings = build_networks([run], top_k=3, n=8, score=score)  # type: ignore[arg-type]
        codes = distinct_top([truth.code(b.arch) for b in built.architectures], truth, 4)
        result[label] = figures(codes, truth)
        spearman[label] = module_spearman(rankings[0], truth)
        timing[label] = time.process_time() - start

    start = time.process_time()
    mse = train_run(
        space,  # type: ignore[arg-type]
        data,
        "mean_acc",
        folder / "run_mse",
        train=TrainConfig(epochs=epochs, loss="mse"),
        ensemble=ensemble,
        jobs=jobs,
        force=True,
        space_path=str(SPACE),
    )
    encoder = mse.encoder()
    every = [arch_of(c) for c in truth.distinct]
    predicted, _ = predict(load_run(folder / "run_mse"), [encoder.encode(a) for a in every])
    order = [truth.distinct[i] for i in np.argsort(-predicted, kind="stable")]
    result["ES"] = figures(distinct_top(order, truth, 4), truth)
    timing["ES"] = time.process_time() - start
    return {"n": n, "seed": seed, "acc": result, "spearman": spearman, "cpu_seconds": timing}


def summarise(trials: list[dict], truth: Truth, budgets: list[int]) -> list[str]:
    lines = [
        "| N | method | #1 | best of 4 | mean of top 4 |",
        "|---|---|---|---|---|",
    ]
    for n in budgets:
        rows = [t for t in trials if t["n"] == n]
        for method in METHODS:
            cells = []
            for figure in FIGURES:
                values = [t["acc"][method][figure] for t in rows]
                ranks = [truth.rank(v) for v in values]
                cells.append(
                    f"{statistics.median(values):.2f} (rank {statistics.median(ranks):.0f}; "
                    f"{min(ranks)}-{max(ranks)})"
                )
            lines.append(f"| {n} | {method} | " + " | ".join(cells) + " |")
    return lines


def spearman_table(trials: list[dict], budgets: list[int]) -> list[str]:
    units = [name for name, _ in DEPTHS]
    lines = [
        "| N | module score | " + " | ".join(units) + " |",
        "|---|---|" + "---|" * len(units),
    ]
    for n in budgets:
        rows = [t for t in trials if t["n"] == n]
        for method in ("AutoBuild pooled", "AutoBuild last node"):
            cells = []
            for unit in units:
                values = [t["spearman"][method][unit] for t in rows]
                cells.append(
                    f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
                )
            lines.append(f"| {n} | {method.split(' ', 1)[1]} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--budgets", default="50,100,200,400")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench" / "build_quality")
    parser.add_argument("--markdown", type=Path, help="write the results section here")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skipped: {args.data} not found (see ../shared/data/README.md)")
        return 0
    budgets = [int(b) for b in args.budgets.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    space = compile_file(str(SPACE))
    truth = Truth(json.loads(args.data.read_text()), space)
    trials = []
    wall, cpu = time.perf_counter(), cpu_seconds()
    for n in budgets:
        for seed in range(args.seeds):
            trial = one_trial(args.work, truth, space, n, seed, args.epochs, args.jobs)
            trials.append(trial)
            shown = "; ".join(
                f"{m} " + "/".join(f"{truth.rank(v)}" for v in trial["acc"][m].values())
                for m in METHODS
            )
            print(f"N={n} seed={seed} ranks #1/best4/mean4: {shown}", flush=True)
            (args.work / "trials.json").write_text(json.dumps(trials, indent=1))
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    table = summarise(trials, truth, budgets)
    spear = spearman_table(trials, budgets)
    print("\n".join(table))
    print("\n".join(spear))
    load = os.getloadavg()
    print(
        f"best possible: {truth.sorted[0]:.2f}; {len(truth.distinct)} distinct networks; "
        f"wall {wall:.0f} s, CPU {cpu:.0f} s (this process and its workers), load {load[0]:.1f}"
    )
    if args.markdown:
        command = (
            f"python benchmarks/bench_build_quality.py --budgets {args.budgets} "
            f"--seeds {args.seeds} --epochs {args.epochs}"
        )
        unit = "distinct networks" if truth.distinct_keys else "rows"
        section = [
            "## Build quality on NAS-Bench-Macro",
            "",
            f"Median over {args.seeds} seeds of the true CIFAR-10 accuracy (%) of what each",
            f"method returns, with the median true rank among the {len(truth.distinct)} {unit}",
            f"(range over seeds; the best is {truth.sorted[0]:.2f}, rank 1). Every method gets",
            "the same N labeled networks. AutoBuild: 5-fold ranking-loss ensemble,",
            f"{args.epochs} epochs, top-3 modules per stage, n = 4 built (near-ties by",
            "prediction). ES: 5-fold MSE-only ensemble on the same labels, scoring every",
            "network of the space. #1 vs #1, best of 4 vs best of 4, mean of the top 4 vs the",
            "same (the paper's Table 1 figure).",
            "",
            *table,
            "",
            "Spearman of each stage's module scores against the true module marginals (mean",
            "accuracy of every network holding the module), median (range) over seeds:",
            "",
            *spear,
            "",
            f"Command: `{command}`: wall {wall / 60:.0f} min, CPU {cpu / 60:.0f} min (this",
            f"process and its workers), load average {load[0]:.1f} on {os.cpu_count()} cores",
            "(a shared machine).",
            "",
        ]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
