"""The Ray backend's tests (``tests/ray``) run on a real two-node Ray cluster on this machine. Ray binds to the
machine's interface address unless it has a network namespace of its own, so they run here as a subprocess
inside one with only ``lo`` (``unshare -n``, root), and this test passes when they all pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the Ray tests cannot run: {reason}")
    pytest.skip(reason)


def test_the_ray_backend_on_a_two_node_cluster() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        _unavailable("Ray is not installed: pip install -e '.[test]' (it has the ray extra)")
    if os.geteuid() != 0:
        _unavailable("a network namespace of its own (unshare -n) needs root")
    if not shutil.which("unshare") or not shutil.which("ip"):
        _unavailable("unshare and ip (util-linux, iproute2) are needed for a loopback-only network namespace")
    env = {**os.environ, "SCF_NB_RAY_TESTS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    inner = f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider tests/ray"
    out = subprocess.run(["unshare", "-n", "bash", "-c", inner], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    report = "\n".join(line for line in out.stdout.splitlines() if not line.startswith(" ["))
    assert out.returncode == 0, report[-8000:] + "\n" + out.stderr[-4000:]
    assert " passed" in report and " skipped" not in report, report[-4000:]
