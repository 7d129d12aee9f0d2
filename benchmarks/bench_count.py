"""Time counting and sampling a space whose stages are linked by a chain of rules.

The space has six stages (depth 1..3, width 32/64/96 each) and seven rules: five chained
rules between neighbouring stages (`s2.width == s1.width or s2.width == 2 * s1.width`,
...) and two sums over all stages (depths, widths). It is counted and sampled twice, by the
dynamic programme over the rule chain (space/chain.py, the default) and by listing every
joint assignment (the former method, forced here), and the two counts are compared.
Wall and CPU time of each (best of --repeat runs; the machine is shared).

Usage:  python benchmarks/bench_count.py [--repeat 3] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autobuild_dsl.lang import compile_text  # noqa: E402
from autobuild_dsl.space import decisions  # noqa: E402
from autobuild_dsl.space import index as space_index  # noqa: E402

STAGES = 6
SPACE = (
    "space chained {\n  input(channels = 3, size = 32)\n"
    + "".join(
        f"  stage s{i} {{\n    depth 1..3\n    choice width = {{32, 64, 96}}\n"
        f"    layer conv(out = width, kernel = {{3, 5}})\n  }}\n"
        for i in range(1, STAGES + 1)
    )
    + "".join(
        f"  require s{i + 1}.width == s{i}.width or s{i + 1}.width == 2 * s{i}.width\n"
        for i in range(1, STAGES)
    )
    + "  require "
    + " + ".join(f"s{i}.depth" for i in range(1, STAGES + 1))
    + " <= 12\n  require "
    + " + ".join(f"s{i}.width" for i in range(1, STAGES + 1))
    + " <= 400\n}\n"
)

_LINES: list[str] = []


def _say(text: str) -> None:
    print(text, flush=True)
    _LINES.append(text)


def _run(threshold: int, repeat: int, samples: int) -> tuple[int, float, float, float]:
    """(size, best wall s, its CPU s, sampling wall s) with `threshold` for the DP."""
    best = (float("inf"), 0.0)
    size = 0
    sample_wall = 0.0
    old = space_index.DP_THRESHOLD
    space_index.DP_THRESHOLD = threshold
    try:
        compiled = compile_text(SPACE, "chained.abs")
        for _ in range(repeat):
            # A fresh copy of the Space: its index (held by the space) is built anew.
            space = type(compiled).model_validate_json(compiled.model_dump_json())
            wall, cpu = time.perf_counter(), time.process_time()
            size = decisions.space_size(space)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if wall < best[0]:
                best = (wall, cpu)
            start = time.perf_counter()
            index = decisions.index_of(space)
            rng = random.Random(0)
            for _ in range(samples):
                index.sample(rng)
            sample_wall = time.perf_counter() - start
    finally:
        space_index.DP_THRESHOLD = old
    return size, best[0], best[1], sample_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--no-listing", action="store_true", help="skip the former method")
    parser.add_argument("--markdown", help="write the results section here")
    args = parser.parse_args()
    _say(
        f"space: {STAGES} stages x 9 scalar states, 5 chained rules + 2 sums; load {os.getloadavg()[0]:.2f}"
    )
    size, wall, cpu, sampling = _run(0, args.repeat, args.samples)
    _say(
        f"DP over the rule chain:   size {size:,}  count {wall:6.3f} s wall {cpu:6.3f} s CPU; "
        f"{args.samples} samples {sampling:6.3f} s"
    )
    if not args.no_listing:
        size2, wall2, cpu2, sampling2 = _run(10**12, 1, args.samples)
        _say(
            f"listing joint states:     size {size2:,}  count {wall2:6.3f} s wall {cpu2:6.3f} s CPU; "
            f"{args.samples} samples {sampling2:6.3f} s"
        )
        if size2 != size:
            raise SystemExit(f"the two counts differ: {size} vs {size2}")
    if args.markdown:
        Path(args.markdown).write_text(
            "## Counting with chained rules (`benchmarks/bench_count.py`)\n\n```\n"
            + "\n".join(_LINES)
            + "\n```\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
