"""Benchmark the searches: the evolutionary search on NAS-Bench-Macro and the exhaustive
search (the paper's ES baseline) on the SD v1.4 U-Net spaces.

    python benchmarks/bench_search.py                    # EA + exhaustive on sd14_unet_hw
    python benchmarks/bench_search.py --skip-hw --fid --fid-limit 4096  # FID space: a prefix
    python benchmarks/bench_search.py --fid              # all 786,432 of sd14_unet_fid (hours)
    python benchmarks/bench_search.py --run RUN          # score with your trained run
    python benchmarks/bench_search.py --skip-evolution --skip-hw --fid --fid-limit 65536 \
        --jobs 1 2 --repeats 2                           # 1 vs 2 workers, interleaved

Each exhaustive run goes through `exhaustive_search` as `abc search --exhaustive` does
(a prefix: `ExhaustiveConfig.limit`), worker start-up included, and prints wall and CPU
time (this process and its reaped workers), the rate, the rate after the first range
(start-up excluded) and the whole space projected at both rates.

Without --run the exhaustive search scores with a real scorer ensemble of the paper's ES
shape (20 MSE-only predictors: 5 folds x 4 seeds, trained by `autobuild_dsl.scorer`) that
is trained for a few epochs on 68 random architectures with SYNTHETIC labels (a formula of
the architecture, not FID): its throughput is the real ensemble's, its ranking means
nothing. Training it takes a few seconds and is not counted in the throughput.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.search.evaluators import (  # noqa: E402
    LookupConfig,
    PredictorConfig,
    make_evaluator,
)
from autobuild_dsl.search.evolution import SearchConfig, run_search  # noqa: E402
from autobuild_dsl.search.exhaustive import (  # noqa: E402
    ExhaustiveConfig,
    ExhaustiveProgress,
    exhaustive_search,
)
from autobuild_dsl.search.pareto import parse_objectives  # noqa: E402
from autobuild_dsl.search.runner import EvaluationRunner  # noqa: E402
from autobuild_dsl.space.architecture import Architecture  # noqa: E402
from autobuild_dsl.space.decisions import space_size  # noqa: E402
from autobuild_dsl.space.model import Space  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
MACRO_JSON = SHARED / "nas_bench_macro" / "nas-bench-macro_cifar10.json"


def synthetic_run(space: Space, out: Path, members: tuple[int, int] = (5, 4)) -> Path:
    """Train an ES-shaped ensemble on SYNTHETIC labels (for throughput only)."""
    from autobuild_dsl.data import from_records
    from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, train_run
    from autobuild_dsl.space.decisions import sample

    def label(arch: Architecture) -> float:
        # Wider and deeper -> larger: enough signal for the MSE fit to be non-degenerate.
        total = 0.0
        for stage in arch.stages.values():
            total += stage.depth + sum(
                float(v) for v in stage.choices.values() if not isinstance(v, bool)
            )
        return total + sum(float(v) / 64 for v in arch.globals.values() if not isinstance(v, bool))

    archs = sample(space, 68, seed=0)
    dataset, _ = from_records(space, [(a, {"synthetic": label(a)}, 1, None) for a in archs])
    folds, seeds = members
    train_run(
        space,
        dataset,
        "synthetic",
        out,
        train=TrainConfig(epochs=3, loss="mse"),
        ensemble=EnsembleConfig(folds=folds, seeds=seeds),
        force=True,
    )
    return out


def bench_evolution(data: str | None, seeds: int = 5) -> None:
    """Stage-Full, Layer-Full and random search (generation 0 only), budget 250, on the
    real benchmark values; hypervolume of (max mean_acc, min flops), mean over seeds."""
    import numpy as np
    from pymoo.indicators.hv import HV

    space = compile_file(ROOT / "spaces" / "nas_bench_macro.abs")
    with tempfile.TemporaryDirectory() as scratch:
        if data is None:
            if not MACRO_JSON.exists():
                _say("evolution: skipped (no NAS-Bench-Macro data at ../shared/data)")
                return
            data = str(Path(scratch) / "macro.jsonl")
            command = [sys.executable, "-m", "autobuild_dsl", "data", "import", "--from"]
            subprocess.run(
                [
                    *command,
                    "nas-bench-macro",
                    str(MACRO_JSON),
                    "--space",
                    str(space_path()),
                    "-o",
                    data,
                ],
                check=True,
                capture_output=True,
            )
        start = time.perf_counter()
        evaluator = make_evaluator(LookupConfig(data=data), space)
        _say(
            f"lookup table of {len(evaluator):,} rows loaded in {time.perf_counter() - start:.1f} s"
        )
    objectives = parse_objectives("max mean_acc, min flops")
    reference = np.array([-45.0, 1.2e8])  # worse than every benchmark row in both
    hv = HV(ref_point=reference)
    variants = {
        "stage (Stage-Full)": {"mode": "stage"},
        "layer (Layer-Full)": {"mode": "layer"},
        "random (no mutation)": {"init": 250},
    }
    for name, options in variants.items():
        volumes, bests, seconds = [], [], 0.0
        for seed in range(seeds):
            config = SearchConfig(objectives=objectives, budget=250, seed=seed, **options)
            start = time.perf_counter()
            result = run_search(space, EvaluationRunner(space, evaluator=evaluator), config)
            seconds += time.perf_counter() - start
            front = np.array(
                [[-r.metrics["mean_acc"], r.metrics["flops"]] for r in result.front_records()]
            )
            volumes.append(hv(front))
            bests.append(max(r.metrics["mean_acc"] for r in result.records))
        _say(
            f"evolution  nas_bench_macro {name:22s}: budget 250 x {seeds} seeds, "
            f"{seconds / seeds:.2f} s/search; hypervolume {np.mean(volumes) / 1e8:.3f}e8 "
            f"(sd {np.std(volumes) / 1e8:.3f}e8); best mean_acc {np.mean(bests):.2f} "
            "(benchmark max 93.13)"
        )


def space_path() -> Path:
    return ROOT / "spaces" / "nas_bench_macro.abs"


def bench_exhaustive(
    space_file: str,
    run: str | None,
    limit: int | None,
    batch_size: int,
    top: int,
    jobs: Sequence[int] = (1,),
    repeats: int = 1,
) -> None:
    """Exhaustive search (or a prefix of `limit` architectures) with each of `jobs` worker
    counts, `repeats` times, interleaved; one ensemble for all of them."""
    space = compile_file(ROOT / "spaces" / space_file)
    with tempfile.TemporaryDirectory() as scratch:
        if run:
            label = f"predictor:{run}"
        else:
            start = time.perf_counter()
            run = str(synthetic_run(space, Path(scratch) / "run"))
            label = (
                "20-member ES ensemble on SYNTHETIC labels, "
                f"trained in {time.perf_counter() - start:.0f} s (not counted)"
            )
        for _ in range(repeats):
            for count in jobs:
                _exhaustive_once(space, run, label, limit, batch_size, top, count)


def _exhaustive_once(
    space: Space, run: str, label: str, limit: int | None, batch_size: int, top: int, jobs: int
) -> None:
    """One exhaustive search (of the first `limit` architectures: the same code path, the
    enumeration cut short) as `abc search --exhaustive` runs it."""
    label += f"; {jobs} worker process(es)"
    config = PredictorConfig(run=run, batch_size=batch_size)
    size = space_size(space)
    first: list[float] = []  # (seconds, done) at the first finished range

    def note(event: ExhaustiveProgress) -> None:
        if not first:
            first.extend((event.seconds, event.done))

    cpu = _cpu_seconds()
    start = time.perf_counter()
    # Worker start-up (spawn, imports, loading the run) is counted: it is part of a search.
    with EvaluationRunner(space, config, jobs=jobs) as runner:
        metric = runner.evaluator.metric  # type: ignore[attr-defined]
        objective = parse_objectives(f"max {metric}")[0]
        search = ExhaustiveConfig(objective=objective, top=top, batch_size=batch_size, limit=limit)
        result = exhaustive_search(space, runner, search, progress=note)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu  # workers are reaped by now: their CPU time is counted
    done = result.evaluated
    rate = done / seconds
    steady = ""
    if first and done > first[1]:
        after = (done - first[1]) / max(result.seconds - first[0], 1e-9)
        steady = (
            f"; {after:,.0f}/s after the first range (whole space at that rate: "
            f"{size / after / 60:.1f} min)"
        )
    what = "all" if done >= size else f"a prefix: {done:,} of {size:,}"
    _say(
        f"exhaustive {space.name} ({what}): {seconds:.1f} s wall, {cpu:.1f} s CPU = "
        f"{rate:,.0f} archs/s ({label}){steady}; whole space est. {size / rate / 60:.1f} min; "
        f"peak RSS {_peak_mib():.0f} MiB; load {_load()}"
    )


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished (reaped) children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


_LINES: list[str] = []


def _say(*parts: object) -> None:
    """Print a result line and keep it for the --markdown section."""
    text = " ".join(str(p) for p in parts)
    print(text, flush=True)
    _LINES.append(text)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained scorer run folder (else a synthetic one)")
    parser.add_argument("--data", help="NAS-Bench-Macro imported as a labeled dataset")
    parser.add_argument("--fid", action="store_true", help="also the 786,432-arch FID space")
    parser.add_argument("--fid-limit", type=int, help="score only this many of the FID space")
    parser.add_argument("--hw-limit", type=int, help="score only this many of the HW space")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--top", type=int, default=4)
    parser.add_argument(
        "--jobs", type=int, nargs="+", default=[1], help="exhaustive: worker processes (each)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="exhaustive: runs of each --jobs")
    parser.add_argument("--skip-evolution", action="store_true")
    parser.add_argument("--skip-hw", action="store_true", help="no exhaustive run on the HW space")
    parser.add_argument("--markdown", help="write the results section here")
    args = parser.parse_args()
    import torch

    _say(f"torch threads: {torch.get_num_threads()}")
    if not args.skip_evolution:
        bench_evolution(args.data)
    if not args.skip_hw:
        bench_exhaustive(
            "sd14_unet_hw.abs",
            args.run,
            args.hw_limit,
            args.batch_size,
            args.top,
            args.jobs,
            args.repeats,
        )
    if args.fid:
        bench_exhaustive(
            "sd14_unet_fid.abs",
            args.run,
            args.fid_limit,
            args.batch_size,
            args.top,
            args.jobs,
            args.repeats,
        )
    if args.markdown:
        command = "python benchmarks/bench_search.py " + " ".join(
            a for a in sys.argv[1:] if not a.startswith("--markdown") and a != args.markdown
        )
        section = [
            "## Search and exhaustive-search throughput",
            "",
            "Evolutionary search on NAS-Bench-Macro (lookup evaluator, budget 250) and the",
            "exhaustive search (the paper's ES baseline) over the U-Net spaces with a predictor",
            "ensemble (without --run: 20 members trained for 3 epochs on SYNTHETIC labels), as",
            "printed by the benchmark; wall and CPU time (this process and its reaped workers)",
            "include worker start-up, and each line gives the machine's load:",
            "",
            "```text",
            *_LINES,
            "```",
            "",
            f"Command: `{command.strip()}`",
            "",
        ]
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(section))


if __name__ == "__main__":
    main()
