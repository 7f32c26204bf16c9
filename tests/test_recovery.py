"""Recovery: the next engine on a home whose engine was killed (SIGKILL, as a killed kernel) fails the events it
left and kills what it left running, found by the dead engine's mark, in whatever process group or session;
never a process of another engine, nor one that only looks like it. Real engines in subprocesses, real loky
instances and their children, a real DuckDB file."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
from conftest import kill_quietly, pid_alive, wait_until
from processes import kill_tagged, read_line, run_script, stop, tagged_env, tagged_processes

import scf_nb

# Leaves three grandchildren that none of the instance's process group reaches: a child in a session of its
# own, a daemon that double-forked (its parent exited; it was adopted), and a forked child (no exec) that
# called setsid.
ESCAPES = textwrap.dedent('''
    import os, subprocess, sys, time

    def main_handler(event, context):
        own = subprocess.Popen(["sleep", "300"], start_new_session=True)
        helper = subprocess.run([sys.executable, "-c", "import subprocess; "
                                 "print(subprocess.Popen(['sleep', '301'], start_new_session=True, "
                                 "stdout=subprocess.DEVNULL).pid)"],
                                stdout=subprocess.PIPE, text=True, check=True)
        forked = os.fork()
        if forked == 0:
            os.setsid()
            time.sleep(302)
            os._exit(0)
        print("pids", own.pid, int(helper.stdout), forked, flush=True)
        time.sleep(300)
''')

DYING_ENGINE = textwrap.dedent('''
    import os, sys, time
    import scf_nb

    scf_nb.configure(home=sys.argv[1])
    scf_nb.create_function("escapes", sys.argv[2], async_run=True, concurrency=1)
    ev = scf_nb.invoke("escapes")
    queued = scf_nb.invoke("escapes")  # waits behind it, never starts
    deadline = time.monotonic() + 60
    while True:
        found = [l for l in scf_nb.logs(ev.request_id).line if l.startswith("pids ")]
        if found:
            break
        if time.monotonic() > deadline:
            sys.exit("the handler never printed its pids")
        time.sleep(0.01)
    scf_nb.list_events()  # both records are in the file
    print(ev.request_id, queued.request_id, found[0], flush=True)
    sys.stdin.read()  # wait to be killed
''')


# Two events running and one queued, every instance started; then it waits to be killed.
BUSY_ENGINE = textwrap.dedent('''
    import glob, os, sys, time
    import scf_nb

    scf_nb.configure(home=sys.argv[1])
    scf_nb.create_function("slow", "import time\\ndef main_handler(event, context):\\n    time.sleep(300)\\n",
                           async_run=True, concurrency=2)
    running = [scf_nb.invoke("slow"), scf_nb.invoke("slow")]
    queued = scf_nb.invoke("slow")
    engine = scf_nb.client().engine
    deadline = time.monotonic() + 60
    instances = engine.dispatcher.instances
    while len(instances) < 3 or not all(i.pid for i in list(instances)):  # the two and a spare
        if time.monotonic() > deadline:
            sys.exit("the instances did not start")
        time.sleep(0.01)
    while [ev.status for ev in running] != ["RUNNING", "RUNNING"]:  # claimed, and the engine knows it
        if time.monotonic() > deadline:
            sys.exit("the two events did not start")
        time.sleep(0.01)
    deadline = time.monotonic() + 10
    while glob.glob(f"/dev/shm/sem.loky-{os.getpid()}-*") and time.monotonic() < deadline:
        time.sleep(0.01)  # named semaphores that a kill would leave to loky's resource tracker (bounded)
    scf_nb.list_events()  # every record is in the file
    print(*(ev.request_id for ev in running + [queued]), flush=True)
    sys.stdin.read()  # wait to be killed
''')

NEXT_ENGINE = textwrap.dedent('''
    import json, sys
    import scf_nb

    scf_nb.configure(home=sys.argv[1])
    infos = [scf_nb.get_event(rid).info() for rid in sys.argv[2:]]
    print(json.dumps(infos, default=str))
    scf_nb.shutdown()
''')


def _rest_of(stream: Any, timeout: float = 30.0) -> str:
    """What a pipe still yields until every process holding its write end has closed it."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while sel.select(max(0.0, deadline - time.monotonic())):
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(chunk)
    finally:
        sel.close()
    raise AssertionError(f"the pipe stayed open for {timeout} s; so far: {b''.join(chunks)!r}")


def test_a_killed_engine_and_the_next_one_print_nothing_and_its_events_get_durations(home: Path) -> None:
    tag, env = tagged_env()
    proc = run_script(BUSY_ENGINE, str(home), env=env)
    try:
        first, second, queued = read_line(proc).split()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stderr is not None
        # its instances die with it; its loky resource tracker then cleans up what they left, and says so here
        assert _rest_of(proc.stderr) == ""
        after = subprocess.run([sys.executable, "-c", NEXT_ENGINE, str(home), first, second, queued], env=env,
                               capture_output=True, text=True, timeout=120)
        assert after.returncode == 0 and after.stderr == ""
        infos = json.loads(after.stdout)
        for info in infos[:2]:
            ran = (datetime.fromisoformat(info["end_time"]) - datetime.fromisoformat(info["run_time"]))
            assert info["status"] == "FAILED" and ran.total_seconds() > 0
            assert abs(info["duration_ms"] - ran.total_seconds() * 1000) < 1.0
            assert info["billed_duration_ms"] >= info["duration_ms"]
        never_ran = infos[2]
        assert never_ran["status"] == "FAILED" and never_ran["run_time"] is None
        assert never_ran["duration_ms"] == 0 and never_ran["billed_duration_ms"] == 0
    finally:
        stop(proc)
        kill_tagged(tag)


def _stranger(mark: str) -> subprocess.Popen[bytes]:
    """A process in a session of its own that carries ``mark`` where an instance's children carry theirs."""
    return subprocess.Popen(["sleep", "300"], start_new_session=True, env={**os.environ, "SCF_NB_ENGINE_PID": mark})


def test_recovery_kills_grandchildren_in_sessions_of_their_own_and_nothing_that_only_looks_alike(home: Path) -> None:
    tag, env = tagged_env()
    proc = run_script(DYING_ENGINE, str(home), ESCAPES, env=env)
    grandchildren: list[int] = []
    strangers: list[subprocess.Popen[bytes]] = []
    try:
        rid, _queued, _, *pids = read_line(proc).split()
        grandchildren = [int(p) for p in pids]
        assert all(pid_alive(p) for p in grandchildren)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # the dead engine's pid with another engine's token (the pid was reused), and its pid alone
        strangers = [_stranger(f"{proc.pid}:0123456789abcdef"), _stranger(str(proc.pid))]

        scf_nb.configure(home=home, grace_seconds=2.0)
        info = scf_nb.get_event(rid).info()  # a new engine recovers the store
        assert info["status"] == "FAILED" and "nothing of it is running now" in info["error"]["message"]
        wait_until(lambda: not any(pid_alive(p) for p in grandchildren), 10,
                   "the dead engine's grandchildren to be gone")
        # the claim is true: nothing of the dead engine runs (its resource trackers end once nothing holds their pipes)
        wait_until(lambda: tagged_processes(tag) == [], 10, "every process of the dead engine to be gone")
        assert all(s.poll() is None for s in strangers)
    finally:
        stop(proc)
        for pid in grandchildren:
            kill_quietly(pid)
        for s in strangers:
            s.kill()
            s.wait()
        kill_tagged(tag)
        scf_nb.shutdown()


def test_a_store_from_before_marks_had_tokens_is_migrated_and_its_groups_still_cleaned(home: Path) -> None:
    # Such a store recorded (process group, engine pid) per instance; children carried SCF_NB_ENGINE_PID=<pid>.
    scf_nb.configure(home=home, grace_seconds=2.0)
    scf_nb.list_events()
    scf_nb.shutdown()
    old_engine = 999999
    leftover = _stranger(str(old_engine))  # a child of one of its instances, in that instance's group
    other = _stranger(f"{old_engine}:0123456789abcdef")  # a process of a newer engine that got a recorded group
    try:
        db = duckdb.connect(str(home / "scf_nb.duckdb"))
        db.execute("DELETE FROM instances")
        db.execute("ALTER TABLE instances DROP COLUMN mark")
        for p in (leftover, other):
            db.execute("INSERT INTO instances VALUES (?, ?, ?)", [p.pid, p.pid, old_engine])
        db.close()
        scf_nb.configure(home=home, grace_seconds=2.0)
        scf_nb.list_events()  # a new engine migrates and recovers the store
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None
        columns = [r[0] for r in scf_nb.client().engine.store.rows("DESCRIBE instances")]
        assert columns == ["pgid", "pid", "engine_pid", "mark"]
    finally:
        for p in (leftover, other):
            p.kill()
            p.wait()
        scf_nb.shutdown()
