"""AutoBuild-NAS as a loop (`abc improve`) on NAS-Bench-Macro, against search baselines.

NAS-Bench-Macro holds every one of its 6561 networks with its CIFAR-10 accuracy and its
exact MACs (the table's `flops`, which the compiler reproduces exactly), so both the true
rank of what a method returns and the true Pareto front are known.

1. Single objective (max mean_acc): N random labels, then B extra real evaluations.
   - loop: `run_loop` (the library behind `abc improve`), first k from the budget,
     `--per-round` evaluations per round (scorers retrained every round), `--inner` search
     inside the reduced space warm-started with the labels inside it;
   - RE / TPE: regularized evolution and Optuna TPE warm-started with the same N labels,
     given B evaluations on the full space;
   - one-shot AutoBuild: the #1 built network of the first round's scorers (no evaluation);
   - ES: the first round's ensemble's prediction head scores all 6561 networks, top 1.
   Every method pays once per network (an equivalent architecture is free). The loop's
   first k depends on B, so every B is a run of its own; round 0 trains on the labels
   alone, so its scorers are trained once per seed and copied into the other runs.
2. The paper's Figure 5: max accuracy, min MMACs; three targets `mean_acc - a * MMACs`;
   B evaluations, like for like: AutoBuild-NAS (the loop, union of the three targets'
   top-k), Stage-Full and Layer-Full (evolution on the full space, population seeded with
   the labels) all get the N labels free; hypervolume of the front of labels + evaluations
   (normalised by the space's worst accuracy and largest MACs) and how many front networks
   lie beyond the labels' front. The paper's setting (evolution from random networks, no
   labels) is reported alongside.

Seeds 100-104 are for choosing the loop's settings (`--first-seed 100 --seeds 105`), seeds
0-4 (or 0-9) for reporting. Finished trials are kept in `--work` and reused, so seeds can
run in parallel processes (`--first-seed S --seeds S+1`) and a last run collects them.

    python benchmarks/bench_loop.py --markdown docs/results/loop.md
    python benchmarks/bench_loop.py --seeds 1 --epochs 20 --folds 2    # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autobuild_dsl.data.dataset import load_dataset  # noqa: E402
from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.search.baselines import regularized_evolution, tpe_search  # noqa: E402
from autobuild_dsl.search.evolution import SearchConfig, run_search  # noqa: E402
from autobuild_dsl.search.loop import LoopConfig, run_loop  # noqa: E402
from autobuild_dsl.search.pareto import Objective, non_dominated  # noqa: E402
from autobuild_dsl.space.architecture import Architecture  # noqa: E402
from autobuild_dsl.space.equivalence import network_key, network_keyer  # noqa: E402

SPACE_FILE = ROOT / "spaces" / "nas_bench_macro.abs"
# ../shared next to the main checkout; a worktree sits one level deeper (wt/NAME).
DEFAULT_DATA = next(
    (
        base / "shared" / "data" / "nas_bench_macro" / "nas-bench-macro_cifar10.json"
        for base in (ROOT.parent, ROOT.parent.parent)
        if (base / "shared" / "data").exists()
    ),
    ROOT.parent / "shared" / "data" / "nas_bench_macro" / "nas-bench-macro_cifar10.json",
)
SINGLE = ["loop", "RE (warm)", "TPE (warm)", "one-shot AutoBuild", "ES"]
FRONT_METHODS = ["AutoBuild-NAS", "Stage-Full", "Layer-Full"]
# The paper's AutoBuild-NAS: three trade-off targets, MACs predicted (no free metrics).
PAPER = "AutoBuild-NAS, 3 targets, MACs predicted"
# The paper's setting, for reference: evolution from random networks, without the labels.
COLD_METHODS = ["Stage-Full (no labels)", "Layer-Full (no labels)"]
COSTS = [0.02, 0.1, 0.5]  # a in mean_acc - a * MMACs: slopes along the true front
USEFUL = 85.0
# The loop's settings, chosen on seeds 100-104 (docs/loop.md), reported on seeds 0-4.
INNER = "guided"
PER_ROUND = 8
TOP_K: int | None = None
INNER_TEXT = {
    "evolution": "regularized evolution (Stage-Full mutation)",
    "tpe": "TPE over the kept modules",
    "guided": "the networks the round's scorers place best (guided)",
}  # accuracy (%) below which a network adds nothing to the second hypervolume


class _ByNetwork(dict):
    """Metrics by architecture key; an architecture missing from the table (an imported table
    keeps one row per network) is answered by an equivalent one."""

    def __init__(self, space: object) -> None:
        super().__init__()
        self.space = space
        self.row_of: dict[str, str] = {}

    def add(self, arch: Architecture, metrics: dict[str, float]) -> None:
        self[arch.key()] = metrics
        self.row_of.setdefault(network_key(self.space, arch), arch.key())  # type: ignore[arg-type]

    def __missing__(self, key: str) -> dict[str, float]:
        arch = Architecture.model_validate_json(key)
        return self[self.row_of[network_key(self.space, arch)]]  # type: ignore[arg-type]


class Table:
    """The benchmark as a lookup: metrics of every architecture, true ranks, true front."""

    def __init__(self, path: Path, space: object) -> None:
        self.dataset = load_dataset(path, space)  # type: ignore[arg-type]
        self.metrics = _ByNetwork(space)
        for i, arch in enumerate(self.dataset.architectures):
            row = self.dataset.row_metrics(i)
            self.metrics.add(arch, {"mean_acc": row["mean_acc"], "mmacs": row["flops"] / 1e6})
        # Ranks are among distinct networks (6561 architectures are 3969 networks).
        networks: dict[str, float] = {}
        for arch in self.dataset.architectures:
            networks.setdefault(network_key(space, arch), self.metrics[arch.key()]["mean_acc"])  # type: ignore[arg-type]
        self.networks = len(networks)
        self.sorted = np.sort(np.array(list(networks.values())))[::-1]
        self.points = np.array([[-m["mean_acc"], m["mmacs"]] for m in self.metrics.values()])
        self.low = self.points.min(axis=0)
        self.high = self.points.max(axis=0)
        self.true_front = self.points[non_dominated(self.points)]

    def rank(self, acc: float) -> int:
        """1 + distinct networks with a strictly higher accuracy."""
        return int((self.sorted > acc + 1e-9).sum()) + 1

    def evaluate(self, archs: list[Architecture], on_evaluated: object = None) -> list[dict]:
        return [dict(self.metrics[a.key()]) for a in archs]

    def hypervolume(self, points: np.ndarray, floor: float | None = None) -> float:
        """Of (-acc, MMACs) points, normalised to the space's box; with `floor`, the box
        starts at that accuracy (networks below it count for nothing)."""
        from pymoo.indicators.hv import HV

        low, high = self.low.copy(), self.high.copy()
        if floor is not None:
            high[0] = -floor
            points = points[points[:, 0] < -floor]
        if not len(points):
            return 0.0
        normal = (points - low) / (high - low)
        return float(HV(ref_point=np.array([1.0, 1.0]))(normal))


def load_table(imported: Path, space) -> Table:  # type: ignore[no-untyped-def]
    """The table, pickled next to the imported file: building it (a network key for each
    of the 6561 architectures) costs seconds of CPU in every parallel process."""
    import pickle

    cached = imported.with_suffix(".table.pkl")
    if cached.exists() and cached.stat().st_mtime >= imported.stat().st_mtime:
        return pickle.loads(cached.read_bytes())
    table = Table(imported, space)
    temporary = cached.with_name(f"{cached.name}.{os.getpid()}")
    temporary.write_bytes(pickle.dumps(table))
    os.replace(temporary, cached)
    return table


class Runner:
    """What the loop and the searches call: the table, counting what is paid for."""

    identity = "nas-bench-macro table"

    def __init__(self, table: Table) -> None:
        self.table = table
        self.paid = 0

    def evaluate(self, archs, on_evaluated=None):  # type: ignore[no-untyped-def]
        self.paid += len(archs)
        return self.table.evaluate(list(archs))


class FreeMacs:
    """The free evaluator of the Figure 5 loop with `--front-free`: MMACs only (a count the
    compiler makes for any network, `measure:macs`; here the table's, the same figure)."""

    identity = "nas-bench-macro table: mmacs"

    def __init__(self, table: Table) -> None:
        self.table = table

    def evaluate(self, archs):  # type: ignore[no-untyped-def]
        return [{"mmacs": self.table.metrics[a.key()]["mmacs"]} for a in archs]


def labels_for(table: Table, n: int, seed: int):  # type: ignore[no-untyped-def]
    picked = random.Random(seed).sample(range(len(table.dataset)), n)
    data = table.dataset.subset(picked)
    # The labels as a user would hold them: accuracy and MMACs only.
    data.metric_names = ["mean_acc", "mmacs"]
    data.values = np.array(
        [
            [table.metrics[a.key()]["mean_acc"], table.metrics[a.key()]["mmacs"]]
            for a in data.architectures
        ]
    )
    return data


def es_top1(run_folder: Path, table: Table) -> float:
    """The ensemble's predicted best of all networks (its prediction head), true accuracy."""
    from autobuild_dsl.scorer import load_run, predict

    run = load_run(run_folder)
    archs = table.dataset.architectures
    mean, _ = predict(run, run.encoder().encode_many(archs))
    best = int(np.argmax(np.asarray(mean)))
    return table.metrics[archs[best].key()]["mean_acc"]


def variant(args) -> str:  # type: ignore[no-untyped-def]
    """The loop settings a trial depends on, in its folder and cache names."""
    return (
        f"{args.inner}_p{args.per_round}"
        + (f"_k{args.top_k}" if args.top_k else "")
        + ("_nowiden" if args.no_widen_on_stall else "")
    )


def front_variant(args) -> str:  # type: ignore[no-untyped-def]
    """The Figure 5 loop's settings in its folder and cache names ("" for the first ones)."""
    costs = "" if args.front_costs == "fixed" else f"_{args.front_costs}"
    if (args.inner, args.front_round, args.front_top_k, costs) == ("evolution", 125, 3, ""):
        return ""
    k = args.front_top_k or "auto"
    refine = f"_r{args.front_refine:g}" if args.front_refine else ""
    free = "_free" if args.front_free else ""
    targets = "_acc" if args.front_targets == "objectives" else ""
    return f"_{args.inner}_p{args.front_round}_k{k}{costs}{refine}{free}{targets}"


def k_factor(args, objectives: int = 1) -> float:  # type: ignore[no-untyped-def]
    config = LoopConfig(
        targets=["x"] * objectives,
        objectives=[Objective(direction="max", expr="x")] * objectives,
        budget=1,
        inner=args.inner,
    )
    return config.k_factor()


def front_costs(args, label_points: np.ndarray) -> list[float]:  # type: ignore[no-untyped-def]
    """The a of the three targets `mean_acc - a * MMACs`: fixed (COSTS), or `labels`: the
    10th, 50th and 90th percentiles of the slopes along the labels' front, which a user
    has (the true front's slopes are not theirs to see)."""
    if args.front_costs == "fixed":
        return list(COSTS)
    front = label_points[non_dominated(label_points)]
    front = front[np.argsort(front[:, 1])]
    slopes = np.diff(-front[:, 0]) / np.diff(front[:, 1])
    return [float(v) for v in np.quantile(slopes[slopes > 0], [0.1, 0.5, 0.9])]


def others(table: Table, space, work: Path, seed: int, b: int, warm, out: Path, args) -> dict:  # type: ignore[no-untyped-def]
    """What the other methods of the single-objective table find, kept in `work`."""
    path = work / f"others_s{seed}_b{b}_e{args.epochs}_f{args.folds}.json"
    if path.exists():
        return json.loads(path.read_text())
    same = network_keyer(space)  # every method pays once per network

    def acc(arch: Architecture) -> float:
        return table.metrics[arch.key()]["mean_acc"]

    values = {
        "RE (warm)": regularized_evolution(
            space, acc, b, seed=seed, warm=warm, key=same
        ).best_value,
        "TPE (warm)": tpe_search(space, acc, b, seed=seed, warm=warm, key=same).best_value,
    }
    scorers = work / f"oneshot_s{seed}_e{args.epochs}_f{args.folds}.json"
    if not scorers.exists():
        first = json.loads((out / "loop.json").read_text())["rounds"][0]
        one_shot = {
            "one-shot AutoBuild": acc(Architecture.model_validate(first["built"]["arch"])),
            "ES": es_top1(out / "rounds" / "r00" / "target0", table),
        }
        scorers.write_text(json.dumps(one_shot))
    values.update(json.loads(scorers.read_text()))
    path.write_text(json.dumps(values))
    return values


def single(table: Table, space, work: Path, seed: int, args) -> dict:  # type: ignore[no-untyped-def]
    labels = labels_for(table, args.labels, seed)
    budgets = [int(b) for b in args.budgets.split(",")]
    found: dict[str, dict[int, float]] = {m: {} for m in SINGLE}
    warm = [(a, table.metrics[a.key()]["mean_acc"]) for a in labels.architectures]
    seconds = [0.0, 0.0]
    rounds = {}

    for b in budgets:
        # k is chosen from the budget (top_k=None), so every B is a run of its own.
        out = work / f"single_s{seed}_b{b}_{variant(args)}"
        config = LoopConfig(targets=["mean_acc"], budget=b, per_round=args.per_round,
                            inner=args.inner, top_k=args.top_k, epochs=args.epochs,
                            folds=args.folds, seed=seed,
                            widen_on_stall=not args.no_widen_on_stall)  # fmt: skip
        first = work / f"r00_s{seed}_e{args.epochs}_f{args.folds}"
        if first.exists() and not out.exists():
            # Round 0 trains on the labels alone, the same for every B and variant: reuse it.
            shutil.copytree(first, out / "rounds" / "r00")
        start, cpu = time.perf_counter(), time.process_time()
        result = run_loop(space, labels, Runner(table), config, out, resume=True)
        seconds[0] += time.perf_counter() - start
        seconds[1] += time.process_time() - cpu
        if not first.exists():
            # Copied whole, then renamed: a parallel process never sees half of it.
            shutil.copytree(out / "rounds" / "r00", first.with_name(f"{first.name}.{os.getpid()}"))
            os.replace(first.with_name(f"{first.name}.{os.getpid()}"), first)
        rounds[str(b)] = [r.model_dump(mode="json", exclude={"built"}) for r in result.rounds]
        curve = [row["max mean_acc"] for row in result.best_so_far]
        found["loop"][b] = curve[-1]
        # The baselines do not depend on the loop's settings, nor one-shot and ES (the first
        # round's scorers) on B: each is computed once per seed (and B) and kept.
        for name, value in others(table, space, work, seed, b, warm, out, args).items():
            found[name][b] = value
    return {
        "seed": seed,
        "labels_best": max(v for _, v in warm),
        "found": {m: {str(b): v for b, v in d.items()} for m, d in found.items()},
        "rounds": rounds,
        "seconds": seconds,
    }


def front_trial(table: Table, space, work: Path, seed: int, args) -> dict:  # type: ignore[no-untyped-def]
    labels = labels_for(table, args.labels, seed)
    objectives = [
        Objective(direction="max", expr="mean_acc"),
        Objective(direction="min", expr="mmacs"),
    ]
    label_metrics = [labels.row_metrics(i) for i in range(len(labels))]
    label_points = np.array([[-m["mean_acc"], m["mmacs"]] for m in label_metrics])

    def summary(points: np.ndarray, with_labels: bool = True) -> dict:
        # The labels are free for every warm method: its front is over labels + evaluations.
        points = np.vstack([label_points, points]) if with_labels else points
        front = points[non_dominated(points)]
        beyond = sum(
            1
            for p in front
            if not np.any(np.all(label_points <= p, axis=1))  # no label dominates or equals it
        )
        return {
            "hv": table.hypervolume(front),
            "hv85": table.hypervolume(front, USEFUL),
            "beyond": beyond,
            "front": front.tolist(),
        }

    results: dict[str, dict] = {}
    targets = [f"mean_acc - {a:.3g} * mmacs" for a in front_costs(args, label_points)]
    config = LoopConfig(
        targets=["mean_acc"] if args.front_targets == "objectives" else targets,
        objectives=objectives,
        budget=args.front_budget,
        top_k=args.front_top_k or None,
        refine=args.front_refine,
        per_round=args.front_round,
        inner=args.inner,
        per_generation=25,
        epochs=args.epochs,
        folds=args.folds,
        seed=seed,
    )
    start, cpu = time.perf_counter(), time.process_time()
    loop = run_loop(space, labels, Runner(table), config, work / f"front_s{seed}{front_variant(args)}",
                    resume=True, free=FreeMacs(table) if args.front_free else None)  # fmt: skip
    seconds = {"AutoBuild-NAS": (time.perf_counter() - start, time.process_time() - cpu)}
    results["AutoBuild-NAS"] = summary(
        np.array([[-r.metrics["mean_acc"], r.metrics["mmacs"]] for r in loop.records])
    )
    warm = list(zip(labels.architectures, label_metrics, strict=True))
    for name, mode in (("Stage-Full", "stage"), ("Layer-Full", "layer")):
        search = SearchConfig(objectives=objectives, budget=args.front_budget, init=50,
                              per_generation=20, mode=mode, seed=seed)  # fmt: skip
        for label, given in ((name, warm), (f"{name} (no labels)", [])):
            found = run_search(space, Runner(table), search, warm=given)
            results[label] = summary(
                np.array([[-r.metrics["mean_acc"], r.metrics["mmacs"]] for r in found.records]),
                with_labels=bool(given),
            )
    return {
        "seed": seed,
        "labels": summary(label_points[:0]),
        "label_points": label_points.tolist(),
        "methods": results,
        "seconds": seconds,
    }


def single_table(trials: list[dict], table: Table, budgets: list[int]) -> list[str]:
    lines = [
        "| B | " + " | ".join(SINGLE) + " |",
        "|---" * (len(SINGLE) + 1) + "|",
    ]
    for b in budgets:
        cells = []
        for method in SINGLE:
            ranks = [table.rank(t["found"][method][str(b)]) for t in trials]
            ones = sum(r == 1 for r in ranks)
            cells.append(f"{statistics.median(ranks):g} ({ones}/{len(ranks)})")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return lines


def paired_table(trials: list[dict], table: Table, budgets: list[int]) -> list[str]:
    """Per seed, the true ranks side by side, and how often the loop beats warm RE."""
    seeds = [t["seed"] for t in trials]
    lines = [
        "| B | " + " | ".join(f"seed {s}" for s in seeds) + " | loop vs RE: better / tie / "
        "worse | worst rank: loop / RE / TPE |",
        "|---" * (len(seeds) + 3) + "|",
    ]
    for b in budgets:
        ranks = {
            m: [table.rank(t["found"][m][str(b)]) for t in trials]
            for m in ("loop", "RE (warm)", "TPE (warm)")
        }
        cells = [" / ".join(str(ranks[m][i]) for m in ranks) for i in range(len(seeds))]
        pairs = list(zip(ranks["loop"], ranks["RE (warm)"], strict=True))
        better = sum(a < b for a, b in pairs)
        tie = sum(a == b for a, b in pairs)
        worst = " / ".join(str(max(v)) for v in ranks.values())
        lines.append(
            f"| {b} | " + " | ".join(cells) + f" | {better} / {tie} / {len(pairs) - better - tie}"
            f" | {worst} |"
        )
    return lines


K_TEXT = {
    "": "",
    "_k3": ", first k = 3",
    "_k27": ", the whole space (k = 27)",
    "_f8": ", first k from 8 x B",
}


def tune_table(args: argparse.Namespace, table: Table) -> list[str]:
    """The loop variants' single-objective trials kept in `--work` for the chosen seeds
    (run them with `--parts single --inner I --per-round P`): median true rank (rank-1
    seeds) and every seed's rank, per B."""
    budgets = [int(b) for b in args.budgets.split(",")]
    lines = ["| loop variant | " + " | ".join(f"B = {b}" for b in budgets) + " |"]
    lines.append("|---" * (len(budgets) + 1) + "|")
    rows: dict[str, list[dict]] = {}
    for inner in INNER_TEXT:
        for per_round, k in itertools.product((16, 32, 8, 4), ("", "_k3", "_k27", "_f8")):
            name = f"{inner}, retrained every {per_round}" + K_TEXT[k]
            for seed in range(args.first_seed, args.seeds):
                path = args.work / f"single_s{seed}_{inner}_p{per_round}{k}.json"
                if path.exists():
                    rows.setdefault(name, []).append(json.loads(path.read_text()))
    for method in ("RE (warm)", "TPE (warm)"):
        if rows:
            # The baselines do not depend on the variant: from the one with most trials.
            rows[f"{method} on the full space"] = max(
                rows.values(), key=lambda t: (len(t), len(t[0]["found"]["loop"]))
            )
    for name, trials in rows.items():
        method = name.split(" on the full space")[0] if "full space" in name else "loop"
        cells = []
        for b in budgets:
            ranks = [
                table.rank(t["found"][method][str(b)])
                for t in trials
                if str(b) in t["found"][method]
            ]
            ones = sum(r == 1 for r in ranks)
            cells.append(
                f"{statistics.median(ranks):g} ({ones}/{len(ranks)}): {ranks}" if ranks else "-"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def front_table(trials: list[dict], table: Table) -> list[str]:
    true_hv = table.hypervolume(table.true_front)
    true_hv85 = table.hypervolume(table.true_front, USEFUL)
    lines = [
        "| method | hypervolume, mean / median (min-max) | % of the true front's (mean) | "
        f"hypervolume above {USEFUL:g} %, mean / median | % of the true front's (mean) | "
        "front networks beyond the labels' front, mean / median |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("labels (N)", [t["labels"] for t in trials])]
    paper = [PAPER] if all(PAPER in t["methods"] for t in trials) else []
    methods = FRONT_METHODS[:1] + paper + FRONT_METHODS[1:] + COLD_METHODS
    rows += [(m, [t["methods"][m] for t in trials]) for m in methods]
    for name, items in rows:
        hv = [i["hv"] for i in items]
        hv85 = [i["hv85"] for i in items]
        beyond = [i["beyond"] for i in items]
        lines.append(
            f"| {name} | {statistics.mean(hv):.4f} / {statistics.median(hv):.4f} "
            f"({min(hv):.4f}-{max(hv):.4f}) | {100 * statistics.mean(hv) / true_hv:.1f} | "
            f"{statistics.mean(hv85):.4f} / {statistics.median(hv85):.4f} | "
            f"{100 * statistics.mean(hv85) / true_hv85:.1f} | "
            + (
                "-"
                if name == "labels (N)"
                else f"{statistics.mean(beyond):.1f} / {statistics.median(beyond):g}"
            )
            + " |"
        )
    lines.append(f"| true front (all 6561) | {true_hv:.4f} | 100 | {true_hv85:.4f} | 100 | - |")
    return lines


def plot_front(trial: dict, table: Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    labels = np.array(trial["label_points"])
    axis.scatter(labels[:, 1], -labels[:, 0], s=6, color="0.7", label="labels (N)")
    true = table.true_front[np.argsort(table.true_front[:, 1])]
    axis.plot(true[:, 1], -true[:, 0], color="black", lw=1, label="true front")
    for i, method in enumerate(FRONT_METHODS):
        front = np.array(trial["methods"][method]["front"])
        front = front[np.argsort(front[:, 1])]
        axis.plot(front[:, 1], -front[:, 0], marker="o", ms=3, lw=1, color=f"C{i}", label=method)
    axis.set_ylim(84, 93.5)
    axis.set_xlabel("MMACs")
    axis.set_ylabel("CIFAR-10 accuracy (%)")
    axis.set_title(f"NAS-Bench-Macro: fronts after the budget (seed {trial['seed']})")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--labels", type=int, default=200, help="N")
    parser.add_argument("--budgets", default="16,32,64", help="B (single objective)")
    parser.add_argument("--front-budget", type=int, default=250)
    parser.add_argument("--front-round", type=int, default=25, help="evaluations per round")
    parser.add_argument(
        "--front-top-k", type=int, default=0, help="Figure 5 loop: the first k (0: from the budget)"
    )
    parser.add_argument(
        "--front-refine",
        type=float,
        default=0.0,
        help="Figure 5 guided loop: share of each round spent on Layer-Full mutation",
    )
    parser.add_argument(
        "--front-costs",
        choices=["fixed", "labels"],
        default="fixed",
        help="Figure 5 targets' a: fixed 0.02, 0.1, 0.5, or from the labels' front slopes",
    )
    parser.add_argument(
        "--front-free",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Figure 5 loop: MMACs are free (counted by the compiler for every candidate) "
        "and guide the search exactly (abc improve --free measure:macs)",
    )
    parser.add_argument(
        "--front-targets",
        choices=["costs", "objectives"],
        default="objectives",
        help="Figure 5 loop's scorers: the three `mean_acc - a * MMACs` (costs) or one per "
        "objective the free metrics do not answer (objectives: mean_acc; with --front-free)",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="run seeds FIRST..SEEDS-1 (split over processes)"
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--parts", default="single,front")
    parser.add_argument(
        "--inner", choices=list(INNER_TEXT), default=INNER, help="the loop's inner search"
    )
    parser.add_argument(
        "--per-round", type=int, default=PER_ROUND, help="loop: evaluations a round"
    )
    parser.add_argument(
        "--top-k", type=int, default=TOP_K, help="loop: the first k (default: from the budget)"
    )
    parser.add_argument(
        "--no-widen-on-stall",
        action="store_true",
        help="loop: widen k only when the reduced space is exhausted, not after a round "
        "that found nothing better",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench" / "loop")
    parser.add_argument("--markdown", type=Path, help="write the results section here")
    parser.add_argument(
        "--cached-only", action="store_true", help="report the finished trials in --work only"
    )
    return parser.parse_args()


def run_trials(args: argparse.Namespace, table: Table, space) -> tuple[list, list]:  # type: ignore[no-untyped-def]
    """Every seed's trials; a finished trial is kept in the work folder and reused (so
    parallel processes over `--first-seed` ranges and reruns share them)."""
    budgets = [int(b) for b in args.budgets.split(",")]
    parts = args.parts.split(",")
    singles, fronts = [], []

    def cached(name: str, make):  # type: ignore[no-untyped-def]
        path = args.work / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        if args.cached_only:
            return None
        trial = make()
        path.write_text(json.dumps(trial))
        return trial

    for seed in range(args.first_seed, args.seeds):
        if "single" in parts:
            trial = cached(
                f"single_s{seed}_{variant(args)}",
                lambda seed=seed: single(table, space, args.work, seed, args),
            )
            if trial is not None:
                singles.append(trial)
                shown = ", ".join(
                    f"{m} {table.rank(trial['found'][m][str(budgets[-1])])}" for m in SINGLE
                )
                print(f"single seed {seed}: true rank at B={budgets[-1]}: {shown}", flush=True)
        if "front" in parts:
            trial = cached(
                f"front_s{seed}{front_variant(args)}",
                lambda seed=seed: front_trial(table, space, args.work, seed, args),
            )
            if trial is None:
                continue
            if args.front_free:  # the paper's three-target loop, for comparison
                paper = argparse.Namespace(
                    **{**vars(args), "front_free": False, "front_targets": "costs"}
                )
                other = cached(
                    f"front_s{seed}{front_variant(paper)}",
                    lambda seed=seed, paper=paper: front_trial(
                        table, space, args.work, seed, paper
                    ),
                )
                if other is not None:
                    trial["methods"][PAPER] = other["methods"]["AutoBuild-NAS"]
            fronts.append(trial)
            shown = ", ".join(f"{m} {trial['methods'][m]['hv']:.4f}" for m in FRONT_METHODS)
            print(f"front seed {seed}: hypervolume {shown}", flush=True)
    return singles, fronts


def single_section(args: argparse.Namespace, table: Table, singles: list[dict]) -> list[str]:
    budgets = [int(b) for b in args.budgets.split(",")]
    lines = single_table(singles[:5], table, budgets)
    if len(singles) > 5:
        lines += ["", f"All {len(singles)} seeds:", "", *single_table(singles, table, budgets)]
    lines += [
        "",
        "Per seed, true rank found by the loop / warm RE / warm TPE:",
        "",
        *paired_table(singles, table, budgets),
    ]
    print("\n".join(lines))
    return [
        f"Single objective (max accuracy), N = {args.labels} random labels, B real",
        f"evaluations: median true rank among the {table.networks} distinct networks and, in",
        f"brackets, the seeds that found rank 1 ({table.sorted[0]:.2f}); seeds "
        f"{', '.join(str(t['seed']) for t in singles)} (the loop's",
        "settings were chosen on seeds 100-109, see docs/loop.md). Scorers: "
        f"{args.folds}-fold ranked ensembles,",
        f"{args.epochs} epochs, retrained every {args.per_round} evaluations; inside the reduced "
        f"space: {INNER_TEXT[args.inner]}"
        + ("." if args.inner == "guided" else ", warm-started with the labels inside it."),
        "The loop's first k is "
        + (
            f"{args.top_k}"
            if args.top_k
            else f"the smallest whose reduced space holds {k_factor(args):g} x B networks"
        )
        + "; one run per B. RE and TPE are warm-started with",
        "the same N labels on the full space. Every method pays once per network (a proposal",
        "equivalent to a held network is free). One-shot AutoBuild and ES use the first",
        "round's ensemble (ES: its prediction head over all networks) and pay nothing.",
        "",
        *lines,
        "",
    ]


def front_section(args: argparse.Namespace, table: Table, fronts: list[dict]) -> list[str]:
    lines = front_table(fronts, table)
    print("\n".join(lines))
    if args.markdown:
        plot_front(fronts[0], table, ROOT / "docs" / "figures" / "loop_front.png")
    learned = (
        "one scorer target, `mean_acc`; MMACs free (counted for every candidate, as "
        "`abc improve --free measure:macs` does) and each pick the candidate adding the most "
        "predicted hypervolume"
        if args.front_free and args.front_targets == "objectives"
        else f"targets {', '.join(f'`mean_acc - {a} * mmacs`' for a in COSTS)}"
        + ("; MMACs free" if args.front_free else "")
    )
    paper = (
        f" The row '{PAPER}' is the paper's AutoBuild-NAS: targets "
        f"{', '.join(f'`mean_acc - {a} * mmacs`' for a in COSTS)}, no free metrics."
        if any(PAPER in t["methods"] for t in fronts)
        else ""
    )
    return [
        f"The paper's Figure 5 on truth: max accuracy, min MMACs; AutoBuild-NAS: {learned}; "
        f"B = {args.front_budget} evaluations (AutoBuild-NAS: {args.front_round} per round, "
        f"{INNER_TEXT[args.inner]}, first k "
        + (
            f"{args.front_top_k}"
            if args.front_top_k
            else "every module: the whole space"
            if k_factor(args, 2) == float("inf")
            else f"the smallest whose reduced space holds {k_factor(args, 2):g} x B"
        )
        + f"), {len(fronts)} seeds.{paper} Like for like: every",
        "method is given the same N labels for free, and its front is over the labels and its",
        "evaluations. Stage-Full and Layer-Full start from the labels (their first generation",
        "mutates the labels' front); the '(no labels)' rows are the paper's setting (50 random",
        "networks first, front of their own evaluations). Hypervolume normalised by the",
        "space's worst accuracy and largest MACs, reference point (1, 1).",
        "",
        *lines,
        "",
        "![fronts](../figures/loop_front.png)",
        "",
    ]


def main() -> int:
    args = arguments()
    if not args.data.exists():
        print(f"skipped: {args.data} not found (see ../shared/data/README.md)")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    space = compile_file(str(SPACE_FILE))
    imported = args.work / "nbm.jsonl"
    if not imported.exists():
        import subprocess

        subprocess.run(
            [sys.executable, "-m", "autobuild_dsl", "data", "import", "--from", "nas-bench-macro",
             str(args.data), "--space", str(SPACE_FILE), "-o", str(imported)],
            check=True, capture_output=True,
        )  # fmt: skip
    table = load_table(imported, space)
    if "tune" in args.parts.split(","):
        print("\n".join(tune_table(args, table)))
        return 0
    started, cpu = time.perf_counter(), time.process_time()
    singles, fronts = run_trials(args, table, space)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    # Trials read back from the work folder carry their own times.
    measured = [t["seconds"] for t in singles] + [v for t in fronts for v in t["seconds"].values()]
    (args.work / "trials.json").write_text(json.dumps({"single": singles, "front": fronts}))
    section = ["## AutoBuild-NAS loop on NAS-Bench-Macro", ""]
    if singles:
        section += single_section(args, table, singles)
    if fronts:
        section += front_section(args, table, fronts)
    command = (
        f"python benchmarks/bench_loop.py --labels {args.labels} --budgets {args.budgets} "
        f"--front-budget {args.front_budget} --front-round {args.front_round} "
        f"--seeds {args.seeds} --epochs {args.epochs} --folds {args.folds} "
        f"--inner {args.inner} --per-round {args.per_round} --front-top-k {args.front_top_k}"
        + ("" if args.front_free else " --no-front-free")
        + f" --front-targets {args.front_targets}"
        + (f" --top-k {args.top_k}" if args.top_k else "")
        + (" --no-widen-on-stall" if args.no_widen_on_stall else "")
    )
    section += [
        f"Command: `{command}`"
        + (" (`--cached-only`: the trials kept in `--work`)" if args.cached_only else "")
        + f". The loops took {sum(x[1] for x in measured) / 60:.0f} min CPU "
        "in all (scorer training",
        f"dominates; {sum(x[0] for x in measured) / 60:.0f} min wall summed over the trials, "
        "which may run in parallel processes",
        "over `--first-seed` ranges or `--parts`, and slow each other on 2 cores).",
        "",
    ]
    print(f"total {wall:.0f} s wall, {cpu:.0f} s CPU")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
