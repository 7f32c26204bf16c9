"""Processes an event leaves behind (a daemon it started and did not wait for): their output goes to that
event's log, also after it ended, and never to the events that run on the instance after it. Real instances,
real daemons writing numbered lines; every number must arrive exactly once, under the event that started it.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, kill_quietly, pid_alive, wait_until

import scf_nb

# Prints "daemon <i> <rid>" every 20 ms (and writes <i> to its progress file after each line) until its gate
# file exists, then "daemon end <n> <rid>": n lines were printed before it.
DAEMON = GATE + r'''
rid, progress, gate = sys.argv[1:4]
touch(progress + ".pid", str(os.getpid()))
i, deadline = 0, time.monotonic() + 60
while not os.path.exists(gate) and time.monotonic() < deadline:
    print("daemon", i, rid, flush=True)
    touch(progress, str(i))
    i += 1
    time.sleep(0.02)
print("daemon end", i, rid, flush=True)
'''

HANDLER = GATE + r'''
import subprocess

def progress(path):
    return int(open(path).read()) if os.path.exists(path) else -1

def main_handler(event, context):
    rid = context.request_id
    d = event.get("daemon")
    if d:
        argv = [sys.executable, "-c", d["code"], rid, d["progress"], d["gate"]]
        if d["how"] == "orphan":  # a shell starts it in the background and exits: the instance adopts it
            subprocess.run(["sh", "-c", '"$@" &', "sh", *argv], check=True)
        else:
            subprocess.Popen(argv, start_new_session=d["how"] == "session")
        print("started the daemon", rid, flush=True)
        return "started"
    if "while_daemon" in event:  # stay until the daemon has printed 5 more lines, so some come during this event
        first = progress(event["while_daemon"])
        while progress(event["while_daemon"]) < first + 5:
            time.sleep(0.005)
    print("own line", rid, flush=True)
    print("own error", rid, file=sys.stderr, flush=True)
    if "touch" in event:
        touch(event["touch"], str(os.getpid()))
    if "gate" in event:
        wait_file(event["gate"])
    return os.getpid()
'''


def lines(ev: Any) -> list[str]:
    return ev.logs()["line"].tolist()


def daemon_numbers(ev: Any) -> list[int]:
    return [int(m.group(1)) for line in lines(ev) if (m := re.fullmatch(r"daemon (\d+) \S+", line))]


def daemon_event(tmp_path: Path, how: str) -> dict[str, Any]:
    return {"daemon": {"code": DAEMON, "progress": str(tmp_path / "progress"), "gate": str(tmp_path / "stop"),
                       "how": how}}


def progress_of(tmp_path: Path) -> int:
    """The number of the daemon's last line so far (-1 before its first)."""
    path = tmp_path / "progress"
    return int(path.read_text()) if path.exists() else -1


def daemon_pid(tmp_path: Path) -> int:
    path = tmp_path / "progress.pid"
    return int(wait_until(lambda: path.exists() and path.read_text(), 10, "the daemon's pid"))  # type: ignore[arg-type]


def stop_daemon(tmp_path: Path) -> None:
    (tmp_path / "stop").touch()
    pid = daemon_pid(tmp_path)
    wait_until(lambda: not pid_alive(pid), 20, "the daemon to exit")


def assert_only_own(ev: Any) -> None:
    rid = ev.request_id
    assert sorted(lines(ev)) == [f"own error {rid}", f"own line {rid}"]


@pytest.mark.parametrize("how", ["child", "session", "orphan"])
def test_a_daemons_lines_go_to_the_event_that_started_it_even_after_it_ended(scf: Any, tmp_path: Path,
                                                                            how: str) -> None:
    scf.create_function("d", HANDLER, async_run=True, concurrency=1)
    a = scf.invoke("d", daemon_event(tmp_path, how))
    try:
        assert a.result(timeout=30) == "started"
        at_end = len(daemon_numbers(a))
        while_daemon = {"while_daemon": str(tmp_path / "progress")}
        b = scf.invoke("d", while_daemon)
        pid = b.result(timeout=30)
        c = scf.invoke("d", while_daemon)
        assert c.result(timeout=30) == pid  # the same warm instance, while the daemon runs on
        wait_until(lambda: len(daemon_numbers(a)) >= at_end + 10, 10, "A's log to keep growing after A ended")
    finally:
        stop_daemon(tmp_path)
    assert_only_own(b)
    assert_only_own(c)
    end = wait_until(lambda: next((x for x in lines(a) if x.startswith("daemon end")), None), 10,
                     "the daemon's last line in A's log")
    n = int(end.split()[2])  # type: ignore[union-attr]
    assert sorted(daemon_numbers(a)) == list(range(n))  # every line, exactly once
    assert all(line.endswith(a.request_id) for line in lines(a))
    assert a.logs().seq.tolist() == list(range(1, n + 3))
    assert a.status == "FINISHED"


def test_terminate_of_a_later_event_kills_the_daemon_and_keeps_all_its_lines(scf: Any, tmp_path: Path) -> None:
    scf.create_function("d", HANDLER, async_run=True, concurrency=1, timeout=300)
    a = scf.invoke("d", daemon_event(tmp_path, "session"))
    assert a.result(timeout=30) == "started"
    started = tmp_path / "b-started"
    b = scf.invoke("d", {"gate": str(tmp_path / "never"), "touch": str(started)})
    wait_until(started.exists, 30, "B to start")
    daemon = daemon_pid(tmp_path)
    first = progress_of(tmp_path)
    wait_until(lambda: progress_of(tmp_path) >= first + 5, 10, "the daemon to print while B runs")
    assert b.terminate() == "ABORTED"
    wait_until(lambda: not pid_alive(daemon), 10, "the daemon to die with the instance")
    last = progress_of(tmp_path)  # it printed every number up to this one before it died
    wait_until(lambda: set(range(last + 1)) <= set(daemon_numbers(a)), 10, "A's log to hold all the daemon printed")
    assert sorted(daemon_numbers(a)) == list(range(len(daemon_numbers(a))))
    assert_only_own(b)


CHILDREN = r'''
import os, subprocess

def main_handler(event, context):
    if event.get("daemon"):  # left running (its pid is returned): the events after it need not move their pipes
        return subprocess.Popen(["sleep", "60"], start_new_session=True).pid
    if event.get("zombie"):  # a child that exited but is not collected yet: it holds no fds any more
        p = subprocess.Popen(["echo", "from a zombie"])
        while open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            pass
        main_handler.keep = p
    else:
        subprocess.run(["echo", "from a child"], check=True)
    print("returns", flush=True)
    return os.getpid()
'''


def _engine() -> Any:
    return scf_nb.client().engine


def _instance(pid: int) -> Any:
    return next(i for i in list(_engine().dispatcher.instances) if i.pid == pid)


@pytest.mark.parametrize("case", ["child", "zombie", "daemon of an earlier event"])
def test_events_that_leave_no_process_behind_keep_the_pipes(scf: Any, case: str) -> None:
    """No process is left that could write to the current pipes: the next events keep them (no new ones,
    nothing retired), and every line is still the event's own."""
    scf.create_function("c", CHILDREN, async_run=True, concurrency=1)
    daemon = scf.invoke("c", {"daemon": True}).result(timeout=30) if case.startswith("daemon") else None
    try:
        pid = scf.invoke("c", {}).result(timeout=30)
        inst = _instance(pid)
        pipes, retired = set(inst.streams), dict(inst.retired)
        events = [scf.invoke("c", {"zombie": case == "zombie"}) for _ in range(3)]
        assert [ev.result(timeout=30) for ev in events] == [pid] * 3
        source = "from a zombie" if case == "zombie" else "from a child"
        assert [lines(ev) for ev in events] == [[source, "returns"]] * 3
        assert set(inst.streams) == pipes and inst.retired == retired
    finally:
        if daemon is not None:
            kill_quietly(daemon)



def _on_engine_thread(fn: Any) -> None:
    done = threading.Event()
    _engine().loop.post(lambda: (fn(), done.set()))
    assert done.wait(10)


def test_events_sent_ahead_around_one_that_leaves_a_daemon(scf: Any, tmp_path: Path) -> None:
    """x, d, a, b run back to back (sent ahead) while the engine reads nothing of the instance: when it reads
    again, a's "done" (new pipes) comes with the "done"s of x and d still waiting for their END markers in the
    old pipes. x and d end there first; a keeps the old pipes, b gets the new ones."""
    scf.create_function("d", HANDLER, async_run=True, concurrency=1, timeout=300)
    started = tmp_path / "x-started"
    x = scf.invoke("d", {"gate": str(tmp_path / "x-gate"), "touch": str(started)})
    pid = int(wait_until(lambda: started.exists() and started.read_text(), 30, "x to start"))  # type: ignore[arg-type]
    inst = _instance(pid)
    d = scf.invoke("d", {})
    a = scf.invoke("d", daemon_event(tmp_path, "child"))
    b = scf.invoke("d", {"while_daemon": str(tmp_path / "progress"), "touch": str(tmp_path / "b-done")})
    def sent_ahead() -> set[str]:
        ahead = _engine().backend.ahead.get(("default", "d"))
        return set() if ahead is None else {e.request_id for e, *_ in list(ahead.pending)}

    wait_until(lambda: sent_ahead() == {d.request_id, a.request_id, b.request_id}, 20, "d, a and b to be sent ahead")
    held: dict[int, Any] = {}

    def hold() -> None:
        for fd in [inst.conn_fd, *inst.streams]:
            held[fd] = _engine().loop.poller.data[fd]
            _engine().loop.poller.unregister(fd)

    def resume() -> None:
        for fd, data in held.items():
            _engine().loop.poller.register(fd, data)

    _on_engine_thread(hold)
    try:
        (tmp_path / "x-gate").touch()
        wait_until((tmp_path / "b-done").exists, 30, "b to run")
        assert x.status == "RUNNING" and a.status == "QUEUED"  # what the engine has seen so far
    finally:
        _on_engine_thread(resume)
    try:
        done, not_done = scf.wait([x, d, a, b], timeout=30)
        assert not not_done and {ev.result() for ev in (x, d, b)} == {pid}
        wait_until(lambda: len(daemon_numbers(a)) >= 10, 10, "a's daemon lines")
    finally:
        stop_daemon(tmp_path)
    for ev in (x, d, b):
        assert_only_own(ev)
    end = wait_until(lambda: next((x for x in lines(a) if x.startswith("daemon end")), None), 10, "the last line")
    assert sorted(daemon_numbers(a)) == list(range(int(end.split()[2])))  # type: ignore[union-attr]
    assert lines(a)[0] == f"started the daemon {a.request_id}"
