"""Benchmark ONNX-IR graphs: build time and cache, an IR scorer on DyNAS-T, cross-space
operation importance on a mixed OFA MobileNetV3 + ProxylessNAS data set (paper Fig. 3).

    python benchmarks/bench_ir.py                                   # everything, cold cache
    python benchmarks/bench_ir.py --cache ~/.cache/autobuild-dsl/ir # reuse a cache
    python benchmarks/bench_ir.py --markdown docs/results/ir.md     # + the results section

1. IR graphs of all 2162 DyNAS-T OFA MobileNetV3 networks: exported into a cache folder
   (a fresh temporary one unless --cache), timed; then read back by a new encoder, timed.
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


def build_graphs(space: Any, archs: list, cache: Path, jobs: int) -> dict[str, Any]:
    """Cold (export) then warm (disk cache, fresh encoder) IR graph builds, timed."""
    cold = IrEncoder(space, cache_dir=cache, jobs=jobs)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 30 or done == total:
            last[0] = now
            _log(f"  IR graphs {done}/{total}")

    graphs = cold.graphs(archs, progress)
    first = cold.stats
    warm = IrEncoder(space, cache_dir=cache, jobs=jobs)
    warm.graphs(archs)
    second = warm.stats
    nodes = np.array([g.num_nodes for g in graphs])
    edges = np.array([len(g.edges) for g in graphs])
    return {
        "archs": len(archs),
        "first": first.model_dump(),
        "second": second.model_dump(),
        "nodes_mean": float(nodes.mean()),
        "nodes_range": [int(nodes.min()), int(nodes.max())],
        "edges_mean": float(edges.mean()),
        "jobs": jobs,
        "graphs": graphs,
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


def main() -> None:
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
    parser.add_argument("--figures", default=str(FIGURES), help="folder of the charts")
    parser.add_argument("--markdown", help="write the results section here")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()

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
    figures = Path(args.figures)
    results: dict[str, Any] = {}

    with tempfile.TemporaryDirectory(prefix="bench-ir-") as scratch_dir:
        scratch = Path(scratch_dir)
        cache = Path(args.cache) if args.cache else scratch / "ir-cache"
        os.environ["ABC_IR_CACHE"] = str(cache)  # any encoder made from a run folder

        # 1. IR graphs of every DyNAS-T network.
        _log(f"1. IR graphs of {len(dynast)} DyNAS-T networks (cache {cache}) ...")
        built = build_graphs(mbv3, list(dynast.architectures), cache, args.jobs)
        dynast_graphs: list[IrGraph] = built.pop("graphs")
        results["build"] = built
        _log(f"   {json.dumps(built)}")

        # 2. IR scorer vs sequence scorer on DyNAS-T top1.
        _log("2. scorers on DyNAS-T top1 ...")
        ir_encoder = IrEncoder(mbv3, cache_dir=cache).fit(dynast.architectures)
        ir_run = train(mbv3, dynast, "top1", scratch / "ir", args.epochs, args.seed, ir_encoder)
        seq_run = train(mbv3, dynast, "top1", scratch / "seq", args.epochs, args.seed, None)
        results["dynast_ir"] = run_summary(ir_run)
        results["dynast_sequence"] = run_summary(seq_run)
        _log(f"   ir {results['dynast_ir']}\n   sequence {results['dynast_sequence']}")
        dynast_ops = op_type_scores(ir_run, dynast_graphs)
        results["dynast_ops"] = [s.model_dump() for s in dynast_ops]
        op_chart(
            dynast_ops,
            ["ofa_mbv3"],
            figures / "ir_dynast_op_importance.png",
            f"DyNAS-T OFA MobileNetV3, target top1\nop-type importance "
            f"(ONNX-IR scorer, held-out hop-0 SRCC {_fmt(results['dynast_ir']['hop_srcc'][0])})",
        )
        dynast_top = top_rooted_subgraphs(ir_run, args.top, archs=dynast.architectures)
        results["dynast_subgraphs"] = dynast_top.model_dump()

        # 3. Mixed MobileNetV3 + ProxylessNAS, target MACs.
        _log("3. mixed MobileNetV3 + ProxylessNAS ...")
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
        results["mixed"] = run_summary(mixed_run)
        results["mixed"]["mbv3_rows"] = len(mb_rows)
        results["mixed"]["proxyless_rows"] = len(pn_rows)
        results["mixed"]["macs_checked"] = checked
        results["mixed"]["count_seconds"] = count_seconds
        mixed_graphs = mixed_encoder.graphs(mixed.architectures)
        presence = op_presence(mixed_graphs)
        mixed_ops = op_type_scores(mixed_run, mixed_graphs)
        results["mixed_ops"] = [s.model_dump() for s in mixed_ops]
        op_chart(
            mixed_ops,
            ["ofa_mbv3", "ofa_proxyless"],
            figures / "ir_mixed_op_importance.png",
            f"OFA MobileNetV3 + ProxylessNAS, target MMACs\nop-type importance "
            f"(ONNX-IR scorer, held-out hop-0 SRCC {_fmt(results['mixed']['hop_srcc'][0])})",
        )
        mixed_top = top_rooted_subgraphs(mixed_run, args.top, archs=mixed.architectures)
        results["mixed_subgraphs"] = mixed_top.model_dump()
        _log(f"   mixed {results['mixed']}")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    lines = render(results, presence, dynast_top, mixed_top, args)
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
    build = results["build"]
    first, second = build["first"], build["second"]
    ir, seq, mixed = results["dynast_ir"], results["dynast_sequence"], results["mixed"]
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    per = first["seconds"] / max(1, first["exported"])
    lines = [
        "## ONNX-IR graphs and cross-space operation importance",
        "",
        "One node per ONNX operation of the exported network (Conv with BatchNorm folded, "
        "Relu, HardSwish, Add, Mul, Div, Clip, ReduceMean, ...), edges producer -> consumer "
        "(`docs/ir.md`).",
        "",
        "### Building IR graphs (all DyNAS-T networks)",
        "",
        "| pass | graphs | exported | from the disk cache | wall seconds | per graph | "
        "export CPU s per graph |",
        "|---|---|---|---|---|---|---|",
        f"| first ({'cold cache' if first['disk'] == 0 else 'cache partly filled'}, "
        f"{build['jobs']} export process(es)) | {first['total']} | "
        f"{first['exported']} | {first['disk']} | {first['seconds']:.1f} | {per:.3f} s | "
        f"{first['export_cpu_seconds'] / max(1, first['exported']):.3f} |",
        f"| second (new encoder, same cache) | {second['total']} | {second['exported']} | "
        f"{second['disk']} | {second['seconds']:.2f} | "
        f"{second['seconds'] / max(1, second['total']) * 1000:.2f} ms | - |",
        "",
        f"IR graphs have {build['nodes_mean']:.0f} nodes on average "
        f"({build['nodes_range'][0]}-{build['nodes_range'][1]}) and "
        f"{build['edges_mean']:.0f} edges; sequence graphs of the same networks have 10-20 "
        "nodes. The machine is a shared 2-core CPU; exporting (tracing + the TorchScript "
        "ONNX passes) is nearly all of the first pass.",
        "",
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
        "paper's Fig. 3. ProxylessNAS graphs exported in "
        f"{results['mixed_build']['seconds']:.0f} s ({results['mixed_build']['exported']} "
        "exports; the MobileNetV3 ones came from the cache).",
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
        "Command:",
        "",
        "```sh",
        f"python benchmarks/bench_ir.py {argv}".rstrip(),
        "```",
    ]
    return lines


if __name__ == "__main__":
    main()
