"""Benchmark ONNX-IR graphs: build time and cache, an IR scorer on DyNAS-T, cross-space
operation importance on a mixed OFA MobileNetV3 + ProxylessNAS data set (paper Fig. 3).

    python benchmarks/bench_ir.py                                   # everything, cold cache
    python benchmarks/bench_ir.py --cache ~/.cache/autobuild-dsl/ir # reuse a cache
    python benchmarks/bench_ir.py --markdown docs/results/ir.md     # + the results section
    python benchmarks/bench_ir.py --build-only                      # section 1 only

1. IR graphs of all 2162 DyNAS-T OFA MobileNetV3 networks, built into a cache folder (a
   fresh temporary one unless --cache: cold) from per-layer ONNX fragments (whole-network
   export as the fallback), timed (wall and CPU, machine load before and after); then
   read back by a new encoder, timed. --verify N sampled networks are also exported whole:
   their graphs must equal the assembled ones, and their time is today's per-network cost
   without fragments.
2. One scorer on those IR graphs (target top1, seeded 90/10 split, the paper's settings),
   next to the sequence-graph scorer on the same split; the FE-MLP op-type importance chart.
3. A mixed data set: --mbv3 DyNAS-T networks (their CSV MACs) + --proxyless random
   ProxylessNAS networks (MACs counted by the compile library, which reproduces DyNAS-T's
   MACs exactly: checked here on --check rows); one IR scorer on target `macs / 1e6`; the
   op-type importance chart, each op coloured by the spaces whose graphs have it; and the
   top rooted subgraphs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autobuild_dsl.compile.network import fast_params_and_macs  # noqa: E402
from autobuild_dsl.data import import_files  # noqa: E402
from autobuild_dsl.data.dataset import LabeledDataset  # noqa: E402
from autobuild_dsl.data.mixed import load_mixed_dataset  # noqa: E402
from autobuild_dsl.design.ir_rank import (  # noqa: E402
    OpTypeScore,
    SubgraphReport,
    op_type_scores,
    top_rooted_subgraphs,
)
from autobuild_dsl.graphs.ir import IrEncoder, IrGraph, op_presence  # noqa: E402
from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, TrainedRun, train_run  # noqa: E402
from autobuild_dsl.space.decisions import sample  # noqa: E402
from autobuild_dsl.space.resolve import resolve  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FIGURES = ROOT / "docs" / "figures"


def _log(message: str) -> None:
    print(message, flush=True)


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (export workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def build_graphs(space: Any, archs: list, cache: Path, jobs: int) -> dict[str, Any]:
    """Cold (fragments + exports) then warm (disk cache, fresh encoder) builds, timed."""
    cold = IrEncoder(space, cache_dir=cache, jobs=jobs)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 30 or done == total:
            last[0] = now
            _log(f"  IR graphs {done}/{total}")

    load_before = os.getloadavg()
    cpu = _cpu()
    graphs = cold.graphs(archs, progress)
    cold_cpu = _cpu() - cpu
    load_after = os.getloadavg()
    first = cold.stats
    warm = IrEncoder(space, cache_dir=cache, jobs=jobs)
    warm.graphs(archs)
    second = warm.stats
    nodes = np.array([g.num_nodes for g in graphs])
    edges = np.array([len(g.edges) for g in graphs])
    return {
        "archs": len(archs),
        "first": first.model_dump(),
        "first_cpu": cold_cpu,
        "load": [load_before[0], load_after[0]],
        "cpus": os.cpu_count(),
        "second": second.model_dump(),
        "nodes_mean": float(nodes.mean()),
        "nodes_range": [int(nodes.min()), int(nodes.max())],
        "edges_mean": float(edges.mean()),
        "jobs": jobs,
        "graphs": graphs,
    }


def verify_graphs(space: Any, archs: list, graphs: list[IrGraph], count: int, seed: int) -> dict:
    """Whole-network exports of `count` sampled networks: equal to the built graphs?"""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(archs), min(count, len(archs)), replace=False)
    whole = IrEncoder(space, use_cache=False, fragments=False)
    start, cpu = time.perf_counter(), time.process_time()
    same = sum(whole.graph(archs[i]) == graphs[i] for i in picks)
    n = max(1, len(picks))
    return {
        "checked": len(picks),
        "equal": int(same),
        "whole_wall_per": (time.perf_counter() - start) / n,
        "whole_cpu_per": (time.process_time() - cpu) / n,
    }


def train(
    space: Any,
    dataset: Any,
    target: str,
    out: Path,
    epochs: int,
    seed: int,
    encoder: Any,
    data_path: str = "",
) -> TrainedRun:
    start = time.perf_counter()
    run = train_run(
        space,
        dataset,
        target,
        out,
        train=TrainConfig(epochs=epochs),
        ensemble=EnsembleConfig(folds=1, seeds=1, seed=seed),
        encoder=encoder,
        data_path=data_path,
        force=True,
    )
    run.wall_seconds = time.perf_counter() - start  # type: ignore[attr-defined]
    return run


def run_summary(run: TrainedRun) -> dict[str, Any]:
    assert run.metrics is not None
    mean = run.metrics.mean
    return {
        "rows": run.config.rows,
        "layers": run.config.model.num_layers,
        "hop_srcc": mean.hop_srcc,
        "pred_srcc": mean.pred_srcc,
        "mae": mean.mae,
        "seconds_per_epoch": mean.seconds_per_epoch,
        "wall_seconds": getattr(run, "wall_seconds", None),
    }


SPACE_COLOURS = {"shared": "#7f7f7f"}


def op_chart(scores: list[OpTypeScore], spaces: list[str], path: Path, title: str) -> None:
    """Horizontal bars of op-type FE-MLP scores, coloured by which spaces have the op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    colour_of = {s: palette[i % len(palette)] for i, s in enumerate(spaces)}

    def group(score: OpTypeScore) -> str:
        if len(spaces) > 1 and len(score.spaces) == 1:
            return f"{score.spaces[0]} only"
        return "shared" if len(spaces) > 1 else spaces[0]

    ordered = sorted(scores, key=lambda s: s.score)
    colours = []
    present: set[str] = set()
    for s in ordered:
        g = group(s)
        present.add(g)
        colours.append(colour_of[s.spaces[0]] if g.endswith(" only") else SPACE_COLOURS["shared"])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ordered) + 1.8))
    ax.barh([s.op for s in ordered], [s.score for s in ordered], color=colours)
    ax.set_xlabel("FE-MLP score (|scalar| of the op type)")
    ax.set_title(title, fontsize=10)
    if len(spaces) > 1:
        handles = [Patch(color=colour_of[s], label=f"{s} only") for s in spaces]
        handles.append(Patch(color=SPACE_COLOURS["shared"], label="shared"))
        handles = [h for h in handles if h.get_label() in present]
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            ncol=len(handles),
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _hops(values: list[float | None]) -> str:
    return " ".join(_fmt(v) for v in values)


def subgraph_rows(report: SubgraphReport) -> list[str]:
    lines = [
        "| rank | best hop | z-score | root (layer) | operations covered | layers covered | "
        "subgraphs folded | graphs holding one |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report.subgraphs:
        ops = ", ".join(f"{op} x{n}" for op, n in s.ops.items())
        places = ", ".join(s.places)
        root = f"{s.root.op} {s.root.index} ({s.root.place})"
        spaces = "/".join(s.spaces)
        lines.append(
            f"| {s.rank} | {s.hop} | {s.score:.2f} | {root} | {ops} | {places} | "
            f"{s.variants} | {s.occurrences} ({spaces}) |"
        )
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(SHARED), help="folder of the shared data sets")
    parser.add_argument("--cache", help="IR cache folder (default: a fresh temporary one)")
    parser.add_argument("--jobs", type=int, default=2, help="export worker processes")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mbv3", type=int, default=1000, help="MobileNetV3 rows in the mix")
    parser.add_argument("--proxyless", type=int, default=1000, help="ProxylessNAS rows")
    parser.add_argument("--check", type=int, default=50, help="rows whose MACs are recounted")
    parser.add_argument("--top", type=int, default=5, help="rooted subgraphs to list")
    parser.add_argument("--limit", type=int, help="only the first N DyNAS-T rows (smoke test)")
    parser.add_argument("--verify", type=int, default=20, help="networks also exported whole")
    parser.add_argument("--build-only", action="store_true", help="section 1 only")
    parser.add_argument("--figures", default=str(FIGURES), help="folder of the charts")
    parser.add_argument("--markdown", help="write the results section here")
    parser.add_argument("--json", help="write the raw figures here")
    return parser.parse_args()


def section_dynast(
    mbv3: Any, dynast: LabeledDataset, graphs: list[IrGraph], cache: Path, scratch: Path, args
) -> tuple[dict[str, Any], SubgraphReport]:
    """2. IR scorer vs sequence scorer on DyNAS-T top1, op-type chart, rooted subgraphs."""
    results: dict[str, Any] = {}
    ir_encoder = IrEncoder(mbv3, cache_dir=cache).fit(dynast.architectures)
    ir_run = train(mbv3, dynast, "top1", scratch / "ir", args.epochs, args.seed, ir_encoder)
    seq_run = train(mbv3, dynast, "top1", scratch / "seq", args.epochs, args.seed, None)
    results["dynast_ir"] = run_summary(ir_run)
    results["dynast_sequence"] = run_summary(seq_run)
    _log(f"   ir {results['dynast_ir']}\n   sequence {results['dynast_sequence']}")
    dynast_ops = op_type_scores(ir_run, graphs)
    results["dynast_ops"] = [s.model_dump() for s in dynast_ops]
    op_chart(
        dynast_ops,
        ["ofa_mbv3"],
        Path(args.figures) / "ir_dynast_op_importance.png",
        f"DyNAS-T OFA MobileNetV3, target top1\nop-type importance "
        f"(ONNX-IR scorer, held-out hop-0 SRCC {_fmt(results['dynast_ir']['hop_srcc'][0])})",
    )
    dynast_top = top_rooted_subgraphs(ir_run, args.top, archs=dynast.architectures)
    results["dynast_subgraphs"] = dynast_top.model_dump()
    return results, dynast_top


def mixed_dataset(
    mbv3: Any, proxyless: Any, dynast: LabeledDataset, scratch: Path, args
) -> tuple[Any, Path, dict[str, Any]]:
    """DyNAS-T MobileNetV3 rows (their MACs, checked) + random ProxylessNAS rows (counted)."""
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.permutation(len(dynast))[: args.mbv3])
    mb_rows = dynast.subset(pick)
    checked = 0
    for i in range(min(args.check, len(mb_rows))):
        _, macs = fast_params_and_macs(resolve(mbv3, mb_rows.architectures[i]))
        if macs != int(mb_rows.metric("macs")[i]):
            raise SystemExit(f"MACs differ from DyNAS-T's on row {i}: {macs}")
        checked += 1
    pn_archs = sample(proxyless, args.proxyless, seed=args.seed)
    start = time.perf_counter()
    pn_macs = [fast_params_and_macs(resolve(proxyless, a)) for a in pn_archs]
    count_seconds = time.perf_counter() - start
    pn_rows = LabeledDataset(
        space=proxyless,
        architectures=pn_archs,
        metric_names=["params", "macs"],
        values=np.array(pn_macs, dtype=np.float64),
    )
    mixed_path = scratch / "mixed.jsonl"
    mb_plain = LabeledDataset(
        space=mbv3,
        architectures=mb_rows.architectures,
        metric_names=["macs"],
        values=mb_rows.metric("macs")[:, None],
    )
    mixed_path.write_text(mb_plain.to_jsonl() + pn_rows.to_jsonl(), encoding="utf-8")
    mixed = load_mixed_dataset(mixed_path, [mbv3, proxyless])
    info = {
        "mbv3_rows": len(mb_rows),
        "proxyless_rows": len(pn_rows),
        "macs_checked": checked,
        "count_seconds": count_seconds,
    }
    return mixed, mixed_path, info


def section_mixed(
    mbv3: Any, proxyless: Any, dynast: LabeledDataset, cache: Path, scratch: Path, args
) -> tuple[dict[str, Any], dict[str, set[str]], SubgraphReport]:
    """3. Mixed MobileNetV3 + ProxylessNAS, target MACs: one IR scorer, its op types."""
    results: dict[str, Any] = {}
    mixed, mixed_path, info = mixed_dataset(mbv3, proxyless, dynast, scratch, args)
    _log(f"   {len(mixed)} rows; exporting ProxylessNAS graphs ...")
    mixed_encoder = IrEncoder([mbv3, proxyless], cache_dir=cache, jobs=args.jobs)
    pn_start = time.perf_counter()
    mixed_encoder.fit(mixed.architectures)
    results["mixed_build"] = mixed_encoder.stats.model_dump()
    results["mixed_build"]["wall"] = time.perf_counter() - pn_start
    mixed_run = train(
        mbv3,
        mixed,
        "macs / 1e6",
        scratch / "mixed",
        args.epochs,
        args.seed,
        mixed_encoder,
        str(mixed_path),
    )
    results["mixed"] = {**run_summary(mixed_run), **info}
    mixed_graphs = mixed_encoder.graphs(mixed.architectures)
    presence = op_presence(mixed_graphs)
    mixed_ops = op_type_scores(mixed_run, mixed_graphs)
    results["mixed_ops"] = [s.model_dump() for s in mixed_ops]
    op_chart(
        mixed_ops,
        ["ofa_mbv3", "ofa_proxyless"],
        Path(args.figures) / "ir_mixed_op_importance.png",
        f"OFA MobileNetV3 + ProxylessNAS, target MMACs\nop-type importance "
        f"(ONNX-IR scorer, held-out hop-0 SRCC {_fmt(results['mixed']['hop_srcc'][0])})",
    )
    mixed_top = top_rooted_subgraphs(mixed_run, args.top, archs=mixed.architectures)
    results["mixed_subgraphs"] = mixed_top.model_dump()
    _log(f"   mixed {results['mixed']}")
    return results, presence, mixed_top


def main() -> None:
    args = parse_args()
    data_dir = Path(args.data)
    files = sorted(str(p) for p in (data_dir / "dynast_ofa_mbv3_acc").glob("*.csv"))
    if not files:
        print(f"skipped: no DyNAS-T CSVs under {data_dir}")
        return
    mbv3 = compile_file(ROOT / "spaces" / "mbv3.abs")
    proxyless = compile_file(ROOT / "spaces" / "ofa_proxyless.abs")
    imported = import_files("ofa", files, mbv3)
    assert imported.dataset is not None
    dynast: LabeledDataset = imported.dataset
    if args.limit:
        dynast = dynast.subset(np.arange(min(args.limit, len(dynast))))
    results: dict[str, Any] = {}

    with tempfile.TemporaryDirectory(prefix="bench-ir-") as scratch_dir:
        scratch = Path(scratch_dir)
        cache = Path(args.cache) if args.cache else scratch / "ir-cache"
        os.environ["ABC_IR_CACHE"] = str(cache)  # any encoder made from a run folder

        _log(f"1. IR graphs of {len(dynast)} DyNAS-T networks (cache {cache}) ...")
        built = build_graphs(mbv3, list(dynast.architectures), cache, args.jobs)
        dynast_graphs: list[IrGraph] = built.pop("graphs")
        results["build"] = built
        _log(f"   {json.dumps(built)}")
        if args.verify:
            checked = verify_graphs(mbv3, dynast.architectures, dynast_graphs, args.verify, 0)
            results["verify"] = checked
            _log(f"   whole-network exports: {json.dumps(checked)}")
        if args.build_only:
            write_out([*render_build(results), *_command()], results, args)
            return
        _log("2. scorers on DyNAS-T top1 ...")
        part, dynast_top = section_dynast(mbv3, dynast, dynast_graphs, cache, scratch, args)
        results.update(part)
        _log("3. mixed MobileNetV3 + ProxylessNAS ...")
        part, presence, mixed_top = section_mixed(mbv3, proxyless, dynast, cache, scratch, args)
        results.update(part)
    write_out(render(results, presence, dynast_top, mixed_top, args), results, args)


def write_out(lines: list[str], results: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        out = Path(args.markdown)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)


def render(
    results: dict[str, Any],
    presence: dict[str, set[str]],
    dynast_top: SubgraphReport,
    mixed_top: SubgraphReport,
    args: argparse.Namespace,
) -> list[str]:
    ir, seq, mixed = results["dynast_ir"], results["dynast_sequence"], results["mixed"]
    build = results["build"]
    lines = [
        *render_build(results),
        "### IR scorer vs sequence scorer, DyNAS-T OFA MobileNetV3, target `top1`",
        "",
        f"One predictor each, the same seeded 90/10 split, {args.epochs} epochs, the paper's "
        "settings; held-out SRCC.",
        "",
        "| graphs | rows | layers | hop SRCC 0..L | pred SRCC | s/epoch | training wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("sequence", seq), ("ONNX-IR", ir)):
        lines.append(
            f"| {name} | {r['rows']} | {r['layers']} | {_hops(r['hop_srcc'])} | "
            f"{_fmt(r['pred_srcc'])} | {r['seconds_per_epoch']:.2f} | {r['wall_seconds']:.0f} s |"
        )
    lines += [
        "",
        "![op-type importance, DyNAS-T](figures/ir_dynast_op_importance.png)",
        "",
        f"Top rooted subgraphs of the DyNAS-T IR scorer over its {build['archs']} networks, one "
        "row per root location (`top_rooted_subgraphs`; score: z-score of the root's "
        "node-embedding norm at that hop, with the members' training statistics; the root's "
        "number is its node index in the example network):",
        "",
        *subgraph_rows(dynast_top),
        "",
        "### Mixed OFA MobileNetV3 + ProxylessNAS, target `macs / 1e6`",
        "",
        f"{mixed['mbv3_rows']} DyNAS-T MobileNetV3 networks (MACs from the DyNAS-T CSV) + "
        f"{mixed['proxyless_rows']} random ProxylessNAS networks (MACs counted by the compile "
        "library in "
        f"{mixed['count_seconds']:.1f} s; the same counting reproduces DyNAS-T's MACs exactly "
        f"on the {mixed['macs_checked']} MobileNetV3 rows checked). No public ProxylessNAS "
        "accuracy data is at hand, so the shared target is MACs, not accuracy as in the "
        "paper's Fig. 3. ProxylessNAS graphs built in "
        f"{results['mixed_build']['seconds']:.0f} s ({results['mixed_build']['assembled']} "
        f"from {results['mixed_build']['fragments']} layer fragments, "
        f"{results['mixed_build']['exported']} exported whole; the MobileNetV3 ones came from "
        "the cache).",
        "",
        "| rows | layers | hop SRCC 0..L | pred SRCC | s/epoch |",
        "|---|---|---|---|---|",
        f"| {mixed['rows']} | {mixed['layers']} | {_hops(mixed['hop_srcc'])} | "
        f"{_fmt(mixed['pred_srcc'])} | {mixed['seconds_per_epoch']:.2f} |",
        "",
        "![op-type importance, mixed spaces](figures/ir_mixed_op_importance.png)",
        "",
        "| op type | FE-MLP score | in |",
        "|---|---|---|",
    ]
    for s in results["mixed_ops"]:
        where = sorted(presence.get(s["op"], ()))
        label = f"{where[0]} only" if len(where) == 1 else "both"
        lines.append(f"| {s['op']} | {s['score']:.3f} | {label} |")
    lines += [
        "",
        "Top rooted subgraphs of the mixed scorer:",
        "",
        *subgraph_rows(mixed_top),
        "",
        *_command(),
    ]
    return lines


def _command() -> list[str]:
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return ["", "Command:", "", "```sh", f"python benchmarks/bench_ir.py {argv}".rstrip(), "```"]


def render_build(results: dict[str, Any]) -> list[str]:
    """The header and the graph-building table."""
    build = results["build"]
    first, second = build["first"], build["second"]
    load = build["load"]
    lines = [
        "## ONNX-IR graphs and cross-space operation importance",
        "",
        "One node per ONNX operation of the exported network (Conv with BatchNorm folded, "
        "Relu, HardSwish, Add, Mul, Div, Clip, ReduceMean, ...), edges producer -> consumer "
        "(`docs/ir.md`).",
        "",
        "### Building IR graphs (all DyNAS-T networks)",
        "",
        "| pass | graphs | assembled from fragments | exported whole | from the disk cache | "
        "wall s | CPU s | per graph (wall) |",
        "|---|---|---|---|---|---|---|---|",
        f"| first ({'cold cache' if first['disk'] == 0 else 'cache partly filled'}) | "
        f"{first['total']} | {first['assembled']} | {first['exported']} | {first['disk']} | "
        f"{first['seconds']:.1f} | {build['first_cpu']:.1f} | "
        f"{first['seconds'] / max(1, first['total']) * 1000:.1f} ms |",
        f"| second (new encoder, same cache) | {second['total']} | {second['assembled']} | "
        f"{second['exported']} | {second['disk']} | {second['seconds']:.2f} | - | "
        f"{second['seconds'] / max(1, second['total']) * 1000:.2f} ms |",
    ]
    verify = results.get("verify")
    if verify:
        lines.append(
            f"| whole-network export, no fragments ({verify['checked']} sampled networks) | "
            f"{verify['checked']} | 0 | {verify['checked']} | 0 | "
            f"{verify['whole_wall_per'] * verify['checked']:.1f} | "
            f"{verify['whole_cpu_per'] * verify['checked']:.1f} | "
            f"{verify['whole_wall_per'] * 1000:.0f} ms |"
        )
    lines += [
        "",
        f"Cold pass: {first['fragments']} layer contexts exported as fragments "
        f"({first['fragment_cpu_seconds']:.1f} s CPU, with {first['checked']} network also "
        "exported whole and compared, once per space and cache), every graph stitched from "
        f"them; {build['jobs']} export process(es) for whole exports. Machine load (1-min "
        f"average) {load[0]:.1f} before, {load[1]:.1f} after, on {build['cpus']} CPUs: with "
        "a load above the CPU count, wall time includes waiting for a CPU.",
    ]
    if verify:
        whole_cpu = verify["whole_cpu_per"] * first["total"]
        lines.append(
            f"Assembled graphs equal to their whole-network export: {verify['equal']} of "
            f"{verify['checked']} sampled. Exporting all {first['total']} whole would take "
            f"about {whole_cpu:.0f} s of CPU ({verify['whole_cpu_per']:.3f} s each, as "
            f"sampled): {whole_cpu / max(build['first_cpu'], 1e-9):.0f}x the cold pass's "
            f"{build['first_cpu']:.1f} s."
        )
    lines += [
        "",
        f"IR graphs have {build['nodes_mean']:.0f} nodes on average "
        f"({build['nodes_range'][0]}-{build['nodes_range'][1]}) and "
        f"{build['edges_mean']:.0f} edges; sequence graphs of the same networks have 10-20 "
        "nodes.",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
