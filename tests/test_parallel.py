"""The one fan-out helper: per-worker state, one thread per worker, bounded, failures."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from autobuild_dsl import parallel
from autobuild_dsl.errors import AbcError
from autobuild_dsl.parallel import Fanout, ParallelError, thread_note


def _init(offset: int) -> dict:
    return {"offset": offset, "pid": os.getpid()}


def _add(state: dict, value: int) -> tuple[int, int]:
    return state["offset"] + value, state["pid"]


def _threads(state: dict, _: object) -> tuple[int, str | None, int]:
    import torch

    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), state["pid"]


def test_inline_builds_state_once_and_keeps_order() -> None:
    calls = []

    with Fanout(_init, (10,)) as fan:
        assert not fan.remote
        results = list(fan.map(_add, [(i, i) for i in range(5)]))
        results += list(fan.map(_add, [(9, 9)]))
        calls.append(fan.state()["pid"])
    assert [tag for tag, _ in results] == [0, 1, 2, 3, 4, 9]
    assert [value for _, (value, _) in results] == [10, 11, 12, 13, 14, 19]
    assert {pid for _, (_, pid) in results} == {os.getpid()} == set(calls)


def test_pool_runs_in_workers_with_their_state_one_thread_and_a_window() -> None:
    pulled = 0

    def tasks() -> Iterator[tuple[int, int]]:
        nonlocal pulled
        for i in range(10):
            pulled += 1
            yield i, i

    # One pool for all checks: spawning workers is the slow part.
    with Fanout(_init, (100,), jobs=2) as fan:
        stream = fan.map(_add, tasks(), window=3)
        first = [next(stream)]
        assert pulled == 3  # nothing more was submitted before a result came back
        results = dict(first + list(stream))
        threads = [r for _, r in fan.map(_threads, [(i, None) for i in range(4)])]
    assert pulled == 10
    assert {tag: value for tag, (value, _) in results.items()} == {i: 100 + i for i in range(10)}
    pids = {pid for _, pid in results.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(count == 1 and env == "1" for count, env, _ in threads)


def _sleepy(state: dict, value: int) -> int:
    if value == 3:
        raise ValueError("task 3 fails")
    time.sleep(120)  # still running when the failure arrives
    return value


@pytest.mark.slow  # a second pool: spawning workers takes seconds
def test_a_failing_task_raises_and_stops_the_running_workers() -> None:
    # Ctrl-C in the parent takes the same path (any exception while iterating).
    fan = Fanout(_init, (0,), jobs=2)
    started = time.perf_counter()
    stream = fan.map(_sleepy, [(i, i) for i in (3, 1, 2)], window=3)
    processes = list(fan._get_pool()._processes.values())  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="task 3 fails"):
        list(stream)
    assert fan._pool is None
    for process in processes:
        process.join(timeout=10)
        assert not process.is_alive()  # terminated, not waited for
    assert time.perf_counter() - started < 110
    fan.close()


class _MineError(AbcError):
    code = "mine"


def test_missing_ray_is_the_callers_error_with_the_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    fan = Fanout(_init, (0,), ray_address="auto", error=_MineError)
    assert fan.remote
    with pytest.raises(_MineError, match=r"pip install 'autobuild-dsl\[ray\]'"):
        list(fan.map(_add, [(1, 1)]))
    with pytest.raises(ParallelError):
        Fanout(_init, (0,), ray_address="auto").start_ray()


def test_thread_note_only_when_threads_exceed_idle_cores(monkeypatch) -> None:
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(parallel.os, "getloadavg", lambda: (3.5, 0.0, 0.0))
    assert thread_note(1) is None
    note = thread_note(2)
    assert note is not None and "load 3.5" in note and "4 cores" in note
    monkeypatch.setattr(parallel.os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    assert thread_note(2) is None
    assert thread_note(2, jobs=2) is not None


def test_torch_threads_default_one_and_restores() -> None:
    import torch

    before = torch.get_num_threads()
    with parallel.torch_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
