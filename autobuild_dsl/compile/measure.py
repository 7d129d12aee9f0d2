"""Measure a concrete network: parameters, MACs, ONNX Runtime CPU latency.

Parameters and MACs are counted on the meta device (no memory, exact integers). Latency is
the median wall time in milliseconds of ONNX Runtime's CPU session at batch 1, with the
thread count fixed (and recorded in the result), after warm-up runs; the weights are random
(latency does not depend on their values).
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Iterable

import torch

from autobuild_dsl.compile.network import (
    build_module,
    count_macs,
    count_params,
    example_inputs,
)
from autobuild_dsl.compile.onnx_export import PROTOBUF_LIMIT, export_onnx, export_to_temp
from autobuild_dsl.space.resolved import ResolvedNetwork

METRICS = ("params", "macs", "latency")

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
) -> dict[str, float | int]:
    """Measure `net`. The result has a key per requested metric: `params` (int), `macs`
    (int, FlopCounterMode total / 2 at batch 1) and `latency` (median ms); with latency also
    `latency_threads`, `latency_warmup` and `latency_repeats`, the settings it ran with."""
    wanted = list(dict.fromkeys(metrics))
    unknown = [m for m in wanted if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    if threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError("threads and repeats must be at least 1, warmup at least 0")

    def report(step: str, fraction: float) -> None:
        if progress is not None:
            progress(step, fraction)

    result: dict[str, float | int] = {}
    if "params" in wanted or "macs" in wanted:
        report("counting", 0.0)
        meta = build_module(net, device="meta")
        if "params" in wanted:
            result["params"] = count_params(meta)
        if "macs" in wanted:
            result["macs"] = count_macs(meta, net)
        del meta
    if "latency" in wanted:
        report("exporting", 0.1)
        result["latency"] = _latency(net, threads, warmup, repeats, seed, report)
        result["latency_threads"] = threads
        result["latency_warmup"] = warmup
        result["latency_repeats"] = repeats
    report("done", 1.0)
    return result


def _latency(
    net: ResolvedNetwork,
    threads: int,
    warmup: int,
    repeats: int,
    seed: int,
    report: Progress,
) -> float:
    import onnxruntime as ort

    torch.manual_seed(seed)
    module = build_module(net, device="cpu").eval()
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > PROTOBUF_LIMIT // 2
    exported = export_to_temp(module, net) if big else export_onnx(module, net, None)
    del module
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
