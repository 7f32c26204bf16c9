"""Lint and types in the test run (so in CI): ``ruff check`` and ``mypy`` with the settings in pyproject.toml,
run by this interpreter (``python -m ...``). mypy's cache is kept under the system's temp folder, per checkout,
so a second run takes about a second and the repository gets no cache folder."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["scf_nb", "tests", "bench"]
# The public API: mypy's strict checks must hold in each of these (a moved module is renamed here too).
PUBLIC = [
    "scf_nb/__init__.py", "scf_nb/api.py", "scf_nb/magics.py", "scf_nb/clients/protocol.py", "scf_nb/clients/events.py",
    "scf_nb/clients/embedded.py", "scf_nb/store/query.py", "scf_nb/store/follow.py", "scf_nb/store/observe.py",
    "scf_nb/core/errors.py", "scf_nb/core/status.py", "scf_nb/core/functions.py", "scf_nb/core/config.py",
    "scf_nb/instances/backend.py",  # the seam a second instance backend implements
]
PROBE = "\n\ndef _strictness_probe(x):  # no annotations: mypy's strict checks reject it\n    return x\n"


def _cache(kind: str) -> str:
    checkout = hashlib.sha1(str(ROOT).encode()).hexdigest()[:12]
    return str(Path(tempfile.gettempdir()) / f"scf_nb-{kind}-{checkout}")


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
    except FileNotFoundError as e:  # pragma: no cover - the interpreter itself is missing
        pytest.fail(f"cannot run {tool}: {e}")


def _check_installed(proc: subprocess.CompletedProcess[str], tool: str) -> None:
    if "No module named" in proc.stderr and tool in proc.stderr:
        pytest.fail(f"{tool} is not installed in {sys.executable}: pip install -e '.[test]'", pytrace=False)


def test_ruff_finds_nothing() -> None:
    proc = _run("ruff", "check", "--no-cache", "--output-format", "concise", *LINTED)
    _check_installed(proc, "ruff")
    if proc.returncode != 0:
        pytest.fail(f"ruff check {' '.join(LINTED)}:\n{proc.stdout}{proc.stderr}", pytrace=False)


def test_mypy_finds_nothing() -> None:
    proc = _run("mypy", "--cache-dir", _cache("mypy"))
    _check_installed(proc, "mypy")
    if proc.returncode != 0:
        pytest.fail(f"mypy (settings in pyproject.toml):\n{proc.stdout}{proc.stderr}", pytrace=False)
    checked = len(list((ROOT / "scf_nb").rglob("*.py")))
    assert f"no issues found in {checked} source files" in proc.stdout, proc.stdout  # every module was checked


def test_mypy_is_strict_on_the_public_api(tmp_path: Path) -> None:
    """The settings really apply strict checks to each public module: the same run with an unannotated
    function added to each (``--shadow-file``) reports it in every one of them."""
    shadows: list[str] = []
    for rel in PUBLIC:
        source = ROOT / rel
        assert source.is_file(), f"{rel} is gone: update PUBLIC in {Path(__file__).name}"
        shadow = tmp_path / rel.replace("/", "__")
        shadow.write_text(source.read_text() + PROBE)
        shadows += ["--shadow-file", rel, str(shadow)]
    proc = _run("mypy", "--cache-dir", _cache("mypy-probe"), *shadows)
    _check_installed(proc, "mypy")
    flagged = {line.split(":")[0] for line in proc.stdout.splitlines() if line.endswith("[no-untyped-def]")}
    assert flagged == set(PUBLIC), proc.stdout
