"""Re-execute the notebooks in place so that the committed outputs (and pictures) are current.

    OMP_NUM_THREADS=1 python scripts/execute_notebooks.py              # every notebook in notebooks/
    OMP_NUM_THREADS=1 python scripts/execute_notebooks.py notebooks/02_compare_methods.ipynb

Each notebook runs top to bottom on a fresh kernel (nbclient), then is
written back with its outputs. What changes from run to run without the
notebook changing is left out, so that a refresh gives a small diff: cell
timestamps are dropped, consecutive prints become one output, the kernel's
language_info keeps only the language's name, and the widget models' random
ids are renumbered in an order fixed by the notebook. Each cell's time is
printed, slowest first: tests/test_notebooks.py runs every notebook and must
stay quick.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 120  # the same per-cell limit as tests/test_notebooks.py
WIDGET_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")  # a model id, also inside "IPY_MODEL_<id>"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def cell_seconds(cell: nbformat.NotebookNode) -> float:
    """Time from the kernel receiving a cell to its reply, from the timestamps nbclient records."""
    timing = cell.get("metadata", {}).get("execution", {})
    if "iopub.execute_input" not in timing or "shell.execute_reply" not in timing:
        return 0.0
    start, end = (datetime.fromisoformat(timing[key].replace("Z", "+00:00"))
                  for key in ("iopub.execute_input", "shell.execute_reply"))
    return (end - start).total_seconds()


def strip_volatile(notebook: nbformat.NotebookNode) -> None:
    """Drop timestamps and the Python version; renumber widget model ids (random uuids) deterministically."""
    for cell in notebook.cells:
        cell.get("metadata", {}).pop("execution", None)
    language = notebook.metadata.get("language_info")
    if language is not None:
        notebook.metadata["language_info"] = {"name": language.get("name", "python")}
    renumbered = {old: f"{number:032x}" for number, old in enumerate(widget_order(notebook), start=1)}
    if renumbered:
        text = WIDGET_ID.sub(lambda match: renumbered.get(match.group(0), match.group(0)), nbformat.writes(notebook))
        notebook.clear()
        notebook.update(nbformat.reads(text, as_version=4))


def widget_order(notebook: nbformat.NotebookNode) -> list[str]:
    """The widget models' ids in an order that does not depend on their random values.

    Depth first from the widgets the cells display, following each model's
    references in its (key-sorted) state; models no output reaches come last,
    sorted by what they hold.
    """
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    order: list[str] = []

    def visit(model_id: str) -> None:
        if model_id in state and model_id not in order:
            order.append(model_id)
            for reference in WIDGET_ID.findall(json.dumps(state[model_id], sort_keys=True)):
                visit(reference)

    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view:
                visit(view["model_id"])

    def content(model_id: str) -> str:
        return WIDGET_ID.sub("", json.dumps(state[model_id], sort_keys=True))

    for model_id in sorted(set(state) - set(order), key=content):
        visit(model_id)
    return order


def execute(path: Path, timeout: int = CELL_TIMEOUT_S) -> tuple[nbformat.NotebookNode, list[tuple[float, int]]]:
    """``path`` executed on a fresh kernel, and (seconds, cell index) of each code cell."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=True, coalesce_streams=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    timings = [(cell_seconds(cell), index) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    strip_volatile(notebook)
    return notebook, timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to execute (default: all in notebooks/)")
    parser.add_argument("--check", action="store_true", help="execute and report timings, but write nothing")
    arguments = parser.parse_args(argv)
    for path in arguments.paths or sorted(NOTEBOOKS.glob("*.ipynb")):
        start = time.perf_counter()
        notebook, timings = execute(path)
        if not arguments.check:
            nbformat.write(notebook, path)
        cells = ", ".join(f"cell {index}: {seconds:.1f} s" for seconds, index in sorted(timings, reverse=True))
        print(f"{path.name}: {time.perf_counter() - start:.1f} s ({cells}), {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
