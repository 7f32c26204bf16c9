"""The end of an instance that dies on its own: its event names the cause, whoever reads the exit status first.
Real loky instances; the one interference is a delay put into loky's reaping, to hold open a race that
happens about once in 30 SIGKILLs by itself."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, wait_until

HANDLER = GATE + textwrap.dedent('''
    def main_handler(event, context):
        touch(event["started"], str(os.getpid()))
        wait_file(event["gate"])
        return os.getpid()
''')



def _on_engine_thread(engine: Any, fn: Any) -> None:
    done = threading.Event()
    engine.loop.post(lambda: (fn(), done.set()))
    assert done.wait(10)


def _late_status(popen: Any, engine_thread: threading.Thread, release: threading.Event) -> None:
    """loky's manager thread reaps the process (waitpid) and stores its status in ``popen`` only once
    ``release`` is set: the gap in which that thread waits for the GIL, made as long as the test needs."""
    real_poll = popen.poll

    def poll(flag: int = os.WNOHANG) -> int | None:
        if popen.returncode is not None or threading.current_thread() is engine_thread:
            return real_poll(flag)
        try:
            got, status = os.waitpid(popen.pid, flag)
        except ChildProcessError:
            return None
        if got == popen.pid:
            release.wait(30)
            popen.returncode = os.waitstatus_to_exitcode(status)
        return popen.returncode

    popen.poll = poll


def test_the_cause_of_death_is_kept_when_loky_reaps_the_process_before_the_engine_looks(
        scf: Any, tmp_path: Path) -> None:
    scf.create_function("held", HANDLER, async_run=True, timeout=300)
    started = tmp_path / "started"
    ev = scf.invoke("held", {"started": str(started), "gate": str(tmp_path / "gate")})
    text = wait_until(lambda: started.exists() and started.read_text(), 30, "the event to start")
    pid = int(text)  # type: ignore[arg-type]
    engine = scf.client().engine
    inst = next(i for i in list(engine.dispatcher.instances) if i.pid == pid)
    if inst.pidfd is None:
        pytest.skip("no pidfd on this kernel")
    release = threading.Event()
    _late_status(inst.process._popen, engine.loop.thread, release)
    watched = [inst.conn_fd, *inst.streams, inst.pidfd]
    held: dict[int, Any] = {}

    def hold() -> None:
        for fd in watched:
            held[fd] = engine.loop.poller.data[fd]
            engine.loop.poller.unregister(fd)

    def resume() -> None:
        for fd, data in held.items():
            engine.loop.poller.register(fd, data)

    _on_engine_thread(engine, hold)
    try:
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10, "loky to reap the killed instance")
    finally:
        _on_engine_thread(engine, resume)
    try:
        # The engine reads the EOFs and the pidfd, which cannot tell any more; loky has not stored the status.
        wait_until(lambda: inst.pidfd is None and not inst.open_fds, 10, "the engine to see the instance gone")
    finally:
        release.set()
    assert ev.wait(30) == "FAILED"
    assert "SIGKILL" in ev.info()["error"]["message"]
    (tmp_path / "gate").touch()


def test_an_event_killed_over_its_memory_limit_records_the_memory_it_used(scf: Any) -> None:
    code = textwrap.dedent('''
        import time
        def main_handler(event, context):
            data = b"x" * (300 * 2**20)
            time.sleep(30)
            return len(data)
    ''')
    scf.create_function("hog", code, async_run=True, memory_mb=100)
    ev = scf.invoke("hog")
    assert ev.wait(30) == "FAILED"
    info = ev.info()
    assert info["error"]["type"] == "MemoryLimitExceeded"
    # at the limit (a cgroup stops it there) or over it (the watchdog sees it after the fact)
    assert info["mem_usage_bytes"] is not None and info["mem_usage_bytes"] >= 100 * 2**20
    assert f"{info['mem_usage_bytes'] / 2**20:.0f} MB" in info["error"]["message"]  # the same measure
