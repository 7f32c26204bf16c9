"""Reductions of what ``bench/stress.py`` found: an event is never lost, never failed or timed out for an
instance that was not running it, and no event waits for an instance still starting while another is free.

Real instances, no mocks. A slow process start is made certain by a ``sitecustomize`` that holds new
instance processes at interpreter start while a gate is armed; the engine's internals are looked at only to
know that an event *was* sent ahead, or to make the engine stop reading an instance (``Unread``).
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

from conftest import wait_until
from test_ahead import HANDLER, Unread, _busy_with_one_behind, _engine, _on_engine_thread, engine_calls, pending

from scf_nb.core.ahead import STARTED

__all__ = ["engine_calls"]  # a fixture, used by name


def _spare_gone_for_sends(engine: Any) -> Any:
    """Make the spare gone as far as sends go, with the engine not knowing yet (its EOF and loky's word wait);
    returns what puts things back."""
    spare = wait_until(lambda: engine._spare if engine._spare is not None and engine._spare.conn is not None
                       else None, 30, "a connected spare")
    unread = Unread(engine, spare, [spare.conn_fd])
    on_exit = engine._spawner._on_exit
    engine._spawner._on_exit = lambda inst: None if inst is spare else on_exit(inst)
    unread.hold()
    _on_engine_thread(engine, lambda: spare.conn.shutdown(socket.SHUT_WR))

    def restore() -> None:
        engine._spawner._on_exit = on_exit
        unread.resume()
    return restore


def test_an_event_taken_back_for_an_instance_that_is_gone_is_not_lost(scf: Any, tmp_path: Path,
                                                                      engine_calls: None) -> None:
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


def test_an_event_put_back_after_a_failed_send_starts_before_newer_ones(scf: Any, tmp_path: Path,
                                                                        engine_calls: None) -> None:
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


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_an_event_claimed_by_an_instance_killed_before_it_said_so_runs_elsewhere(
        scf: Any, tmp_path: Path, engine_calls: None) -> None:
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
    inst = next(i for i in list(engine._all) if i.pid == pid)
    ahead = engine._ahead[("default", "one")]
    seq = next(s for e, s, _ in list(ahead.pending) if e.request_id == e2.request_id)
    unread = Unread(engine, inst, [inst.conn_fd, *inst.streams])  # (the pipes' reader would read the socket too)
    unread.hold()
    try:
        (tmp_path / "gate1").touch()
        wait_until(lambda: ahead.shared._get(seq)[::2] == (seq, STARTED), 30, "e2 to be claimed")
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
