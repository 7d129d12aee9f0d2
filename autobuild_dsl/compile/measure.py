"""Measure a concrete network: parameters, MACs, ONNX Runtime CPU latency.

Parameters and MACs are exact integers (MACs: FlopCounterMode's total / 2 at batch 1),
counted either on the meta device (no memory: `fast_params_and_macs`, node by node with a
cache) or on a real CPU module (which latency needs anyway, so it is built once and reused).

Latency is the median wall time in milliseconds of ONNX Runtime's CPU session at batch 1,
with the thread count fixed (and recorded), after warm-up runs; the weights are random
(latency does not depend on their values). One reading is noise on a shared machine, so
timing repeats until the median is stable: at least `repeats` runs, then until the 95 %
confidence interval of the median (distribution-free, from order statistics) is narrower
than `ci` of the median on each side, or `time_cap` seconds or `max_repeats` runs are
spent. Each result records the runs it took (`latency_runs`), the interval reached
(`latency_ci`, relative half-width) and the spread of the runs (`latency_spread`: the
interquartile range over the median).

Two clocks: "wall" (elapsed time) and "cpu" (the CPU time of the timing thread, for one
thread only: ONNX Runtime with one intra-op thread runs on the caller's thread). On a
machine that other jobs load, wall time also measures how often the scheduler runs
someone else, while CPU time measures the network's own work (docs/results/latency.md
compares them). "auto" takes "cpu" with one thread and "wall" otherwise; rows record
which (`latency_wall`: 1 wall, 0 CPU).

`time_latencies` times several networks *interleaved*: one run of each in turn (in a new
random order every round), so a slow drift of the machine's speed (another job starting,
clock changes) lands on all of them alike instead of on whichever was timed then.

Interleaving cannot help across groups, passes or days: the machine is simply faster or
slower then. An *anchor* can: one fixed reference network (the same for every group of a
space, see `anchor_architecture`) is timed in every round next to the others, and each
network also gets `latency_rel`, the median over rounds of its run's time divided by the
anchor's run in the same round (unitless: "this many anchors"), and `latency_anchor`, the
anchor's median in ms while it was timed. A slow-down that hits the network and the anchor
alike cancels in the ratio: on 60 OFA networks measured twice on an idle 2-core machine,
test-retest Spearman 0.688 in ms and 0.996 anchored (docs/results/latency.md). With an
anchor the stopping rule watches the ratio's interval.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from autobuild_dsl.compile.network import (
    build_module,
    count_macs,
    count_params,
    example_inputs,
    fast_params_and_macs,
)
from autobuild_dsl.compile.onnx_export import PROTOBUF_LIMIT, export_onnx, export_to_temp
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.model import Space
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
    ci: float = 0.02,
    time_cap: float = 3.0,
    max_repeats: int = 1000,
    clock: str = "auto",
) -> dict[str, float | int]:
    """Measure `net`. The result has a key per requested metric: `params` (int), `macs`
    (int, FlopCounterMode total / 2 at batch 1) and `latency` (median ms); with latency also
    `latency_spread`, `latency_ci` and `latency_runs` (how stable it is, see the module
    doc) and `latency_threads`, `latency_warmup` and `latency_repeats` (the settings).

    `device` says where params and MACs are counted (see `Device`); "meta" cannot measure
    latency, which needs real weights."""
    plan = LatencyPlan(
        warmup=warmup,
        repeats=repeats,
        ci=ci,
        time_cap=time_cap,
        max_repeats=max_repeats,
        clock=pick_clock(clock, threads),
    )

    def report(step: str, fraction: float) -> None:
        if progress is not None:
            progress(step, fraction)

    result, session = prepare(net, metrics, threads, seed, device, report)
    if session is not None:
        report("timing", 0.2)
        reading = time_latencies([session], plan, seed=seed)[0]
        result.update(reading.metrics(threads, plan))
    report("done", 1.0)
    return result


def prepare(
    net: ResolvedNetwork,
    metrics: Iterable[str],
    threads: int = 1,
    seed: int = 0,
    device: Device = "auto",
    report: Progress | None = None,
) -> tuple[dict[str, float | int], tuple[object, dict] | None]:
    """Count params and MACs (those requested) and, when latency is requested, build the
    ONNX Runtime session that `time_latencies` times: (counts, (session, feed) or None)."""
    wanted = check_metrics(metrics)
    if threads < 1:
        raise ValueError("threads must be at least 1")
    if device not in DEVICES:
        raise ValueError(f"unknown device '{device}'; known: {', '.join(DEVICES)}")
    latency = "latency" in wanted
    if device == "meta" and latency:
        raise ValueError(
            "latency needs a real network on the CPU; the meta device counts params and MACs only"
        )
    counting = device if device != "auto" else ("cpu" if latency else "meta")
    step = report or (lambda _step, _fraction: None)
    result: dict[str, float | int] = {}
    module: nn.Module | None = None
    if counting == "cpu":
        step("building", 0.0)
        torch.manual_seed(seed)
        module = build_module(net, device="cpu").eval()
    if "params" in wanted or "macs" in wanted:
        step("counting", 0.05)
        if module is None:
            params, macs = fast_params_and_macs(net)
        else:
            params = count_params(module)
            macs = count_macs(module, net) if "macs" in wanted else 0
        if "params" in wanted:
            result["params"] = params
        if "macs" in wanted:
            result["macs"] = macs
    if not latency:
        return result, None
    assert module is not None
    step("exporting", 0.1)
    return result, latency_session(module, net, threads, seed)


class LatencyPlan(BaseModel):
    """When timing stops (see the module doc)."""

    model_config = ConfigDict(frozen=True)

    warmup: int = Field(5, ge=0)
    repeats: int = Field(10, ge=1)  # at least this many timed runs
    ci: float = Field(0.02, ge=0)  # stop when the median's 95 % CI half-width / median < ci
    time_cap: float = Field(3.0, gt=0)  # seconds of timed runs per network, at most
    max_repeats: int = Field(1000, ge=1)
    clock: Literal["wall", "cpu"] = "wall"


def pick_clock(clock: str, threads: int) -> Literal["wall", "cpu"]:
    """The clock "auto" stands for, checked: CPU time measures one thread only."""
    if clock == "auto":
        return "cpu" if threads == 1 else "wall"
    if clock == "cpu" and threads != 1:
        raise ValueError(
            "the cpu clock times one thread: use it with threads = 1, or the wall clock"
        )
    if clock not in ("wall", "cpu"):
        raise ValueError(f"unknown clock '{clock}' (auto, wall, cpu)")
    return clock  # type: ignore[return-value]


@dataclass
class LatencyReading:
    """The timed runs of one network (ms)."""

    times: list[float] = field(default_factory=list)
    spent: float = 0.0  # elapsed seconds of timed runs
    # With an anchor: the anchor's run (ms) in the same round as each of `times`.
    anchor_times: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [t / a for t, a in zip(self.times, self.anchor_times, strict=True) if a > 0]

    @property
    def median(self) -> float:
        return _quantile(sorted(self.times), 0.5)

    @property
    def spread(self) -> float:
        """Interquartile range / median."""
        ordered = sorted(self.times)
        return (_quantile(ordered, 0.75) - _quantile(ordered, 0.25)) / _quantile(ordered, 0.5)

    @property
    def ci(self) -> float:
        """Half-width of the median's 95 % confidence interval, relative to the median."""
        return median_ci(self.times)

    def done(self, plan: LatencyPlan) -> bool:
        n = len(self.times)
        if n < plan.repeats:
            return False
        # Anchored, the ratio is what is reported, so its interval decides.
        ci = median_ci(self.ratios) if self.anchor_times else self.ci
        return n >= plan.max_repeats or self.spent >= plan.time_cap or ci <= plan.ci

    def metrics(self, threads: int, plan: LatencyPlan) -> dict[str, float | int]:
        anchored: dict[str, float | int] = {}
        if self.anchor_times:
            anchored = {
                "latency_rel": round(_quantile(sorted(self.ratios), 0.5), 6),
                "latency_anchor": _quantile(sorted(self.anchor_times), 0.5),
            }
        return {
            "latency": self.median,
            **anchored,
            "latency_spread": round(self.spread, 4),
            "latency_ci": round(self.ci, 4),
            "latency_runs": len(self.times),
            "latency_wall": int(plan.clock == "wall"),
            "latency_threads": threads,
            "latency_warmup": plan.warmup,
            "latency_repeats": plan.repeats,
        }


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_ci(times: list[float]) -> float:
    """Relative half-width of a distribution-free 95 % CI of the median: the order
    statistics n/2 -+ 1.96 sqrt(n)/2 (inf with fewer than 6 runs)."""
    n = len(times)
    if n < 6:
        return math.inf
    ordered = sorted(times)
    half = 1.96 * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half) - 1)
    high = min(n - 1, math.ceil(n / 2 + half))
    median = _quantile(ordered, 0.5)
    return (ordered[high] - ordered[low]) / (2 * median) if median > 0 else math.inf


def latency_session(module: nn.Module, net: ResolvedNetwork, threads: int, seed: int):
    """An ONNX Runtime CPU session of `module` with fixed threads, and its input feed."""
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
    return session, feed


def time_latencies(
    sessions: list[tuple[object, dict]],
    plan: LatencyPlan,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    anchor: tuple[object, dict] | None = None,
) -> list[LatencyReading]:
    """Time every (session, feed) interleaved until each one's median is stable (see the
    module doc); `progress(done, total)` after each round. With `anchor`, that session is
    timed in every round too (in the shuffled order) and each reading keeps the anchor's
    run of the same round."""
    readings = [LatencyReading() for _ in sessions]
    timed = [*sessions, anchor] if anchor is not None else list(sessions)
    for session, feed in timed:
        for _ in range(plan.warmup):
            session.run(None, feed)  # type: ignore[attr-defined]
    order = random.Random(seed)
    active = list(range(len(sessions)))
    anchor_index = len(sessions)  # only timed when an anchor is given
    clock = time.thread_time if plan.clock == "cpu" else time.perf_counter
    while active:
        this_round = [*active, anchor_index] if anchor is not None else active
        order.shuffle(this_round)
        took: dict[int, float] = {}
        for i in this_round:
            session, feed = timed[i]
            wall, start = time.perf_counter(), clock()
            session.run(None, feed)  # type: ignore[attr-defined]
            took[i] = (clock() - start) * 1000.0
            if i != anchor_index:
                readings[i].spent += time.perf_counter() - wall  # the cap is on elapsed time
        for i in active:
            readings[i].times.append(took[i])
            if anchor is not None:
                readings[i].anchor_times.append(took[anchor_index])
        active = [i for i in active if not readings[i].done(plan)]
        if progress is not None:
            progress(len(sessions) - len(active), len(sessions))
    return readings


def anchor_architecture(space: Space) -> Architecture:
    """The reference network latency is anchored to: the same for every group, run and
    machine measuring `space` (the first of the seeded sample 0: a typical member, neither
    the smallest nor the largest, chosen without measuring anything)."""
    from autobuild_dsl.space.decisions import sample

    return sample(space, 1, seed=0)[0]


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
