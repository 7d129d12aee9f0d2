"""Benchmark module ranking and building (`abc rank`, `abc build`) on real data.

    python benchmarks/bench_rank.py                        # both parts
    python benchmarks/bench_rank.py --only speed           # OFA MobileNetV3 timing only
    python benchmarks/bench_rank.py --only macro --seeds 2 # NAS-Bench-Macro quality only
    python benchmarks/bench_rank.py --only startup --ofa-run RUN   # whole-process times
    python benchmarks/bench_rank.py --only startup --ofa-run RUN --baseline MAIN_CHECKOUT
    python benchmarks/bench_rank.py --markdown docs/results/rank_build.md

speed: import the DyNAS-T OFA MobileNetV3 data (as `abc data import --from ofa` does),
train a 20-member ensemble (5 folds x 4 seeds) on it with few epochs (only the ranking
speed is measured here, not the quality of the scores), then time ranking all 36,855
modules (7,371 per stage x 5 stages) with all 20 members, and building the 100 best
architectures from them (top-k selection + k-best merge), in the library and as CLI
commands (a fresh Python process: imports included). For scale, it also times scoring
modules one at a time (each built alone and run through one predictor, as the authors'
code does) on a sample and extrapolates to all modules.

startup: `abc rank RUN`, `abc build RUN -k 3 -n 20 -o DIR` and `abc build RUN -o DIR` (the
default options) as a user runs them, each in a fresh process (imports, ranking, writing,
interpreter exit), after training (RUN/cache/ holding what `abc train` writes at its end),
warm (a repeat call) and cold (no RUN/cache/), wall and CPU time (the CPU time is what the command costs; on a shared machine the wall
time also holds waiting for a core), the CPU time `abc train`'s priming of the cache adds,
and the slowest imports of a warm `abc rank` (`python -X importtime`). With `--baseline`,
the cold and warm calls of another checkout's code (e.g. main) run in the same rounds. The
run folder's cache is deleted and rewritten: give a copy of a run you keep. The commands
run with Python's bytecode cache on (PYTHONDONTWRITEBYTECODE dropped), as a user's do.

macro: NAS-Bench-Macro (all 6,561 CIFAR-10 networks measured). Per seed: draw 200 random
architectures, train a run on their `mean_acc` (20 members, the paper's settings), rank
every module, build the 4 best architectures, and look up their true accuracy and rank
among all 6,561, next to the best of the 200 labeled ones.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autobuild_dsl.data import import_files  # noqa: E402
from autobuild_dsl.design.construct import build_from_rankings, reduced_space  # noqa: E402
from autobuild_dsl.design.importance import feature_importance, importance_chart  # noqa: E402
from autobuild_dsl.design.rank import enumerate_modules, rank_modules  # noqa: E402
from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, load_run, train_run  # noqa: E402
from autobuild_dsl.space.decisions import canonicalize, index_of, space_size  # noqa: E402
from autobuild_dsl.space.equivalence import network_key  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ABC = [sys.executable, "-m", "autobuild_dsl"]


def _timed(function: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


# A user's Python keeps compiled modules (__pycache__); with PYTHONDONTWRITEBYTECODE set
# (as in some sandboxes) every call recompiles the project's modules: 0.3-1 s more.
CLI_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _cli_seconds(args: list[str], cwd: Path = ROOT) -> float:
    """Wall seconds of `abc ARGS` in a fresh process, run with the code of the checkout
    `cwd` (`python -m` puts it first on the import path), bytecode caches on."""
    start = time.perf_counter()
    done = subprocess.run(
        [*ABC, *args], cwd=cwd, capture_output=True, text=True, check=False, env=CLI_ENV
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"abc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return took


# ----- speed: OFA MobileNetV3 -------------------------------------------------------------


def bench_speed(data_dir: Path, epochs: int, run_dir: Path | None, repeats: int) -> dict:
    space_file = ROOT / "spaces" / "mbv3.abs"
    space = compile_file(space_file)
    files = sorted(str(p) for p in (data_dir / "dynast_ofa_mbv3_acc").glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no DyNAS-T CSVs under {data_dir / 'dynast_ofa_mbv3_acc'}")
    scratch = Path(tempfile.mkdtemp(prefix="bench_rank_"))
    run_path = run_dir or scratch / "run"
    train_seconds = None
    if not (run_path / "config.json").exists():
        dataset = import_files("ofa", files, space).dataset
        assert dataset is not None
        start = time.perf_counter()
        train_run(
            space,
            dataset,
            "top1",
            run_path,
            train=TrainConfig(epochs=epochs),
            ensemble=EnsembleConfig(folds=5, seeds=4),
            space_path=str(space_file),
        )
        train_seconds = time.perf_counter() - start
    run = load_run(run_path)
    run.encoder()  # build the encoder (and import torch_geometric) outside the timing
    units = index_of(space).units
    modules = sum(enumerate_modules(space, u).count for u in units)
    # cache=False: every repeat runs the members (a warm call reads RUN/cache/ instead).
    rank_min, rank_median, ranking = _timed(lambda: rank_modules(run, cache=False), repeats)
    build_min, build_median, built = _timed(
        lambda: build_from_rankings(space, [ranking], top_k=4, n=100), repeats
    )
    full_min, _, full = _timed(
        lambda: build_from_rankings(space, [ranking], top_k=None, n=100), repeats
    )
    for result in (built, full):
        assert len(result.architectures) == 100
        for b in result.architectures:
            canonicalize(space, b.arch)
    reduced_file = scratch / "top4.abs"
    reduced_file.write_text(reduced_space(space, space_file, reduced_file, built, "ofa_top4"))
    reduced_size = space_size(compile_file(reduced_file))

    # One module at a time through one predictor (the authors' way), on a sample.
    member = run.members[0]
    encoder = run.encoder()
    sample_units = enumerate_modules(space, units[2])
    sample = [sample_units.parts(i) for i in range(0, sample_units.count, 7)][:1000]
    from autobuild_dsl.scorer.run import node_norms

    start = time.perf_counter()
    for parts in sample:
        graph = encoder.encode_module(units[2].name, parts, {"resolution": 224})
        norms, ptr = node_norms(member.model, [graph])
        float(norms[min(graph.num_nodes - 1, 4), int(ptr[1]) - 1])
    one_at_a_time = (time.perf_counter() - start) / len(sample)

    load = os.getloadavg()[0]
    scores_csv = scratch / "scores.csv"
    cli_rank = _cli_seconds(["rank", str(run_path), "-o", str(scores_csv), "--quiet", "--json"])
    cli_build = _cli_seconds(
        ["build", str(run_path), "-k", "4", "-n", "100", "-o", str(scratch / "built"), "--quiet"]
    )
    return {
        "rows": run.config.rows,
        "members": len(run.members),
        "epochs": run.config.train.epochs,
        "train_seconds": train_seconds,
        "modules": modules,
        "ranked": ranking.modules,
        "rank_min": rank_min,
        "rank_median": rank_median,
        "build_min": build_min,
        "build_median": build_median,
        "build_full_min": full_min,
        "reduced_size": reduced_size,
        "one_at_a_time_per_module": one_at_a_time,
        "one_at_a_time_sample": len(sample),
        "one_at_a_time_all": one_at_a_time * modules,
        "cli_rank": cli_rank,
        "cli_build": cli_build,
        "repeats": repeats,
        "load": load,
    }


# ----- startup: whole-process times of the two commands -----------------------------------


def _cli_times(
    args: list[str], before: Callable[[], None] | None = None, cwd: Path = ROOT
) -> tuple[float, float]:
    """(wall, CPU) seconds of one `abc ARGS` in a fresh process (its children included)."""
    if before is not None:
        before()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = usage.ru_utime + usage.ru_stime
    wall = _cli_seconds(args, cwd)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, usage.ru_utime + usage.ru_stime - cpu0


def _slowest_imports(args: list[str], count: int = 6) -> dict[str, Any]:
    """`-X importtime` of `abc ARGS`: all imports, torch's share, the slowest top-level."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "autobuild_dsl", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=CLI_ENV,
    )
    top, torch_seconds = [], 0.0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not cumulative.strip().isdigit():
            continue
        seconds = int(cumulative) / 1e6
        if name.strip() == "torch" and not torch_seconds:
            torch_seconds = seconds
        if name[1:2] != " ":  # top level (nested names are indented)
            top.append((name.strip(), seconds))
    top.sort(key=lambda r: -r[1])
    return {"total": sum(s for _, s in top), "torch": torch_seconds, "top": top[:count]}


# What `abc train` runs at its end (design.ranking_workflow.prime_cache), in its own process.
PRIME = (
    "import sys, time\n"
    "from autobuild_dsl.design.ranking_workflow import prime_cache\n"
    "from autobuild_dsl.scorer.records import load_run\n"
    "run = load_run(sys.argv[1])\n"
    "start = time.process_time()\n"
    "assert prime_cache(run)\n"
    "print(time.process_time() - start)\n"
)


def _revision(checkout: Path) -> str:
    """The checkout's git commit (short), else its path."""
    done = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else str(checkout)


def _warm_imports(args: list[str]) -> dict[str, Any]:
    """`_slowest_imports` of a warm call: one call first (a cold `build` leaves no feature
    importance in the cache, so the `rank` after it computes that)."""
    _cli_seconds(args)
    return _slowest_imports(args)


def bench_startup(run_path: Path, repeats: int, baseline: Path | None = None) -> dict:
    """Both commands in three cases, interleaved: after train (RUN/cache/ holds what `abc
    train` writes at its end), warm (a repeat call: the cache the previous call left) and
    cold (RUN/cache/ removed first); with `baseline` (another checkout, e.g. of main), its
    code's calls in the same three cases too, in the same rounds."""
    from autobuild_dsl.design.rank_cache import CACHE_DIR

    scratch = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    load_start = os.getloadavg()
    primed: list[float] = []  # CPU seconds the priming adds to `abc train`

    def drop_cache() -> None:
        shutil.rmtree(run_path / CACHE_DIR, ignore_errors=True)

    def after_train(code: Path = ROOT) -> None:
        drop_cache()
        done = subprocess.run(
            [sys.executable, "-c", PRIME, str(run_path)],
            cwd=code,  # the priming of that checkout's `abc train`
            env=CLI_ENV,
            capture_output=True,
            text=True,
            check=True,
        )
        if code == ROOT:
            primed.append(float(done.stdout.split()[-1]))

    commands = {
        "rank": ["rank", str(run_path)],
        "build": ["build", str(run_path), "-k", "3", "-n", "20", "-o", str(scratch / "built")],
        "build-default": ["build", str(run_path), "-o", str(scratch / "default")],
    }
    cases = [("after-train", after_train, ROOT), ("warm", None, ROOT), ("cold", drop_cache, ROOT)]
    if baseline is not None:
        cases += [
            ("after-train", lambda: after_train(baseline), baseline),
            ("warm", None, baseline),
            ("cold", drop_cache, baseline),
        ]
    times: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for name, args in commands.items():
            extra = ["--force"] if name.startswith("build") else []
            for case, before, code in cases:
                key = f"{name} {case}" + (" baseline" if code != ROOT else "")
                times.setdefault(key, []).append(_cli_times(args + extra, before, code))
    return {
        "run": str(run_path),
        "baseline": _revision(baseline) if baseline is not None else None,
        "times": times,
        "primed": primed,
        "imports": _warm_imports(commands["rank"]),
        "load": (load_start, os.getloadavg()),
        "epochs": load_run(run_path).config.train.epochs,
        "repeats": repeats,
    }


def _startup_lines(s: dict) -> list[str]:
    start, end = (", ".join(f"{v:.1f}" for v in load) for load in s["load"])
    lines = [
        "### Startup: the commands as a user runs them",
        "",
        "Each command in a fresh Python process on a 20-member DyNAS-T run (5 folds x 4 "
        f"seeds, {s['epochs']} epochs; `{s['run']}`), one torch thread, `rank` printing its tables, `build` "
        "writing its folder. After-train: `RUN/cache/` holds what `abc train` writes at its "
        "end (design.ranking_workflow.prime_cache, run here in a process of its own: the "
        "module norms, feature importance and seen feature values of the default options, "
        "and the predictions of the default build, `abc build RUN -o DIR`, not those of "
        "`-k 3 -n 20`: a first such build predicts its networks itself, in numpy for chain "
        "graphs, torch not imported), so this is a user's first call; warm: a repeat call "
        "(the cache the previous call "
        "left, with `build`'s predictions); cold: no `RUN/cache/` (20 forward passes over "
        "every module, the labeled data read, torch imported). Whole process (imports, "
        "interpreter exit; Python's bytecode caches on, as a user's), min and median of "
        f"{s['repeats']}, interleaved; load average "
        f"{start} at the start and {end} when done, on 2 cores (the wall time holds the "
        "waits for a core; the CPU time is what the command itself costs).",
        "",
        "| command | case | code | wall min / median | CPU min / median |",
        "|---|---|---|---|---|",
    ]
    shown = {
        "rank": "`abc rank RUN`",
        "build": "`abc build RUN -k 3 -n 20 -o DIR`",
        "build-default": "`abc build RUN -o DIR`",
    }
    code = {False: "this", True: f"before ({s['baseline']})"}
    verdict = []
    for key, values in s["times"].items():
        name, state, *before = key.split()
        walls = [w for w, _ in values]
        cpus = [c for _, c in values]
        lines.append(
            f"| {shown[name]} | {state} | {code[bool(before)]} "
            f"| {min(walls):.2f} / {statistics.median(walls):.2f} s "
            f"| {min(cpus):.2f} / {statistics.median(cpus):.2f} s |"
        )
        if not before and state != "cold":
            met = "under" if statistics.median(walls) < 2.0 else "over"
            verdict.append(f"`{name}` {state} {met}")
    lines += [
        "",
        "The issue's target, < 2 s whole process (median wall): " + "; ".join(verdict) + ".",
    ]
    if s["primed"]:
        lines += [
            "",
            f"The priming adds {min(s['primed']):.2f} s CPU (min of {len(s['primed'])}) to "
            "the end of `abc train` (not counting its imports: training has them loaded).",
        ]
    imports = s["imports"]
    lines += [
        "",
        f"Imports of a warm `abc rank RUN` (`python -X importtime`): {imports['total']:.2f} s "
        f"in all, {imports['torch']:.2f} s of it `torch`. Slowest top-level imports "
        "(cumulative):",
        "",
    ]
    lines += [f"- `{name}` {seconds:.2f} s" for name, seconds in imports["top"]]
    return [*lines, ""]


def _splice_section(path: Path, section: list[str], command: str) -> str:
    """`path`'s text with its "### Startup" section replaced by `section` (inserted before
    the next section when absent) and `command` added to its "Produced by" block."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = text.splitlines()
    title = section[0]
    if title in lines:
        start = lines.index(title)
        end = next(
            (
                i
                for i in range(start + 1, len(lines))
                if lines[i].startswith(("### ", "Produced by"))
            ),
            len(lines),
        )
        lines[start:end] = section
    else:
        at = next((i for i, x in enumerate(lines) if x.startswith("### Quality")), None)
        at = (
            at
            if at is not None
            else next((i for i, x in enumerate(lines) if x.startswith("Produced by")), len(lines))
        )
        lines[at:at] = section
    if command not in lines and "```" in lines:
        fence = len(lines) - 1 - lines[::-1].index("```")  # the closing fence
        lines.insert(fence, command)
    return "\n".join(lines) + "\n"


# ----- quality: NAS-Bench-Macro -----------------------------------------------------------


def bench_macro(data_dir: Path, seeds: int, labeled: int, epochs: int, chart: Path | None) -> dict:
    space_file = ROOT / "spaces" / "nas_bench_macro.abs"
    space = compile_file(space_file)
    source = data_dir / "nas_bench_macro" / "nas-bench-macro_cifar10.json"
    if not source.is_file():
        raise FileNotFoundError(f"no {source}")
    full = import_files("nas-bench-macro", [str(source)], space).dataset
    assert full is not None
    acc = full.metric("mean_acc")
    # By network: the import keeps one row per network (equivalent architectures merged).
    truth = {network_key(space, a): float(v) for a, v in zip(full.architectures, acc, strict=True)}
    ordered = np.sort(acc)[::-1]

    def rank_of(value: float) -> int:  # 1 = best; ties share the better rank
        return int(np.sum(ordered > value)) + 1

    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="bench_macro_"))
    for seed in range(seeds):
        picked = np.sort(np.random.default_rng(seed).choice(len(full), labeled, replace=False))
        data = full.subset(picked)
        start = time.perf_counter()
        run = train_run(
            space,
            data,
            "mean_acc",
            scratch / f"run{seed}",
            train=TrainConfig(epochs=epochs),
            ensemble=EnsembleConfig(folds=5, seeds=4, seed=seed),
            space_path=str(space_file),
        )
        train_seconds = time.perf_counter() - start
        ranking = rank_modules(run)
        result = build_from_rankings(space, [ranking], top_k=None, n=4)
        built, digits = [], []
        for b in result.architectures:
            arch = canonicalize(space, b.arch)
            value = truth[network_key(space, arch)]
            built.append((value, rank_of(value)))
            digits.append(_macro_digits(arch))
        best_labeled = float(np.max(data.metric("mean_acc")))
        assert run.metrics is not None
        rows.append(
            {
                "seed": seed,
                "hop_srcc": run.metrics.mean.hop_srcc,
                "pred_srcc": run.metrics.mean.pred_srcc,
                "train_seconds": train_seconds,
                "best_labeled": (best_labeled, rank_of(best_labeled)),
                "built": built,
                "digits": digits,
            }
        )
        if chart is not None and seed == 0:
            importance_chart(
                feature_importance(run),
                chart,
                title=f"NAS-Bench-Macro, mean_acc, {labeled} labels, seed 0 (20 members)",
            )
    return {"labeled": labeled, "epochs": epochs, "rows": rows, "total": len(full)}


def _macro_digits(arch: Any) -> str:
    """NAS-Bench-Macro's own key: one digit per layer (0 identity, 1 e3k3, 2 e6k5)."""
    code = {"identity": "0", "mb_e3k3": "1", "mb_e6k5": "2"}
    return "".join(
        code[str(layer["op"])] for name in ("s1", "s2", "s3") for layer in arch.stages[name].layers
    )


# ----- output -----------------------------------------------------------------------------


def _speed_lines(s: dict) -> list[str]:
    trained = (
        f"trained in {s['train_seconds']:.0f} s" if s["train_seconds"] is not None else "loaded"
    )
    return [
        "### Speed: every OFA MobileNetV3 module",
        "",
        f"A 20-member ensemble (5 folds x 4 seeds) trained on the {s['rows']:,} DyNAS-T OFA "
        f"MobileNetV3 subnets for only {s['epochs']} epochs ({trained}): this part measures "
        "speed, not the quality of the scores, and the time to rank does not depend on the "
        "epochs. Ranking runs on one torch thread. The machine was shared with other work "
        f"while this ran (1-minute load average {s['load']:.1f} on 2 cores), which slows "
        "every figure here.",
        "",
        "| step | time |",
        "|---|---|",
        f"| rank all {s['ranked']:,} modules (5 stages x 7,371), 20 members, in the library "
        f"| {s['rank_min']:.2f} s (median {s['rank_median']:.2f} s of {s['repeats']}) |",
        f"| build the 100 best from the top-4 per stage (k-best merge; reduced space: "
        f"{s['reduced_size']:,} architectures) | {s['build_min'] * 1000:.0f} ms "
        f"(median {s['build_median'] * 1000:.0f} ms) |",
        f"| build the 100 best from all modules | {s['build_full_min'] * 1000:.0f} ms |",
        f"| `abc rank RUN -o scores.csv` (new process: imports, loading 20 members, CSV of "
        f"every module) | {s['cli_rank']:.1f} s |",
        f"| `abc build RUN -k 4 -n 100 -o OUT` (new process: ranks, then builds) "
        f"| {s['cli_build']:.1f} s |",
        f"| one module at a time, one predictor (the authors' way), extrapolated from "
        f"{s['one_at_a_time_sample']:,} modules | {s['one_at_a_time_per_module'] * 1000:.1f} ms per module, "
        f"{s['one_at_a_time_all']:.0f} s for all {s['modules']:,} |",
        "",
        "The issue quotes 237 s for the authors' code to score all modules with a single "
        "predictor on this machine. Here all modules of a unit are packed into one batch "
        "(row blocks cut once per stage state, not one graph per module), modules that share "
        "a prefix share its nodes (a chain node's embedding depends only on the nodes before "
        "it: 143k module nodes become 37k), and each member runs one forward pass.",
        "",
    ]


def _macro_lines(m: dict) -> list[str]:
    lines = [
        "### Quality: NAS-Bench-Macro, 200 labels",
        "",
        f"Per seed: {m['labeled']} random architectures of the {m['total']:,} with their "
        f"`mean_acc`; a run of 20 members (5 folds x 4 seeds, {m['epochs']} epochs, the "
        "paper's other settings); `rank` (Eq. 5 shift); the 4 architectures with the highest "
        "summed module score (`build -n 4`). Accuracy is the benchmark's mean CIFAR-10 test "
        f"accuracy; rank is among all {m['total']:,} (1 = best).",
        "",
        "| seed | held-out SRCC (hop 0 / hop 2 / head) | best of the 200 labeled | built #1 "
        "| built #2 | built #3 | built #4 | best built | built #1..#4 (benchmark keys) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in m["rows"]:
        hops = row["hop_srcc"]
        shown = [f"{hops[h]:.3f}" if h < len(hops) and hops[h] is not None else "-" for h in (0, 2)]
        srcc = f"{shown[0]} / {shown[1]} / {row['pred_srcc']:.3f}"
        keys = ", ".join(f"`{d}`" for d in row["digits"])
        cells = [f"{a:.2f} ({r})" for a, r in row["built"]]
        best = max(row["built"], key=lambda t: t[0]) if row["built"] else None
        lines.append(
            f"| {row['seed']} | {srcc} | {row['best_labeled'][0]:.2f} ({row['best_labeled'][1]}) "
            f"| {' | '.join(cells)} | {best[0]:.2f} ({best[1]}) | {keys} |"
            if best
            else f"| {row['seed']} | {srcc} | - | - | - | - | - | - | - |"
        )
    built_best = [max(r["built"])[0] for r in m["rows"] if r["built"]]
    built_rank = [min(rk for _, rk in r["built"]) for r in m["rows"] if r["built"]]
    labeled = [r["best_labeled"][0] for r in m["rows"]]
    labeled_rank = [r["best_labeled"][1] for r in m["rows"]]
    beat = sum(max(r["built"])[0] > r["best_labeled"][0] for r in m["rows"] if r["built"])
    tied = sum(max(r["built"])[0] == r["best_labeled"][0] for r in m["rows"] if r["built"])
    lines += [
        "",
        f"Mean over {len(m['rows'])} seeds: best of the 200 labeled {np.mean(labeled):.2f} "
        f"(rank {np.mean(labeled_rank):.0f}); best of the 4 built {np.mean(built_best):.2f} "
        f"(rank {np.mean(built_rank):.0f}). The best built architecture was better than every "
        f"labeled one in {beat} of {len(m['rows'])} seeds, the same network in {tied}, and "
        f"worse in {len(m['rows']) - beat - tied}. (The benchmark's best is 93.13; its 99th "
        "percentile 92.81.)",
        "",
        "![FE-MLP feature importance, NAS-Bench-Macro seed 0](figures/rank_importance_macro.png)",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(SHARED), help="folder of the shared data sets")
    parser.add_argument("--only", choices=["speed", "startup", "macro"], help="one part only")
    parser.add_argument("--ofa-epochs", type=int, default=5, help="epochs of the OFA ensemble")
    parser.add_argument("--ofa-run", help="load this OFA run folder instead of training one")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions")
    parser.add_argument("--seeds", type=int, default=5, help="NAS-Bench-Macro seeds")
    parser.add_argument("--labeled", type=int, default=200, help="labeled architectures")
    parser.add_argument("--epochs", type=int, default=200, help="NAS-Bench-Macro epochs")
    parser.add_argument("--markdown", help="write the results section (markdown) here")
    parser.add_argument(
        "--baseline", help="startup: also time the code of this checkout (e.g. of main)"
    )
    args = parser.parse_args()
    data_dir = Path(args.data)
    lines = ["## Module ranking and building (`abc rank`, `abc build`)", ""]
    command = " ".join(["python benchmarks/bench_rank.py", *sys.argv[1:]])
    if args.only == "startup":
        if not args.ofa_run:
            parser.error("--only startup needs --ofa-run RUN (a 20-member run)")
        baseline = Path(args.baseline) if args.baseline else None
        startup = bench_startup(Path(args.ofa_run), args.repeats, baseline)
        for key, values in startup["times"].items():
            print(
                f"{key}: wall min {min(w for w, _ in values):.2f} s "
                f"(median {statistics.median(w for w, _ in values):.2f}), "
                f"CPU min {min(c for _, c in values):.2f} s "
                f"(median {statistics.median(c for _, c in values):.2f})"
            )
        if startup["primed"]:
            print(f"abc train's priming: {min(startup['primed']):.2f} s CPU")
        for when, load in zip(("start", "end"), startup["load"], strict=True):
            print(f"load average at the {when}: {', '.join(f'{v:.2f}' for v in load)}")
        imports = startup["imports"]
        print(f"imports {imports['total']:.2f} s, torch {imports['torch']:.2f} s")
        for name, seconds in imports["top"]:
            print(f"import {name}: {seconds:.2f} s")
        lines += _startup_lines(startup)
    if args.only not in ("macro", "startup"):
        try:
            speed = bench_speed(
                data_dir,
                args.ofa_epochs,
                Path(args.ofa_run) if args.ofa_run else None,
                args.repeats,
            )
        except FileNotFoundError as error:
            print(f"speed: skipped ({error})")
        else:
            print(
                f"OFA MobileNetV3: ranked {speed['ranked']:,} modules with {speed['members']} "
                f"members in {speed['rank_min']:.2f} s (median {speed['rank_median']:.2f}); "
                f"build -n 100 from top-4 {speed['build_min'] * 1000:.0f} ms, from all "
                f"{speed['build_full_min'] * 1000:.0f} ms; reduced space {speed['reduced_size']:,}; "
                f"CLI rank {speed['cli_rank']:.1f} s, CLI build {speed['cli_build']:.1f} s; "
                f"one module at a time {speed['one_at_a_time_per_module'] * 1000:.1f} ms/module "
                f"= {speed['one_at_a_time_all']:.0f} s for all"
            )
            lines += _speed_lines(speed)
    if args.only not in ("speed", "startup"):
        chart = ROOT / "docs" / "figures" / "rank_importance_macro.png" if args.markdown else None
        try:
            macro = bench_macro(data_dir, args.seeds, args.labeled, args.epochs, chart)
        except FileNotFoundError as error:
            print(f"macro: skipped ({error})")
        else:
            for row in macro["rows"]:
                built = ", ".join(f"{a:.2f} (#{r})" for a, r in row["built"])
                print(
                    f"NAS-Bench-Macro seed {row['seed']}: best labeled "
                    f"{row['best_labeled'][0]:.2f} (#{row['best_labeled'][1]}); built {built}; "
                    f"trained in {row['train_seconds']:.0f} s"
                )
            lines += _macro_lines(macro)
    lines += ["Produced by:", "", "```", command.strip(), "```", ""]
    if args.markdown and args.only == "startup":
        out = Path(args.markdown)  # only this section changes: the others keep their runs
        out.write_text(_splice_section(out, lines[2:-6], command.strip()), encoding="utf-8")
        print(f"wrote {out}")
    elif args.markdown:
        out = Path(args.markdown)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines), encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
