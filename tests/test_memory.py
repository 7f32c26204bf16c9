"""The engine process's memory does not grow with the events it has processed: DuckDB can always checkpoint
(what is only in its write-ahead log stays in memory), log lines wait for the store's writer in a bounded
buffer (a slow writer holds back the pipes' readers, not memory), and the recently ended events kept in
memory are bounded by the text they hold. Real engine, real DuckDB file; ``bench/b_memory.py`` measures it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

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
