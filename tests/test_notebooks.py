"""The tutorial notebooks (notebooks/*.ipynb) run top to bottom under nbval, and the outputs that matter match.

nbval runs in a pytest of its own (``--nbval-lax``: every cell must run without an error; the cells tagged
``nbval-check-output`` must also give their stored outputs, after ``nbval_sanitize.cfg`` masks RequestIds,
times and the like), so that ``--nbval-lax`` applies to the notebooks alone and this suite's output stays
readable. The static checks below keep the stored notebooks in the shape that makes those comparisons real.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from processes import kill_tagged, tagged_env, tagged_processes

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbval")

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("[0-9][0-9]_*.ipynb"))
TAG = "nbval-check-output"


def ray_unavailable() -> str | None:
    """Why a loopback-only Ray cluster cannot run here, or None."""
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed: pip install -e '.[test]' (it has the ray extra)"
    if os.geteuid() != 0:
        return "a network namespace of its own (unshare -n) needs root"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare and ip (util-linux, iproute2) are needed for a loopback-only network namespace"
    return None


def code_cells(path: Path) -> list[Any]:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


RAY_NOTEBOOKS = [p for p in NOTEBOOKS  # they need a Ray cluster of their own
                 if any('backend="ray"' in c.source for c in code_cells(p))]


def is_checked(cell: Any) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", []) or "# NBVAL_CHECK_OUTPUT" in cell.source


def test_the_seven_tutorials_are_there() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"], NOTEBOOKS
    assert [p.name for p in RAY_NOTEBOOKS] == ["07_ray_cluster.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_stores_the_outputs_nbval_checks_and_only_those(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"  # no "Select Kernel" dialog in JupyterLab
    assert "widgets" not in nb.metadata  # store_outputs.py drops the widgets' saved state
    cells = code_cells(path)
    checked = [c for c in cells if is_checked(c)]
    assert len(checked) >= 3, "a tutorial checks the outputs that matter"
    for cell in cells:
        if is_checked(cell):
            # nbval compares a cell only if the stored one was run and gave something
            assert cell.execution_count is not None and cell.outputs, cell.source
            assert all(o.output_type != "error" for o in cell.outputs), cell.source
        else:
            assert not cell.outputs, f"an unchecked cell stores no output (run store_outputs.py):\n{cell.source}"
    source = "\n".join(c.source for c in cells)
    # its own store, and the engine stopped at the end: runs never see each other's events
    assert "scf_nb.configure(home=" in source
    assert "scf_nb.shutdown()" in cells[-1].source


def run_nbval(notebooks: list[Path], wrap: list[str] | None = None, env: dict[str, str] | None = None) -> None:
    """nbval on ``notebooks`` in a pytest of its own (behind ``wrap``, a command that runs its arguments); every code
    cell must run as an item and pass, and every process the notebooks started must be gone after."""
    cells = sum(len(code_cells(p)) for p in notebooks)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--nbval-sanitize-with", str(FOLDER / "nbval_sanitize.cfg"), "--nbval-cell-timeout", "180",
           *map(str, notebooks)]
    if wrap is not None:
        cmd = [*wrap, *cmd]
    tag, tagged = tagged_env(env)  # every process the notebooks start (engines, instances, servers, kernels, Ray)
    try:
        run = subprocess.run(cmd, cwd=ROOT, env=tagged, capture_output=True, text=True, timeout=840,
                             stdin=subprocess.DEVNULL)
        report = run.stdout[-6000:] + run.stderr[-2000:]
        assert run.returncode == 0, report
        passed = re.search(r"(\d+) passed", run.stdout)
        assert passed and int(passed.group(1)) == cells, report  # every code cell ran as an nbval item
        assert not re.search(r"\d+ (failed|error|skipped)", run.stdout), report
        # their kernels have exited: what the notebooks started ends with them (a process may take a moment)
        wait_until(lambda: tagged_processes(tag) == [], 30, "every process a notebook started to end")
    finally:
        kill_tagged(tag)


@pytest.mark.timeout(900)
def test_the_notebooks_run_under_nbval_and_their_checked_outputs_match() -> None:
    run_nbval([p for p in NOTEBOOKS if p not in RAY_NOTEBOOKS])


@pytest.mark.timeout(900)
def test_the_ray_notebook_runs_under_nbval_on_a_loopback_only_cluster() -> None:
    """Ray binds to the machine's interface address unless it has a network namespace of its own: the Ray
    notebook runs inside one with only ``lo`` (as ``tests/test_ray.py`` does)."""
    reason = ray_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the Ray notebook cannot run: {reason}")
        pytest.skip(reason)
    run_nbval(RAY_NOTEBOOKS, wrap=["unshare", "-n", "bash", "-c", "ip link set lo up && exec \"$0\" \"$@\""],
              env={"RAY_USAGE_STATS_ENABLED": "0"})
