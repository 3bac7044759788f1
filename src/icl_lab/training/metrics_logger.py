"""The trainer's logging part: evaluation results into the run's metrics table."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from torch import Tensor

from icl_lab.store.metrics_table import MetricsLog


class MetricsLogger:
    """Appends rows (units, member, split, metric, head, value) and rewrites the table atomically
    after every evaluation; keeps member 0's latest value of the key metric for the progress bar."""

    def __init__(self, path: Path, key_metric: tuple[str, str, str]) -> None:
        self.path, self.key_metric = path, key_metric
        self.rows = MetricsLog()
        self.key_value: float | None = None

    def restore(self, table: pa.Table, step: int) -> None:
        """Start from an earlier table's rows up to and including `step` (resuming a run)."""
        self.rows = MetricsLog(table.filter(pc.less_equal(table["step"], step)))

    def log(self, units: dict[str, float], member: int, split: str, values: dict[str, Tensor]) -> None:
        """Rows for one member's metrics on one split; a per-head value (layers, heads) gives a
        row per head, named 'layer.head'."""
        for metric, value in values.items():
            array = value.double().cpu().numpy()
            if array.ndim == 0:
                self.rows.add(
                    **units, member=member, split=split, metric=metric, head=None, value=array.item()
                )
            else:
                for (layer, head), v in np.ndenumerate(array):
                    self.rows.add(
                        **units,
                        member=member,
                        split=split,
                        metric=metric,
                        head=f"{layer}.{head}",
                        value=float(v),
                    )
            key_split, key, summary = self.key_metric
            if member == 0 and (split, metric) == (key_split, key):
                self.key_value = float(getattr(array, summary)())

    @property
    def row_count(self) -> int:
        return len(self.rows.columns["step"])

    def write(self) -> None:
        self.rows.write(self.path)
