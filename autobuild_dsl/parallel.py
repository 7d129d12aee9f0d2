"""One way to fan work out: a bounded pool of spawned worker processes, or Ray tasks.

`Fanout(init, init_args, jobs=N)` runs `fn(state, payload)` for a stream of payloads, where
`state = init(*init_args)` is built once per worker process (the pool keeps it, so callers
hold no module-global worker state). With `jobs=1` and no Ray address the work runs in this
process, with the same state and the same calls, so callers have one code path.

- Workers are spawned, not forked: a fork of a process that runs torch's thread pools can
  hang. Each worker gets `threads` torch threads (default one) and OMP/MKL/OpenBLAS thread
  counts to match, so N workers on N cores do not oversubscribe them.
- At most `window` payloads are in flight (default two per worker): memory stays bounded
  by the window, and an interruption leaves little submitted work behind.
- Ctrl-C reaches the whole process group; workers ignore it and the parent stops them
  (terminated, not waited for). A kill -9 of the parent kills the workers too
  (`io.die_with_parent`).
- Ray is an optional dependency, imported only when an address is given ("local" starts
  a private single-machine instance); a cluster this pool connected to is let go on close.

Also here: the main process's torch thread count (`torch_threads`, default one) and a note
when more are asked than the machine's idle cores hold (`thread_note`). Nothing prints.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Generic, TypeVar

from autobuild_dsl.errors import AbcError
from autobuild_dsl.io import die_with_parent

Tag = TypeVar("Tag")
# Environment variables that size native thread pools; set before a worker imports them.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
RAY_HINT = "pip install 'autobuild-dsl[ray]'"


class ParallelError(AbcError, RuntimeError):
    """Work cannot be fanned out as asked (Ray missing or unreachable)."""

    code = "parallel"


# Worker side: the state of this process's pool (by pool token; one per process pool,
# a few per Ray worker process, which Ray reuses across tasks and pools).
_STATE: dict[str, Any] = {}
_KEPT_STATES = 4


def _set_threads(threads: int) -> None:
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # settable only before the first parallel op
        torch.set_num_interop_threads(1)


def _bootstrap(
    token: str, threads: int, path: list[str], init: Callable[..., Any], init_args: tuple
) -> None:
    """Process-pool initializer: signals, threads, import path, then the caller's state."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    die_with_parent()
    for entry in path:  # user modules (python: evaluators) import in workers too
        if entry not in sys.path:
            sys.path.append(entry)
    _set_threads(threads)
    _STATE[token] = init(*init_args)


def _call(token: str, fn: Callable[[Any, Any], Any], payload: Any) -> Any:
    return fn(_STATE[token], payload)


def _ray_call(
    token: str,
    threads: int,
    init: Callable[..., Any],
    init_args: tuple,
    fn: Callable[[Any, Any], Any],
    payload: Any,
) -> Any:
    if token not in _STATE:
        _set_threads(threads)
        while len(_STATE) >= _KEPT_STATES:  # Ray reuses workers: keep a few pools' states
            _STATE.pop(next(iter(_STATE)))
        _STATE[token] = init(*init_args)
    return fn(_STATE[token], payload)


def _noop() -> None:
    return None


def _top_up(
    tasks: Iterator[tuple[Tag, Any]],
    pending: dict[Any, Tag],
    limit: int,
    submit: Callable[[Any], Any],
) -> bool:
    """Submit (tag, payload) tasks until `limit` are pending; False once none are left."""
    while len(pending) < limit:
        task = next(tasks, None)
        if task is None:
            return False
        tag, payload = task
        pending[submit(payload)] = tag
    return True


@contextlib.contextmanager
def _thread_env(threads: int) -> Iterator[None]:
    """Thread-count variables set while workers are spawned (they inherit them before
    importing torch or numpy), then restored."""
    before = {name: os.environ.get(name) for name in THREAD_ENV}
    os.environ.update({name: str(threads) for name in THREAD_ENV})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Fanout(Generic[Tag]):
    """Run `fn(state, payload)` over payloads in this process, worker processes or Ray.

    `init` and `fn` must be importable top-level functions (they travel by name);
    `init_args` and payloads must pickle. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        init: Callable[..., Any],
        init_args: tuple = (),
        *,
        jobs: int = 1,
        ray_address: str | None = None,
        threads: int = 1,
        error: type[AbcError] = ParallelError,
    ) -> None:
        self.init = init
        self.init_args = tuple(init_args)
        self.jobs = max(1, int(jobs))
        self.ray_address = ray_address
        self.threads = max(1, int(threads))
        self.error = error  # the caller's error kind for a missing or unreachable Ray
        self._token = secrets.token_hex(8)
        self._local: Any = None
        self._local_ready = False
        self._pool: ProcessPoolExecutor | None = None
        self._ray: Any = None
        self._ray_started = False

    @property
    def remote(self) -> bool:
        """Whether work runs in other processes (workers or Ray)."""
        return self.jobs > 1 or self.ray_address is not None

    @property
    def workers(self) -> int:
        """How many payloads run at once."""
        if self.ray_address is None:
            return self.jobs
        if self.jobs > 1:
            return self.jobs
        cpus = int(self.start_ray().cluster_resources().get("CPU", 1))
        return max(1, cpus // self.threads)

    def state(self) -> Any:
        """This process's state (built on first use): inline work and tests."""
        if not self._local_ready:
            self._local = self.init(*self.init_args)
            self._local_ready = True
        return self._local

    def map(
        self,
        fn: Callable[[Any, Any], Any],
        tasks: Iterable[tuple[Tag, Any]],
        *,
        window: int | None = None,
        idle: Callable[[], None] | None = None,
    ) -> Iterator[tuple[Tag, Any]]:
        """(tag, fn(state, payload)) for each (tag, payload) of `tasks`, in completion order
        (in order when inline). Tags stay in this process; only payloads travel. `idle` is
        called about every 0.2 s while waiting (to drain a progress queue, say)."""
        if not self.remote:
            state = self.state()
            for tag, payload in tasks:
                yield tag, fn(state, payload)
        elif self.ray_address is not None:
            yield from self._map_ray(fn, tasks, window)
        else:
            yield from self._map_pool(fn, tasks, window, idle)

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_bootstrap,
                initargs=(self._token, self.threads, list(sys.path), self.init, self.init_args),
            )
            # A spawning pool starts all its workers at the first submit: do it now, with
            # the thread variables set, so workers import torch with one thread each.
            with _thread_env(self.threads):
                pool.submit(_noop)
            self._pool = pool
        return self._pool

    def _map_pool(
        self,
        fn: Callable[[Any, Any], Any],
        tasks: Iterable[tuple[Tag, Any]],
        window: int | None,
        idle: Callable[[], None] | None,
    ) -> Iterator[tuple[Tag, Any]]:
        pool = self._get_pool()
        limit = window or 2 * self.jobs
        pending: dict[Future[Any], Tag] = {}
        iterator = iter(tasks)
        more = True
        try:
            while True:
                if more:
                    more = _top_up(
                        iterator, pending, limit, lambda p: pool.submit(_call, self._token, fn, p)
                    )
                if not pending:
                    return
                timeout = 0.2 if idle is not None else None
                finished, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                if idle is not None:
                    idle()
                for future in finished:
                    tag = pending.pop(future)
                    yield tag, future.result()
        except BaseException:
            self.abort()  # Ctrl-C, a failed task or a caller that stopped iterating
            raise

    def start_ray(self) -> Any:
        """The `ray` module, connected (`ray_address`; "local": a private instance)."""
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise self.error(f"running on Ray needs the optional extra: {RAY_HINT}") from None
        if not ray.is_initialized():
            local = self.ray_address in ("local", None)
            try:
                ray.init(
                    address=None if local else self.ray_address,
                    include_dashboard=False,
                    log_to_driver=False,
                )
            except Exception as error:  # ConnectionError, ValueError, RuntimeError, ...
                where = "a local Ray cluster" if local else f"Ray at '{self.ray_address}'"
                detail = str(error) or type(error).__name__
                raise self.error(f"cannot start or reach {where}: {detail}") from None
            self._ray_started = True
        self._ray = ray
        return ray

    def _map_ray(
        self,
        fn: Callable[[Any, Any], Any],
        tasks: Iterable[tuple[Tag, Any]],
        window: int | None,
    ) -> Iterator[tuple[Tag, Any]]:
        ray = self.start_ray()
        limit = window or self.workers
        task = ray.remote(num_cpus=self.threads)(_ray_call)
        args_ref = ray.put(self.init_args)
        pending: dict[Any, Tag] = {}
        iterator = iter(tasks)
        more = True

        def submit(payload: Any) -> Any:
            return task.remote(self._token, self.threads, self.init, args_ref, fn, payload)

        try:
            while True:
                if more:
                    more = _top_up(iterator, pending, limit, submit)
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    tag = pending.pop(ref)
                    yield tag, ray.get(ref)
        finally:
            for ref in pending:  # interrupted: running tasks are not wanted any more
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def abort(self) -> None:
        """Stop the workers now, without waiting for what they run."""
        if self._pool is not None:
            for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    process.terminate()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._ray is not None and self._ray_started:
            self._ray.shutdown()
        self._ray = None
        self._ray_started = False

    def __enter__(self) -> Fanout[Tag]:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.abort()
        self.close()


# ----- torch threads in this process ----------------------------------------------------------


@contextlib.contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run with `count` torch intra-op threads (default one), then restore. Small graph
    batches are fastest on one thread; more mostly add contention on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(count)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_load() -> tuple[int, float | None]:
    """(CPU cores, 1-minute load average or None where the platform has none)."""
    cores = os.cpu_count() or 1
    try:
        return cores, os.getloadavg()[0]
    except OSError:
        return cores, None


def thread_note(threads: int, jobs: int = 1) -> str | None:
    """A note when `threads` torch threads (in each of `jobs` processes) would share cores
    with other work: measured on DyNAS-T, an epoch with 2 threads ran 11-37x slower once
    another job held a core. None for one thread, or when the threads fit the idle cores."""
    if threads <= 1:
        return None
    cores, load = machine_load()
    busy = load or 0.0
    idle = cores - busy
    if threads * jobs <= idle:
        return None
    return (
        f"{threads} torch threads x {jobs} process(es) asked, but only ~{max(idle, 0):.1f} of "
        f"{cores} cores are idle (load {busy:.1f}); small graph batches are fastest on one "
        "thread, and oversubscribed threads can slow work by an order of magnitude"
    )
