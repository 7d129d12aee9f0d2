"""The CLI's one progress display: rich bars on stderr, fed by the library's callbacks.

The library reports progress as plain events (`progress=` callbacks); each command picks
the columns it needs here and maps its events onto bars. Nothing else in the CLI builds
a rich `Progress`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from autobuild_dsl.cli.common import err_console


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class ProgressView:
    """Bars on stderr: a bold (or plain) label, the bar, done/total, optional timers and an
    `info` text column. A context manager; `add` makes a bar, `update` moves it."""

    def __init__(
        self,
        *,
        bold: bool = True,
        elapsed: bool = True,
        remaining: bool = True,
        info: bool = True,
        transient: bool = False,
    ) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        label = "[bold]{task.description}" if bold else "{task.description}"
        columns: list[ProgressColumn] = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
        if elapsed:
            columns.append(TimeElapsedColumn())
        if remaining:
            columns.append(TimeRemainingColumn())
        if info:
            columns.append(TextColumn("{task.fields[info]}"))
        self.bar = Progress(*columns, console=err_console, transient=transient)

    def __enter__(self) -> ProgressView:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)  # type: ignore[arg-type]

    def add(self, label: str, total: float | None = None, **fields: Any) -> Any:
        fields.setdefault("info", "")
        return self.bar.add_task(label, total=total, **fields)

    def update(self, task: Any, **changes: Any) -> None:
        self.bar.update(task, **changes)

    def counter(self, task: Any) -> Callable[[int, int], None]:
        """A `progress(done, total)` callback (the library's simplest kind) for one bar."""

        def update(done: int, total: int) -> None:
            self.bar.update(task, completed=done, total=total or None)

        return update

    def phase(self, label: str) -> Callable[[int, int], None]:
        """A `progress(done, total)` callback for a bar that goes away once complete (a
        step before the main work, such as exporting graphs before training)."""
        tasks: list[Any] = []  # made on the first event: a step that never runs shows nothing

        def update(done: int, total: int) -> None:
            if not tasks:
                tasks.append(self.add(label))
            if total and done >= total:
                self.bar.update(tasks[0], visible=False)
            else:
                self.bar.update(tasks[0], completed=done, total=total or None)

        return update


@contextmanager
def counting(label: str, **view: Any) -> Iterator[Callable[[int, int], None]]:
    """One bar fed by a `progress(done, total)` callback; transient, without timers unless
    asked (an import, a file of graphs)."""
    options = {"bold": False, "elapsed": False, "remaining": False, "info": False}
    options.update(view)
    with ProgressView(transient=True, **options) as shown:
        yield shown.counter(shown.add(label))


class RankView(ProgressView):
    """Ranking events (`RankProgress`): packing units, then one forward pass per member."""

    def __init__(self) -> None:
        super().__init__(elapsed=False, remaining=False, transient=True)
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: Any) -> None:
        label = "packing modules" if event.step == "encode" else "scoring (members)"
        task = self.tasks.get(event.step)
        if task is None:
            task = self.add(label, total=event.total)
            self.tasks[event.step] = task
        self.update(task, completed=event.done, total=event.total, info=event.detail)


class TrainView(ProgressView):
    """Training events: one bar for members, one per running member (epochs)."""

    def __init__(self) -> None:
        super().__init__()
        # Hidden until the first event, so an early error leaves no empty bar behind.
        self.members = self.add("members", visible=False)
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: object) -> None:
        from autobuild_dsl.scorer.run import MemberDone
        from autobuild_dsl.scorer.train import EpochProgress

        self.update(self.members, visible=True)
        if isinstance(event, EpochProgress):
            task = self.tasks.get(event.member)
            if task is None:
                task = self.add(event.member, total=event.epochs)
                self.tasks[event.member] = task
            info = f"loss {event.loss:.4f}"
            if event.srcc is not None:
                info += f" · train srcc {event.srcc:.3f}"
            if event.test_srcc is not None:
                info += f" · test srcc {event.test_srcc:.3f}"
            self.update(task, completed=event.epoch, info=info)
        elif isinstance(event, MemberDone):
            task = self.tasks.pop(event.name, None)
            if task is not None:
                self.bar.remove_task(task)
            m = event.metrics
            done = "done before" if event.skipped else "done"
            info = f"{event.name} {done}: pred srcc {_fmt(m.pred_srcc)}"
            self.update(self.members, completed=event.done, total=event.total, info=info)


__all__ = ["ProgressView", "RankView", "TrainView", "counting"]
