"""`abc train` and `abc predict`: AutoBuild scorers (ensembles of ranked-embedding GNNs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from autobuild_dsl.cli import options as opt
from autobuild_dsl.cli.common import (
    UserError,
    console,
    err_console,
    load_space,
    write_atomic,
)
from autobuild_dsl.cli.ir_support import (
    ENCODINGS,
    cache_option,
    export_jobs_option,
    record_space,
)
from autobuild_dsl.cli.progress import RankView, TrainView


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# `abc train` options that are TrainConfig fields: option name -> field name.
TRAIN_FIELDS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "loss": "loss",
    "rank_lambda": "rank_lambda",
    "softrank_strength": "regularization_strength",
    "softrank_backend": "softrank_backend",
    "batch_norm": "batch_norm",
    "threads": "threads",
}


def train_config(options: dict[str, Any]) -> Any:
    """The TrainConfig the options ask for (taking its options out of `options`)."""
    from autobuild_dsl.scorer.train import TrainConfig

    return TrainConfig(**{field: options.pop(name) for name, field in TRAIN_FIELDS.items()})


@click.command("train")
@opt.file_argument("space_file")
@opt.file_argument("data_file")
@click.option("--target", "target_text", required=True, help="What to learn, e.g. 'top1 - 2*lat'.")
@opt.path("-o", "--output", help="Run folder (RUN/).", folder=True, required=True)
@click.option("--space-name", help="Which space of the file (default: the first one).")
@opt.choice(
    "--loss",
    choices=["ranked", "mse"],
    default="ranked",
    help="ranked: MSE + per-hop SRCC of embedding norms (AutoBuild); mse: MSE only (the "
    "Exhaustive-Search predictor).",
)
@opt.count("--epochs", default=200)
@opt.count("--batch-size", default=128, minimum=2)
@opt.real(
    "--lr",
    default=1e-3,
    help="AdamW learning rate (the authors' code: 1e-4, which underfits in 200 epochs).",
    above=True,
)
@opt.real("--weight-decay", default=1e-5)
@opt.real("--rank-lambda", default=1.0, help="Weight of the ranking term.")
@opt.real(
    "--softrank-strength",
    default=1.0,
    help="Soft-rank regularisation (smaller: closer to hard ranks).",
    above=True,
)
@opt.choice(
    "--softrank",
    "softrank_backend",
    choices=["auto", "torchsort", "torch"],
    default="auto",
    help="Soft-rank implementation (auto: torchsort when installed).",
)
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    help="Message-passing layers (default: max(4, longest module - 1)).",
)
@click.option(
    "--batch-norm/--no-batch-norm",
    default=False,
    show_default=True,
    help="BatchNorm after each GATv2 layer (the authors' code has it).",
)
@opt.count("--folds", default=1, help="K-fold members (1: one train/test split).")
@opt.count("--seeds", default=1, help="Members per fold.")
@click.option("--ensemble", is_flag=True, help="Shorthand for --folds 5 --seeds 4 (20 members).")
@click.option(
    "--test-fraction",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Held-out share when --folds 1.",
)
@opt.seed()
@opt.jobs("Members trained in parallel by local worker processes.")
@click.option("--ray", "ray_address", help="Train members on a Ray cluster (ADDRESS, or 'local').")
@opt.threads("Torch threads when training in this process.")
@opt.force("Overwrite an existing run folder.")
@opt.resume("Finish an interrupted run: skip finished members.")
@opt.quiet("No progress bar and no summary.")
@opt.as_json("Print only the final test metrics as JSON.")
@opt.choice(
    "--encoding",
    choices=ENCODINGS,
    default="sequence",
    help="Graphs: sequence (a node per layer) or ir (a node per ONNX operation; docs/ir.md).",
)
@opt.path(
    "--add-space",
    "extra_spaces",
    help="ir: another space whose architectures DATA_FILE also holds (repeatable); each "
    "row names its space in arch.space.",
    multiple=True,
)
@cache_option
@export_jobs_option
def train_cmd(
    space_file: str,
    data_file: str,
    target_text: str,
    output: str,
    space_name: str | None,
    extra_spaces: tuple[str, ...],
    layers: int | None,
    folds: int,
    seeds: int,
    ensemble: bool,
    test_fraction: float,
    seed: int,
    force: bool,
    resume: bool,
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train AutoBuild scorers on DATA_FILE (labeled architectures of SPACE_FILE) into a run.

    The run folder holds the configuration, each member's weights, held-out metrics and the
    statistics that module ranking needs; at the end it ranks and builds with the default
    options into RUN/cache/, so a first `abc rank RUN` or `abc build RUN -o DIR` reads it.
    An interrupted run continues with --resume.
    """
    from autobuild_dsl.scorer.run import EnsembleConfig, summary_json
    from autobuild_dsl.scorer.workflow import train_from_file

    if force and resume:
        raise UserError("--force and --resume contradict each other; pick one")
    if extra_spaces and options["encoding"] != "ir":
        raise UserError("--add-space (architectures of several spaces) needs --encoding ir")
    if ensemble:
        folds, seeds = 5, 4
    space = load_space(space_file, space_name)
    extra = [load_space(path) for path in extra_spaces]
    train = train_config(options)
    show = not (quiet or as_json)
    with TrainView() if show else nullcontext() as progress:
        outcome = train_from_file(
            space,
            data_file,
            target_text,
            output,
            extra_spaces=extra,
            train=train,
            ensemble=EnsembleConfig(
                folds=folds, seeds=seeds, test_fraction=test_fraction, seed=seed
            ),
            num_layers=layers,
            force=force,
            resume=resume,
            **options,
            space_path=str(Path(space_file).resolve()),
            notes=None if as_json else train_notes(show),
            progress=progress,
            ir_progress=progress.phase("ONNX-IR graphs") if progress else None,
        )
    run = outcome.run
    assert run.metrics is not None
    _prime_rank_cache(run, train.threads, show, outcome.dataset)
    if outcome.left_out > 0 and not as_json:
        # Said even with --quiet: training on fewer rows than given is never silent.
        err_console.print(
            f"note: {outcome.left_out:,} of {outcome.rows_given:,} architectures lack a metric "
            "of the target and were left out",
            markup=False,
        )
    if as_json:
        click.echo(json.dumps(summary_json(run.metrics)))
    elif not quiet:
        _render_metrics(run, output)


def _prime_rank_cache(run: Any, threads: int, show: bool, loaded: Any = None) -> None:
    """Rank with the defaults now, into RUN/cache/: the first `abc rank RUN` / `abc build
    RUN` then reads it instead of loading torch and running every member."""
    from autobuild_dsl.design.ranking_workflow import prime_cache

    with RankView() if show else nullcontext() as progress:
        prime_cache(run, threads=threads, progress=progress, loaded=loaded)


def train_notes(show: bool) -> Callable[[Any], None]:
    """Print the workflow's notes: rows left out, busy threads and a prediction head no
    better than chance always, where the IR graphs came from only with progress shown."""

    def tell(note: Any) -> None:
        if note.kind == "rows":
            err_console.print(f"note: {escape(note.text)}", soft_wrap=True)
        elif note.kind in ("threads", "head"):
            err_console.print(f"note: {escape(note.text)}", style="yellow", highlight=False)
        elif show:
            err_console.print(note.text, markup=False)

    return tell


def _render_metrics(run: Any, output: str) -> None:
    metrics = run.metrics
    hops = len(metrics.mean.hop_srcc)
    table = Table(title=f"held-out metrics ({len(run.members)} member(s))")
    table.add_column("member")
    for h in range(hops):
        table.add_column(f"hop {h}", justify="right")
    for column in ("pred srcc", "mae", "s/epoch"):
        table.add_column(column, justify="right")
    rows = list(metrics.members.items()) if len(run.members) > 1 else []
    for name, m in rows:
        table.add_row(
            name,
            *(_fmt(v) for v in m.hop_srcc),
            _fmt(m.pred_srcc),
            _fmt(m.mae, 4),
            _fmt(m.seconds_per_epoch, 3),
        )
    mean = metrics.mean
    table.add_row(
        "[bold]mean[/]" if rows else "[bold]test[/]",
        *(_fmt(v) for v in mean.hop_srcc),
        _fmt(mean.pred_srcc),
        _fmt(mean.mae, 4),
        _fmt(mean.seconds_per_epoch, 3),
    )
    console.print(table)
    console.print(
        f"target [cyan]{escape(run.config.target)}[/] · {run.config.rows:,} architectures · "
        f"{run.config.model.num_layers} GNN layers · soft rank: {metrics.softrank_backend}"
    )
    console.print(f"wrote [bold]{escape(output)}[/]")


@click.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False))
@opt.file_argument("arch_file")
@opt.as_json("JSON lines {row, mean, std} (default: table).")
@opt.output_file("Write the JSON lines here instead of stdout.")
@opt.force("Overwrite --output if it exists.")
def predict_cmd(
    run_dir: str, arch_file: str, as_json: bool, output: str | None, force: bool
) -> None:
    """Predict the run's target for the architectures in ARCH_FILE (JSON lines, or one JSON).

    Prints the ensemble mean and spread (the members' weighted standard deviation).
    """
    from autobuild_dsl.scorer.embedding_scores import prediction_doubt
    from autobuild_dsl.scorer.run import load_run, predict
    from autobuild_dsl.space.architecture import read_architecture_records
    from autobuild_dsl.space.decisions import ArchitectureError, canonicalize

    run = load_run(run_dir)
    records = read_architecture_records(arch_file)
    archs = []
    for where, raw in records:
        try:
            archs.append(canonicalize(record_space(run, raw), raw))
        except ArchitectureError as error:
            raise UserError(f"{where}: {escape(str(error))}") from None
    graphs = run.encoder().encode_many(archs)
    mean, std = predict(run, graphs)
    doubt = prediction_doubt(run)
    if doubt:
        err_console.print(f"note: {escape(doubt)}", style="yellow", soft_wrap=True)
    lines = [
        json.dumps({"row": i, "mean": float(m), "std": float(s)})
        for i, (m, s) in enumerate(zip(mean, std, strict=True))
    ]
    if output:
        write_atomic(Path(output), "".join(line + "\n" for line in lines), force=force)
        err_console.print(f"wrote {len(lines)} predictions to {output}")
        return
    if as_json:
        for line in lines:
            click.echo(line)
        return
    table = Table(title=f"{escape(run.config.target)} ({len(run.members)} member(s))")
    for column in ("row", "where", "mean", "std"):
        table.add_column(column, justify="left" if column == "where" else "right")
    for i, ((where, _), m, s) in enumerate(zip(records, mean, std, strict=True)):
        table.add_row(str(i), escape(where), f"{m:.6g}", f"{s:.3g}")
    console.print(table)


def register(group: click.Group) -> None:
    for command in (train_cmd, predict_cmd):
        group.add_command(command)
