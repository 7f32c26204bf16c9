"""Subprocesses for tests: scripts run in a fresh interpreter, and every process they start (engine, loky
instances, their children) found again by a tag in its environment, so a test can check that none is left
and stop them all whatever happened."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import kill_quietly, pid_alive


def run_script(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


TAG = "SCF_NB_TEST_TAG"


def tagged_env(extra: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """An environment with a unique tag: every process started from it (the engine subprocess, its loky
    instances, their children) inherits the tag, so the test can find them all, even orphans."""
    tag = uuid.uuid4().hex
    return tag, {**os.environ, TAG: tag, **(extra or {})}


def tagged_processes(tag: str) -> list[str]:
    """Running (not zombie) processes whose environment holds ``tag``: "pid command" each."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read():
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
        if pid_alive(int(entry)):
            found.append(f"{entry} {cmd}")
    return found


def kill_tagged(tag: str) -> None:
    for line in tagged_processes(tag):
        kill_quietly(int(line.split()[0]))


def read_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """One line of the subprocess's stdout, failing the test (with its stderr) if none comes in time."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            pytest.fail(f"no line from the subprocess within {timeout} s")
        line = proc.stdout.readline()
    finally:
        sel.close()
    if not line:
        proc.wait(timeout=10)
        pytest.fail(f"the subprocess exited ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
    return line.strip()


def free_port() -> int:
    """A loopback port the OS says is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_server(url: str, token: str, server: subprocess.Popen[Any], log: Path, timeout: float = 60.0) -> None:
    """Until the Jupyter server at ``url`` answers ``/api/status``; fail the test with the tail of its ``log``
    if it exits first or does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/api/status?token={token}", timeout=5) as answer:
                answer.read()
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server at {url} did not answer: {log.read_text()[-3000:]}")
            time.sleep(0.05)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()


# A sitecustomize for instance processes (loky workers): while the gate is armed and closed they block at
# interpreter start, a slow start made certain; with "<gate>.crash" they exit at once. The engine process
# itself is not held.
SLOW_START = textwrap.dedent('''
    import os, time
    _gate = os.environ.get("SCF_NB_TEST_GATE")
    if _gate and os.path.exists(_gate + ".crash"):
        with open("/proc/self/cmdline", "rb") as _f:
            if b"popen_loky_posix" in _f.read():
                os._exit(3)
    if _gate and os.path.exists(_gate + ".armed"):
        with open("/proc/self/cmdline", "rb") as _f:
            _loky = b"popen_loky_posix" in _f.read()
        if _loky:
            open(f"{_gate}.blocked.{os.getpid()}", "w").close()
            _deadline = time.monotonic() + 60
            while not os.path.exists(_gate) and time.monotonic() < _deadline:
                time.sleep(0.01)
''')
