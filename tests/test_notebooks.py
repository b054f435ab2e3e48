"""The notebooks are committed with their pictures, and re-executing them still draws every picture.

``scripts/execute_notebooks.py`` refreshes the committed outputs.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PICTURE = "image/png"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# What the committed outputs may weigh together: the repository shows the pictures, it need not store photographs.
MAX_TOTAL_BYTES = 1_600_000


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def mime_types(cell: nbformat.NotebookNode) -> set[str]:
    return {mime for output in cell.get("outputs", []) for mime in output.get("data", {})}


def widget_pictures(notebook: nbformat.NotebookNode) -> int:
    """How many pictures the notebook's widgets hold (an ipywidgets Output keeps what was displayed into it)."""
    models = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return sum(PICTURE in output.get("data", {}) for model in models.values()
               for output in model.get("state", {}).get("outputs", []))


def test_notebooks_exist_and_one_demonstrates_the_widget() -> None:
    assert len(NOTEBOOKS) >= 5
    assert any("camkit.interactive.interact(" in cell.source for path in NOTEBOOKS
               for cell in code_cells(nbformat.read(path, as_version=4)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_committed_notebook_has_its_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    # executed top to bottom in one run, every cell, without an error
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), \
        "run scripts/execute_notebooks.py and commit the notebooks with their outputs"
    assert not [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert any(PICTURE in mime_types(cell) for cell in cells), f"{path.name} shows no picture"
    # nothing that changes from run to run or names this machine
    assert not [cell for cell in cells if "execution" in cell.metadata], "cell timestamps are committed"
    text = path.read_text()
    assert str(ROOT) not in text and "site-packages" not in text


def test_widget_notebook_keeps_the_widget_and_its_picture() -> None:
    with_widgets = [nbformat.read(path, as_version=4) for path in NOTEBOOKS]
    with_widgets = [notebook for notebook in with_widgets
                    if any(WIDGET_VIEW in mime_types(cell) for cell in code_cells(notebook))]
    assert with_widgets, "no committed notebook displays a widget"
    for notebook in with_widgets:
        assert widget_pictures(notebook) >= 1, "the widget's own picture is not in the saved widget state"


def test_committed_outputs_stay_small() -> None:
    assert sum(path.stat().st_size for path in NOTEBOOKS) <= MAX_TOTAL_BYTES


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_executes_and_draws_each_committed_picture(path: Path, tmp_path: Path) -> None:
    """A fresh kernel on a copy: every cell that had a picture (or a widget) in the repository has one again."""
    copy = Path(shutil.copy(path, tmp_path / path.name))
    committed = nbformat.read(copy, as_version=4)
    executed = nbformat.read(copy, as_version=4)
    # 120 s per cell: the slowest cell takes about 10 s on one thread (scripts/execute_notebooks.py prints each).
    NotebookClient(executed, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    for index, (before, after) in enumerate(zip(code_cells(committed), code_cells(executed))):
        assert not [output for output in after.outputs if output.output_type == "error"]
        for mime in (PICTURE, WIDGET_VIEW):
            if mime in mime_types(before):
                assert mime in mime_types(after), f"{path.name}: code cell {index} no longer shows {mime}"
    if any(WIDGET_VIEW in mime_types(cell) for cell in code_cells(committed)):
        assert widget_pictures(executed) >= 1, f"{path.name}: the widget drew nothing"
