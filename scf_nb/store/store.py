"""The store: one DuckDB file, written only by this engine's writer, read by anyone in this process.

Writes never happen on the invoke path: the engine puts new events, status changes and log lines into
in-memory buffers (under ``lock``) and the writer thread turns each buffer into one columnar batch every
``flush_interval`` (DuckDB does ~1,000 single-row INSERTs a second here, but 250k+ rows a second batched).
A read first flushes (``sync``), so it sees every write made before it. Log lines wait as runs of lines
(``logbuffer.py``); while more than ``LOG_BUFFER_CHARS`` wait, the engine waits for the writer, so what the
buffers hold is bounded however fast handlers print.

The live overview comes from running aggregates (``stats.OverviewStats``), loaded once from the table on the
first ``overview`` and then kept in step, under the flush lock, with every change to the events table: the
rows each batch commits, the rows a purge deletes (``recover`` drops them: they are loaded again).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from ..core.errors import ScfError
from ..core.functions import Function
from ..core.records import EVENT_COLUMNS, EventState
from ..core.status import TERMINAL
from .journal import Journal
from .logbuffer import INSERT as _INSERT_LOGS
from .logbuffer import HeapTrim, LogBuffer, runs_of
from .observe import ChangeFeed
from .stats import OverviewStats, Summary, bucket_sql

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_key BIGINT, request_id VARCHAR, function_name VARCHAR, namespace VARCHAR, qualifier VARCHAR,
    invoke_type VARCHAR, status VARCHAR, traced BOOLEAN, start_time TIMESTAMPTZ, run_time TIMESTAMPTZ,
    end_time TIMESTAMPTZ, duration_ms DOUBLE, billed_duration_ms BIGINT, mem_usage_bytes BIGINT,
    result VARCHAR, error_type VARCHAR, error_message VARCHAR, error_traceback VARCHAR, exit_reason VARCHAR,
    payload VARCHAR, instance_pid BIGINT, init_duration_ms DOUBLE, result_pickle BLOB);
CREATE TABLE IF NOT EXISTS logs (event_key BIGINT, seq BIGINT, ts TIMESTAMPTZ, stream VARCHAR, line VARCHAR);
CREATE TABLE IF NOT EXISTS functions (
    namespace VARCHAR, name VARCHAR, version VARCHAR, revision BIGINT, code VARCHAR, handler VARCHAR,
    async_run BOOLEAN, trace BOOLEAN, timeout DOUBLE, concurrency BIGINT, qps_limit DOUBLE, env JSON,
    memory_mb BIGINT, description VARCHAR, created_at DOUBLE, updated_at DOUBLE, num_cpus DOUBLE,
    num_gpus DOUBLE, resources JSON);
CREATE TABLE IF NOT EXISTS instances (pgid BIGINT, pid BIGINT, engine_pid BIGINT, mark VARCHAR);
"""
# A store made by an earlier version gets the columns added since (in EVENT_COLUMNS' order; NULL in old rows).
# Stores made before an engine's mark had a random token (instances.new_mark) lack instances.mark: their rows
# keep NULL there and are recovered by process group (instances.leftovers).
MIGRATIONS = """
ALTER TABLE events ADD COLUMN IF NOT EXISTS init_duration_ms DOUBLE;
ALTER TABLE events ADD COLUMN IF NOT EXISTS result_pickle BLOB;
ALTER TABLE instances ADD COLUMN IF NOT EXISTS mark VARCHAR;
ALTER TABLE functions ADD COLUMN IF NOT EXISTS num_cpus DOUBLE;
ALTER TABLE functions ADD COLUMN IF NOT EXISTS num_gpus DOUBLE;
ALTER TABLE functions ADD COLUMN IF NOT EXISTS resources JSON;
"""
PURGE_EVERY_S = 60.0
HOLD_S = 0.5  # see Store.sync
# Log text waiting for the writer beyond which the engine waits for it to take the buffer (at most 1 s each
# time): a writer slowed by a checkpoint or a busy machine holds back the readers of the pipes, not memory.
LOG_BUFFER_CHARS = 16 << 20
LOG_WAIT_S = 1.0
log = logging.getLogger("scf_nb")
_TIMES = ("start_time", "run_time", "end_time")
_INSERT_EVENTS = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT " + ", ".join(
    f"to_timestamp({c})" if c in _TIMES else c for c in EVENT_COLUMNS) + " FROM batch"
_UPDATE_EVENTS = """
UPDATE events SET status = b.status, run_time = to_timestamp(b.run_time), end_time = to_timestamp(b.end_time),
    duration_ms = b.duration_ms, billed_duration_ms = b.billed_duration_ms, mem_usage_bytes = b.mem_usage_bytes,
    result = b.result, error_type = b.error_type, error_message = b.error_message,
    error_traceback = b.error_traceback, exit_reason = b.exit_reason, instance_pid = b.instance_pid,
    init_duration_ms = b.init_duration_ms, result_pickle = b.result_pickle
FROM batch b WHERE events.event_key = b.event_key"""
# A dead engine's QUEUED/RUNNING events: FAILED, ended now; a running one's duration counts from its start.
_RECOVERED_MS = "coalesce(greatest(0.0, (epoch(coalesce(end_time, to_timestamp(?))) - epoch(run_time)) * 1000.0), 0.0)"
_RECOVER_EVENTS = f"""
UPDATE events SET status = 'FAILED', end_time = coalesce(end_time, to_timestamp(?)),
    duration_ms = coalesce(duration_ms, {_RECOVERED_MS}),
    billed_duration_ms = coalesce(billed_duration_ms, CAST(ceil({_RECOVERED_MS}) AS BIGINT)),
    error_type = 'EngineLost', error_message = ?, exit_reason = ?
WHERE status IN ('QUEUED', 'RUNNING')"""
_UPDATE_COLUMNS = ("event_key", "status", "run_time", "end_time", "duration_ms", "billed_duration_ms",
                   "mem_usage_bytes", "result", "error_type", "error_message", "error_traceback", "exit_reason",
                   "instance_pid", "init_duration_ms", "result_pickle")
_NEW = tuple(EVENT_COLUMNS.index(c) for c in ("event_key", "namespace", "function_name", "status", "traced",
                                              "duration_ms"))
_CHANGED = tuple(_UPDATE_COLUMNS.index(c) for c in ("event_key", "status", "duration_ms"))
_TERMINAL_SQL = "status IN ('FINISHED', 'FAILED', 'ABORTED')"
_LIVE_SQL = "status IN ('QUEUED', 'RUNNING')"
_BUCKET = bucket_sql("duration_ms")
# ended events per group and duration bucket (an event_key for each live one): the aggregates' first state
_LOAD_STATS = f"""
SELECT namespace, function_name, status, CASE WHEN {_LIVE_SQL} THEN event_key END AS live_key,
       {_BUCKET} AS b, count(*), sum(duration_ms), max(duration_ms)
FROM events WHERE traced GROUP BY ALL"""
_FUNCTION_COLUMNS = ("namespace", "name", "version", "revision", "code", "handler", "async_run", "trace",
                     "timeout", "concurrency", "qps_limit", "env", "memory_mb", "description", "created_at",
                     "updated_at", "num_cpus", "num_gpus", "resources")


def open_database(path: Path, memory_mb: int) -> tuple[duckdb.DuckDBPyConnection, bool]:
    """Open (or create) the store, and whether it is new (made now: nothing in it to migrate or recover); a
    clear ScfError, naming the holder, when another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    try:
        db = duckdb.connect(str(path), config={"memory_limit": f"{memory_mb}MB"})
    except duckdb.IOException as e:
        raise ScfError("FailedOperation.StoreLocked", _lock_message(path, str(e))) from None
    db.execute(SCHEMA)
    if not new:  # (SCHEMA has every column: a new store has nothing to add; ~2 ms of a cold start saved)
        db.execute(MIGRATIONS)
    return db, new


def _lock_message(path: Path, text: str) -> str:
    # DuckDB names the holder: 'Conflicting lock is held in <its executable> (PID <pid>)'
    m = re.search(r"held in (.*) \(PID (\d+)\)", text)
    if not m:
        return f"cannot open the store {path}: {text}"
    return (f"the store {path} is in use by process {m.group(2)} ({m.group(1)[:200]}). DuckDB lets one process "
            f"write a store: stop that process, or give this one another home (scf_nb.configure(home=...) or "
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
        self._db, self.created = open_database(path, memory_mb)  # made now: nothing in it to recover
        self.journal = Journal(path.with_name(path.name + ".accepted"))
        self._local = threading.local()
        self._on_committed = on_committed
        self.lock = threading.Lock()  # guards the buffers and every EventState change
        self._flush_lock = threading.Lock()
        self._new: list[EventState] = []
        self._changed: dict[int, EventState] = {}
        self._logs = LogBuffer()
        self._taken = 0  # how many times a sync took the buffers (the engine may wait for the next one)
        self._drained = threading.Condition(self.lock)
        self._kick = threading.Event()  # the writer's wake-up: its interval is over, or the log buffer is full
        self._trim = HeapTrim()
        self._sql_ops: list[tuple[str, tuple[Any, ...]]] = []
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self.write_errors = 0
        self._stats: OverviewStats | None = None  # guarded by _flush_lock; None until the first overview
        self._touched: list[EventState] | None = None  # events changed since the last commit, while observed
        self.feed = ChangeFeed(self)  # told of every commit while anyone listens (observe.py)

    # -- buffers (called by the engine, under ``lock`` where it says so) --------------------------------
    def add_event(self, ev: EventState) -> None:
        """A new event (hold ``lock``): in the file with a later batch. The caller puts it in the journal
        (``journal.add``) once it let go of ``lock``, before it hands out the RequestId."""
        self._new.append(ev)
        touched = self._touched
        if touched is not None:
            touched.append(ev)

    def changed(self, ev: EventState) -> None:
        """``ev`` changed (hold ``lock``); one not yet inserted is written whole with its newest state."""
        if ev.inserted:
            self._changed[ev.key] = ev
        touched = self._touched
        if touched is not None:
            touched.append(ev)

    def add_lines(self, key: int, first_seq: int, ts: float, stream: str, lines: list[str]) -> None:
        """Lines ``first_seq``, ``first_seq + 1``, ... of event ``key``. Called by the engine thread, which waits
        here (up to 1 s) while more than ``LOG_BUFFER_CHARS`` of log text wait for the writer."""
        if not lines:
            return
        runs, chars = runs_of(key, first_seq, ts, stream, lines)
        with self.lock:
            self._logs.extend(runs, chars)
            if self._logs.chars > LOG_BUFFER_CHARS and self._writer is not None and self._writer.is_alive():
                self._kick.set()
                taken = self._taken
                self._drained.wait_for(lambda: self._taken != taken, timeout=LOG_WAIT_S)

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
        while True:
            self._kick.wait(interval)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self.sync(hold=HOLD_S)
                now = time.monotonic()
                if now >= next_purge:
                    next_purge = now + PURGE_EVERY_S
                    self.purge(retention_cutoff())
                self._trim.maybe(now)
            except Exception:  # keep writing: the buffers stay and the next batch tries again
                self.write_errors += 1
                log.exception("scf_nb store writer error")

    def sync(self, hold: float = 0.0) -> None:
        """Write everything buffered so far; afterwards any read sees it.

        Args:
            hold: keep back new events that are still QUEUED or RUNNING and were accepted less than ``hold``
                seconds ago (the writer's batches): most short events then reach the file once, in their
                final state, instead of as an INSERT and an UPDATE (an UPDATE costs DuckDB ~7 us a row).
        """
        with self._flush_lock:
            with self.lock:
                touched = self._touched
                if not (self._new or self._changed or self._logs or self._sql_ops or touched):
                    return
                new, self._new = self._new, []
                if hold > 0:
                    cutoff = time.monotonic() - hold
                    self._new = [ev for ev in new if ev.status not in TERMINAL and ev.accepted > cutoff]
                    if self._new:
                        new = [ev for ev in new if ev.status in TERMINAL or ev.accepted <= cutoff]
                        if not (new or self._changed or self._logs or self._sql_ops or touched):
                            return
                changed, self._changed = self._changed, {}
                logs = self._logs.take()
                self._taken += 1
                self._drained.notify_all()
                ops, self._sql_ops = self._sql_ops, []
                for ev in new:
                    ev.inserted = True
                new_rows = [ev.row() for ev in new]
                changed_rows = [ev.update_row() for ev in changed.values()]
                done = [ev for ev in new if ev.status in TERMINAL]
                done += [ev for ev in changed.values() if ev.status in TERMINAL]
                if touched:
                    self._touched = []
            try:
                if new_rows or changed_rows or logs or ops:
                    self._write(new_rows, changed_rows, logs, ops)
            except Exception:
                with self.lock:  # put it all back in front, so nothing accepted is lost
                    self._new[:0] = new
                    for ev in new:
                        ev.inserted = False
                    self._changed = {**changed, **self._changed}
                    self._logs.put_back(logs)
                    self._sql_ops[:0] = ops
                    if touched and self._touched is not None:
                        self._touched[:0] = touched
                raise
            with self.lock:
                self.journal.settle(self._new)
            self._trim.written += logs.chars
            if self._stats is not None:
                self._count(new_rows, changed_rows)
            if touched is not None and (touched or logs or done):
                self.feed.publish(touched, logs, done)
        if done:
            self._on_committed(done)

    def _write(self, new_rows: list[tuple[Any, ...]], changed_rows: list[tuple[Any, ...]],
               logs: LogBuffer, ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        db = self.cursor()
        db.execute("BEGIN")
        try:
            if new_rows:
                self._run_batch(db, _INSERT_EVENTS, pd.DataFrame.from_records(new_rows, columns=EVENT_COLUMNS))
            if changed_rows:
                self._run_batch(db, _UPDATE_EVENTS, pd.DataFrame.from_records(changed_rows, columns=_UPDATE_COLUMNS))
            if logs:
                self._run_batch(db, _INSERT_LOGS, logs.frame())
            for sql, params in ops:
                db.execute(sql, params)
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise

    def _count(self, new_rows: list[tuple[Any, ...]], changed_rows: list[tuple[Any, ...]]) -> None:
        """Bring the overview's aggregates in step with a batch just committed (hold ``_flush_lock``)."""
        stats = self._stats
        assert stats is not None
        try:
            k, ns, fn, st, traced, dur = _NEW
            for r in new_rows:
                if r[traced]:
                    stats.commit_new(r[k], r[ns], r[fn], r[st], r[dur])
            k, st, dur = _CHANGED
            for r in changed_rows:
                stats.commit_change(r[k], r[st], r[dur])
        except Exception:  # never leave them wrong: load them again on the next overview
            self._stats = None
            log.exception("scf_nb overview aggregates dropped")

    @staticmethod
    def _run_batch(db: duckdb.DuckDBPyConnection, sql: str, frame: pd.DataFrame) -> None:
        db.register("batch", frame)
        try:
            db.execute(sql)
        finally:
            db.unregister("batch")

    def close(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._writer is not None:
            self._writer.join()
        self.sync()
        self.feed.close()
        self._db.close()
        self.journal.close(remove=not self._new)

    @property
    def observed(self) -> bool:
        """Whether the store records which events change, for the change feed (someone listens to it)."""
        return self._touched is not None

    def observe(self, on: bool) -> None:
        """Record which events change, for the change feed, while ``on`` (nothing is recorded otherwise)."""
        with self.lock:
            if not on:
                self._touched = None
            elif self._touched is None:
                self._touched = []

    # -- reads -------------------------------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's connection to the store (DuckDB connections are not shared between threads).

        Read every result whole (``fetchall``, ``df``): one left partly read (``fetchone``) keeps its transaction
        open, and until it ends DuckDB checkpoints nothing, so its write-ahead log and the memory holding what
        is only there grow with every write."""
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

    def log_lines(self, key: int, after_seq: int, limit: int) -> list[tuple[int, int, str, str]]:
        """Up to ``limit`` lines of event ``key`` after ``after_seq``: ``(seq, ts in epoch us, stream, line)``."""
        return self.rows("SELECT seq, epoch_us(ts), stream, line FROM logs WHERE event_key = ? AND seq > ? "
                         "ORDER BY seq LIMIT ?", [key, after_seq, limit])

    def request_ids(self, keys: list[int]) -> dict[int, str]:
        """The RequestIds of the events ``keys`` that the store holds."""
        rows = self.rows(f"SELECT event_key, request_id FROM events WHERE event_key IN ({', '.join('?' * len(keys))})",
                         keys)
        return {int(k): rid for k, rid in rows}

    def overview(self, namespace: str | None = None, function: str | None = None) -> dict[str, Summary]:
        """Per status with events: count and duration statistics of the traced events of ``namespace`` and
        ``function`` (None: all), as the table holds them after a ``sync``; p50/p95 approximate (see stats)."""
        self.sync()
        with self._flush_lock:
            if self._stats is None:
                self._stats = self._load_stats()
            return self._stats.summary(namespace, function)

    def _load_stats(self) -> OverviewStats:
        """The aggregates of the table as it is (one query; hold ``_flush_lock`` so no batch lands meanwhile)."""
        stats = OverviewStats()
        for ns, fn, status, key, bucket, n, total, mx in self.cursor().execute(_LOAD_STATS).fetchall():
            if key is not None:
                stats.track(key, ns, fn, status)
            else:
                stats.add_rows(ns, fn, status, bucket, n, total, mx)
        return stats

    # -- functions, instances, recovery, retention -------------------------------------------------------
    def save_functions(self, fns: list[Function]) -> None:
        for fn in fns:
            self.later("DELETE FROM functions WHERE namespace = ? AND name = ? AND version = ?",
                       (fn.namespace, fn.name, fn.version))
            d = fn.as_dict()
            d["env"] = json.dumps(d["env"])
            d["resources"] = json.dumps(d["resources"])
            self.later(f"INSERT INTO functions ({', '.join(_FUNCTION_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(_FUNCTION_COLUMNS))})", tuple(d[c] for c in _FUNCTION_COLUMNS))
        self.sync()

    def delete_function(self, namespace: str, name: str) -> None:
        self.later("DELETE FROM functions WHERE namespace = ? AND name = ?", (namespace, name))
        self.sync()

    def load_functions(self) -> list[Function]:
        out = []
        for row in self.cursor().execute(f"SELECT {', '.join(_FUNCTION_COLUMNS)} FROM functions").fetchall():
            d = dict(zip(_FUNCTION_COLUMNS, row, strict=True))
            d["env"] = json.loads(d["env"] or "{}")
            d["resources"] = json.loads(d["resources"] or "{}")
            out.append(Function(**d))
        return out

    def max_event_key(self) -> int:
        return int(self.cursor().execute("SELECT coalesce(max(event_key), 0) FROM events").fetchall()[0][0])

    def record_instance(self, pgid: int, pid: int, engine_pid: int, mark: str) -> None:
        """A started instance's process group, with the next batch: what a later engine kills if this one dies."""
        self.later("INSERT INTO instances VALUES (?, ?, ?, ?)", (pgid, pid, engine_pid, mark))

    def forget_instance(self, pgid: int) -> None:
        """The instance leading process group ``pgid`` is gone (with the next batch)."""
        self.later("DELETE FROM instances WHERE pgid = ?", (pgid,))

    def dead_instances(self) -> tuple[dict[int, int], set[str]]:
        """What the engines that used this store before may have left running: the marks they gave their
        instances, and (rows of stores made before marks had a token) process group -> engine pid."""
        rows = self.cursor().execute("SELECT pgid, engine_pid, mark FROM instances").fetchall()
        marks = {mark for _, _, mark in rows if mark is not None}
        groups = {int(pgid): int(pid) for pgid, pid, mark in rows if mark is None and pgid is not None}
        return groups, marks

    def recover(self, reason: str, now: float, mark: str) -> int:
        """After an engine died: its QUEUED/RUNNING events become FAILED, ended now (a running one's duration
        counts from its start, a queued one's is 0); the old instance records give way to this engine's
        ``mark``, recorded before any instance can run an event. Events it accepted that only its journal
        holds are recorded first (QUEUED, then failed with the rest). Returns how many events were failed."""
        db = self.cursor()
        n = 0
        if self._record_journal(db) or not self.created:  # (a store made now holds no event and no instance)
            n = db.execute("SELECT count(*) FROM events WHERE status IN ('QUEUED', 'RUNNING')").fetchall()[0][0]
            db.execute(_RECOVER_EVENTS, [now, now, now, reason, reason])
            db.execute("DELETE FROM instances")
        db.execute("INSERT INTO instances (engine_pid, mark) VALUES (?, ?)", [int(mark.split(":")[0]), mark])
        with self._flush_lock:
            self._stats = None  # rows changed behind the aggregates' back: load them again when asked
        return int(n)

    def _record_journal(self, db: duckdb.DuckDBPyConnection) -> int:
        """Record the events only the journal holds (QUEUED, for recovery to fail); how many."""
        rows = self.journal.read()
        missing: list[tuple[Any, ...]] = []
        if rows:
            keys = [r[0] for r in rows]
            have = {k for (k,) in db.execute("SELECT event_key FROM events WHERE event_key BETWEEN ? AND ?",
                                              [min(keys), max(keys)]).fetchall()}
            missing = [r for r in rows if r[0] not in have]
            if missing:
                self._run_batch(db, _INSERT_EVENTS, pd.DataFrame.from_records(missing, columns=EVENT_COLUMNS))
                log.warning("scf_nb: %d event(s) the previous engine accepted were only in its journal; "
                            "recorded as FAILED", len(missing))
        self.journal.clear()
        return len(missing)

    def purge(self, cutoff: float) -> int:
        """Delete ended events (and their logs) that started before ``cutoff`` (epoch seconds); the overview's
        aggregates lose them in the same step."""
        self.sync()
        db = self.cursor()
        where = f"start_time < to_timestamp(?) AND {_TERMINAL_SQL}"
        with self._flush_lock:  # one writer at a time: the rolling purge and a user's purge() may meet
            stats = self._stats
            removed: list[tuple[Any, ...]] = []
            maxima: list[tuple[Any, ...]] = []
            db.execute("BEGIN")
            try:
                n = db.execute(f"SELECT count(*) FROM events WHERE {where}", [cutoff]).fetchall()[0][0]
                if n:
                    if stats is not None:
                        removed = db.execute(
                            f"SELECT namespace, function_name, status, {_BUCKET} AS b, count(*), sum(duration_ms), "
                            f"max(duration_ms) FROM events WHERE {where} AND traced GROUP BY ALL", [cutoff]).fetchall()
                    db.execute(f"DELETE FROM logs WHERE event_key IN (SELECT event_key FROM events WHERE {where})",
                               [cutoff])
                    db.execute(f"DELETE FROM events WHERE {where}", [cutoff])
                    if stats is not None:
                        maxima = self._purged_maxima(db, stats, removed)
                db.execute("COMMIT")
            except Exception:
                db.execute("ROLLBACK")
                if removed:
                    self._stats = None  # partly taken out: load them again when asked
                raise
            for row in maxima:
                stats.set_max(*row)  # type: ignore[union-attr]
        return int(n)

    @staticmethod
    def _purged_maxima(db: duckdb.DuckDBPyConnection, stats: OverviewStats,
                       removed: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Take ``removed`` (rows of the purge, per group and bucket) out of ``stats``; return the new maximum
        of each group whose maximum may have gone with them, read from the table after the delete."""
        groups = {(ns, fn, st) for ns, fn, st, b, n, total, mx in removed
                  if stats.remove_rows(ns, fn, st, b, n, total, mx)}
        if not groups:
            return []
        params: list[Any] = []
        for g in groups:
            params += g
        cond = " OR ".join(["(namespace = ? AND function_name = ? AND status = ?)"] * len(groups))
        found = {tuple(r[:3]): r[3] for r in db.execute(
            f"SELECT namespace, function_name, status, max(duration_ms) FROM events WHERE traced AND ({cond}) "
            f"GROUP BY ALL", params).fetchall()}
        return [(*g, found.get(g)) for g in groups]

    def export(self, folder: Path) -> dict[str, int]:
        """Events, logs and functions as Parquet files in ``folder``; returns the row counts."""
        self.sync()
        folder.mkdir(parents=True, exist_ok=True)
        db = self.cursor()
        counts = {}
        for table in ("events", "logs", "functions"):
            target = str(folder / f"{table}.parquet").replace("'", "''")
            # small row groups: the writer holds one per thread, and the default (122,880 rows) of long lines
            # does not fit in a small memory limit (store_memory_mb)
            db.execute(f"COPY (SELECT * FROM {table}) TO '{target}' (FORMAT parquet, ROW_GROUP_SIZE 10000)")
            counts[table] = int(db.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
        return counts

