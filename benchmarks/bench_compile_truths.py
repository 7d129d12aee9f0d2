"""Check the compiler against the outside truths, exhaustively, and time it.

- NAS-Bench-Macro: all 6561 keys, `params` and `flops` (MACs, 1x3x32x32, 10 classes);
- DyNAS-T OFA MobileNetV3 w1.0: all 2223 distinct subnet dicts (2373 rows), `Model
  Parameters` and `MACs` (1x3x224x224, 1000 classes).

Every network is built from its space file (spaces/*.abs via the language and
`space.resolve`) and, as a cross-check, by hand (tests/nets.py); the two must be the same
network node for node. Then it is counted two ways:

- full: the whole module is built (on the meta device or the CPU; `--device auto` times
  both on a sample of each family and takes the faster) and run once under
  FlopCounterMode;
- fast: `fast_params_and_macs`, per-node counts with a cache.

Usage:  python benchmarks/bench_compile_truths.py [--data ../shared/data] [--workers N]
        [--device auto|cpu|meta] [--modes full,fast] [--limit N] [--markdown PATH]

`--markdown PATH` also writes the results as a section of docs/results.md (see
benchmarks/run_all.py).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from nets import macro_arch, macro_network, ofa_mbv3_arch, ofa_mbv3_network  # noqa: E402

from autobuild_dsl.compile.network import (  # noqa: E402
    build_module,
    count_macs,
    count_params,
    fast_params_and_macs,
)
from autobuild_dsl.compile.registry import full_attrs  # noqa: E402
from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.space.decisions import validate  # noqa: E402
from autobuild_dsl.space.resolve import resolve  # noqa: E402
from autobuild_dsl.space.resolved import ResolvedNetwork  # noqa: E402

# family -> (space file, hand builder, architecture dict builder)
FAMILIES: dict[str, tuple[str, Callable, Callable]] = {
    "macro": ("nas_bench_macro.abs", macro_network, macro_arch),
    "ofa_mbv3": ("mbv3.abs", ofa_mbv3_network, ofa_mbv3_arch),
}
_SPACES: dict[str, object] = {}


def _signature(net: ResolvedNetwork) -> tuple:
    nodes = [(n.op, sorted(full_attrs(n.op, n.attrs).items()), n.position) for n in net.nodes]
    return net.input, nodes, net.skips


def _network(family: str, point: object) -> ResolvedNetwork:
    """The network of `point`, from the space file; checked against the hand-built one."""
    space_file, hand, arch = FAMILIES[family]
    space = _SPACES.get(family)
    if space is None:
        space = _SPACES[family] = compile_file(ROOT / "spaces" / space_file)
    net = resolve(space, validate(space, arch(point)))  # type: ignore[arg-type]
    if _signature(net) != _signature(hand(point)):
        raise AssertionError(f"{family} {point}: the space file and tests/nets.py disagree")
    return net


def _count(net: ResolvedNetwork, mode: str, device: str) -> tuple[int, int]:
    if mode == "fast":
        return fast_params_and_macs(net)
    module = build_module(net, device=device)
    return count_params(module), count_macs(module, net)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _check_chunk(
    family: str, mode: str, device: str, items: list[tuple[object, int, int]]
) -> list[tuple[str, int, int, int, int]]:
    """Returns the mismatches: (point, params, macs, expected params, expected macs)."""
    bad = []
    for point, want_p, want_m in items:
        params, macs = _count(_network(family, point), mode, device)
        if (params, macs) != (want_p, want_m):
            bad.append((str(point), params, macs, want_p, want_m))
    return bad


def load_macro(data: Path) -> list[tuple[object, int, int]]:
    table = json.loads((data / "nas_bench_macro" / "nas-bench-macro_cifar10.json").read_text())
    return [(key, int(v["params"]), int(v["flops"])) for key, v in sorted(table.items())]


def load_dynast(data: Path) -> tuple[list[tuple[object, int, int]], int]:
    """Distinct subnet dicts (rows agreeing on params/MACs are merged), and the row count."""
    seen: dict[str, tuple[dict, int, int]] = {}
    rows = 0
    for path in sorted((data / "dynast_ofa_mbv3_acc").glob("*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                rows += 1
                subnet = ast.literal_eval(row["Sub-network"])
                key = json.dumps(subnet, sort_keys=True)
                entry = (subnet, int(row["Model Parameters"]), int(float(row["MACs"])))
                if key in seen and seen[key][1:] != entry[1:]:
                    raise AssertionError(f"rows disagree for {key}: {seen[key][1:]} {entry[1:]}")
                seen[key] = entry
    return list(seen.values()), rows


def pick_device(family: str, items: list[tuple[object, int, int]]) -> tuple[str, dict]:
    sample = [_network(family, point) for point, *_ in items[:: max(1, len(items) // 8)][:8]]
    timing = {}
    _worker_init()
    for device in ("meta", "cpu"):
        _count(sample[0], "full", device)  # warm up
        start = time.perf_counter()
        for net in sample:
            _count(net, "full", device)
        timing[device] = (time.perf_counter() - start) / len(sample)
    return min(timing, key=timing.__getitem__), timing


def run(
    family: str,
    items: list[tuple[object, int, int]],
    mode: str,
    device: str,
    workers: int,
) -> tuple[int, list, float]:
    start = time.perf_counter()
    size = max(1, len(items) // (workers * 8))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    bad: list = []
    if workers <= 1:
        _worker_init()
        for chunk in chunks:
            bad += _check_chunk(family, mode, device, chunk)
    else:
        with ProcessPoolExecutor(workers, initializer=_worker_init) as pool:
            futures = [pool.submit(_check_chunk, family, mode, device, c) for c in chunks]
            for future in futures:
                bad += future.result()
    return len(items) - len(bad), bad, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=("auto", "cpu", "meta"), default="auto")
    parser.add_argument("--modes", default="full,fast")
    parser.add_argument("--limit", type=int, default=0, help="check only the first N of each")
    parser.add_argument("--markdown", type=Path, help="also write a results section here")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}")
        return 2

    macro = load_macro(args.data)
    dynast, rows = load_dynast(args.data)
    if args.limit:
        macro, dynast = macro[: args.limit], dynast[: args.limit]
    print(f"torch {torch.__version__}, {args.workers} worker(s), {os.cpu_count()} CPUs")
    print(
        f"NAS-Bench-Macro: {len(macro)} keys; DyNAS-T: {len(dynast)} distinct subnets ({rows} rows)"
    )
    failed = False
    rows: list[str] = []
    for family, items, truth in (
        ("macro", macro, "params+flops"),
        ("ofa_mbv3", dynast, "params+MACs"),
    ):
        device = args.device
        if device == "auto" and "full" in args.modes.split(","):
            device, timing = pick_device(family, items)
            shown = ", ".join(f"{d} {t * 1000:.1f} ms" for d, t in timing.items())
            print(f"{family}: full count per network: {shown} -> {device}")
        for mode in args.modes.split(","):
            matched, bad, seconds = run(family, items, mode, device, args.workers)
            where = f"{mode}" + (f" on {device}" if mode == "full" else "")
            print(
                f"{family}: {matched}/{len(items)} exact {truth} ({where}), "
                f"{seconds:.1f} s wall ({seconds / len(items) * 1000:.1f} ms per network "
                f"with {args.workers} worker(s))"
            )
            for point, p, m, wp, wm in bad[:5]:
                print(f"  MISMATCH {point}: params {p} vs {wp}, MACs {m} vs {wm}")
            failed |= bool(bad)
            rows.append(
                f"| {family} | {truth} | {len(items)} | {matched} | {where} | {seconds:.1f} | "
                f"{seconds / len(items) * 1000:.1f} |"
            )
    if args.markdown:
        write_markdown(args.markdown, rows, args)
    return 1 if failed else 0


def write_markdown(path: Path, rows: list[str], args: argparse.Namespace) -> None:
    command = "python benchmarks/bench_compile_truths.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--markdown") and a != str(args.markdown)
    )
    lines = [
        "## Compiler: exact parameters and MACs against the outside truths",
        "",
        "Every network is built from its space file and counted (MACs: FlopCounterMode total",
        "/ 2). *full*: the whole module, run once; *fast*: `fast_params_and_macs`, node by node",
        "with a cache (the path `abc measure --device meta` takes); the tests check that both",
        "give the same numbers.",
        "",
        f"- {os.cpu_count()} CPUs, {args.workers} worker process(es), torch {torch.__version__}",
        "",
        "| family | truth | networks | exact | mode | wall s | ms / network |",
        "|---|---|---:|---:|---|---:|---:|",
        *rows,
        "",
        f"Command: `{command.strip()}`",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
