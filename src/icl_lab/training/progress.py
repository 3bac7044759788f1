"""Progress of training: a live bar on a terminal, plain lines in a log.

On a terminal: run id, bar, step count, elapsed and remaining time, then the training loss and the
task's key metric (cut short, never the step count, when the terminal is narrow). Elsewhere (a
log file, a pipe, CI): a plain line about every 10% of the run and at least once a minute.
"""

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

PLAIN_EVERY_S = 60.0


class TrainingProgress:
    """Context manager; call update(step, status) to move it. Disabled, it does nothing."""

    def __init__(self, description: str, total: int, start: int, enabled: bool = True) -> None:
        self.description, self.total, self.start, self.enabled = description, total, start, enabled
        self.console = Console()
        self.live = enabled and self.console.is_terminal

    def __enter__(self) -> "TrainingProgress":
        self.t0, self.last_line, self.last_step = time.perf_counter(), time.perf_counter(), self.start
        if self.live:
            self.bar = Progress(
                TextColumn(
                    "[bold]{task.description}",
                    table_column=Column(max_width=24, no_wrap=True, overflow="ellipsis"),
                ),
                BarColumn(bar_width=16),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn(
                    "{task.fields[status]}",
                    table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1, min_width=0),
                ),
                console=self.console,
                expand=True,  # the status column takes what is left, and is cut first
            )
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total, completed=self.start, status="")
        return self

    def update(self, step: int, status: Callable[[], str]) -> None:
        """Move to `step`; status() is only called when something is shown."""
        if self.live:
            self.bar.update(self.task, completed=step, status=status())
        elif self.enabled and self._plain_due(step):
            self._plain_line(step, status())

    def note(self, text: str) -> None:
        """Say what the run is doing before its next step (e.g. compiling)."""
        if self.live:
            self.bar.update(self.task, status=text)
        elif self.enabled:
            self.console.print(f"{self.description}: {text}", highlight=False, soft_wrap=True)

    def _plain_due(self, step: int) -> bool:
        tenth = max(1, self.total // 10)
        crossed = step // tenth > self.last_step // tenth or step == self.total
        return crossed or time.perf_counter() - self.last_line >= PLAIN_EVERY_S

    def _plain_line(self, step: int, status: str) -> None:
        now = time.perf_counter()
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - step) / rate if rate > 0 else float("nan")
        self.console.print(
            f"{self.description}: step {step:,}/{self.total:,} ({step / self.total:.0%}), "
            f"{rate:.1f} steps/s, {left:.0f} s left | {status}",
            highlight=False,
            soft_wrap=True,
        )
        self.last_line, self.last_step = now, step

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bar.stop()
