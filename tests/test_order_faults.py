"""Reductions of what ``bench/stress.py`` found: an event is never lost, never failed or timed out for an
instance that was not running it, and no event waits for an instance still starting while another is free.

Real instances, no mocks. A slow process start is made certain by a ``sitecustomize`` that holds new
instance processes at interpreter start while a gate is armed; the engine's internals are looked at only to
know that an event *was* sent ahead, or to make the engine stop reading an instance (``Unread``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from conftest import wait_until
from test_ahead import Unread, _busy_with_one_behind, _engine, _on_engine_thread, engine_calls

__all__ = ["engine_calls"]  # a fixture, used by name


def test_an_event_taken_back_for_an_instance_that_is_gone_is_not_lost(scf: Any, tmp_path: Path,
                                                                      engine_calls: None) -> None:
    """e2 was sent ahead; e1's instance is killed, and the spare that takes e2 back turns out to be gone (its
    process died, not yet noticed): the failed send puts e2 back in the FIFO. Before, that FIFO was dropped
    at the end of the same dispatch (it was made there), and e2 stayed QUEUED forever."""
    e1, e2, _pid = _busy_with_one_behind(scf, tmp_path)
    engine = _engine()
    spare = wait_until(lambda: engine._spare if engine._spare is not None and engine._spare.conn is not None
                       else None, 30, "a connected spare")
    # The spare is gone as far as sends go, and the engine has not noticed yet: its EOF and loky's word wait.
    unread = Unread(engine, spare, [spare.conn_fd])
    on_exit = engine._spawner._on_exit
    engine._spawner._on_exit = lambda inst: None if inst is spare else on_exit(inst)
    unread.hold()
    try:
        _on_engine_thread(engine, lambda: spare.conn.shutdown(socket.SHUT_WR))
        assert e1.terminate() == "ABORTED"
        assert e2.wait(20) == "FINISHED", _said(e2)
    finally:
        engine._spawner._on_exit = on_exit
        unread.resume()


def _said(ev: Any) -> str:
    info = ev.info()
    return f"{info['status']} {info['error']} {info['exit_reason']}"
