"""Measure a concrete network: parameters, MACs, ONNX Runtime CPU latency.

Parameters and MACs are exact integers (MACs: FlopCounterMode's total / 2 at batch 1),
counted either on the meta device (no memory: `fast_params_and_macs`, node by node with a
cache) or on a real CPU module (which latency needs anyway, so it is built once and reused).
Latency is the median wall time in milliseconds of ONNX Runtime's CPU session at batch 1,
with the thread count fixed (and recorded in the result), after warm-up runs; the weights
are random (latency does not depend on their values).
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from autobuild_dsl.compile.network import (
    build_module,
    count_macs,
    count_params,
    example_inputs,
    fast_params_and_macs,
)
from autobuild_dsl.compile.onnx_export import PROTOBUF_LIMIT, export_onnx, export_to_temp
from autobuild_dsl.space.resolved import ResolvedNetwork

METRICS = ("params", "macs", "latency")
# Where params and MACs are counted: "meta" allocates nothing (any model size), "cpu" builds
# the real module (needed for latency), "auto" is "cpu" when latency is wanted, else "meta".
Device = Literal["auto", "cpu", "meta"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "meta")

# progress(step, fraction done of the whole measurement)
Progress = Callable[[str, float], None]


def measure(
    net: ResolvedNetwork,
    metrics: Iterable[str] = METRICS,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    seed: int = 0,
    progress: Progress | None = None,
    device: Device = "auto",
) -> dict[str, float | int]:
    """Measure `net`. The result has a key per requested metric: `params` (int), `macs`
    (int, FlopCounterMode total / 2 at batch 1) and `latency` (median ms); with latency also
    `latency_threads`, `latency_warmup` and `latency_repeats`, the settings it ran with.

    `device` says where params and MACs are counted (see `Device`); "meta" cannot measure
    latency, which needs real weights."""
    wanted = check_metrics(metrics)
    if threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError("threads and repeats must be at least 1, warmup at least 0")
    if device not in DEVICES:
        raise ValueError(f"unknown device '{device}'; known: {', '.join(DEVICES)}")
    latency = "latency" in wanted
    if device == "meta" and latency:
        raise ValueError(
            "latency needs a real network on the CPU; the meta device counts params and MACs only"
        )
    counting = device if device != "auto" else ("cpu" if latency else "meta")

    def report(step: str, fraction: float) -> None:
        if progress is not None:
            progress(step, fraction)

    result: dict[str, float | int] = {}
    module: nn.Module | None = None
    if counting == "cpu":
        report("building", 0.0)
        torch.manual_seed(seed)
        module = build_module(net, device="cpu").eval()
    if "params" in wanted or "macs" in wanted:
        report("counting", 0.05)
        if module is None:
            params, macs = fast_params_and_macs(net)
        else:
            params = count_params(module)
            macs = count_macs(module, net) if "macs" in wanted else 0
        if "params" in wanted:
            result["params"] = params
        if "macs" in wanted:
            result["macs"] = macs
    if latency:
        assert module is not None
        report("exporting", 0.1)
        result["latency"] = _latency(module, net, threads, warmup, repeats, seed, report)
        result["latency_threads"] = threads
        result["latency_warmup"] = warmup
        result["latency_repeats"] = repeats
    report("done", 1.0)
    return result


def check_metrics(metrics: Iterable[str] | str) -> list[str]:
    """The requested metric names, in order and without repeats; an unknown name is a
    ValueError that lists the known ones. A string is read as a comma-separated list."""
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    wanted = list(dict.fromkeys(m.strip() for m in names if m.strip()))
    if not wanted:
        raise ValueError(f"no metric given; known: {', '.join(METRICS)}")
    unknown = [m for m in wanted if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    return wanted


def _latency(
    module: nn.Module,
    net: ResolvedNetwork,
    threads: int,
    warmup: int,
    repeats: int,
    seed: int,
    report: Progress,
) -> float:
    import onnxruntime as ort

    big = sum(p.numel() * p.element_size() for p in module.parameters()) > PROTOBUF_LIMIT // 2
    exported = export_to_temp(module, net) if big else export_onnx(module, net, None)
    try:
        options = ort.SessionOptions()
        # Fixed threads, no spinning between runs: repeatable numbers on a shared machine.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        source = exported if isinstance(exported, bytes) else str(exported)
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    finally:
        if not isinstance(exported, bytes):
            shutil.rmtree(exported.parent, ignore_errors=True)
    feed = {k: v.numpy() for k, v in example_inputs(net, batch=1, seed=seed).items()}
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    for i in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
        report("timing", 0.2 + 0.8 * (i + 1) / repeats)
    return statistics.median(times)
