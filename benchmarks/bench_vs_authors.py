"""Side by side: `abc train`'s trainer against the paper authors' trainer, same data.

    python benchmarks/bench_vs_authors.py --authors ~/src/AutoBuild
    python benchmarks/bench_vs_authors.py --authors ~/src/AutoBuild --repeats 5 --markdown out.md

Nothing is fetched at run time. `--authors` is a checkout of the authors' code
(Ascend-Research/AutoBuild at d893c47, the OFA-era tree), made beforehand with

    git clone https://github.com/Ascend-Research/AutoBuild ~/src/AutoBuild
    git -C ~/src/AutoBuild checkout d893c47
    pip install torchsort     # their soft rank (ge_utils/diff_srcc.py)

Their code is used unchanged: `ge_utils.model.make_predictor` (FE-MLP node embedding,
PyG GATv2Conv layers with BatchNorm, ReLU and residual skips, mean pooling, MLP head) and
`ge_utils.diff_srcc.CorrelLoss` (MSE + mean over hops of 1 - soft SRCC of the L1 norms).
The adapter here only turns the DyNAS-T rows (../shared/data, or --data) into their OFA
node features (stage, layer, MBConv flag, expansion index, kernel index, resolution) and
runs the epoch loop their trainer runs: PyG DataLoader batches of 128, shuffled, AdamW
(lr 1e-4, weight decay 1e-5), standardised targets.

Both trainers get the same rows and the same 90/10 split, one torch thread, and run
interleaved (ours, theirs, ours, ...; the order flips every repeat), so a busy machine
slows both alike. Printed per trainer: min / median CPU and wall seconds per epoch (the
epoch loop only, no evaluation), held-out SRCC of every hop's embedding norm and of the
prediction, and the ratio of the medians. When the checkout or its dependencies are
missing the benchmark says so and exits 0 (skipped).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data"
KERNEL_INDEX = {3: 0, 5: 1, 7: 2}
EXPAND_INDEX = {3: 0, 4: 1, 6: 2}


@dataclass
class Trial:
    cpu_per_epoch: float
    wall_per_epoch: float
    hop_srcc: list[float]
    pred_srcc: float


@dataclass
class Side:
    name: str
    trials: list[Trial] = field(default_factory=list)

    def cpu(self) -> list[float]:
        return [t.cpu_per_epoch for t in self.trials]

    def wall(self) -> list[float]:
        return [t.wall_per_epoch for t in self.trials]


def missing_requirements(path: Path | None) -> str | None:
    """Why the authors' side cannot run (None: it can)."""
    if path is None:
        return "no --authors checkout given"
    if not (path / "ge_utils" / "model.py").is_file():
        return f"{path}: not a checkout of Ascend-Research/AutoBuild (no ge_utils/model.py)"
    for module in ("torchsort", "torch_geometric"):
        if importlib.util.find_spec(module) is None:
            return f"the authors' code imports {module}, which is not installed"
    return None


def _shim_authors_imports() -> None:
    """Let their unchanged modules import under today's packages: `pytorchltr` (imported
    by diff_srcc.py for the LTR losses, which CorrelLoss never uses; it no longer builds)
    gets an empty stand-in, and PyG's removed `torch_geometric.nn.glob` namespace (where
    their make_predictor finds the pooling functions) is pointed at the same functions."""
    import types

    import torch_geometric.nn as tgnn

    if "pytorchltr" not in sys.modules and importlib.util.find_spec("pytorchltr") is None:
        package = types.ModuleType("pytorchltr")
        loss = types.ModuleType("pytorchltr.loss")
        loss.LambdaARPLoss1 = None  # type: ignore[attr-defined]
        package.loss = loss  # type: ignore[attr-defined]
        sys.modules.update({"pytorchltr": package, "pytorchltr.loss": loss})
    if not hasattr(tgnn, "glob"):
        tgnn.glob = types.SimpleNamespace(  # type: ignore[attr-defined]
            global_mean_pool=tgnn.global_mean_pool,
            global_add_pool=tgnn.global_add_pool,
            global_max_pool=tgnn.global_max_pool,
        )


def load_dynast(data_dir: Path) -> tuple[object, object]:
    from autobuild_dsl.data import import_files
    from autobuild_dsl.lang import compile_file

    space = compile_file(ROOT / "spaces" / "mbv3.abs")
    files = sorted(str(p) for p in (data_dir / "dynast_ofa_mbv3_acc").glob("*.csv"))
    if not files:
        raise SystemExit(f"no DyNAS-T csv files under {data_dir / 'dynast_ofa_mbv3_acc'}")
    result = import_files("ofa", files, space)
    if result.dataset is None:
        raise SystemExit("nothing imported from the DyNAS-T files")
    return space, result.dataset


def authors_graphs(archs: list[object], y: np.ndarray) -> list[object]:
    """Their OFA sequence graphs: a node per layer, a chain of edges, float features
    [stage, layer, mbconv, expand index, kernel index, resolution] (their FE-MLP reads the
    first five as embedding indices and the last as a number)."""
    import torch
    from torch_geometric.data import Data

    graphs = []
    for arch, label in zip(archs, y, strict=True):
        rows = []
        resolution = float(arch.globals["resolution"])  # type: ignore[attr-defined]
        for s, name in enumerate(sorted(arch.stages)):  # type: ignore[attr-defined]
            stage = arch.stages[name]  # type: ignore[attr-defined]
            for i, layer in enumerate(stage.layers[: stage.depth]):
                rows.append(
                    [
                        s + 1,
                        i,
                        1,
                        EXPAND_INDEX[int(layer["expand"])],
                        KERNEL_INDEX[int(layer["kernel"])],
                        resolution,
                    ]
                )
        n = len(rows)
        edges = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
        graphs.append(
            Data(
                x=torch.tensor(rows, dtype=torch.float32),
                edge_index=edges,
                y=torch.tensor([float(label)]),
            )
        )
    return graphs


def run_authors(
    checkout: Path,
    graphs: list[object],
    y_std: np.ndarray,
    train: list[int],
    test: list[int],
    epochs: int,
    seed: int,
) -> Trial:
    import torch
    from torch_geometric.loader import DataLoader

    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    _shim_authors_imports()
    from ge_utils.diff_srcc import CorrelLoss  # type: ignore[import-not-found]
    from ge_utils.model import make_predictor  # type: ignore[import-not-found]

    from autobuild_dsl.scorer.train import spearman

    torch.manual_seed(seed)
    model = make_predictor(
        gnn_dim=32,
        gnn_type="GATv2Conv",
        format="custom",
        families="ofa_mbv3",
        num_layers=4,
        residual=True,
        aggr_method="mean",
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    loss_fn = CorrelLoss(torch.nn.MSELoss(), l_lambda=1.0, p=1, srcc_list=[0, 1, 2, 3, 4])
    train_graphs = []
    for i in train:
        g = graphs[i].clone()  # type: ignore[attr-defined]
        g.y = torch.tensor([float(y_std[i])])
        train_graphs.append(g)
    loader = DataLoader(train_graphs, batch_size=128, shuffle=True)
    cpu = wall = 0.0
    for _ in range(epochs):
        model.train()
        started, cpu_started = time.perf_counter(), time.process_time()
        for batch in loader:
            pred, embeds = model(batch)
            loss, _ = loss_fn(pred, batch.y, embeds)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
    model.eval()
    test_loader = DataLoader([graphs[i] for i in test], batch_size=len(test), shuffle=False)
    with torch.no_grad():
        [batch] = list(test_loader)
        pred, embeds = model(batch)
    truth = y_std[np.asarray(test)]
    hops = [spearman(torch.linalg.vector_norm(e, ord=1, dim=-1).numpy(), truth) for e in embeds]
    return Trial(cpu / epochs, wall / epochs, hops, spearman(pred.numpy(), truth))


def run_ours(packed, y, vocab, train, test, epochs: int, seed: int) -> Trial:
    from autobuild_dsl.scorer.train import TrainConfig, train_member

    member = train_member(
        packed, y, train, test, vocab, TrainConfig(epochs=epochs, eval_every=0), seed=seed
    )
    m = member.metrics
    return Trial(
        m.cpu_seconds_per_epoch or float("nan"),
        m.seconds_per_epoch,
        [float("nan") if h is None else h for h in m.hop_srcc],
        float("nan") if m.pred_srcc is None else m.pred_srcc,
    )


def _fmt_hops(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def report(sides: list[Side], epochs: int, load: tuple[float, float]) -> list[str]:
    lines = [
        f"DyNAS-T top1, 90/10 split, {epochs} epochs, 1 torch thread, "
        f"{len(sides[0].trials)} interleaved repeats; load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after",
        "",
        "| trainer | CPU s/epoch min / median | wall s/epoch min / median | hop SRCC (last repeat) "
        "| prediction SRCC |",
        "|---|---|---|---|---|",
    ]
    for side in sides:
        last = side.trials[-1]
        lines.append(
            f"| {side.name} | {min(side.cpu()):.3f} / {statistics.median(side.cpu()):.3f} "
            f"| {min(side.wall()):.3f} / {statistics.median(side.wall()):.3f} "
            f"| {_fmt_hops(last.hop_srcc)} | {last.pred_srcc:.3f} |"
        )
    if len(sides) == 2:
        ours, theirs = sides
        cpu_ratio = statistics.median(theirs.cpu()) / statistics.median(ours.cpu())
        wall_ratio = statistics.median(theirs.wall()) / statistics.median(ours.wall())
        lines += [
            "",
            f"ratio (authors / ours, medians): CPU {cpu_ratio:.2f}x, wall {wall_ratio:.2f}x",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=Path, help="checkout of Ascend-Research/AutoBuild")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    why = missing_requirements(args.authors)
    if why is not None:
        print(f"skipped: {why} (see the docstring for how to get the checkout)")
        return
    import torch

    torch.set_num_threads(1)
    from autobuild_dsl.data.splits import train_test_split
    from autobuild_dsl.graphs.encode import GraphEncoder
    from autobuild_dsl.scorer.model import pack_graphs

    space, dataset = load_dynast(args.data)
    archs = list(dataset.architectures)  # type: ignore[attr-defined]
    y = np.array([dataset.row_metrics(i)["top1"] for i in range(len(archs))])  # type: ignore[attr-defined]
    split = train_test_split(len(archs), 0.1, args.seed)
    train, test = list(split.train), list(split.test)
    encoder = GraphEncoder(space)  # type: ignore[arg-type]
    packed = pack_graphs(encoder.encode_many(archs))
    vocab = [len(c.vocab) for c in encoder.categories]
    mean, sd = y[train].mean(), y[train].std()
    theirs_graphs = authors_graphs(archs, y)
    load_before = os.getloadavg()[0]
    ours, theirs = Side("autobuild-dsl (abc train)"), Side("authors' trainer")
    for r in range(args.repeats):
        order = [ours, theirs] if r % 2 == 0 else [theirs, ours]
        for side in order:
            if side is ours:
                trial = run_ours(packed, y, vocab, train, test, args.epochs, args.seed + r)
            else:
                trial = run_authors(
                    args.authors, theirs_graphs, (y - mean) / sd, train, test, args.epochs,
                    args.seed + r,
                )  # fmt: skip
            side.trials.append(trial)
            print(
                f"repeat {r + 1} {side.name}: {trial.cpu_per_epoch:.3f} s CPU / "
                f"{trial.wall_per_epoch:.3f} s wall per epoch, hop SRCC "
                f"{_fmt_hops(trial.hop_srcc)}, prediction {trial.pred_srcc:.3f}",
                flush=True,
            )
    lines = report([ours, theirs], args.epochs, (load_before, os.getloadavg()[0]))
    print("\n".join(lines))
    if args.markdown:
        command = "python benchmarks/bench_vs_authors.py " + " ".join(sys.argv[1:])
        args.markdown.write_text("\n".join([*lines, "", f"Command: `{command}`", ""]))


if __name__ == "__main__":
    main()
