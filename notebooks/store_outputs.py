"""Run tutorial notebooks top to bottom and store the outputs that nbval checks, and only those.

    python notebooks/store_outputs.py                      # every notebook in this folder
    python notebooks/store_outputs.py notebooks/03_*.ipynb

A cell whose output matters carries the tag ``nbval-check-output`` (or the comment ``# NBVAL_CHECK_OUTPUT``):
its outputs are kept, with its execution count, and ``pytest --nbval-lax`` compares a new run with them
(through ``nbval_sanitize.cfg``). Every other cell is stored without outputs, so the files stay small and
their diffs show only what is checked. Run this after changing a notebook on purpose, and read the diff.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
TAG = "nbval-check-output"


def checked(cell: nbformat.NotebookNode) -> bool:
    """Whether nbval compares this cell's outputs in ``--nbval-lax`` mode."""
    if cell.cell_type != "code":
        return False
    if TAG in cell.get("metadata", {}).get("tags", []):
        return True
    return any(line.strip().lstrip("#").strip() == "NBVAL_CHECK_OUTPUT"
               for line in cell.source.splitlines() if line.strip().startswith("#"))


def store(path: Path, timeout: int = 120) -> float:
    """Execute ``path`` in its own folder and rewrite it with the checked cells' outputs only; seconds taken."""
    nb = nbformat.read(path, as_version=4)
    started = time.monotonic()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    took = time.monotonic() - started
    for cell in nb.cells:
        if cell.cell_type == "code" and not checked(cell):
            cell.outputs, cell.execution_count = [], None
        cell.get("metadata", {}).pop("execution", None)  # nbclient's timings: they change on every run
    nb.metadata.pop("widgets", None)  # the widgets' saved state: no widget output is stored
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return took


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted(HERE.glob("[0-9]*.ipynb"))
    for path in paths:
        print(f"{path.name}: {store(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
