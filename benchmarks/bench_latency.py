"""Latency you can trust: test-retest Spearman of `abc measure` on OFA MobileNetV3 networks.

Samples candidate networks of spaces/mbv3.abs, keeps N of them spread evenly over the
range of parameter counts (the smallest to the largest), and measures their ONNX Runtime
CPU latency twice in two independent passes (`measure_file(..., retest=True)`: new
sessions, interleaved timing, the median timed until stable). Prints the test-retest
Spearman of the two passes, the largest ratio between a network's two readings, the
spread, the runs per network, and the wall and CPU time it took, with the load average,
for the raw latency (ms) and, from the same passes, the anchored one (`latency_rel`: each
run over the space's anchor network's run in the same round; `--no-anchor` leaves it out).

`--baseline` also measures the same networks the old way (wall clock, a fixed 30 runs,
one network after the other, no stopping rule), side by side in the same run.

Usage:  python benchmarks/bench_latency.py [--n 60] [--jobs 1] [--baseline] [--no-anchor]
                                          [--markdown docs/results/latency.md]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from autobuild_dsl.compile.batch import MeasureSettings, measure_file, spearman  # noqa: E402
from autobuild_dsl.compile.network import fast_params_and_macs  # noqa: E402
from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.space.decisions import sample  # noqa: E402
from autobuild_dsl.space.resolve import resolve  # noqa: E402


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def spread_networks(n: int, candidates: int, seed: int):
    """`n` networks of spaces/mbv3.abs at evenly spaced quantiles of their parameter count."""
    space = compile_file(ROOT / "spaces" / "mbv3.abs")
    pool = sample(space, candidates, seed=seed)
    params = [fast_params_and_macs(resolve(space, a))[0] for a in pool]
    order = np.argsort(params)
    picks = [int(order[round(q)]) for q in np.linspace(0, len(pool) - 1, n)]
    chosen = [pool[i] for i in dict.fromkeys(picks)]
    return space, chosen, [params[i] for i in dict.fromkeys(picks)]


def one_config(space, archs, settings: MeasureSettings, jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), _cpu()
        load = os.getloadavg()[0]
        report = measure_file(
            space, archs, Path(tmp) / "out.jsonl", settings, jobs=jobs, retest=True
        )
        took, cpu_took = time.perf_counter() - start, _cpu() - cpu
        rows = [line for line in (Path(tmp) / "out.jsonl").read_text().splitlines() if line]
    import json

    metrics = [json.loads(r)["metrics"] for r in rows]
    common = {
        "spread": float(np.median([m["latency_spread"] for m in metrics])),
        "runs": float(np.median([m["latency_runs"] for m in metrics])),
        "seconds": took,
        "cpu_seconds": cpu_took,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }
    readings = {"latency (ms)": (report.first, report.retest)}
    if report.first_rel:
        readings["latency_rel (anchored)"] = (report.first_rel, report.retest_rel)
    results = {}
    for what, (first_pass, second_pass) in readings.items():
        keys = [k for k in first_pass if k in second_pass]
        first = [first_pass[k] for k in keys]
        second = [second_pass[k] for k in keys]
        ratios = [max(a, b) / min(a, b) for a, b in zip(first, second, strict=True)]
        # The second pass over the first, as a network's typical drift between passes.
        drift = [b / a for a, b in zip(first, second, strict=True)]
        results[what] = {
            "n": len(keys),
            "spearman": spearman(first, second),
            "max_ratio": max(ratios),
            "median_ratio": float(np.median(ratios)),
            "drift": float(np.median(drift)),
            "lat_min": min(first),
            "lat_max": max(first),
            **common,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60, help="networks")
    parser.add_argument("--candidates", type=int, default=600, help="sampled to pick from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--ci", type=float, default=0.02)
    parser.add_argument("--time-cap", type=float, default=3.0)
    parser.add_argument("--clock", default="auto", choices=["auto", "wall", "cpu"])
    parser.add_argument("--baseline", action="store_true", help="also the old way, side by side")
    parser.add_argument(
        "--no-anchor", action="store_true", help="measure without the anchor network"
    )
    parser.add_argument("--markdown", help="write the results section here")
    args = parser.parse_args()
    start = time.perf_counter()
    space, archs, params = spread_networks(args.n, args.candidates, args.seed)
    print(
        f"{len(archs)} networks, params {min(params) / 1e6:.2f}M..{max(params) / 1e6:.2f}M "
        f"(picked in {time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    configs = {
        f"stable median ({args.clock} clock, ci {args.ci}, cap {args.time_cap} s, interleaved)": (
            MeasureSettings(
                metrics=("latency",),
                ci=args.ci,
                time_cap=args.time_cap,
                clock=args.clock,  # type: ignore[arg-type]
                anchor=not args.no_anchor,
            )
        )
    }
    if args.baseline:
        configs["old: wall clock, 30 runs, one network at a time"] = MeasureSettings(
            metrics=("latency",),
            repeats=30,
            max_repeats=30,
            time_cap=1e9,
            ci=0.0,
            interleave=1,
            clock="wall",
            anchor=False,
        )
    results = {}
    for name, settings in configs.items():
        print(f"measuring twice: {name} ...", flush=True)
        for what, r in one_config(space, archs, settings, args.jobs).items():
            results[f"{name}: {what}"] = r
            print(
                f"  {what}: test-retest Spearman {r['spearman']:.3f}; ratio of the two "
                f"readings: median {r['median_ratio']:.3f}, max {r['max_ratio']:.2f}; second "
                f"pass / first median {r['drift']:.3f}; spread (IQR/median) median "
                f"{r['spread']:.3f}; runs per network median {r['runs']:.0f}; range "
                f"{r['lat_min']:.3g}..{r['lat_max']:.3g}; {r['seconds']:.0f} s wall, "
                f"{r['cpu_seconds']:.0f} s CPU; load {r['load_before']:.1f} -> "
                f"{r['load_after']:.1f} on {os.cpu_count()} cores",
                flush=True,
            )
    if args.markdown:
        lines = [
            "## Latency test-retest (`abc measure`)",
            "",
            f"`python benchmarks/bench_latency.py {' '.join(sys.argv[1:])}`"
            f" ({time.perf_counter() - start:.0f} s in all, {_cpu():.0f} s CPU):",
            f"{len(archs)} OFA MobileNetV3 networks (spaces/mbv3.abs) at evenly spaced quantiles "
            f"of {args.candidates} sampled ones' parameter counts ({min(params) / 1e6:.2f}M to "
            f"{max(params) / 1e6:.2f}M), each measured twice in two independent passes "
            f"(ONNX Runtime CPU, batch 1, 1 thread, {args.jobs} job(s)); the machine has "
            f"{os.cpu_count()} cores shared with other work (load average in the table).",
            "",
            "| measurement | test-retest Spearman | max ratio | median ratio | pass 2 / pass 1 "
            "| spread | runs | range | wall s | CPU s | load before -> after |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results.items():
            lines.append(
                f"| {name} | {r['spearman']:.3f} | {r['max_ratio']:.2f} | {r['median_ratio']:.3f}"
                f" | {r['drift']:.3f} | {r['spread']:.3f} | {r['runs']:.0f}"
                f" | {r['lat_min']:.3g}-{r['lat_max']:.3g}"
                f" | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['load_before']:.1f} -> "
                f"{r['load_after']:.1f} |"
            )
        lines += [
            "",
            "Ratio: the larger of a network's two readings over the smaller; pass 2 / pass 1: "
            "the median over networks of the second reading over the first. The anchored rows "
            "come from the same passes as the raw ones (each network's run divided by the "
            "anchor network's run in the same round, median over rounds). Spread: the "
            "interquartile range of a network's runs over their median (median over networks). "
            "Runs: timed runs per network per pass (median).",
            "",
        ]
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(lines))
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
