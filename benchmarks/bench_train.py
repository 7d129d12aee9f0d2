"""Benchmark AutoBuild scorer training on real labeled architectures.

    python benchmarks/bench_train.py                         # every data set, 200 epochs
    python benchmarks/bench_train.py --only dynast --epochs 20
    python benchmarks/bench_train.py --only help_2080ti_64,help_v100_1 --batch-norm

For each data set: import it from ../shared/data (or --data DIR) with the project's
importers, train one predictor on a seeded 90/10 split with the paper's settings (AdamW
lr 1e-4, batch 128, ranked loss with lambda 1), and print the held-out SRCC of the
embedding norms at every hop, the SRCC and MAE of the prediction head, and seconds per
epoch. Where the authors' code was timed on this kind of machine, the speed-up is shown.

    dynast          OFA MobileNetV3 subnets from DyNAS-T, target top-1 (2162 networks)
    help_2080ti_64  HELP OFA latencies, RTX 2080 Ti batch 64 (5000 networks)
    help_v100_1     HELP OFA latencies, V100 batch 1 (5000 networks)
    macro           NAS-Bench-Macro mean accuracy, a seeded random 10% (656 networks)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autobuild_dsl.data import import_files  # noqa: E402
from autobuild_dsl.data.dataset import LabeledDataset  # noqa: E402
from autobuild_dsl.lang import compile_file  # noqa: E402
from autobuild_dsl.scorer import EnsembleConfig, TrainConfig, train_run  # noqa: E402
from autobuild_dsl.space.model import Space  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Bench:
    name: str
    space: str  # file under spaces/
    fmt: str  # importer format
    files: tuple[str, ...]  # globs under the data folder
    target: str
    fraction: float = 1.0  # a seeded random subset of the rows
    authors_seconds_per_epoch: float | None = None  # the authors' code, 2-core CPU


BENCHES = {
    b.name: b
    for b in (
        Bench(
            "dynast",
            "ofa_mbv3.abs",
            "ofa",
            ("dynast_ofa_mbv3_acc/*.csv",),
            "top1",
            authors_seconds_per_epoch=0.72,
        ),
        Bench(
            "help_2080ti_64",
            "ofa_mbv3.abs",
            "ofa",
            ("help_ofa_latency/*.json",),
            "lat_2080ti_64",
            authors_seconds_per_epoch=1.73,
        ),
        Bench(
            "help_v100_1",
            "ofa_mbv3.abs",
            "ofa",
            ("help_ofa_latency/*.json",),
            "lat_v100_1",
            authors_seconds_per_epoch=1.73,
        ),
        Bench(
            "macro",
            "nas_bench_macro.abs",
            "nas-bench-macro",
            ("nas_bench_macro/*.json",),
            "mean_acc",
            fraction=0.1,
        ),
    )
}


def load(bench: Bench, data_dir: Path) -> tuple[Space, LabeledDataset]:
    space = compile_file(ROOT / "spaces" / bench.space)
    files = sorted(str(p) for pattern in bench.files for p in data_dir.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{bench.name}: no {', '.join(bench.files)} under {data_dir}")
    result = import_files(bench.fmt, files, space)
    if result.dataset is None:
        raise ValueError(f"{bench.name}: nothing imported")
    dataset = result.dataset
    if bench.fraction < 1.0:
        order = np.random.default_rng(0).permutation(len(dataset))
        dataset = dataset.subset(np.sort(order[: round(len(dataset) * bench.fraction)]))
    return space, dataset


def run_bench(bench: Bench, data_dir: Path, train: TrainConfig, seed: int) -> dict:
    space, dataset = load(bench, data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        run = train_run(
            space,
            dataset,
            bench.target,
            Path(scratch) / "run",
            train=train,
            ensemble=EnsembleConfig(folds=1, seeds=1, seed=seed),
        )
        wall = time.perf_counter() - start
    assert run.metrics is not None
    mean = run.metrics.mean
    result = {
        "data": bench.name,
        "rows": run.config.rows,
        "layers": run.config.model.num_layers,
        "epochs": train.epochs,
        "hop_srcc": mean.hop_srcc,
        "pred_srcc": mean.pred_srcc,
        "mae": mean.mae,
        "seconds_per_epoch": mean.seconds_per_epoch,
        "wall_seconds": wall,
        "softrank_backend": run.config.softrank_backend,
    }
    if bench.authors_seconds_per_epoch:
        result["speedup_vs_authors"] = bench.authors_seconds_per_epoch / mean.seconds_per_epoch
    return result


def show(result: dict) -> None:
    hops = " ".join(f"{v:.3f}" if v is not None else "-" for v in result["hop_srcc"])
    speed = (
        f"  ({result['speedup_vs_authors']:.1f}x the authors' code)"
        if "speedup_vs_authors" in result
        else ""
    )
    print(
        f"{result['data']:>15}: {result['rows']} archs, {result['epochs']} epochs, "
        f"{result['layers']} layers | hop SRCC {hops} | pred SRCC {result['pred_srcc']:.3f} "
        f"MAE {result['mae']:.4g} | {result['seconds_per_epoch']:.3f} s/epoch{speed}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(SHARED), help="folder of the shared data sets")
    parser.add_argument("--only", help="comma-separated: " + ", ".join(BENCHES))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-norm", action="store_true", help="as in the authors' code")
    parser.add_argument("--loss", choices=["ranked", "mse"], default="ranked")
    parser.add_argument("--json", action="store_true", help="one JSON line per data set")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown data set {unknown[0]} (known: {', '.join(BENCHES)})")
    train = TrainConfig(epochs=args.epochs, batch_norm=args.batch_norm, loss=args.loss)
    data_dir = Path(args.data)
    for name in names:
        try:
            result = run_bench(BENCHES[name], data_dir, train, args.seed)
        except FileNotFoundError as error:
            print(f"{name}: skipped ({error})")
            continue
        if args.json:
            print(json.dumps(result))
        else:
            show(result)


if __name__ == "__main__":
    main()
