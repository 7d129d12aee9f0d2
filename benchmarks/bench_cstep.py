"""The C epoch (scorer/cstep.py) against the per-step fused path, side by side.

    python benchmarks/bench_cstep.py                 # 3 interleaved pairs, 20 epochs each
    python benchmarks/bench_cstep.py --pairs 5 --epochs 50

Trains one DyNAS-T member (top1, 90/10 split, the default settings, one torch thread) with
the C epoch and then with ABC_NO_CSTEP=1 (the fused path), alternating, the same seed per
pair, in this one process (the machine's speed drifts over minutes: only pairs run next
to each other compare). Prints CPU and wall seconds per member-epoch (min / median), the
ratio, each run's held-out prediction and hop SRCC, and the load average before and after.
Reads the DyNAS-T csv files under ../shared/data (or --data DIR).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    import torch
    from bench_vs_authors import load_dynast

    from autobuild_dsl.data.splits import train_test_split
    from autobuild_dsl.graphs.encode import GraphEncoder
    from autobuild_dsl.scorer.model import pack_graphs
    from autobuild_dsl.scorer.train import TrainConfig, train_member

    torch.set_num_threads(1)
    space, dataset = load_dynast(args.data)
    archs = list(dataset.architectures)
    y = np.array([dataset.row_metrics(i)["top1"] for i in range(len(archs))])
    split = train_test_split(len(archs), 0.1, 0)
    encoder = GraphEncoder(space)
    packed = pack_graphs(encoder.encode_many(archs))
    vocab = [len(c.vocab) for c in encoder.categories]
    config = TrainConfig(epochs=args.epochs, eval_every=0)
    load_before = os.getloadavg()
    runs: dict[str, list[tuple[float, float]]] = {"C epoch": [], "fused step": []}
    for pair in range(args.pairs):
        for side in runs:
            if side == "C epoch":
                os.environ.pop("ABC_NO_CSTEP", None)
            else:
                os.environ["ABC_NO_CSTEP"] = "1"
            member = train_member(
                packed, y, list(split.train), list(split.test), vocab, config, seed=pair
            )
            m = member.metrics
            runs[side].append((m.cpu_seconds_per_epoch, m.seconds_per_epoch))
            hops = " ".join(f"{h:.4f}" for h in m.hop_srcc if h is not None)
            print(f"pair {pair} {side:10s} cpu/epoch {m.cpu_seconds_per_epoch:.4f} "
                  f"wall/epoch {m.seconds_per_epoch:.4f} pred SRCC {m.pred_srcc:.4f} hops {hops}")  # fmt: skip
    os.environ.pop("ABC_NO_CSTEP", None)
    for side, values in runs.items():
        cpu = [c for c, _ in values]
        wall = [w for _, w in values]
        print(f"{side:10s} CPU s/epoch min {min(cpu):.4f} median {statistics.median(cpu):.4f}"
              f"  wall min {min(wall):.4f} median {statistics.median(wall):.4f}")  # fmt: skip
    ratio = [f / c for (c, _), (f, _) in zip(runs["C epoch"], runs["fused step"], strict=True)]
    print(f"fused / C per pair (CPU): {' '.join(f'{r:.2f}' for r in ratio)}")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
