"""Time the sequence-graph encoder on real benchmark data.

Imports all 6561 NAS-Bench-Macro architectures and all 5000 HELP OFA MobileNetV3 subnets
from the shared data, then encodes every one (fresh encoder, so caches start empty) and
prints the import and encode times. Also encodes all 7371 modules of OFA stage s1 alone,
the work a module ranking does per stage.

Usage:  python benchmarks/bench_encode.py [--data ../shared/data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autobuild_dsl.data import import_files  # noqa: E402
from autobuild_dsl.graphs import GraphEncoder  # noqa: E402
from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.space.decisions import index_of, unit_modules  # noqa: E402


def timed(label: str, repeat: int, work):  # type: ignore[no-untyped-def]
    """Best of `repeat` runs (the machine is shared; the best run is the least disturbed)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    _say(f"{label:<52} {best:7.3f} s")
    return result


_LINES: list[str] = []


def _say(text: str) -> None:
    print(text, flush=True)
    _LINES.append(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", help="write the results section here")
    args = parser.parse_args()
    data = Path(args.data)
    cases = [
        ("nas-bench-macro", "nas_bench_macro.abs", "nas_bench_macro/*.json"),
        ("ofa", "mbv3.abs", "help_ofa_latency/*.json"),
    ]
    for fmt, space_file, pattern in cases:
        files = sorted(data.glob(pattern))
        if not files:
            sys.exit(f"no {pattern} under {data}; pass --data")
        space = compile_file(ROOT / "spaces" / space_file)
        result = timed(
            f"import {pattern}", 1, lambda f=fmt, p=files, s=space: import_files(f, p, s)
        )
        archs = result.dataset.architectures
        graphs = timed(
            f"encode {len(archs)} {space.name} (fresh encoder)",
            args.repeat,
            lambda s=space, a=archs: GraphEncoder(s).encode_many(a),
        )
        nodes = sum(g.num_nodes for g in graphs)
        _say(f"{'':<52} {len(graphs)} graphs, {nodes:,} nodes, {len(graphs[0].x[0])} categories")
    space = compile_file(ROOT / "spaces" / "mbv3.abs")
    unit = index_of(space).units[0]
    modules = list(unit_modules(space, unit))
    encoder = GraphEncoder(space)
    timed(
        f"encode all {len(modules)} modules of {unit.name}",
        args.repeat,
        lambda: [encoder.encode_module(unit.name, m) for m in modules],
    )
    if args.markdown:
        section = [
            "## Graph encoding speed",
            "",
            "Importing the public data and encoding every architecture as a sequence graph",
            f"(best of {args.repeat} runs, one process; 1-minute load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs when it finished):",
            "",
            "```text",
            *_LINES,
            "```",
            "",
            f"Command: `python benchmarks/bench_encode.py --repeat {args.repeat}`",
            "",
        ]
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(section))


if __name__ == "__main__":
    main()
