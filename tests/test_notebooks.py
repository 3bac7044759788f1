"""The example notebooks run clean from top to bottom, and are kept in git without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.ipynb"))


def test_there_are_two_notebooks_and_none_carries_outputs() -> None:
    assert [p.name for p in EXAMPLES] == ["bring_your_own_task.ipynb", "first_phase_change.ipynb"]
    for path in EXAMPLES:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_notebook_runs_clean(path: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert (tmp_path / "runs").is_dir() and list((tmp_path / "runs").glob("*/report/report.html"))
