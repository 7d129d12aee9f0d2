"""`make demo`: the promised commands on real accuracy and measured latency, from a clone.

Every step is an `abc` command, run exactly as a user would type it (each is echoed), so
the demo doubles as a worked example. The data is NAS-Bench-Macro (CIFAR-10 accuracy of
all 3969 distinct networks of its space), shipped in examples/nas_bench_macro/ (Apache-2.0):

 1. `abc compile spaces/mbv3.abs` (the first promised command) and the demo's space;
 2. import the table; sample architectures; join their accuracy onto them (`abc data
    merge`); measure their latency on this CPU (`abc measure` keeps the accuracy);
 3. `abc rank SPACE DATA --target "acc - 0.5*lat"`: train scorers, rank every module;
 4. `abc build`: the best architectures without search; measure them, join their true
    accuracy from the table;
 5. `abc emit --format onnx` the best built network;
 6. `abc improve`: with a budget of 16 real evaluations (the table stands in for
    training a network), the loop finds networks more accurate than every label;
 7. report.md and a plot: the labels, their Pareto front, the built networks and the true
    front of all 3969 distinct networks (accuracy from the table; latency from a linear fit of the
    measured latencies on MACs and parameters, since only the sample is measured).

Outputs go to a new folder out/demo-<time>/ (out/demo-latest points at it), so nothing is
ever overwritten. No files from outside the repository are read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPACE = "spaces/nas_bench_macro.abs"
TABLE = "examples/nas_bench_macro/nas_bench_macro.json"
TARGET = "acc - 0.5*lat"
TARGET_TEXT = "CIFAR-10 accuracy (%) minus half the ONNX Runtime CPU latency (ms) on this machine"


class Demo:
    def __init__(self, out: Path, quick: bool) -> None:
        self.out = out
        self.quick = quick
        self.timings: list[tuple[str, float]] = []
        self.commands: list[str] = []

    def abc(self, title: str, *args: str) -> None:
        shown = " ".join(_quote(a) for a in args)
        print(f"\n\033[1m== {title}\033[0m\n$ abc {shown}", flush=True)
        self.commands.append(f"abc {shown}")
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "autobuild_dsl", *args], cwd=ROOT, check=False, text=True
        )
        self.timings.append((title, time.perf_counter() - start))
        if result.returncode != 0:
            raise SystemExit(f"demo step failed ({title}): exit {result.returncode}")

    def path(self, name: str) -> str:
        return _shown(self.out / name)


def _shown(path: Path) -> str:
    """Paths inside the checkout are shown relative to it, as a user would type them."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _quote(text: str) -> str:
    return f'"{text}"' if any(c in text for c in " *()") else text


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _key(arch: dict) -> str:
    return json.dumps(arch["stages"], sort_keys=True)


def run(demo: Demo) -> None:
    n_sample = 120 if demo.quick else 300
    epochs = 150 if demo.quick else 300
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    # Latency: the CPU-time clock (steady on a busy machine), stable to 3 % or 0.4 s.
    timing = ["--repeats", "20", "--ci", "0.03", "--time-cap", "0.4"]
    d = demo.path
    demo.abc(
        "the first promised command: check the OFA MobileNetV3 space", "compile", "spaces/mbv3.abs"
    )
    demo.abc(
        "the demo's space: NAS-Bench-Macro (all 3969 distinct networks have known accuracy)",
        "compile",
        SPACE,
    )
    demo.abc(
        "import the shipped NAS-Bench-Macro table (acc, params, flops)",
        "data", "import", "--from", "nas-bench-macro", TABLE, "--space", SPACE, "-o", d("table.jsonl"),
    )  # fmt: skip
    demo.abc(
        f"sample {n_sample} architectures uniformly",
        "sample", SPACE, "-n", str(n_sample), "--seed", "0", "-o", d("sample.jsonl"),
    )  # fmt: skip
    demo.abc(
        "join their accuracy from the table",
        "data", "merge", d("sample.jsonl"), d("table.jsonl"), "--space", SPACE, "--inner",
        "-o", d("labeled.jsonl"),
    )  # fmt: skip
    demo.abc(
        "measure their latency on this CPU (the accuracy is kept)",
        "measure", SPACE, d("labeled.jsonl"), "-o", d("data.jsonl"), "--metrics", "lat=latency",
        "--jobs", jobs, *timing,
    )  # fmt: skip
    demo.abc(
        "describe the labeled data",
        "data", "describe", d("data.jsonl"), "--space", SPACE, "--target", TARGET,
    )  # fmt: skip
    demo.abc(
        "the second promised command: learn the target, rank every module",
        "rank", SPACE, d("data.jsonl"), "--target", TARGET, "--run-dir", d("run"),
        "--folds", "5", "--epochs", str(epochs), "--jobs", jobs, "--top", "3",
        "-o", d("module_scores.csv"), "--chart", d("feature_importance.png"), "--quiet",
    )  # fmt: skip
    demo.abc(
        "build the best architectures and a reduced space (no search)",
        "build", d("run"), "--top-k", "2", "-n", "8", "-o", d("built"), "--space", SPACE, "--quiet",
    )  # fmt: skip
    demo.abc(
        "check the claim: measure the built architectures on this CPU",
        "measure", SPACE, d("built/architectures.jsonl"), "-o", d("built_lat.jsonl"),
        "--metrics", "lat=latency", "--jobs", jobs, *timing,
    )  # fmt: skip
    demo.abc(
        "join their true accuracy from the table",
        "data", "merge", d("built_lat.jsonl"), d("table.jsonl"), "--space", SPACE, "--inner",
        "-o", d("built_measured.jsonl"),
    )  # fmt: skip
    built = _read_jsonl(demo.out / "built_measured.jsonl")
    best = max(built, key=lambda r: r["metrics"]["acc"] - 0.5 * r["metrics"]["lat"])
    (demo.out / "best_arch.json").write_text(json.dumps(best["arch"], indent=2) + "\n")
    demo.abc(
        "the third promised command: the best built network as ONNX (checked against PyTorch)",
        "emit", SPACE, d("best_arch.json"), "--format", "onnx", "-o", d("best.onnx"),
    )  # fmt: skip
    demo.abc(
        "spend a budget: 16 real evaluations (the table stands in for training), learning "
        "from each",
        "improve", SPACE, d("data.jsonl"), "--target", "acc", "--evaluator",
        f"lookup:{d('table.jsonl')}", "--budget", "16", "--per-round", "8", "--folds", "3",
        "--epochs", "100", "--jobs", jobs, "-o", d("improve"),
    )  # fmt: skip
    write_report(demo)


def improvement(out: Path, table: list[dict], data: list[dict]) -> list[str]:
    """The report's section on `abc improve`: best label vs best evaluated, true ranks."""
    path = out / "improve" / "evaluations.jsonl"
    if not path.exists():
        return []
    paid = _read_jsonl(path)
    everything = np.sort(np.array([r["metrics"]["acc"] for r in table]))[::-1]

    def rank(acc: float) -> int:
        return int((everything > acc + 1e-9).sum()) + 1

    label = max(r["metrics"]["acc"] for r in data)
    best = max(r["metrics"]["acc"] for r in paid)
    better = sum(1 for r in paid if r["metrics"]["acc"] > label)
    return [
        "## With a budget: `abc improve`",
        "",
        f"Best accuracy among the {len(data)} labels: {label:.2f} (true rank {rank(label)} of "
        f"{len(table)}). After {len(paid)} real evaluations chosen by the loop's scorers "
        f"(retrained every 8): {best:.2f} (true rank {rank(best)}); {better} of the "
        f"{len(paid)} evaluated networks beat every label. See `improve/report.md`.",
        "",
    ]


# ----------------------------------------------------------------------------- analysis


def _front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the Pareto front of (latency: lower is better, accuracy: higher)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _rank_srcc(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def analyse(out: Path) -> dict:
    table = _read_jsonl(out / "table.jsonl")
    data = _read_jsonl(out / "data.jsonl")
    built = _read_jsonl(out / "built_measured.jsonl")
    measured = data + built
    # The labels and the built networks are measured minutes apart, and this machine's
    # speed drifts between the two (docs/results/latency.md). Both are put on one scale
    # through the anchor timed next to every network: its latency in anchors (`lat_rel`)
    # times the anchor's median ms while the labels were measured.
    anchor_ms = float(np.median([r["metrics"]["lat_anchor"] for r in data]))
    for row in measured:
        row["metrics"]["lat_ms"] = row["metrics"]["lat"]
        row["metrics"]["lat"] = row["metrics"]["lat_rel"] * anchor_ms

    ops = sorted(
        {layer["op"] for r in table for s in r["arch"]["stages"].values() for layer in s["layers"]}
    )

    def features(r: dict) -> list[float]:
        # One indicator per (layer position, operation): latency adds up layer by layer.
        layers = [layer["op"] for s in r["arch"]["stages"].values() for layer in s["layers"]]
        return [float(op == o) for op in layers for o in ops[1:]] + [1.0]

    # Latency of all 3969 distinct networks: a least-squares fit on the layers of the measured ones
    # (the only latencies known on this machine); its fit quality is reported.
    x = np.array([features(r) for r in measured])
    y = np.array([r["metrics"]["lat"] for r in measured])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    fitted = x @ coef
    fit_srcc = _rank_srcc(fitted, y)
    fit_r2 = 1 - float(((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    all_acc = np.array([r["metrics"]["acc"] for r in table])
    all_lat = np.array([features(r) for r in table]) @ coef
    all_target = all_acc - 0.5 * all_lat
    sample_target = np.array([r["metrics"]["acc"] - 0.5 * r["metrics"]["lat"] for r in data])
    built_target = np.array([r["metrics"]["acc"] - 0.5 * r["metrics"]["lat"] for r in built])
    # The same networks' proxy latency, so built and all are compared on one scale too.
    built_proxy = np.array([features(r) for r in built]) @ coef
    built_target_proxy = np.array([r["metrics"]["acc"] for r in built]) - 0.5 * built_proxy
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    return {
        "table": table,
        "data": data,
        "built": built,
        "coef": coef,
        "fit_srcc": fit_srcc,
        "fit_r2": fit_r2,
        "features": features,
        "all_acc": all_acc,
        "all_lat": all_lat,
        "all_target": all_target,
        "sample_target": sample_target,
        "built_target": built_target,
        "built_target_proxy": built_target_proxy,
        "metrics": metrics,
    }


def plot(out: Path, a: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(
        a["all_lat"], a["all_acc"], s=3, c="#dddddd", label="all 3969 networks (latency: fit)"
    )
    true_front = _front(list(zip(a["all_lat"], a["all_acc"], strict=True)))
    front_pts = sorted((a["all_lat"][i], a["all_acc"][i]) for i in true_front)
    ax.step(*zip(*front_pts, strict=True), where="post", c="black", lw=1, label="true front")
    lat = [r["metrics"]["lat"] for r in a["data"]]
    acc = [r["metrics"]["acc"] for r in a["data"]]
    ax.scatter(lat, acc, s=10, c="#4c72b0", label=f"{len(lat)} labels (measured)")
    label_front = sorted((lat[i], acc[i]) for i in _front(list(zip(lat, acc, strict=True))))
    ax.step(*zip(*label_front, strict=True), where="post", c="#4c72b0", lw=1.5,
            label="labels' front")  # fmt: skip
    blat = [r["metrics"]["lat"] for r in a["built"]]
    bacc = [r["metrics"]["acc"] for r in a["built"]]
    ax.scatter(blat, bacc, s=60, marker="*", c="#dd4444", label="built (measured)", zorder=5)
    lo = min(np.percentile(a["all_acc"], 5), min(acc), min(bacc)) - 0.5
    ax.set_ylim(lo, max(a["all_acc"].max(), max(bacc)) + 0.3)
    ax.set_xlabel("latency (ms, ONNX Runtime CPU, this machine)")
    ax.set_ylabel("CIFAR-10 accuracy (%)")
    ax.set_title(f"NAS-Bench-Macro: built for `{TARGET}`")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fronts.png", dpi=120)
    plt.close(fig)


def write_report(demo: Demo) -> None:
    out = demo.out
    a = analyse(out)
    plot(out, a)
    summary = a["metrics"].get("mean", {})
    hops = ", ".join("n/a" if v is None else f"{v:.3f}" for v in summary.get("hop_srcc") or [])
    pred = summary.get("pred_srcc")
    all_t, sample_t = a["all_target"], a["sample_target"]
    built_t, built_tp = a["built_target"], a["built_target_proxy"]

    def pct(values: np.ndarray, value: float) -> float:
        return 100.0 * float((values <= value).mean())

    lines = [
        "# autobuild-dsl demo report",
        "",
        f"- space `{SPACE}`; data: the NAS-Bench-Macro table shipped in `examples/` (accuracy of"
        " all 3969 distinct networks); latency measured here with `abc measure` (CPU-time clock)",
        f"- target `{TARGET}`: {TARGET_TEXT}",
        f"- {len(a['data'])} sampled, labeled networks; scorer: 5 folds, held-out SRCC of the"
        f" prediction **{'n/a' if pred is None else f'{pred:.3f}'}**, of the embedding norm per"
        f" hop {hops}",
        "",
        "## Where the built networks land",
        "",
        "Target of each built network with its *measured* latency (anchored: its latency in"
        " anchor networks timed in the same rounds, times the anchor's median ms while the"
        " labels were measured, so networks measured minutes apart share one scale) and its"
        " true accuracy from",
        f"the table, its percentile among the {len(a['data'])} labels, and among all 3969 distinct networks",
        "(their latency from a linear fit of every measured network's latency on its layers,",
        "one indicator per layer position and operation: Spearman",
        f"{a['fit_srcc']:.3f}, R^2 {a['fit_r2']:.3f} on the measured ones; the built networks'",
        "percentile uses the same fit, so both sides of that comparison share one scale).",
        "",
        "| | acc | lat (ms) | target | percentile in labels | percentile in all 3969 (fit) |",
        "|---|---|---|---|---|---|",
    ]
    best_label = int(np.argmax(sample_t))
    bl = a["data"][best_label]["metrics"]
    lines.append(
        f"| best label | {bl['acc']:.2f} | {bl['lat']:.3f} | {sample_t[best_label]:.2f} | 100 | "
        f"{pct(all_t, float(bl['acc'] - 0.5 * (np.array(a['features'](a['data'][best_label])) @ a['coef']))):.1f} |"
    )
    for i, r in enumerate(a["built"], start=1):
        m = r["metrics"]
        lines.append(
            f"| built #{i} | {m['acc']:.2f} | {m['lat']:.3f} | {built_t[i - 1]:.2f} | "
            f"{pct(sample_t, built_t[i - 1]):.0f} | {pct(all_t, built_tp[i - 1]):.1f} |"
        )
    best_all = int(np.argmax(all_t))
    beat = int((built_t > sample_t.max()).sum())
    lines += [
        f"| best of all 3969 (fit) | {a['all_acc'][best_all]:.2f} | {a['all_lat'][best_all]:.3f}"
        f" | {all_t[best_all]:.2f} | | 100 |",
        "",
        f"{beat} of the {len(built_t)} built networks beat the best of the {len(sample_t)} labels"
        f" on the target; their median percentile among all 3969 distinct networks is "
        f"{np.median([pct(all_t, v) for v in built_tp]):.1f}. Measured latency carries noise "
        "(each row records its spread), and the true front's latency is a fit, not a measurement.",
        "",
        "![fronts](fronts.png)",
        "",
        *improvement(out, a["table"], a["data"]),
        "![feature importance](feature_importance.png)",
        "",
        "## Files",
        "",
        "- `table.jsonl`: all 3969 distinct networks (acc, params, flops); `data.jsonl`: the labels",
        "- `run/`: the scorers; `module_scores.csv`, `feature_importance.png`",
        "- `built/`: the reduced space and the built networks; `built_measured.jsonl`;"
        " `best.onnx`; `fronts.png`",
        "- `improve/`: the loop (`report.md`, `evaluations.jsonl`, each round's scorers)",
        "",
        "## Steps and their time",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {title} | {took:.1f} |" for title, took in demo.timings),
        "",
        "## Commands",
        "",
        "```sh",
        *demo.commands,
        "```",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print("\n" + "\n".join(lines[:30]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and epochs (tests)")
    parser.add_argument("--out", type=Path, help="output folder (default: out/demo-<time>)")
    parser.add_argument("--report-only", action="store_true", help="redo report.md of --out")
    args = parser.parse_args()
    if args.report_only:
        if args.out is None:
            raise SystemExit("--report-only needs --out")
        write_report(Demo(args.out.resolve(), args.quick))
        return 0
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or ROOT / "out" / f"demo-{stamp}").resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run(Demo(out, args.quick))
    latest = ROOT / "out" / "demo-latest"
    if out.parent == ROOT / "out" and (latest.is_symlink() or not latest.exists()):
        latest.unlink(missing_ok=True)
        latest.symlink_to(out.name)
    total = time.perf_counter() - start
    print(f"\ndemo finished in {total:.0f} s ({math.ceil(total / 60)} min): {out}/report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
