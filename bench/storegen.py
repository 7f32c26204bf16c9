"""Make a store with many events and log lines, fast, straight into a DuckDB file (run as its own process so
the benchmark's engine process does not carry the generator's memory).

    python bench/storegen.py HOME N_EVENTS LINES_PER_EVENT

Uses the engine's own schema (``scf_nb.store.store.SCHEMA``) and RequestIds from
``scf_nb.core.records.make_request_ids`` (the integer key embedded; all made at once). 20 functions; 90%
FINISHED, 7% FAILED, 3% ABORTED; start times spread over the last 60 hours in key order (as the engine writes
them); every event has LINES_PER_EVENT lines (the last on stderr).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

FUNCTIONS = 20
SPAN_S = 60 * 3600.0


def generate(home: Path, n_events: int, lines_per_event: int) -> dict:
    import duckdb
    import pandas as pd

    from scf_nb.core.records import EVENT_COLUMNS, make_request_ids
    from scf_nb.store.store import SCHEMA

    t = time.perf_counter()
    home.mkdir(parents=True, exist_ok=True)
    db = duckdb.connect(str(home / "scf_nb.duckdb"), config={"memory_limit": "3GB", "preserve_insertion_order": True})
    db.execute(SCHEMA)
    made = make_request_ids(1, n_events)
    ids = pd.DataFrame({"k": pd.array([k for k, _ in made], dtype="int64"), "request_id": [r for _, r in made]})
    t_ids = time.perf_counter() - t
    t0 = time.time() - SPAN_S - 60
    step = SPAN_S / n_events
    db.register("ids", ids)
    columns = ", ".join(EVENT_COLUMNS[:EVENT_COLUMNS.index("instance_pid") + 1])  # the later ones stay NULL
    db.execute(f"""
    INSERT INTO events ({columns})
    SELECT k, request_id, 'fn' || lpad((k % {FUNCTIONS})::VARCHAR, 2, '0'), 'default',
           CASE WHEN k % 10 = 0 THEN '1' ELSE '$LATEST' END, 'Event', status, true,
           to_timestamp(st), to_timestamp(st + 0.002), to_timestamp(st + 0.002 + dur / 1000.0),
           dur, ceil(dur)::BIGINT, 50000000 + (h % 1000) * 100000,
           CASE WHEN status = 'FINISHED' THEN '{{"ok": true, "n": ' || k || '}}' END,
           CASE WHEN status = 'FAILED' THEN 'ValueError' END,
           CASE WHEN status = 'FAILED' THEN 'bad input ' || k END,
           CASE WHEN status = 'FAILED' THEN 'Traceback (most recent call last):\n  File "<scf_function>", line 3, '
                || 'in main_handler\nValueError: bad input ' || k END,
           CASE status WHEN 'FINISHED' THEN 'returned' WHEN 'FAILED' THEN 'the handler raised; instance replaced'
                       ELSE 'terminated: SIGKILL' END,
           '{{"src": "file_' || k || '.mov"}}', 10000 + (k % 97)
    FROM (SELECT k, request_id, h, {t0} + k * {step} AS st,
                 CASE WHEN h % 100 < 90 THEN 'FINISHED' WHEN h % 100 < 97 THEN 'FAILED' ELSE 'ABORTED' END AS status,
                 1.0 + (h % 600000) / 100.0 AS dur
          FROM (SELECT k, request_id, hash(k) AS h FROM ids))
    ORDER BY k""")
    db.unregister("ids")
    del ids
    t_events = time.perf_counter() - t
    L = lines_per_event
    db.execute(f"""
    INSERT INTO logs
    SELECT i // {L} + 1, i % {L} + 1, to_timestamp({t0} + (i // {L} + 1) * {step} + 0.002 + (i % {L}) * 0.001),
           CASE WHEN i % {L} = {L - 1} THEN 'stderr' ELSE 'stdout' END,
           'processing item ' || (i % {L}) || ' of file_' || (i // {L} + 1) || '.mov: ok'
    FROM range({n_events * L}) t(i)""")
    db.execute("CHECKPOINT")
    db.close()
    size = (home / "scf_nb.duckdb").stat().st_size
    return {"events": n_events, "lines": n_events * L, "seconds": time.perf_counter() - t, "ids_s": t_ids,
            "events_s": t_events, "file_mb": size / 2**20, "t0": t0, "step": step, "functions": FUNCTIONS}


if __name__ == "__main__":
    home, n, per = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(generate(home, n, per)))
