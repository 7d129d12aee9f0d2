"""Run every benchmark and assemble docs/results.md from their sections.

Each benchmark script writes its own section (`--markdown PATH`: a `## ...` heading, tables,
the exact command, figure links) to docs/results/<topic>.md; this script runs them in order
and then joins the sections under a header that records the machine and the software, so
every figure in docs/results.md comes from a run, never from typing.

    python benchmarks/run_all.py                   # everything (about an hour on 2 cores)
    python benchmarks/run_all.py --only scorer,ir  # some sections, then reassemble
    python benchmarks/run_all.py --assemble        # only join the existing sections
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ROOT / "docs" / "results"
RESULTS = ROOT / "docs" / "results.md"


@dataclass(frozen=True)
class Bench:
    topic: str
    script: str
    args: tuple[str, ...] = ()


# In the order the sections appear in docs/results.md.
BENCHES = [
    Bench("compile", "bench_compile_truths.py"),
    Bench("latency", "bench_latency.py", ("--baseline",)),
    Bench("encode", "bench_encode.py"),
    Bench("scorer", "bench_train.py"),
    Bench("rank_build", "bench_rank.py"),
    Bench("build_quality", "bench_build_quality.py"),
    Bench("search", "bench_search.py", ("--fid", "--fid-limit", "65536", "--jobs", "1", "2")),
    Bench("loop", "bench_loop.py"),
    Bench("ir", "bench_ir.py"),
]


def _machine() -> list[str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"- machine: {cpu}, {os.cpu_count()} logical CPUs, no GPU used",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}",
        f"- assembled: {datetime.date.today().isoformat()} by `python benchmarks/run_all.py`",
    ]


def assemble() -> None:
    parts = [
        "# Results",
        "",
        "Every figure on this page was produced by the benchmark scripts in `benchmarks/` on",
        "the data in `../shared/data` (see its README for sources and licenses); each section",
        "names the exact command that produced it. `make bench` reruns them all and rewrites",
        "this page.",
        "",
        *_machine(),
        "",
    ]
    missing = []
    for bench in BENCHES:
        section = SECTIONS / f"{bench.topic}.md"
        if section.exists():
            parts.append(section.read_text(encoding="utf-8").rstrip())
            parts.append("")
        else:
            missing.append(bench.topic)
    if missing:
        parts.append("## Not yet run")
        parts.append("")
        parts.append("Sections without results: " + ", ".join(missing) + ".")
        parts.append("")
    RESULTS.write_text("\n".join(parts), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", help="comma-separated topics: " + ", ".join(b.topic for b in BENCHES)
    )
    parser.add_argument("--assemble", action="store_true", help="only join existing sections")
    args = parser.parse_args()
    chosen = BENCHES
    if args.only:
        wanted = {t.strip() for t in args.only.split(",")}
        unknown = wanted - {b.topic for b in BENCHES}
        if unknown:
            parser.error("unknown topics: " + ", ".join(sorted(unknown)))
        chosen = [b for b in BENCHES if b.topic in wanted]
    failures = []
    if not args.assemble:
        SECTIONS.mkdir(parents=True, exist_ok=True)
        for bench in chosen:
            command = [
                sys.executable,
                str(ROOT / "benchmarks" / bench.script),
                *bench.args,
                "--markdown",
                str(SECTIONS / f"{bench.topic}.md"),
            ]
            print(f"== {bench.topic}: {' '.join(command[1:])}", flush=True)
            start = time.perf_counter()
            result = subprocess.run(command, cwd=ROOT, check=False)
            took = time.perf_counter() - start
            print(f"== {bench.topic}: exit {result.returncode} after {took:.0f} s", flush=True)
            if result.returncode != 0:
                failures.append(bench.topic)
    assemble()
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    if failures:
        print("failed: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
