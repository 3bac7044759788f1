"""The metrics table of a run: one row per (step, member, split, metric, head), stored as Parquet."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from icl_lab.errors import RunStoreError
from icl_lab.files import atomic_write

TRAIN_SPLIT = "train_batches"  # split name of the running mean of training-batch losses

SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("sequences", pa.int64()),
        ("tokens", pa.int64()),
        ("wall_s", pa.float64()),
        ("member", pa.int32()),
        ("split", pa.string()),
        ("metric", pa.string()),
        ("head", pa.string()),
        ("value", pa.float64()),
    ]
)


class MetricsLog:
    """Rows accumulated in memory and written as a whole, atomically, at every evaluation."""

    def __init__(self, table: pa.Table | None = None) -> None:
        self.columns: dict[str, list] = {name: [] for name in SCHEMA.names}
        if table is not None:
            for name in SCHEMA.names:
                self.columns[name] = table.column(name).to_pylist()

    def add(self, **row: object) -> None:
        for name in SCHEMA.names:
            self.columns[name].append(row.get(name))

    def table(self) -> pa.Table:
        return pa.table(self.columns, schema=SCHEMA)

    def write(self, path: Path) -> None:
        table = self.table()
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_metrics(path: Path) -> pa.Table:
    """The metrics table of a run (empty with the right schema if none was written yet);
    RunStoreError if it is corrupt or unreadable."""
    if not path.is_file():
        return SCHEMA.empty_table()
    try:
        found = pq.read_schema(path)
        table = pq.read_table(path, schema=SCHEMA)
    except (pa.ArrowException, OSError) as e:
        raise RunStoreError(f"metrics table {path} is corrupt or unreadable ({type(e).__name__})") from None
    # read under SCHEMA, a missing column would come back as nulls and a wrong type cast silently
    kept = {f.name: f.type for f in found}
    wrong = [f.name for f in SCHEMA if kept.get(f.name) != f.type]
    if wrong:
        raise RunStoreError(f"metrics table {path} is damaged (column {', '.join(wrong)} missing or retyped)")
    return table
