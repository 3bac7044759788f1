"""A live progress bar for training: step, rate, ETA, the training loss and the task's key metric."""

from collections.abc import Callable

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """Context manager; call update(step, status) to move the bar. Disabled, it does nothing."""

    def __init__(self, description: str, total: int, start: int, enabled: bool = True) -> None:
        self.description, self.total, self.start, self.enabled = description, total, start, enabled

    def __enter__(self) -> "TrainingProgress":
        if self.enabled:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps  {task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total, completed=self.start, status="")
        return self

    def update(self, step: int, status: Callable[[], str]) -> None:
        """Move to `step`; status() is only called when the bar is shown."""
        if self.enabled:
            self.bar.update(self.task, completed=step, status=status())

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()
