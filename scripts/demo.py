"""`make demo`: the whole AutoBuild pipeline on a seed space, from a fresh clone.

Every step is an `abc` command, run exactly as a user would type it (each is echoed), so
the demo doubles as a worked example:

 1. compile the space and sample architectures uniformly;
 2. label them with measured cost (`abc measure`: parameters, MACs, ONNX Runtime latency);
 3. train an ensemble of AutoBuild scorers on a target that trades two of them off;
 4. rank every stage module and explain every feature value (`abc rank`, chart);
 5. build the best architectures and a reduced space without search (`abc build`);
 6. check the claim: measure the built architectures and compare them with the sample;
 7. emit the best one as ONNX (checked against PyTorch) and plot everything;
 8. write report.md.

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

ROOT = Path(__file__).resolve().parent.parent
SPACE = "spaces/nas_bench_macro.abs"
# Compute throughput on this CPU: millions of multiply-accumulates per millisecond. High
# needs many MACs (capacity) at low latency: a real trade-off between two measured costs.
TARGET = "macs / latency / 1e6"
TARGET_TEXT = "MMAC per ms of ONNX Runtime latency (compute throughput on this CPU)"


class Demo:
    def __init__(self, out: Path, quick: bool) -> None:
        self.out = out
        self.quick = quick
        self.timings: list[tuple[str, float]] = []
        self.commands: list[str] = []

    def abc(self, title: str, *args: str, capture: bool = False) -> str:
        shown = " ".join(_quote(a) for a in args)
        print(f"\n\033[1m== {title}\033[0m\n$ abc {shown}", flush=True)
        self.commands.append(f"abc {shown}")
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "autobuild_dsl", *args],
            cwd=ROOT,
            check=False,
            text=True,
            stdout=subprocess.PIPE if capture else None,
        )
        took = time.perf_counter() - start
        self.timings.append((title, took))
        if result.returncode != 0:
            raise SystemExit(f"demo step failed ({title}): exit {result.returncode}")
        if capture:
            print(result.stdout, end="")
        return result.stdout or ""

    def path(self, name: str) -> str:
        return _shown(self.out / name)


def _shown(path: Path) -> str:
    """Paths inside the checkout are shown relative to it, as a user would type them."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _quote(text: str) -> str:
    return f"'{text}'" if any(c in text for c in " *()") else text


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _target(metrics: dict) -> float:
    return metrics["macs"] / metrics["latency"] / 1e6


def _percentile(values: list[float], value: float) -> float:
    return 100.0 * sum(v <= value for v in values) / len(values)


def run(demo: Demo) -> None:
    n_sample = 60 if demo.quick else 120
    epochs = 60 if demo.quick else 120
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    d = demo.path
    demo.abc("compile the space", "compile", SPACE)
    demo.abc(
        f"sample {n_sample} architectures",
        "sample", SPACE, "-n", str(n_sample), "--seed", "0", "-o", d("sample.jsonl"),
    )  # fmt: skip
    demo.abc(
        "label them: parameters, MACs, ONNX Runtime latency",
        "measure", SPACE, d("sample.jsonl"), "-o", d("data.jsonl"),
        "--metrics", "params,macs,latency", "--jobs", jobs, "--repeats", "20",
    )  # fmt: skip
    demo.abc(
        "describe the labeled data",
        "data", "describe", d("data.jsonl"), "--space", SPACE, "--target", TARGET,
    )  # fmt: skip
    demo.abc(
        f"train an ensemble on: {TARGET}",
        "train", SPACE, d("data.jsonl"), "--target", TARGET, "-o", d("run"),
        "--folds", "3", "--seeds", "1", "--epochs", str(epochs), "--jobs", jobs,
    )  # fmt: skip
    demo.abc(
        "rank every stage module, explain every feature",
        "rank", d("run"), "-o", d("module_scores.csv"), "--chart", d("feature_importance.png"),
        "--top", "3",
    )  # fmt: skip
    demo.abc(
        "build the best architectures and a reduced space (no search)",
        "build", d("run"), "--top-k", "2", "-n", "8", "-o", d("built"), "--space", SPACE,
    )  # fmt: skip
    built_dir = demo.out / "built"
    built_file = next(p for p in sorted(built_dir.glob("*.jsonl")))
    reduced = next(p for p in sorted(built_dir.glob("*.abs")))
    demo.abc("the reduced space compiles", "compile", _shown(reduced))
    demo.abc(
        "check the claim: measure the built architectures",
        "measure", SPACE, _shown(built_file), "-o", d("built_measured.jsonl"),
        "--metrics", "params,macs,latency", "--jobs", jobs, "--repeats", "20",
    )  # fmt: skip
    best = max(_read_jsonl(demo.out / "built_measured.jsonl"), key=lambda r: _target(r["metrics"]))
    (demo.out / "best_arch.json").write_text(json.dumps(best["arch"], indent=2) + "\n")
    demo.abc(
        "emit the best built architecture as ONNX (checked against PyTorch)",
        "emit", SPACE, d("best_arch.json"), "--format", "onnx", "-o", d("best.onnx"),
    )  # fmt: skip
    demo.abc(
        "plot the sample and the built architectures",
        "plot", d("built_measured.jsonl"), "--data", d("data.jsonl"), "--label", "built",
        "--x", "min latency", "--y", "max macs", "-o", d("latency_vs_macs.png"),
        "--title", "sampled (grey) and AutoBuild-built architectures",
    )  # fmt: skip
    write_report(demo)


def write_report(demo: Demo) -> None:
    sample = [_target(r["metrics"]) for r in _read_jsonl(demo.out / "data.jsonl")]
    built = [_target(r["metrics"]) for r in _read_jsonl(demo.out / "built_measured.jsonl")]
    metrics_file = demo.out / "run" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    summary = metrics.get("mean", metrics)
    hop_srcc = summary.get("hop_srcc") or []
    hops = ", ".join("n/a" if v is None else f"{v:.3f}" for v in hop_srcc)
    pred = summary.get("pred_srcc")
    best_sample = max(sample)
    lines = [
        "# autobuild-dsl demo report",
        "",
        f"- space: `{SPACE}`; target: `{TARGET}` ({TARGET_TEXT})",
        f"- {len(sample)} sampled architectures, measured on this machine",
        f"- scorer ensemble held-out SRCC of the embedding norm per hop: {hops}",
        f"- prediction SRCC: {'n/a' if pred is None else f'{pred:.3f}'}",
        "",
        "## Did building without search work?",
        "",
        "| | target (higher is better) | percentile within the sample |",
        "|---|---|---|",
        f"| best of the {len(sample)} sampled | {best_sample:.2f} | 100 |",
        f"| median of the sample | {sorted(sample)[len(sample) // 2]:.2f} | 50 |",
    ]
    for i, value in enumerate(built, start=1):
        lines.append(f"| built #{i} | {value:.2f} | {_percentile(sample, value):.0f} |")
    better = sum(v > best_sample for v in built)
    lines += [
        "",
        f"{better} of the {len(built)} built architectures beat the best sampled one; the mean",
        f"built target is {sum(built) / len(built):.2f} against a sample mean of "
        f"{sum(sample) / len(sample):.2f}. Latency is measured, so it carries noise.",
        "",
        "## Files",
        "",
        "- `data.jsonl`: the labeled sample; `run/`: the trained scorer ensemble",
        "- `module_scores.csv`: every stage module's score; `feature_importance.png`",
        "- `built/`: the reduced space (`.abs`) and the built architectures (JSON lines)",
        "- `built_measured.jsonl`, `best.onnx`, `latency_vs_macs.png`",
        "",
        "![feature importance](feature_importance.png)",
        "",
        "![latency vs MACs](latency_vs_macs.png)",
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
    (demo.out / "report.md").write_text("\n".join(lines))
    print("\n" + "\n".join(lines[:20]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and epochs (tests)")
    parser.add_argument("--out", type=Path, help="output folder (default: out/demo-<time>)")
    args = parser.parse_args()
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
