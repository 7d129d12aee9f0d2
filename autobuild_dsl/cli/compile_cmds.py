"""`abc emit` and `abc measure`: architectures become files, and files get measured labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from autobuild_dsl.cli import options as opt
from autobuild_dsl.cli.common import (
    UserError,
    console,
    err_console,
    load_space,
)
from autobuild_dsl.cli.progress import ProgressView

# A latency whose runs spread more than this (IQR / median) is flagged as noisy.
HIGH_SPREAD = 0.10


def _one_architecture(space, path: str, line: int | None):
    """The architecture of ARCH.json: the file's only one, or the one at --line."""
    from autobuild_dsl.compile.batch import canonical_arch, read_arch_records

    records = read_arch_records(path)
    if line is not None:
        chosen = [r for r in records if r[0] == f"{path}:{line}"]
        if not chosen:
            raise UserError(f"{path}: no architecture on line {line}")
        records = chosen
    if len(records) > 1:
        raise UserError(f"{path} holds {len(records)} architectures; choose one with --line N")
    where, raw = records[0]
    return canonical_arch(space, where, raw)


@click.command("emit")
@opt.file_argument("space_file")
@opt.file_argument("arch_file")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["torch", "onnx"]),
    required=True,
    help="torch: state dict + architecture (reload with autobuild_dsl.compile.load_emitted); "
    "onnx: ONNX model (opset 17, dynamic batch), checked in ONNX Runtime.",
)
@opt.path("-o", "--output", help="The file.", required=True)
@opt.space_name()
@click.option(
    "--line",
    type=click.IntRange(min=1),
    help="Take the architecture on this line of a JSON-lines ARCH_FILE.",
)
@opt.seed("Seed of the random weights.")
@opt.real(
    "--atol",
    default=0.0001,
    help="onnx: the largest absolute difference from PyTorch allowed on a random input.",
)
@opt.force("Overwrite OUTPUT if it exists.")
def emit_cmd(
    space_file: str,
    arch_file: str,
    fmt: str,
    output: str,
    space_name: str | None,
    line: int | None,
    seed: int,
    atol: float,
    force: bool,
) -> None:
    """Compile one architecture (ARCH_FILE: a JSON architecture, or a line of `abc sample` or
    dataset output) into a PyTorch module file or an ONNX model with random weights.

    An ONNX model over 2 GB is written with its weights in OUTPUT.data next to it."""
    from autobuild_dsl.compile.emit import emit_onnx, emit_torch

    space = load_space(space_file, space_name)
    out = Path(output)
    arch = _one_architecture(space, arch_file, line)
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    with err_console.status(f"compiling {space.name} to {fmt}"):
        if fmt == "torch":
            emit_torch(out, space, arch, overwrite=force, seed=seed)
            done = None
        else:
            done = emit_onnx(out, space, arch, overwrite=force, seed=seed, atol=atol)
    if done is None:
        console.print(
            f"wrote {escape(str(out))} (PyTorch state dict + architecture of {space.name})"
        )
        return
    data = f" + {escape(str(done.data_path))}" if done.data_path else ""
    console.print(f"wrote {escape(str(out))}{data} (ONNX, opset 17, dynamic batch)")
    console.print(
        f"ONNX Runtime vs PyTorch on a random input: max abs difference {done.max_abs_diff:.3g}"
    )


@click.command("measure")
@opt.file_argument("space_file")
@opt.file_argument("archs_file")
@opt.path("-o", "--output", help="Dataset (JSON lines).", required=True)
@click.option(
    "--metrics",
    default="params,macs,latency",
    show_default=True,
    help="Comma-separated: params, macs (FlopCounterMode total / 2), latency (ms, ONNX "
    "Runtime CPU, batch 1, median); NAME=latency writes latency as NAME (e.g. lat=latency).",
)
@opt.space_name()
@opt.jobs("Worker processes (with --ray: tasks in flight; default: what the cluster fits).")
@click.option("--ray", "ray_address", help="Run on Ray: an address, 'auto' or 'local'.")
@opt.threads("Threads per network (torch and ONNX Runtime), fixed and recorded with latency.")
@opt.count("--warmup", default=5, help="Untimed runs before timing latency.", minimum=0)
@opt.count(
    "--repeats",
    default=30,
    help="Timed runs at least; latency is their median, timed until it is stable.",
)
@opt.real(
    "--ci",
    default=0.02,
    help="Stop timing a network when its median's 95% confidence interval is within this "
    "fraction of the median (each side).",
)
@opt.real(
    "--time-cap",
    default=3.0,
    help="Seconds of timed runs per network at most, stable or not.",
    above=True,
)
@opt.count(
    "--interleave",
    default=8,
    help="Networks timed in turn, one run each per round, so drift affects them alike.",
)
@opt.choice(
    "--clock",
    choices=["auto", "wall", "cpu"],
    default="auto",
    help="cpu: the timing thread's CPU time (one thread; steady on a busy machine); wall: "
    "elapsed time; auto: cpu with --threads 1, else wall.",
)
@click.option(
    "--anchor/--no-anchor",
    default=True,
    show_default=True,
    help="Time the space's anchor network in every round too: rows get NAME_rel (latency "
    "in anchors, steady across passes and load) and NAME_anchor (its ms).",
)
@click.option(
    "--retest",
    is_flag=True,
    help="Measure latency again in a second pass: rows get NAME_retest, and the test-retest "
    "Spearman is printed.",
)
@opt.choice(
    "--device",
    choices=["auto", "cpu", "meta"],
    default="auto",
    help="Where params and MACs are counted; meta allocates nothing (any model size) but "
    "cannot time latency; auto: cpu with latency, else meta.",
)
@opt.seed("Random weights and input.")
@opt.resume("Continue OUTPUT: skip what it holds, append.")
@opt.force("Replace OUTPUT if it exists.")
def measure_cmd(
    space_file: str,
    archs_file: str,
    output: str,
    metrics: str,
    space_name: str | None,
    jobs: int,
    ray_address: str | None,
    retest: bool,
    resume: bool,
    force: bool,
    **timing: Any,
) -> None:
    """Measure the architectures of ARCHS_FILE (lines holding an "arch", as `abc sample` and
    dataset files write them) and write a dataset that `abc train` reads directly. Metrics
    the input rows already carry (e.g. accuracy) are kept; the measured ones are added.

    Latency is timed until its median is stable (--ci, --time-cap), networks in turn
    (--interleave); each row records the spread (IQR / median), the runs and the threads.

    Each row is appended as soon as it is measured; after an interruption, rerun with
    --resume to measure only what is missing."""
    from autobuild_dsl.compile.batch import busy_machine, oversubscribed

    settings = _measure_settings(metrics, retest, timing)
    if resume and force:
        raise UserError("--resume and --force contradict each other: choose one")
    space = load_space(space_file, space_name)
    if settings.clock == "cpu" and settings.threads != 1:
        raise UserError("--clock cpu times one thread: use it with --threads 1")
    if "latency" in settings.metrics and ray_address is None:
        for warning in (oversubscribed(jobs, settings.threads), busy_machine()):
            if warning:
                err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    report = _measure(
        space,
        archs_file,
        output,
        settings,
        jobs=jobs,
        ray=ray_address,
        resume=resume,
        overwrite=force,
        retest=retest,
    )
    _report_measured(report, output, settings, retest)


def _measure_settings(metrics: str, retest: bool, timing: dict[str, Any]) -> Any:
    """MeasureSettings from `--metrics` (NAME=latency renames latency) and the timing options."""
    from autobuild_dsl.compile.batch import MeasureSettings
    from autobuild_dsl.compile.measure import check_metrics

    name = "latency"
    names = []
    for item in metrics.split(","):
        alias, sep, metric = item.partition("=")
        if sep:
            if metric.strip() != "latency":
                raise UserError(f"--metrics {item!r}: only latency can be renamed (NAME=latency)")
            name = alias.strip()
            item = "latency"
        names.append(item)
    try:
        wanted = check_metrics(",".join(names))
    except ValueError as error:
        raise UserError(f"--metrics: {error}") from None
    if retest and "latency" not in wanted:
        raise UserError("--retest measures latency twice: add latency to --metrics")
    if timing["device"] == "meta" and "latency" in wanted:
        raise UserError(
            "--device meta counts params and MACs without memory; latency needs a real "
            "network: drop latency from --metrics or use --device cpu"
        )
    try:
        return MeasureSettings(metrics=tuple(wanted), name=name, **timing)
    except ValueError:
        raise UserError(f"--metrics: {name!r} is not a plain metric name") from None


def _measure(space: Any, archs_file: str, output: str, settings: Any, **how: Any) -> Any:
    """Measure behind a progress bar; an interruption says how many rows were saved."""
    from autobuild_dsl.compile.batch import measure_file, read_architectures, read_labels

    saved = 0
    archs = [arch for _, arch in read_architectures(archs_file, space)]
    labels = read_labels(archs_file, space)
    try:
        with ProgressView(bold=False, info=False, transient=True) as bar:
            task = bar.add("measuring")

            def show(event) -> None:
                nonlocal saved
                saved = event.done - event.failed
                bar.update(task, completed=event.done, total=event.total)

            return measure_file(space, archs, output, settings, progress=show, labels=labels, **how)
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: {saved} new rows are in {escape(output)}; rerun with --resume"
        )
        raise


def _report_measured(report: Any, output: str, settings: Any, retest: bool) -> None:
    from autobuild_dsl.compile.batch import busy_machine

    name = settings.name
    if report.repaired:
        err_console.print(f"note: cut off a torn last line of {escape(output)}")
    parts = [f"measured {report.measured} architectures into {escape(output)}"]
    if report.already:
        parts.append(f"{report.already} already there")
    if report.distinct < report.rows:
        parts.append(f"{report.rows - report.distinct} repeated in the input")
    console.print(", ".join(parts))
    if report.kept_labels:
        console.print(f"kept the input's metrics on {report.kept_labels} rows")
    if report.replaced:
        err_console.print(
            f"note: measured {', '.join(report.replaced)} replaced the input's values"
        )
    if "latency" in settings.metrics and report.spreads:
        high = sum(s > HIGH_SPREAD for s in report.spreads)
        if high:
            err_console.print(
                f"[yellow]warning:[/] {high} of {len(report.spreads)} latencies have a spread "
                f"(IQR / median) above {HIGH_SPREAD:.0%}: the machine is noisy, compare "
                f"them with care (rows record {escape(name)}_spread)",
                soft_wrap=True,
            )
        warning = busy_machine()
        if warning:
            err_console.print(f"[yellow]warning:[/] {escape(warning)} (after measuring)")
    if retest and len(report.retest) >= 2:
        _report_retest(report, name)
    if report.failures:
        for key, reason in report.failures[:10]:
            err_console.print(f"[red]failed:[/] {escape(reason)}\n  {escape(key)}")
        raise UserError(
            f"{len(report.failures)} architecture(s) could not be measured; the others were "
            "written (rerun with --resume to retry)"
        )


def _report_retest(report: Any, name: str) -> None:
    """Test-retest Spearman of each latency measured twice (raw, and anchored if it was)."""
    from autobuild_dsl.compile.batch import spearman

    passes = [(name, report.first, report.retest)]
    if report.retest_rel:
        passes.append((f"{name}_rel", report.first_rel, report.retest_rel))
    for metric, first_pass, second_pass in passes:
        keys = [k for k in first_pass if k in second_pass]
        if len(keys) < 2:
            continue
        first = [first_pass[k] for k in keys]
        second = [second_pass[k] for k in keys]
        ratio = max(max(a, b) / min(a, b) for a, b in zip(first, second, strict=True))
        console.print(
            f"test-retest Spearman of {escape(metric)} over {len(keys)} networks: "
            f"{spearman(first, second):.3f} (largest ratio between the two readings "
            f"{ratio:.2f}x); rows hold {escape(metric)}_retest"
        )


def register(group: click.Group) -> None:
    for command in (emit_cmd, measure_cmd):
        group.add_command(command)
