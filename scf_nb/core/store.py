"""The store: one DuckDB file, written only by this engine's writer, read by anyone in this process.

Writes never happen on the invoke path: the engine puts new events, status changes and log lines into
in-memory buffers (under ``lock``) and the writer thread turns each buffer into one columnar batch every
``flush_interval`` (DuckDB does ~1,000 single-row INSERTs a second here, but 250k+ rows a second batched).
A read first flushes (``sync``), so it sees every write made before it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import duckdb
import pandas as pd

from .errors import ScfError
from .functions import Function
from .records import EVENT_COLUMNS, EventState
from .status import TERMINAL

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_key BIGINT, request_id VARCHAR, function_name VARCHAR, namespace VARCHAR, qualifier VARCHAR,
    invoke_type VARCHAR, status VARCHAR, traced BOOLEAN, start_time TIMESTAMPTZ, run_time TIMESTAMPTZ,
    end_time TIMESTAMPTZ, duration_ms DOUBLE, billed_duration_ms BIGINT, mem_usage_bytes BIGINT,
    result VARCHAR, error_type VARCHAR, error_message VARCHAR, error_traceback VARCHAR, exit_reason VARCHAR,
    payload VARCHAR, instance_pid BIGINT);
CREATE TABLE IF NOT EXISTS logs (event_key BIGINT, seq BIGINT, ts TIMESTAMPTZ, stream VARCHAR, line VARCHAR);
CREATE TABLE IF NOT EXISTS functions (
    namespace VARCHAR, name VARCHAR, version VARCHAR, revision BIGINT, code VARCHAR, handler VARCHAR,
    async_run BOOLEAN, trace BOOLEAN, timeout DOUBLE, concurrency BIGINT, qps_limit DOUBLE, env JSON,
    memory_mb BIGINT, description VARCHAR, created_at DOUBLE, updated_at DOUBLE);
CREATE TABLE IF NOT EXISTS instances (pgid BIGINT, pid BIGINT, engine_pid BIGINT);
"""
PURGE_EVERY_S = 60.0
log = logging.getLogger("scf_nb")
_TIMES = ("start_time", "run_time", "end_time")
_INSERT_EVENTS = "INSERT INTO events SELECT " + ", ".join(
    f"to_timestamp({c})" if c in _TIMES else c for c in EVENT_COLUMNS) + " FROM batch"
_UPDATE_EVENTS = """
UPDATE events SET status = b.status, run_time = to_timestamp(b.run_time), end_time = to_timestamp(b.end_time),
    duration_ms = b.duration_ms, billed_duration_ms = b.billed_duration_ms, mem_usage_bytes = b.mem_usage_bytes,
    result = b.result, error_type = b.error_type, error_message = b.error_message,
    error_traceback = b.error_traceback, exit_reason = b.exit_reason, instance_pid = b.instance_pid
FROM batch b WHERE events.event_key = b.event_key"""
_UPDATE_COLUMNS = ("event_key", "status", "run_time", "end_time", "duration_ms", "billed_duration_ms",
                   "mem_usage_bytes", "result", "error_type", "error_message", "error_traceback", "exit_reason",
                   "instance_pid")
_FUNCTION_COLUMNS = ("namespace", "name", "version", "revision", "code", "handler", "async_run", "trace",
                     "timeout", "concurrency", "qps_limit", "env", "memory_mb", "description", "created_at",
                     "updated_at")


def open_database(path: Path, memory_mb: int) -> duckdb.DuckDBPyConnection:
    """Open (or create) the store; a clear ScfError, naming the holder, when another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = duckdb.connect(str(path), config={"memory_limit": f"{memory_mb}MB"})
    except duckdb.IOException as e:
        raise ScfError("FailedOperation.StoreLocked", _lock_message(path, str(e))) from None
    db.execute(SCHEMA)
    return db


def _lock_message(path: Path, text: str) -> str:
    m = re.search(r"PID (\d+)", text)
    if not m:
        return f"cannot open the store {path}: {text}"
    pid = int(m.group(1))
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return (f"the store {path} is in use by process {pid} ({cmd[:200]}). DuckDB lets one process write a "
            f"store: stop that process, or give this one another home (scf_nb.configure(home=...) or "
            f"SCF_NB_HOME)")


class Store:
    """The event/log/function tables and the batching writer.

    Args:
        path: the DuckDB file.
        memory_mb: DuckDB's memory limit.
        on_committed: called by the writer with the events whose terminal state has just reached the disk.
    """

    def __init__(self, path: Path, memory_mb: int, on_committed: Callable[[list[EventState]], None]) -> None:
        self.path = path
        self._db = open_database(path, memory_mb)
        self._local = threading.local()
        self._on_committed = on_committed
        self.lock = threading.Lock()  # guards the buffers and every EventState change
        self._flush_lock = threading.Lock()
        self._new: list[EventState] = []
        self._changed: dict[int, EventState] = {}
        self._log_cols: tuple[list[Any], ...] = ([], [], [], [], [])
        self._sql_ops: list[tuple[str, tuple[Any, ...]]] = []
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self.write_errors = 0

    # -- buffers (called by the engine, under ``lock`` where it says so) --------------------------------
    def add_event(self, ev: EventState) -> None:
        """A new event (hold ``lock``)."""
        self._new.append(ev)

    def changed(self, ev: EventState) -> None:
        """``ev`` changed (hold ``lock``); one not yet inserted is written whole with its newest state."""
        if ev.inserted:
            self._changed[ev.key] = ev

    def add_lines(self, key: int, first_seq: int, ts: float, stream: str, lines: list[str]) -> None:
        n = len(lines)
        with self.lock:
            keys, seqs, tss, streams, texts = self._log_cols
            keys.extend([key] * n)
            seqs.extend(range(first_seq, first_seq + n))
            tss.extend([ts] * n)
            streams.extend([stream] * n)
            texts.extend(lines)

    def later(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """A statement to run with the next batch (bookkeeping off the hot path)."""
        with self.lock:
            self._sql_ops.append((sql, params))

    # -- the writer ---------------------------------------------------------------------------------------
    def start(self, interval: float, retention_cutoff: Callable[[], float]) -> None:
        """Start the writer: a batch every ``interval`` s; every ``PURGE_EVERY_S`` (and at once) it deletes
        ended events that started before ``retention_cutoff()``."""
        self._writer = threading.Thread(target=self._write_loop, args=(interval, retention_cutoff),
                                        name="scf_nb-store", daemon=True)
        self._writer.start()

    def _write_loop(self, interval: float, retention_cutoff: Callable[[], float]) -> None:
        next_purge = 0.0
        while not self._stop.wait(interval):
            try:
                self.sync()
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_EVERY_S
                    self.purge(retention_cutoff())
            except Exception:  # keep writing: the buffers stay and the next batch tries again
                self.write_errors += 1
                log.exception("scf_nb store writer error")

    def sync(self) -> None:
        """Write everything buffered so far; afterwards any read sees it."""
        with self._flush_lock:
            with self.lock:
                if not (self._new or self._changed or self._log_cols[0] or self._sql_ops):
                    return
                new, self._new = self._new, []
                changed, self._changed = self._changed, {}
                logs, self._log_cols = self._log_cols, ([], [], [], [], [])
                ops, self._sql_ops = self._sql_ops, []
                for ev in new:
                    ev.inserted = True
                new_rows = [ev.row() for ev in new]
                changed_rows = [ev.update_row() for ev in changed.values()]
                done = [ev for ev in new if ev.status in TERMINAL]
                done += [ev for ev in changed.values() if ev.status in TERMINAL]
            try:
                self._write(new_rows, changed_rows, logs, ops)
            except Exception:
                with self.lock:  # put it all back in front, so nothing accepted is lost
                    self._new[:0] = new
                    for ev in new:
                        ev.inserted = False
                    self._changed = {**changed, **self._changed}
                    for old, cur in zip(logs, self._log_cols):
                        cur[:0] = old
                    self._sql_ops[:0] = ops
                raise
        if done:
            self._on_committed(done)

    def _write(self, new_rows: list[tuple[Any, ...]], changed_rows: list[tuple[Any, ...]],
               logs: tuple[list[Any], ...], ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        db = self.cursor()
        db.execute("BEGIN")
        try:
            if new_rows:
                self._run_batch(db, _INSERT_EVENTS, pd.DataFrame.from_records(new_rows, columns=EVENT_COLUMNS))
            if changed_rows:
                self._run_batch(db, _UPDATE_EVENTS, pd.DataFrame.from_records(changed_rows, columns=_UPDATE_COLUMNS))
            if logs[0]:
                frame = pd.DataFrame({"event_key": logs[0], "seq": logs[1], "ts": logs[2], "stream": logs[3],
                                      "line": logs[4]})
                self._run_batch(db, "INSERT INTO logs SELECT event_key, seq, to_timestamp(ts), stream, line "
                                    "FROM batch", frame)
            for sql, params in ops:
                db.execute(sql, params)
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _run_batch(db: duckdb.DuckDBPyConnection, sql: str, frame: pd.DataFrame) -> None:
        db.register("batch", frame)
        try:
            db.execute(sql)
        finally:
            db.unregister("batch")

    def close(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join()
        self.sync()
        self._db.close()

    # -- reads -------------------------------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's connection to the store (DuckDB connections are not shared between threads)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._db.cursor()
        return cur

    def query(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        self.sync()
        return self.cursor().execute(sql, list(params)).df()

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        self.sync()
        return self.cursor().execute(sql, list(params)).fetchall()

    # -- functions, instances, recovery, retention -------------------------------------------------------
    def save_functions(self, fns: list[Function]) -> None:
        for fn in fns:
            self.later("DELETE FROM functions WHERE namespace = ? AND name = ? AND version = ?",
                       (fn.namespace, fn.name, fn.version))
            d = fn.as_dict()
            d["env"] = json.dumps(d["env"])
            self.later(f"INSERT INTO functions ({', '.join(_FUNCTION_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(_FUNCTION_COLUMNS))})", tuple(d[c] for c in _FUNCTION_COLUMNS))
        self.sync()

    def delete_function(self, namespace: str, name: str) -> None:
        self.later("DELETE FROM functions WHERE namespace = ? AND name = ?", (namespace, name))
        self.sync()

    def load_functions(self) -> list[Function]:
        out = []
        for row in self.cursor().execute(f"SELECT {', '.join(_FUNCTION_COLUMNS)} FROM functions").fetchall():
            d = dict(zip(_FUNCTION_COLUMNS, row))
            d["env"] = json.loads(d["env"] or "{}")
            out.append(Function(**d))
        return out

    def max_event_key(self) -> int:
        return int(self.cursor().execute("SELECT coalesce(max(event_key), 0) FROM events").fetchone()[0])

    def recover(self, reason: str, now: float) -> tuple[int, list[int]]:
        """After an engine died: its QUEUED/RUNNING events become FAILED; returns (how many, its instances'
        process groups, for the new engine to kill)."""
        db = self.cursor()
        groups = [r[0] for r in db.execute("SELECT pgid FROM instances").fetchall()]
        n = db.execute("SELECT count(*) FROM events WHERE status IN ('QUEUED', 'RUNNING')").fetchone()[0]
        db.execute("""UPDATE events SET status = 'FAILED', end_time = coalesce(end_time, to_timestamp(?)),
                      error_type = 'EngineLost', error_message = ?, exit_reason = ?
                      WHERE status IN ('QUEUED', 'RUNNING')""", [now, reason, reason])
        db.execute("DELETE FROM instances")
        return int(n), groups

    def purge(self, cutoff: float) -> int:
        """Delete ended events (and their logs) that started before ``cutoff`` (epoch seconds)."""
        self.sync()
        db = self.cursor()
        where = "start_time < to_timestamp(?) AND status IN ('FINISHED', 'FAILED', 'ABORTED')"
        with self._flush_lock:  # one writer at a time: the rolling purge and a user's purge() may meet
            db.execute("BEGIN")
            try:
                n = db.execute(f"SELECT count(*) FROM events WHERE {where}", [cutoff]).fetchone()[0]
                if n:
                    db.execute(f"DELETE FROM logs WHERE event_key IN (SELECT event_key FROM events WHERE {where})",
                               [cutoff])
                    db.execute(f"DELETE FROM events WHERE {where}", [cutoff])
                db.execute("COMMIT")
            except Exception:
                db.execute("ROLLBACK")
                raise
        return int(n)

    def export(self, folder: Path) -> dict[str, int]:
        """Events, logs and functions as Parquet files in ``folder``; returns the row counts."""
        self.sync()
        folder.mkdir(parents=True, exist_ok=True)
        db = self.cursor()
        counts = {}
        for table in ("events", "logs", "functions"):
            target = str(folder / f"{table}.parquet").replace("'", "''")
            db.execute(f"COPY (SELECT * FROM {table}) TO '{target}' (FORMAT parquet)")
            counts[table] = int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        return counts

