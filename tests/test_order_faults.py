"""Reductions of what ``bench/stress.py`` found: an event is never lost, never failed or timed out for an
instance that was not running it, and no event waits for an instance still starting while another is free.

Real instances, no mocks. A slow process start is made certain by a ``sitecustomize`` that holds new
instance processes at interpreter start while a gate is armed; the engine's internals are looked at only to
know that an event *was* sent ahead, or to make the engine stop reading an instance (``Unread``).
"""

from __future__ import annotations

import array
import fcntl
import glob
import os
import signal
import socket
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, wait_until
from processes import SLOW_START
from test_ahead import HANDLER, Unread, _busy_with_one_behind, _engine, _on_engine_thread, pending

import scf_nb


class SlowStart:
    """New instance processes wait at interpreter start (before they connect) while armed, until released."""

    def __init__(self, gate: Path) -> None:
        self.gate = gate

    def arm(self) -> None:
        Path(f"{self.gate}.armed").touch()

    def blocked(self) -> list[int]:
        return [int(p.rsplit(".", 1)[1]) for p in glob.glob(f"{self.gate}.blocked.*")]

    def release(self) -> None:
        self.gate.touch()

    def crash(self, on: bool = True) -> None:
        """New instance processes exit (code 3) at interpreter start."""
        path = Path(f"{self.gate}.crash")
        path.touch() if on else path.unlink(missing_ok=True)


@pytest.fixture
def slow_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowStart]:
    """No warm spare (a new instance is a process start), and process starts held at will."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_START)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("SCF_NB_TEST_GATE", str(tmp_path / "slow-gate"))
    scf_nb.configure(warm_spare=False)
    slow = SlowStart(tmp_path / "slow-gate")
    try:
        yield slow
    finally:
        slow.release()
        scf_nb.shutdown()  # first: a settings change may refuse to stop running events
        scf_nb.configure(warm_spare=True)


START = GATE + r'''
def main_handler(event, context):
    t0 = time.time()
    if "touch" in event:
        touch(event["touch"], str(os.getpid()))
    if "gate" in event:
        wait_file(event["gate"], 60)
    if event.get("fail"):
        raise ValueError("boom")
    return {"pid": os.getpid(), "t0": t0}
'''


def test_an_event_waits_for_no_instance_that_is_still_starting(scf: Any, tmp_path: Path,
                                                               slow_start: SlowStart) -> None:
    """A is busy, B is starting (slowly): e1, e2, e3 go to whichever is free first, in order. Before, e1 was
    given to B the moment B's process was asked for, and waited for it while A ran e2 and e3 and sat idle."""
    scf.create_function("pair", START, async_run=True, concurrency=2, timeout=300)
    pid_a = scf.invoke("pair", {}).result(timeout=60)["pid"]
    slow_start.arm()
    busy = scf.invoke("pair", {"gate": str(tmp_path / "g1"), "touch": str(tmp_path / "busy")})
    wait_until((tmp_path / "busy").exists, 30, "A to be busy")
    evs = [scf.invoke("pair", {}) for _ in range(3)]
    wait_until(slow_start.blocked, 30, "B's process to be held at its start")
    (tmp_path / "g1").touch()
    done, not_done = scf.wait(evs, timeout=20)
    assert not not_done, f"{len(not_done)} waited for the instance still starting while A was free"
    results = [ev.result() for ev in evs]
    assert [r["pid"] for r in results] == [pid_a] * 3
    assert [r["t0"] for r in results] == sorted(r["t0"] for r in results)
    assert busy.wait(10) == "FINISHED"


def test_the_timeout_does_not_run_while_the_instance_is_starting(scf: Any, tmp_path: Path,
                                                                 slow_start: SlowStart) -> None:
    """Before, the timeout of an event given to a starting instance ran from that moment: a start slower than
    the timeout (a loaded machine) failed the event with TimeoutError before its handler ever ran."""
    scf.create_function("one", START, async_run=True, concurrency=1, timeout=1)
    assert scf.invoke("one", {"fail": True}).wait(30) == "FAILED"  # its instance is replaced: a process start
    slow_start.arm()
    ev = scf.invoke("one", {})
    wait_until(slow_start.blocked, 30, "the new process to be held at its start")
    assert ev.wait(timeout=2.0) in ("QUEUED", "RUNNING")  # twice its timeout, and it has not run yet
    slow_start.release()
    assert ev.wait(30) == "FINISHED", _said(ev)


def test_a_kill_of_an_instance_that_never_connected_fails_no_event(scf: Any, tmp_path: Path,
                                                                   slow_start: SlowStart) -> None:
    """Before, the event waiting for a starting instance failed "killed by SIGKILL" when that process was
    killed (from outside, or by the OOM killer) before it had connected: an event that never ran."""
    scf.create_function("one", START, async_run=True, concurrency=1)
    slow_start.arm()
    ev = scf.invoke("one", {"touch": str(tmp_path / "ran")})
    pid = wait_until(slow_start.blocked, 30, "the process to be held at its start")[0]  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10, "it to die")
    slow_start.release()
    assert ev.wait(30) == "FINISHED", _said(ev)
    assert ev.result()["pid"] != pid


def _spare_gone_for_sends(engine: Any) -> Any:
    """Make the spare gone as far as sends go, with the engine not knowing yet (its EOF and loky's word wait);
    returns what puts things back."""
    dispatcher = engine.dispatcher
    spare = wait_until(lambda: dispatcher.spare if dispatcher.spare is not None and dispatcher.spare.conn is not None
                       else None, 30, "a connected spare")
    unread = Unread(engine, spare, [spare.conn_fd])
    on_exit = engine.backend.spawner._on_exit
    engine.backend.spawner._on_exit = lambda inst: None if inst is spare else on_exit(inst)
    unread.hold()
    _on_engine_thread(engine, lambda: spare.conn.shutdown(socket.SHUT_WR))

    def restore() -> None:
        engine.backend.spawner._on_exit = on_exit
        unread.resume()
    return restore


def test_an_event_taken_back_for_an_instance_that_is_gone_is_not_lost(scf: Any, tmp_path: Path) -> None:
    """e2 was sent ahead; e1's instance is killed, and the spare that takes e2 back turns out to be gone (its
    process died, not yet noticed): the failed send puts e2 back in the FIFO. Before, that FIFO was dropped
    at the end of the same dispatch (it was made there), and e2 stayed QUEUED forever."""
    e1, e2, _pid = _busy_with_one_behind(scf, tmp_path)
    restore = _spare_gone_for_sends(_engine())
    try:
        assert e1.terminate() == "ABORTED"
        assert e2.wait(20) == "FINISHED", _said(e2)
    finally:
        restore()


def test_an_event_put_back_after_a_failed_send_starts_before_newer_ones(scf: Any, tmp_path: Path) -> None:
    """As above with e3 sent ahead too: e2, put back in the FIFO, is older than e3 and starts first. Before,
    the dispatcher took the events sent ahead before the FIFO's head, so e3 ran first."""
    e1, e2, _pid = _busy_with_one_behind(scf, tmp_path)
    e3 = scf.invoke("one", {})
    wait_until(lambda: e3.request_id in [e.request_id for e in pending()], 20, "e3 to be sent ahead")
    restore = _spare_gone_for_sends(_engine())
    try:
        assert e1.terminate() == "ABORTED"
    finally:
        restore()
    done, not_done = scf.wait([e2, e3], timeout=20)
    assert not not_done and {ev.status for ev in done} == {"FINISHED"}
    assert e2.info()["run_time"] <= e3.info()["run_time"]


def _said(ev: Any) -> str:
    info = ev.info()
    return f"{info['status']} {info['error']} {info['exit_reason']}"


def test_a_function_whose_instances_cannot_start_fails_its_events(scf: Any, slow_start: SlowStart) -> None:
    """No event is given to an instance before it connects, so one that dies before then fails none; but a
    function whose processes keep dying at start must not be retried forever: its events fail, saying why."""
    scf.create_function("one", START, async_run=True, concurrency=1)
    slow_start.crash()
    evs = [scf.invoke("one", {}) for _ in range(2)]
    done, not_done = scf.wait(evs, timeout=60)
    assert not not_done
    for ev in evs:
        assert ev.status == "FAILED" and "exited with code 3" in ev.info()["error"]["message"], _said(ev)
    slow_start.crash(False)
    assert scf.invoke("one", {}).wait(60) == "FINISHED"


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_an_event_claimed_by_an_instance_killed_before_it_said_so_runs_elsewhere(
        scf: Any, tmp_path: Path) -> None:
    """The worker claimed e2 (its record says STARTED) and was killed while sending e1's "done" (the engine
    was not reading: e1's result is big). The handler of e2 never started: a claim comes before the "done"
    and the run after it. Before, e2 failed "the instance died as it started the event"."""
    scf.create_function("one", BIG_RESULT, async_run=True, concurrency=1, timeout=300)
    started = tmp_path / "e1-started"
    e1 = scf.invoke("one", {"gate": str(tmp_path / "gate1"), "touch": str(started), "pad": 4 << 20})
    pid = int(wait_until(lambda: started.exists() and started.read_text(), 30, "e1 to start"))  # type: ignore[arg-type]
    e2 = scf.invoke("one", {"touch": str(tmp_path / "e2-ran")})
    wait_until(lambda: e2.request_id in [e.request_id for e in pending()], 20, "e2 to be sent ahead")
    engine = _engine()
    inst = next(i for i in list(engine.dispatcher.instances) if i.pid == pid)
    ahead = engine.backend.ahead[("default", "one")]
    seq = next(s for e, s, _ in list(ahead.pending) if e.request_id == e2.request_id)
    unread = Unread(engine, inst, [inst.conn_fd, *inst.streams])  # (the pipes' reader would read the socket too)
    unread.hold()
    try:
        (tmp_path / "gate1").touch()
        wait_until(lambda: seq in (ahead.shared.claims([seq]) or {}), 30, "e2 to be claimed")
        assert not (tmp_path / "e2-ran").exists()  # it is stuck sending e1's "done": it has not run e2
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: _zombie(pid), 10, "it to die")
    finally:
        unread.resume()
    assert e1.wait(30) == "FAILED"  # it returned, but the engine never had its result
    assert e2.wait(30) == "FINISHED", _said(e2)
    assert e2.result()["pid"] != pid
    assert not pending()
    assert (tmp_path / "e2-ran").exists()


BIG_RESULT = HANDLER.replace('    return {"pid": os.getpid(), "rid": rid}',
                             '    return {"pid": os.getpid(), "rid": rid, "pad": "x" * event.get("pad", 0)}')


# -- every event starts by a worker's claim: an idle instance that is slow, or dead, holds up nothing --


def _pair_one_busy(scf: Any, tmp_path: Path) -> tuple[Any, int, int]:
    """Function "pair" with two warm instances: A runs an event held by gate ``g1``, B is idle."""
    scf.create_function("pair", START, async_run=True, concurrency=2, timeout=300)
    warm = [scf.invoke("pair", {"gate": str(tmp_path / "w"), "touch": str(tmp_path / f"w{i}")}) for i in range(2)]
    wait_until(lambda: (tmp_path / "w0").exists() and (tmp_path / "w1").exists(), 30, "two instances")
    (tmp_path / "w").touch()
    pids = {ev.result(timeout=30)["pid"] for ev in warm}
    busy = scf.invoke("pair", {"gate": str(tmp_path / "g1"), "touch": str(tmp_path / "busy")})
    pid_a = int(wait_until(lambda: (tmp_path / "busy").exists() and (tmp_path / "busy").read_text(), 30, "A busy"))
    (pid_b,) = pids - {pid_a}
    return busy, pid_a, pid_b


def test_an_event_offered_to_an_idle_instance_that_is_slow_to_wake_starts_before_newer_ones(
        scf: Any, tmp_path: Path) -> None:
    """B is idle but slow to run (stopped here; on a loaded machine: not scheduled for some ms). e1 is offered to
    B and sent ahead to A, e2 sent ahead to A and B; A finishes first and claims e1, then e2: both run on A,
    in order, while B sleeps (before: e1 was handed to B alone, A claimed e2, and e1 started only when B woke)."""
    busy, pid_a, pid_b = _pair_one_busy(scf, tmp_path)
    os.kill(pid_b, signal.SIGSTOP)
    try:
        e1 = scf.invoke("pair", {})
        wait_until(lambda: e1.request_id in [e.request_id for e in pending("pair")], 10, "e1 to be offered")
        e2 = scf.invoke("pair", {})
        wait_until(lambda: e2.request_id in [e.request_id for e in pending("pair")], 10, "e2 to be sent ahead")
        (tmp_path / "g1").touch()
        assert busy.wait(30) == "FINISHED"
        e2.wait(5)
    finally:
        os.kill(pid_b, signal.SIGCONT)
    done, not_done = scf.wait([e1, e2], timeout=30)
    assert not not_done
    assert e1.result()["t0"] <= e2.result()["t0"]
    assert e1.result()["pid"] == e2.result()["pid"] == pid_a



def _unread_by_peer(fd: int) -> int:
    """Bytes sent on the Unix socket ``fd`` that its peer has not read yet (with the kernel's overhead)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.TIOCOUTQ, buf, True)
    return buf[0]


def test_an_idle_instance_slow_to_wake_is_not_sent_a_run_for_every_event_another_claims_first(
        scf: Any, tmp_path: Path) -> None:
    """B is idle but slow to wake (stopped here; on a loaded machine: not scheduled while the engine and A keep
    both cores busy). Each event offered to B is claimed by A first; B, sent a run and silent since, looks at
    every run it holds once it wakes, so it is sent nothing more for each new event meanwhile (before: one run
    per event, each a send the engine paid for, ~0.8 sends per event in a burst on 2 cores). A runs them all,
    in order; once B wakes, it answers and serves again."""
    busy, pid_a, pid_b = _pair_one_busy(scf, tmp_path)
    inst_b = next(i for i in list(_engine().dispatcher.pools[("default", "pair")]) if i.pid == pid_b)
    os.kill(pid_b, signal.SIGSTOP)
    try:
        evs, first = [], 0
        for i in range(40):  # each comes while A runs the one before: offered to B, sent ahead to A
            evs.append(scf.invoke("pair", {"gate": str(tmp_path / f"g{i + 2}")}))
            if i == 0:  # (the engine takes it on its own thread: it is sent once it is pending)
                first = wait_until(lambda: _unread_by_peer(inst_b.conn_fd), 10, "the first run to be sent to B")
            (tmp_path / f"g{i + 1}").touch()  # A ends the one before, and claims this one
            wait_until(lambda: evs[-1].status == "RUNNING", 30, f"event {i} to run on A")
        waiting = _unread_by_peer(inst_b.conn_fd)  # all the engine sent B (it read none of it)
        (tmp_path / f"g{len(evs) + 1}").touch()
        done, not_done = scf.wait(evs, timeout=60)
        assert not not_done
    finally:
        os.kill(pid_b, signal.SIGCONT)
    assert busy.status == "FINISHED" and {ev.result()["pid"] for ev in evs} == {pid_a}
    t0s = [ev.result()["t0"] for ev in evs]
    assert t0s == sorted(t0s)
    assert waiting <= 2 * first, f"B was sent {waiting} bytes while it slept, {first} for the first of 40 events"
    wait_until(lambda: not inst_b.unread, 30, "B to wake and read what it was sent")
    more = [scf.invoke("pair", {"gate": str(tmp_path / "again")}) for _ in range(2)]  # one each: B serves again
    wait_until(lambda: [ev.status for ev in more] == ["RUNNING", "RUNNING"], 30, "both instances to run one")
    (tmp_path / "again").touch()
    assert {ev.result(timeout=30)["pid"] for ev in more} == {pid_a, pid_b}


def test_an_idle_instance_that_claims_after_its_offer_went_to_another_is_seen_running(
        scf: Any, tmp_path: Path) -> None:
    """Three idle instances A, B, C (offered in that order); A is slow to wake (stopped here; on a loaded machine:
    not scheduled for some ms). e1 is offered to A, e2 to B, e3 to C, and each idle instance with an offer holds
    every run sent so far: B and C claim e1 and e2, which clears the offers. A then wakes, holding e3, and
    claims it on its own: a claim by an idle worker is in the records only. Before, the engine stopped reading
    the records once no offer was open, so e3 ran while it stayed QUEUED (the flaky overview test on a loaded
    machine: "three events to run" never came)."""
    scf.create_function("trio", START, async_run=True, concurrency=3, timeout=300)
    warm = [scf.invoke("trio", {"gate": str(tmp_path / "w"), "touch": str(tmp_path / f"w{i}")}) for i in range(3)]
    wait_until(lambda: all((tmp_path / f"w{i}").exists() for i in range(3)), 30, "three instances")
    (tmp_path / "w").touch()
    for ev in warm:
        assert ev.wait(30) == "FINISHED"
    engine = _engine()
    pool = wait_until(lambda: [i for i in list(engine.dispatcher.pools[("default", "trio")]) if i.state == "idle"]
                      if len(engine.dispatcher.pools[("default", "trio")]) == 3 else None, 10, "three idle instances")
    pid_a = pool[0].pid  # the first idle instance of the pool is offered the oldest event
    os.kill(pid_a, signal.SIGSTOP)
    try:
        evs = [scf.invoke("trio", {"gate": str(tmp_path / "go"), "touch": str(tmp_path / f"s{i}")}) for i in range(3)]
        wait_until(lambda: [ev.status for ev in evs[:2]] == ["RUNNING", "RUNNING"], 30, "e1 and e2 to run on B and C")
        assert evs[2].status == "QUEUED" and pid_a not in {ev.info()["instance_pid"] for ev in evs[:2]}
    finally:
        os.kill(pid_a, signal.SIGCONT)
    ran_on = int(wait_until(lambda: (tmp_path / "s2").exists() and (tmp_path / "s2").read_text(), 30, "e3 to run"))
    assert ran_on == pid_a
    wait_until(lambda: evs[2].status == "RUNNING", 10, "the engine to see e3 running")
    assert evs[2].info()["instance_pid"] == pid_a
    (tmp_path / "go").touch()
    done, not_done = scf.wait(evs, timeout=30)
    assert not not_done and {ev.status for ev in evs} == {"FINISHED"}


FORKER = GATE + r'''
def main_handler(event, context):
    if event.get("fork"):
        child = os.fork()  # holds a copy of everything the instance has open, its socket too
        if child == 0:
            time.sleep(60)
            os._exit(0)
        return {"pid": os.getpid(), "child": child}
    if "touch" in event:
        touch(event["touch"], str(os.getpid()))
    return {"pid": os.getpid()}
'''


def test_an_event_sent_to_an_idle_instance_killed_before_the_engine_noticed_runs_elsewhere(
        scf: Any, tmp_path: Path) -> None:
    """An idle instance is SIGKILLed from outside; before the engine notices (here held; in the stress: the
    engine was busy for 1-5 ms), it is sent the next event, and the send succeeds (a child of the instance
    keeps its socket open, as a process dying on a loaded machine does for a moment). That event never ran
    (the instance never claimed it), so it runs on a new instance (before: it failed "killed by SIGKILL")."""
    scf.create_function("one", FORKER, async_run=True, concurrency=1, timeout=300)
    first = scf.invoke("one", {"fork": True}).result(timeout=30)
    engine = _engine()
    inst = next(i for i in list(engine.dispatcher.instances) if i.pid == first["pid"])
    unread = Unread(engine, inst, [inst.conn_fd, *inst.streams, inst.pidfd])
    on_exit = engine.backend.spawner._on_exit
    engine.backend.spawner._on_exit = lambda i: None if i is inst else on_exit(i)
    unread.hold()
    try:
        os.kill(first["pid"], signal.SIGKILL)
        wait_until(lambda: _zombie(first["pid"]), 10, "the instance to die")
        ev = scf.invoke("one", {"touch": str(tmp_path / "ran")})
        wait_until(lambda: inst.offer is not None and inst.sent_upto > 0, 10,
                   "the event to be offered to the dead instance")
        assert ev.status == "QUEUED"
    finally:
        engine.backend.spawner._on_exit = on_exit
        unread.resume()
        if not _zombie(first["child"]):
            os.kill(first["child"], signal.SIGKILL)
    assert ev.wait(30) == "FINISHED", _said(ev)


def test_an_instance_banned_as_its_event_ended_claims_what_it_holds_once_it_is_offered(
        scf: Any, tmp_path: Path) -> None:
    """The only instance runs e1 and holds e2 (sent ahead). It is banned (as before any kill decision) while e1
    runs, so at e1's end it claims nothing and keeps e2. The engine then lifts the ban and offers e2 to it: it
    holds that run already, so nothing new would reach it unless the engine tells it to look again."""
    e1, e2, pid = _busy_with_one_behind(scf, tmp_path)
    engine = _engine()
    inst = next(i for i in list(engine.dispatcher.instances) if i.pid == pid)
    banned: list[bool] = []
    _on_engine_thread(engine, lambda: banned.append(engine.backend.settle(inst) and inst.banned))
    assert banned == [True]
    (tmp_path / "gate1").touch()
    assert e1.wait(30) == "FINISHED"
    assert e2.wait(30) == "FINISHED", _said(e2)
    assert e2.info()["instance_pid"] == pid
