"""Benchmark AutoBuild scorer training on real labeled architectures, against the authors' code.

    python benchmarks/bench_train.py                          # the full table (~15-25 min)
    python benchmarks/bench_train.py --only dynast --seeds 1  # one data set, one split
    python benchmarks/bench_train.py --markdown docs/results/scorer.md

For each data set, for each of 3 split seeds, for the ranking loss and for MSE only (the
paper's Exhaustive-Search predictor): import the data from ../shared/data (or --data DIR)
with the project's importers, train one predictor with `train_run` and the defaults (90/10
split, 200 epochs, batch 128), and read its held-out metrics. Printed: the mean over the
seeds of the test SRCC of the embedding norms at every hop, the SRCC of the prediction
head and the seconds per epoch, next to the SRCCs the authors' code reached. Speed against
the authors' trainer is measured side by side by `benchmarks/bench_vs_authors.py`.

    dynast          OFA MobileNetV3 subnets from DyNAS-T, target top1 (2162 networks)
    help_2080ti_64  HELP OFA latencies, RTX 2080 Ti batch 64 (5000 networks)
    help_v100_1     HELP OFA latencies, V100 batch 1 (5000 networks)
    macro           NAS-Bench-Macro mean_acc, its 3,969 distinct networks: train on a
                    random 10% (397, a different 10% per seed), test on the other 90%

Seconds per epoch are training time only (no evaluation), one torch thread, one predictor
at a time. The machine is shared: other processes inflate them, so the load average is
recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autobuild_dsl.data import import_files  # noqa: E402
from autobuild_dsl.data.dataset import LabeledDataset  # noqa: E402
from autobuild_dsl.graphs.encode import GraphEncoder  # noqa: E402
from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, train_run  # noqa: E402
from autobuild_dsl.space.model import Space  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FIGURE = ROOT / "docs" / "figures" / "scorer_hop_srcc.png"
LOSSES = ("ranked", "mse")


@dataclass(frozen=True)
class Authors:
    """SRCCs the authors' code reached with its defaults (90/10 split, 200 epochs, batch 128).

    No time here: a time measured on another day and load is no anchor for a speed-up;
    `bench_vs_authors.py` runs both trainers interleaved instead."""

    hop_srcc: tuple[float, ...]
    pred_srcc: float


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    space: str  # file under spaces/
    fmt: str  # importer format
    files: tuple[str, ...]  # globs under the data folder
    target: str
    test_fraction: float = 0.1
    authors: Authors | None = None


BENCHES = {
    b.name: b
    for b in (
        Bench(
            "dynast",
            "DyNAS-T OFA MobileNetV3, `top1`",
            "mbv3.abs",
            "ofa",
            ("dynast_ofa_mbv3_acc/*.csv",),
            "top1",
            authors=Authors((0.924, 0.960, 0.976, 0.986, 0.985), 0.994),
        ),
        Bench(
            "help_2080ti_64",
            "HELP OFA MobileNetV3, `lat_2080ti_64`",
            "mbv3.abs",
            "ofa",
            ("help_ofa_latency/*.json",),
            "lat_2080ti_64",
            authors=Authors((0.931, 0.962, 0.976, 0.979, 0.979), 0.982),
        ),
        Bench(
            "help_v100_1",
            "HELP OFA MobileNetV3, `lat_v100_1`",
            "mbv3.abs",
            "ofa",
            ("help_ofa_latency/*.json",),
            "lat_v100_1",
            authors=Authors((0.820, 0.833, 0.866, 0.875, 0.873), 0.878),
        ),
        Bench(
            "macro",
            "NAS-Bench-Macro, `mean_acc`, train on 10%",
            "nas_bench_macro.abs",
            "nas-bench-macro",
            ("nas_bench_macro/*.json",),
            "mean_acc",
            test_fraction=0.9,
        ),
    )
}


@dataclass
class Row:
    """One (data set, loss): every seed's metrics and their mean."""

    bench: Bench
    loss: str
    rows: int = 0
    layers: int = 0
    n_train: int = 0
    n_test: int = 0
    hop_srcc: list[list[float]] = field(default_factory=list)  # [seed][hop]
    pred_srcc: list[float] = field(default_factory=list)
    mae: list[float] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    cpu_seconds_per_epoch: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    softrank_backend: str = ""

    def mean_hops(self) -> list[float]:
        return [float(v) for v in np.mean(np.array(self.hop_srcc, dtype=float), axis=0)]

    def mean(self, values: list[float]) -> float:
        return float(np.mean(values))

    def as_json(self) -> dict:
        return {
            "data": self.bench.name,
            "loss": self.loss,
            "rows": self.rows,
            "train_rows": self.n_train,
            "test_rows": self.n_test,
            "layers": self.layers,
            "seeds": len(self.pred_srcc),
            "hop_srcc": self.mean_hops(),
            "pred_srcc": self.mean(self.pred_srcc),
            "mae": self.mean(self.mae),
            "seconds_per_epoch": self.mean(self.seconds_per_epoch),
            "cpu_seconds_per_epoch": self.mean(self.cpu_seconds_per_epoch),
            "per_seed": {
                "hop_srcc": self.hop_srcc,
                "pred_srcc": self.pred_srcc,
                "seconds_per_epoch": self.seconds_per_epoch,
                "cpu_seconds_per_epoch": self.cpu_seconds_per_epoch,
            },
            "wall_seconds": self.wall_seconds,
            "softrank_backend": self.softrank_backend,
        }


def load(bench: Bench, data_dir: Path) -> tuple[Space, LabeledDataset]:
    space = compile_file(ROOT / "spaces" / bench.space)
    files = sorted(str(p) for pattern in bench.files for p in data_dir.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{bench.name}: no {', '.join(bench.files)} under {data_dir}")
    result = import_files(bench.fmt, files, space)
    if result.dataset is None:
        raise ValueError(f"{bench.name}: nothing imported")
    return space, result.dataset


def run_row(
    bench: Bench,
    space: Space,
    dataset: LabeledDataset,
    encoder: GraphEncoder,
    train: TrainConfig,
    seeds: list[int],
) -> Row:
    row = Row(bench=bench, loss=train.loss)
    start = time.perf_counter()
    for seed in seeds:
        with tempfile.TemporaryDirectory() as scratch:
            run = train_run(
                space,
                dataset,
                bench.target,
                Path(scratch) / "run",
                train=train,
                ensemble=EnsembleConfig(
                    folds=1, seeds=1, seed=seed, test_fraction=bench.test_fraction
                ),
                encoder=encoder,
            )
        assert run.metrics is not None
        metrics = run.members[0].record.metrics
        row.rows = run.config.rows
        row.layers = run.config.model.num_layers
        row.n_train = metrics.n_train
        row.n_test = metrics.n_test
        row.softrank_backend = run.config.softrank_backend
        row.hop_srcc.append([float("nan") if v is None else v for v in metrics.hop_srcc])
        row.pred_srcc.append(float("nan") if metrics.pred_srcc is None else metrics.pred_srcc)
        row.mae.append(float("nan") if metrics.mae is None else metrics.mae)
        row.seconds_per_epoch.append(metrics.seconds_per_epoch)
        cpu = metrics.cpu_seconds_per_epoch
        row.cpu_seconds_per_epoch.append(float("nan") if cpu is None else cpu)
    row.wall_seconds = time.perf_counter() - start
    return row


def _hops(values: list[float] | tuple[float, ...]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def _speed(row: Row) -> tuple[float, float]:
    """(CPU, wall) seconds per epoch, the members' mean."""
    return row.mean(row.cpu_seconds_per_epoch), row.mean(row.seconds_per_epoch)


def show(row: Row) -> None:
    bench = row.bench
    cpu, wall = _speed(row)
    line = (
        f"{bench.name:>15} {row.loss:>6}: {row.rows} archs, {len(row.pred_srcc)} seeds | "
        f"hop SRCC {_hops(row.mean_hops())} | pred SRCC {row.mean(row.pred_srcc):.3f} | "
        f"{cpu:.3f} s/epoch CPU ({wall:.3f} wall)"
    )
    if bench.authors and row.loss == "ranked":
        a = bench.authors
        line += (
            f"\n{'':>15} {'authors':>6}: hop SRCC {_hops(a.hop_srcc)} | pred SRCC {a.pred_srcc:.3f}"
        )
    print(line, flush=True)


def _distinct_per_hop(packed: object, hops: int) -> list[int]:
    """Distinct node contexts at hop 0..hops (scorer/shared.py's plan)."""
    from autobuild_dsl.scorer.shared import plan

    planned = plan(packed, hops)  # type: ignore[arg-type]
    return [int(planned.x.shape[0])] + [h.size for h in planned.hops]


def unique_rows_line(bench: Bench, dataset: LabeledDataset, encoder: GraphEncoder) -> str:
    """Distinct node contexts per hop (nodes with the same k-hop in-neighbourhood have the
    same hop-k embedding): over all graphs, and the mean over one epoch's training batches:
    the rows a layer computed once per context would need, against the nodes it computes
    today."""
    import torch

    from autobuild_dsl.data.splits import train_test_split
    from autobuild_dsl.scorer.model import PackedGraphs, pack_graphs

    train = TrainConfig()
    packed = pack_graphs(encoder.encode_many(dataset.architectures))
    split = train_test_split(packed.num_graphs, bench.test_fraction, 0)
    shuffle = torch.randperm(len(split.train), generator=torch.Generator().manual_seed(0))
    order = torch.tensor(list(split.train))[shuffle]
    batches = [b for b in order.split(train.batch_size) if b.shape[0] == train.batch_size]
    per_batch = []
    for b in batches:
        # The batch's graphs repacked: neighbours are relative offsets, so they carry over.
        nodes = torch.cat([torch.arange(packed.node_ptr[g], packed.node_ptr[g + 1]) for g in b])
        ptr = torch.zeros(b.shape[0] + 1, dtype=torch.long)
        ptr[1:] = torch.cumsum(packed.counts[b], 0)
        sub = PackedGraphs(
            packed.x[nodes], packed.rel_nbr[:, nodes], packed.nbr_mask[:, nodes], ptr
        )
        per_batch.append(_distinct_per_hop(sub, train.num_layers))
    nodes_mean = float(np.mean([int(packed.counts[b].sum()) for b in batches]))
    return (
        f"{bench.name:>15}: {int(packed.node_ptr[-1])} nodes, distinct rows at hop 0..L "
        f"{' '.join(str(c) for c in _distinct_per_hop(packed, train.num_layers))}; per batch "
        f"of {train.batch_size} ({nodes_mean:.0f} nodes, mean of {len(batches)}) "
        f"{' '.join(f'{c:.0f}' for c in np.mean(per_batch, axis=0))}"
    )


def markdown(rows: list[Row], command: str, load_before: float, load_after: float) -> str:
    train = TrainConfig()
    by_bench: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_bench.setdefault(row.bench.name, {})[row.loss] = row
    seeds = max(len(r.pred_srcc) for r in rows)
    lines = [
        "## Scorer training: ranked embedding norms against the authors' code",
        "",
        f"One predictor per split, mean of {seeds} split seeds; the defaults (90/10 split, "
        f"{train.epochs} epochs, batch {train.batch_size}, AdamW lr {train.lr:g}, weight "
        f"decay {train.weight_decay:g}, lambda {train.rank_lambda:g}, L1 norms). *ranked*: MSE "
        "+ lambda x mean over hops of (1 - soft SRCC), the AutoBuild loss; *MSE*: the same "
        "network trained on MSE only (the paper's Exhaustive-Search predictor), whose "
        "embedding norms are not asked to rank. Hop SRCC: Spearman correlation, on the "
        "held-out split, between the L1 norm of the hop-l graph embedding and the target. "
        "*authors*: their code (github.com/Ascend-Research/AutoBuild) with its defaults on a "
        "2-core CPU.",
        "",
        "| data | train / test | loss | hop SRCC 0..L | pred SRCC | s / epoch CPU (wall) |",
        "|---|---|---|---|---:|---:|",
    ]
    for name, by_loss in by_bench.items():
        bench = BENCHES[name]
        for loss in LOSSES:
            row = by_loss.get(loss)
            if row is None:
                continue
            cpu, wall = _speed(row)
            lines.append(
                f"| {bench.title} | {row.n_train} / {row.n_test} | {loss} | "
                f"{_hops(row.mean_hops())} | {row.mean(row.pred_srcc):.3f} | "
                f"{cpu:.3f} ({wall:.3f}) |"
            )
        if bench.authors:
            a = bench.authors
            lines.append(
                f"| {bench.title} | | authors | {_hops(a.hop_srcc)} | {a.pred_srcc:.3f} | |"
            )
    lines += [
        "",
        "Per seed (ranked loss; hop SRCC, then pred SRCC):",
        "",
    ]
    for name, by_loss in by_bench.items():
        row = by_loss.get("ranked")
        if row is None:
            continue
        parts = [f"{_hops(h)} / {p:.3f}" for h, p in zip(row.hop_srcc, row.pred_srcc, strict=True)]
        lines.append(f"- {name}: " + "; ".join(parts))
    lines += [
        "",
        f"![hop SRCC per data set](figures/{FIGURE.name})",
        "",
        "- Seconds per epoch: training only (no evaluation), one torch thread, one predictor "
        "at a time. *CPU*: the CPU time the training process used per epoch, what an epoch "
        "costs; *wall*: elapsed time. The machine is shared with other jobs (load average "
        f"{load_before:.1f} at the start, {load_after:.1f} at the end, on {os.cpu_count()} "
        "CPUs): with a load above the CPU count, wall time includes waiting for a CPU and "
        "is pessimistic; on an idle machine the two agree. Against the authors' trainer, "
        "time is measured side by side by `benchmarks/bench_vs_authors.py`.",
        "- NAS-Bench-Macro holds every network of its space, so its predictor trains on a "
        "random 10% (a different one per seed) and is tested on the other 90%.",
        f"- Soft rank: {rows[0].softrank_backend}.",
        "",
        f"Command: `{command}`",
        "",
    ]
    return "\n".join(lines)


def figure(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.bench.name for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        bench = BENCHES[name]
        for row in rows:
            if row.bench.name != name:
                continue
            hops = row.mean_hops()
            style = "o-" if row.loss == "ranked" else "s--"
            ax.plot(range(len(hops)), hops, style, label=f"{row.loss} (here)")
        if bench.authors:
            a = bench.authors.hop_srcc
            ax.plot(range(len(a)), a, "k^:", label="authors")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("hop")
        ax.set_ylim(-1.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test SRCC of embedding norm")
    fullest = max(axes[0], key=lambda ax: len(ax.get_lines()))
    fullest.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(SHARED), help="folder of the shared data sets")
    parser.add_argument("--only", help="comma-separated: " + ", ".join(BENCHES))
    parser.add_argument("--seeds", type=int, default=3, help="split seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--losses", default=",".join(LOSSES), help="ranked, mse or both")
    parser.add_argument("--json", action="store_true", help="one JSON line per data set/loss")
    parser.add_argument("--markdown", help="write the results section (markdown) here")
    parser.add_argument(
        "--unique-rows",
        action="store_true",
        help="only count distinct receptive fields per hop (no training)",
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown data set {unknown[0]} (known: {', '.join(BENCHES)})")
    losses = args.losses.split(",")
    if any(loss not in LOSSES for loss in losses):
        parser.error("--losses takes ranked, mse or both")
    seeds = list(range(args.seeds))
    data_dir = Path(args.data)
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    for name in names:
        bench = BENCHES[name]
        try:
            space, dataset = load(bench, data_dir)
        except FileNotFoundError as error:
            print(f"{name}: skipped ({error})")
            continue
        encoder = GraphEncoder(space)
        if args.unique_rows:
            print(unique_rows_line(bench, dataset, encoder), flush=True)
            continue
        for loss in losses:
            train = TrainConfig(epochs=args.epochs, loss=loss)  # type: ignore[arg-type]
            row = run_row(bench, space, dataset, encoder, train, seeds)
            rows.append(row)
            if args.json:
                print(json.dumps(row.as_json()), flush=True)
            else:
                show(row)
    if args.markdown and rows:
        command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:])
        figure(rows, FIGURE)
        text = markdown(rows, command.strip(), load_before, os.getloadavg()[0])
        out = Path(args.markdown)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
        print(f"wrote {out} and {FIGURE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
