"""The engine process's memory does not grow with the events it has processed: DuckDB can always checkpoint
(what is only in its write-ahead log stays in memory), log lines wait for the store's writer in a bounded
buffer (a slow writer holds back the pipes' readers, not memory), and the recently ended events kept in
memory are bounded by the text they hold. Real engine, real DuckDB file; ``bench/b_memory.py`` measures it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until

from scf_nb.engine.recent import RECENT_CHARS
from scf_nb.store import store as store_module
from scf_nb.store.store import Store

NOOP = "def main_handler(event, context):\n    return None\n"


def _wal_bytes(home: Path) -> int:
    wal = home / "scf_nb.duckdb.wal"
    return wal.stat().st_size if wal.exists() else 0


def _on_a_thread(fn: Any) -> None:
    """Run ``fn`` on a thread of its own (its own store connection: the caller's stays as it was)."""
    t = threading.Thread(target=fn)
    t.start()
    t.join(30)


def test_a_restarted_engine_still_checkpoints_while_the_caller_only_invokes(scf: Any, home: Path) -> None:
    """Opening the engine read the store on the caller's thread; a result left partly read there would keep a
    transaction open for as long as that thread makes no other query (a notebook that only invokes and
    waits), and DuckDB would never checkpoint again: its log, and the memory holding what is only in it,
    would grow with every event."""
    scf.create_function("noop", NOOP, async_run=True, concurrency=2)
    scf.configure(max_qps=1e9)  # a new engine, opened on this thread; the function is already there
    try:
        engine = scf.client().engine
        _on_a_thread(lambda: engine.store.cursor().execute("SET checkpoint_threshold = '64KB'"))
        for _ in range(5):
            done, not_done = scf.wait([scf.invoke("noop") for _ in range(1000)], timeout=120)
            assert not not_done
        _on_a_thread(engine.store.sync)
        assert _wal_bytes(home) < 256 * 1024  # checkpointed as it went (5,000 events write ~1 MB of it)
    finally:
        scf.configure(max_qps=type(scf.configure())().max_qps)


def test_log_lines_wait_for_a_stalled_writer_in_a_bounded_buffer(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """While the writer cannot write, whoever adds lines waits once the buffer is over its limit, and goes on
    as soon as the writer takes it; every line is stored, in order."""
    monkeypatch.setattr(store_module, "LOG_BUFFER_CHARS", 50_000, raising=False)
    monkeypatch.setattr(store_module, "LOG_WAIT_S", 60.0, raising=False)
    store = Store(tmp_path / "scf_nb.duckdb", 64, lambda events: None)
    store.start(0.01, lambda: 0.0)
    added = [0]

    def produce() -> None:
        for i in range(40):  # 11,999 characters a call: the 5th goes over the limit
            store.add_lines(7, 1 + i * 1000, time.time(), "stdout", [f"line {j:06d}" for j in range(1000)])
            added[0] += 1

    producer = threading.Thread(target=produce)
    try:
        with store._flush_lock:  # the writer is stuck (a checkpoint, a loaded machine)
            producer.start()
            wait_until(lambda: added[0] >= 4, 10, "the first lines to be added")
            producer.join(0.5)
            assert producer.is_alive() and added[0] == 4  # held back, not buffering all 40,000 lines
        producer.join(30)
        assert not producer.is_alive() and added[0] == 40
        rows = store.rows("SELECT count(*), min(seq), max(seq), count(DISTINCT seq), "
                          "bool_and(line = printf('line %06d', (seq - 1) % 1000)) FROM logs WHERE event_key = 7")
        assert rows == [(40_000, 1, 40_000, 40_000, True)]
    finally:
        producer.join(30)
        store.close()


def test_a_line_holding_a_newline_is_stored_as_one_line(tmp_path: Path) -> None:
    store = Store(tmp_path / "scf_nb.duckdb", 64, lambda events: None)
    try:
        store.add_lines(3, 1, time.time(), "stderr", ["a\nb", "", "c"])
        store.add_lines(3, 4, time.time(), "stdout", [""])
        assert store.rows("SELECT seq, stream, line FROM logs ORDER BY seq") == [
            (1, "stderr", "a\nb"), (2, "stderr", ""), (3, "stderr", "c"), (4, "stdout", "")]
    finally:
        store.close()


def test_recently_ended_events_kept_in_memory_are_bounded_by_their_size(scf: Any) -> None:
    """Each of these events returns 1 MB: the engine keeps at most RECENT_CHARS of them in memory for quick
    reads; the others are read from the store, unchanged."""
    scf.create_function("big", "def main_handler(event, context):\n    return 'x' * 1_000_000 + str(event)\n",
                        async_run=True, concurrency=2)
    evs = [scf.invoke("big", i) for i in range(24)]
    done, not_done = scf.wait(evs, timeout=120)
    assert not not_done
    scf.list_events(limit=1)  # a read: everything ended is on disk now, and handed to the recent events
    engine = scf.client().engine
    held = [engine.live(ev.request_id) for ev in evs]
    assert sum(len(ev.result) for ev in held if ev is not None) <= RECENT_CHARS
    assert held[-1] is not None  # the newest are still answered from memory
    assert [ev.result() for ev in evs] == ["x" * 1_000_000 + str(i) for i in range(24)]
