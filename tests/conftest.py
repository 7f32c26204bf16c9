"""Shared fixtures: every test gets its own store folder and a fresh embedded engine, stopped afterwards."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import scf_nb

# tests/ray needs a network namespace of its own (Ray binds to the machine's interface otherwise): it runs only
# as tests/test_ray.py's subprocess, inside one, which sets this
collect_ignore = [] if os.environ.get("SCF_NB_RAY_TESTS") else ["ray"]


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


# Handler code that blocks on files the test creates; the deadline keeps a broken test from hanging an instance.
GATE = textwrap.dedent('''
    import os, sys, time

    def wait_file(path, limit=60.0):
        deadline = time.monotonic() + limit
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(path)
            time.sleep(0.005)

    def touch(path, text=""):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
''')


class Clock:
    """An injectable wall clock: it moves only when the test says."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(scf: object) -> Iterator[Clock]:
    """The engine's clock, under the test's control; the real one comes back afterwards (settings stick)."""
    fake = Clock(float(int(time.time()) - 10 * 24 * 3600))
    scf_nb.configure(clock=fake)
    try:
        yield fake
    finally:
        scf_nb.configure(clock=time.time)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A real Ray cluster of two nodes with 1 CPU each on this machine (loopback only: tests/ray runs in a
    network namespace with only ``lo``), this process connected to it as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def ray_scf(home: Path, ray_cluster: Any) -> Iterator[Any]:
    """The ``scf_nb`` module with a fresh engine whose instances are actors on ``ray_cluster``."""
    scf_nb.configure(home=home, grace_seconds=2.0, backend="ray", ray_address=ray_cluster.address)
    try:
        yield scf_nb
    finally:
        scf_nb.shutdown()
        scf_nb.configure(backend="loky", ray_address=None)
