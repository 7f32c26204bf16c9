"""Recovery: the next engine on a home whose engine was killed (SIGKILL, as a killed kernel) fails the events it
left and kills what it left running, found by the dead engine's mark, in whatever process group or session;
never a process of another engine, nor one that only looks like it. Real engines in subprocesses, real loky
instances and their children, a real DuckDB file."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from pathlib import Path

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


def _stranger(mark: str) -> subprocess.Popen[bytes]:
    """A process in a session of its own that carries ``mark`` where an instance's children carry theirs."""
    return subprocess.Popen(["sleep", "300"], start_new_session=True, env={**os.environ, "SCF_NB_ENGINE_PID": mark})


def test_recovery_kills_grandchildren_in_sessions_of_their_own_and_nothing_that_only_looks_alike(home: Path) -> None:
    tag, env = tagged_env()
    proc = run_script(DYING_ENGINE, str(home), ESCAPES, env=env)
    grandchildren: list[int] = []
    strangers: list[subprocess.Popen[bytes]] = []
    try:
        rid, queued, _, *pids = read_line(proc).split()
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
        assert tagged_processes(tag) == []  # the claim is true: nothing of the dead engine runs
        assert all(s.poll() is None for s in strangers)
        ran = (info["end_time"] - info["run_time"]).total_seconds() * 1000.0  # from its start to its recovery
        assert ran > 0 and abs(info["duration_ms"] - ran) < 1.0 and info["billed_duration_ms"] >= ran
        never_ran = scf_nb.get_event(queued).info()
        assert never_ran["status"] == "FAILED" and never_ran["run_time"] is None
        assert never_ran["duration_ms"] == 0 and never_ran["billed_duration_ms"] == 0
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
