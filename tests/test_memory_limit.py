"""``memory_mb``: an event whose instance went over its limit never ends FINISHED, and the limit holds tightly,
in both modes: a memory cgroup per instance (where this machine allows one) and the watchdog (forced with
``memory_cgroups=False``). Real allocations, real processes, real kills."""

from __future__ import annotations

import os
import re
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, wait_until
from engine_support import lines
from processes import kill_tagged, read_line, run_script, stop, tagged_env

import scf_nb
from scf_nb.core.config import from_environment

LIMIT_MB = 100
MB = 1 << 20

# Memory touched at once (MAP_POPULATE): the kernel faults it in as fast as it can, ~4 GB/s here.
HOG = GATE + textwrap.dedent('''
    import mmap, os, subprocess, sys, time

    def grab(mb):
        return mmap.mmap(-1, mb << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)

    def main_handler(event, context):
        kind, mb = event["kind"], event.get("mb", 0)
        if kind in ("spike", "ok"):  # hold it ~50 ms, then give it back
            m = grab(mb)
            time.sleep(0.05)
            m.close()
        elif kind == "climb":  # 4 MB at a time, saying how far it got
            held = []
            for i in range(mb // 4):
                held.append(grab(4))
                print("held", (i + 1) * 4, flush=True)
        elif kind == "child":  # the same spike in a child process, whose exit the handler ignores
            flags = "mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE"
            code = f"import mmap, time; m = mmap.mmap(-1, {mb} << 20, flags={flags}); time.sleep(0.05)"
            print("child exit", subprocess.run([sys.executable, "-c", code]).returncode, flush=True)
        elif kind == "gate":
            touch(event["started"], open("/proc/self/cgroup").read())
            wait_file(event["gate"])
        return os.getpid()
''')


@pytest.fixture(params=["cgroup", "watchdog"])
def limited(request: Any, home: Path) -> Iterator[Any]:
    """The engine in each mode, with function ``hog`` limited to LIMIT_MB."""
    scf_nb.configure(home=home, memory_cgroups=request.param == "cgroup")
    try:
        engine = scf_nb.client().engine
        if request.param == "cgroup" and engine.memory_limit_mode == "watchdog":
            pytest.skip(f"no memory cgroup on this machine: {engine.backend.cgroups.reason}")
        assert (engine.memory_limit_mode == "watchdog") == (request.param == "watchdog")
        scf_nb.create_function("hog", HOG, async_run=True, memory_mb=LIMIT_MB)
        yield scf_nb
    finally:
        scf_nb.configure(memory_cgroups=True)  # stops the engine; the next test's engine gets the default


def ended(ev: Any) -> dict[str, Any]:
    ev.wait(timeout=60)
    return ev.info()


def test_a_short_spike_to_three_times_the_limit_never_finishes(limited: Any) -> None:
    for _ in range(5):
        info = ended(limited.invoke("hog", {"kind": "spike", "mb": 3 * LIMIT_MB}))
        assert (info["status"], info["error_type"]) == ("FAILED", "MemoryLimitExceeded"), info
        assert "memory limit exceeded" in info["error_message"]
        assert info["mem_usage_bytes"] >= LIMIT_MB * MB * 0.95  # filled, and at the limit or past it


def test_a_big_allocation_is_stopped_near_the_limit(limited: Any) -> None:
    ev = limited.invoke("hog", {"kind": "climb", "mb": 1024})
    info = ended(ev)
    assert (info["status"], info["error_type"]) == ("FAILED", "MemoryLimitExceeded"), info
    # (the kill may cut the last line: with PYTHONUNBUFFERED, print writes "held", " ", n, "\n" one by one)
    held = max([int(line.split()[1]) for line in lines(ev) if re.fullmatch(r"held \d+", line)] or [0])
    # held: what the handler got on top of the interpreter (~20 MB). The kernel stops it at the limit; the
    # watchdog, sampling every 10 ms, a few 10 MB past it (~40 MB at this allocation rate, measured).
    slack = 0 if limited.client().engine.memory_limit_mode != "watchdog" else 100
    assert held <= LIMIT_MB + slack, (held, info)
    assert LIMIT_MB * MB * 0.95 <= info["mem_usage_bytes"] <= (LIMIT_MB + slack + 30) * MB


def test_an_event_under_the_limit_finishes_and_its_instance_stays_warm(limited: Any) -> None:
    first = ended(limited.invoke("hog", {"kind": "ok", "mb": 30}))
    second = ended(limited.invoke("hog", {"kind": "ok", "mb": 30}))
    assert first["status"] == second["status"] == "FINISHED", (first, second)
    assert first["instance_pid"] == second["instance_pid"]
    assert 30 * MB < second["mem_usage_bytes"] < LIMIT_MB * MB


def test_a_child_process_over_the_limit_counts(limited: Any) -> None:
    ev = limited.invoke("hog", {"kind": "child", "mb": 3 * LIMIT_MB})
    info = ended(ev)
    assert (info["status"], info["error_type"]) == ("FAILED", "MemoryLimitExceeded"), info
    assert info["mem_usage_bytes"] >= LIMIT_MB * MB * 0.95
    after = ended(limited.invoke("hog", {"kind": "ok", "mb": 10}))  # a fresh instance serves the next one
    assert after["status"] == "FINISHED" and after["instance_pid"] != info["instance_pid"]


def test_the_mode_can_be_forced_to_the_watchdog(home: Path) -> None:
    assert from_environment({"SCF_NB_MEMORY_CGROUPS": "0"}).memory_cgroups is False
    assert from_environment({}).memory_cgroups is True
    with pytest.raises(scf_nb.ScfError, match="memory_cgroups must be True or False"):
        scf_nb.configure(memory_cgroups="no")
    scf_nb.configure(home=home, memory_cgroups=False)
    try:
        assert scf_nb.client().engine.memory_limit_mode == "watchdog"
    finally:
        scf_nb.configure(memory_cgroups=True)


@pytest.fixture
def cgrouped(home: Path) -> Iterator[Any]:
    scf_nb.configure(home=home, memory_cgroups=True)
    try:
        engine = scf_nb.client().engine
        if engine.memory_limit_mode == "watchdog":
            pytest.skip(f"no memory cgroup on this machine: {engine.backend.cgroups.reason}")
        scf_nb.create_function("hog", HOG, async_run=True, memory_mb=LIMIT_MB)
        yield scf_nb
    finally:
        scf_nb.shutdown()


def test_each_limited_instance_has_a_cgroup_removed_when_it_is_reaped_and_at_close(cgrouped: Any,
                                                                                    tmp_path: Path) -> None:
    folder = Path(cgrouped.client().engine.backend.cgroups.folder)
    started, gate = tmp_path / "started", tmp_path / "gate"
    ev = cgrouped.invoke("hog", {"kind": "gate", "started": str(started), "gate": str(gate)})
    wait_until(started.exists, 30, "the event to start")
    inside = [line for line in started.read_text().splitlines() if line.startswith("0::") or ":memory:" in line]
    assert any(f"/{folder.name}/i" in line for line in inside), inside
    assert [p.name for p in folder.iterdir() if p.is_dir()] != []
    gate.touch()
    assert ended(ev)["status"] == "FINISHED"
    assert ended(cgrouped.invoke("hog", {"kind": "spike", "mb": 3 * LIMIT_MB}))["status"] == "FAILED"
    wait_until(lambda: not [p for p in folder.iterdir() if p.is_dir()], 10, "the killed instance's cgroup to go")
    assert ended(cgrouped.invoke("hog", {"kind": "ok", "mb": 1}))["status"] == "FINISHED"
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 1  # the new instance's, alive at close
    cgrouped.shutdown()
    assert not folder.exists()


ENGINE = textwrap.dedent('''
    import sys, time, scf_nb
    scf_nb.configure(home=sys.argv[1], memory_cgroups=True)
    scf_nb.create_function("hog", sys.argv[2], async_run=True, memory_mb=100)
    ev = scf_nb.invoke("hog", {"kind": "gate", "started": sys.argv[3], "gate": sys.argv[3] + ".never"})
    print(scf_nb.client().engine.backend.cgroups.folder, flush=True)
    time.sleep(600)
''')


def test_a_dead_engines_cgroups_are_removed_by_the_next_one(tmp_path: Path) -> None:
    started = tmp_path / "started"
    tag, env = tagged_env()
    proc = run_script(ENGINE, str(tmp_path / "other"), HOG, str(started), env=env)
    try:
        folder = Path(read_line(proc))
        if folder.name == "None":
            pytest.skip("no memory cgroup on this machine")
        wait_until(started.exists, 30, "the dead engine's event to start")
        os.kill(proc.pid, signal.SIGKILL)  # its instances die with it (PDEATHSIG); its folders stay
        proc.wait(timeout=10)
        wait_until(lambda: not kill_tagged(tag) and all(not (p / "cgroup.procs").read_text().strip()
                                                        for p in folder.iterdir() if p.is_dir()), 10,
                   "the dead engine's instances to be gone")
        assert folder.exists()
        scf_nb.configure(home=tmp_path / "next", memory_cgroups=True)
        try:
            assert scf_nb.client().engine.memory_limit_mode != "watchdog"
            assert not folder.exists()
        finally:
            scf_nb.shutdown()
    finally:
        stop(proc)
        kill_tagged(tag)


def test_events_sent_ahead_do_not_go_down_with_an_event_over_the_limit(limited: Any) -> None:
    # A child over the limit: in a cgroup the OOM killer kills only the child and the handler returns, so the
    # instance would start what was sent ahead to it, and die with it, if the worker did not refuse to.
    limited.create_function("hog", HOG, async_run=True, memory_mb=LIMIT_MB, concurrency=1)
    for _ in range(3):
        assert ended(limited.invoke("hog", {"kind": "ok", "mb": 1}))["status"] == "FINISHED"  # warm: busy at once
        over = limited.invoke("hog", {"kind": "child", "mb": 3 * LIMIT_MB})
        behind = [limited.invoke("hog", {"kind": "ok", "mb": 1}) for _ in range(4)]  # sent ahead to its instance
        assert ended(over)["error_type"] == "MemoryLimitExceeded"
        assert [ended(ev)["status"] for ev in behind] == ["FINISHED"] * 4, [ended(ev)["error_message"] for ev in behind]
