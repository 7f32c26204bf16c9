"""Shared fixtures: every test gets its own store folder and a fresh embedded engine, stopped afterwards."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

import scf_nb


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def scf(home: Path) -> Iterator[object]:
    """The ``scf_nb`` module with a fresh engine on a store of its own."""
    scf_nb.configure(home=home, grace_seconds=2.0)
    try:
        yield scf_nb
    finally:
        scf_nb.shutdown()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    """Poll ``predicate`` until it is truthy; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
