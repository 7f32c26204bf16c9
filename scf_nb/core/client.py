"""The one client API. Magics, widgets, the server extension and the CLI call these methods and nothing
below them; an HTTP client with the same methods can stand in for this in-process one."""

from __future__ import annotations

import operator
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import pandas as pd

from . import status as st
from .engine import Engine
from .errors import EventAborted, FunctionError, ScfError, invalid, not_found_event
from .events import Event
from .follow import LogFollower, follow_arguments
from .functions import LATEST, Function, make_function
from .observe import Changes, Subscription
from .records import EventState, key_of
from .results import decode as decode_result
from .stats import overview_frame
from .status import Status

EVENT_LIST_COLUMNS = ("request_id", "function_name", "namespace", "qualifier", "invoke_type", "status",
                      "start_time", "end_time", "duration_ms", "init_duration_ms", "billed_duration_ms",
                      "mem_usage_bytes", "error_type", "error_message", "exit_reason")
_INFO_COLUMNS = EVENT_LIST_COLUMNS[:7] + ("run_time",) + EVENT_LIST_COLUMNS[7:] + ("error_traceback", "result",
                                                                                   "traced", "instance_pid")


class WaitResult(NamedTuple):
    """What ``wait`` returns: the events that have ended and those that have not (each in the order given)."""

    done: list[Event]
    not_done: list[Event]


class Client:
    """Event management on one engine. ``scf_nb``'s module functions call the default one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- functions ------------------------------------------------------------------------------------------
    def create_function(self, name: str, code: str, *, async_run: bool = False, trace: bool = True,
                        timeout: float | None = None, concurrency: int | None = None,
                        qps_limit: float | None = None, handler: str = "main_handler",
                        namespace: str = "default", env: dict[str, str] | None = None,
                        memory_mb: int | None = None, description: str = "") -> Function:
        """Register ``code`` as function ``name`` (its ``$LATEST``); the same name again updates it.

        Raises:
            ScfError: ``InvalidParameterValue.Code`` (syntax error, with the line), ``.Handler`` (no such
                top-level function), ``.AsyncRunEnable`` (sync/async differs from creation), other bad values.
        """
        fn = make_function(name, code, async_run=async_run, trace=trace, timeout=timeout,
                           concurrency=concurrency, qps_limit=qps_limit, handler=handler, namespace=namespace,
                           env=env, memory_mb=memory_mb, description=description)
        return self.engine.create_function(fn)

    def publish_version(self, name: str, *, namespace: str = "default", description: str = "") -> str:
        """Snapshot ``$LATEST`` as an immutable version; returns its number ("1", "2", ...)."""
        return self.engine.publish_version(namespace, name, description).version

    def get_function(self, name: str, *, namespace: str = "default", qualifier: str = LATEST) -> Function:
        return self.engine.registry.get(namespace, name, qualifier)

    def list_functions(self, *, namespace: str | None = None) -> pd.DataFrame:
        """One row per function version: name, namespace, version, async_run, trace, timeout, ..."""
        rows = [fn.as_dict() for fn in self.engine.registry.all() if namespace in (None, fn.namespace)]
        cols = ["name", "namespace", "version", "async_run", "trace", "timeout", "concurrency", "qps_limit",
                "memory_mb", "handler", "description", "revision", "created_at", "updated_at"]
        frame = pd.DataFrame(rows, columns=cols)
        for c in ("created_at", "updated_at"):
            frame[c] = pd.to_datetime(frame[c], unit="s", utc=True).dt.tz_convert(_local_tz())
        return frame.sort_values(["namespace", "name", "version"], ignore_index=True)

    def delete_function(self, name: str, *, namespace: str = "default") -> None:
        """Delete a function and its versions (its event history stays). Refused while its events run."""
        self.engine.delete_function(namespace, name)

    # -- events ---------------------------------------------------------------------------------------------
    def invoke(self, name: str, event: Any = None, *, qualifier: str = LATEST,
               namespace: str = "default") -> Event:
        """Invoke a function with ``event`` (JSON data). Async functions return at once with the event
        QUEUED or RUNNING; sync ones return when it has ended.

        Raises:
            ScfError: ``ResourceNotFound.Function``, ``InvalidParameterValue.ClientContext`` (not JSON, or
                over 128 KB async / 6 MB sync), ``LimitExceeded.Qps`` (rate limit; nothing recorded).
        """
        ev = self.engine.invoke(name, event, str(qualifier), namespace)
        handle = Event(self, ev.request_id, name)
        if not ev.fn.async_run:
            self.engine.wait(ev, None)
        return handle

    def get_event(self, request_id: str) -> Event:
        """A handle on any recorded event, of this session or an earlier one."""
        rec = self._record(request_id, traced_only=True)
        return Event(self, request_id, rec["function_name"])

    def get_event_status(self, request_id: str) -> str:
        ev = self.engine.live(request_id)
        if ev is not None:
            if not ev.traced:
                raise not_found_event(request_id)
            return ev.status.value
        key = key_of(request_id)
        if key is None:
            raise not_found_event(request_id)
        rows = self.engine.store.rows("SELECT status, traced FROM events WHERE event_key = ? AND request_id = ?",
                                      [key, request_id])
        if not rows or not rows[0][1]:
            raise not_found_event(request_id)
        return rows[0][0]

    def wait_event(self, request_id: str, timeout: float | None = None) -> str:
        ev = self.engine.live(request_id)
        if ev is not None:
            status = ev.status
            return (status if status.is_terminal else self.engine.wait(ev, timeout)).value
        return self._status(request_id)

    def wait(self, events: Iterable[Event | str], *, timeout: float | None = None) -> WaitResult:
        """Block until all ``events`` (Event handles or RequestIds) have ended, or ``timeout`` seconds passed:
        one wait for many, as ``concurrent.futures.wait``.

        Returns:
            ``(done, not_done)``: the handles, each list in the order given.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for a RequestId that names no event.
        """
        handles = [e if isinstance(e, Event) else self.get_event(e) for e in events]
        live = [(h, self.engine.live(h.request_id)) for h in handles]
        self.engine.wait_all([ev for _, ev in live if ev is not None], timeout)
        done, not_done = [], []
        for h, ev in live:  # one that is not live has ended (it is on disk in its final state)
            (not_done if ev is not None and not ev.status.is_terminal else done).append(h)
        return WaitResult(done, not_done)

    def event_result(self, request_id: str, timeout: float | None = None) -> Any:
        """What the handler returned (see ``results.decode``: the value itself wherever it can be unpickled
        here, else its JSON form with a ``ResultWarning``), once the event has ended."""
        status = self.wait_event(request_id, timeout)
        if status == Status.FINISHED:
            return decode_result(*self._result_of(request_id), request_id)
        rec = self._record(request_id)
        if status == Status.FAILED:
            raise FunctionError(request_id, rec["error_type"] or "Error", rec["error_message"] or "",
                                rec["error_traceback"] or "")
        if status == Status.ABORTED:
            raise EventAborted(request_id, rec["exit_reason"] or "terminated")
        raise TimeoutError(f"event {request_id} is still {status} after {timeout} s")

    def terminate(self, request_id: str, *, grace: bool = False, wait: bool = True) -> str:
        """Stop a queued or running event; it becomes ABORTED and no other event is touched.

        Args:
            grace: SIGTERM first (the handler may catch it), SIGKILL after ``grace_seconds``.
            wait: return only once the event is ABORTED (the default).

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for an unknown id, ``FailedOperation.AsyncEventStatus``
                for an event that has already ended.
        """
        self._record(request_id, traced_only=True)
        return self._terminate(request_id, grace, wait)

    def list_events(self, function: str | None = None, *, namespace: str | None = None,
                    qualifier: str | None = None, status: str | Iterable[str] | None = None,
                    invoke_type: str | Iterable[str] | None = None, request_id: str | None = None,
                    start_time: tuple[Any, Any] | None = None, end_time: tuple[Any, Any] | None = None,
                    order: str = "DESC", orderby: str = "StartTime", offset: int = 0,
                    limit: int | None = 20) -> pd.DataFrame:
        """Events as a DataFrame, filtered as TencentCloud's ListAsyncEvents does.

        Args:
            status, invoke_type: one value or a list.
            start_time, end_time: ``(start, end)``, left-closed right-open; either may be None; each a
                datetime, a "%Y-%m-%d %H:%M:%S" string (local time) or epoch seconds.
            order: "ASC" or "DESC"; orderby: "StartTime" or "EndTime"; limit None for all.
        """
        where, params = ["traced"], []
        for column, value in (("function_name", function), ("namespace", namespace), ("qualifier", qualifier),
                              ("request_id", request_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(str(value))
        if status is not None:
            try:
                values = [st.parse(s).value for s in _as_list(status, "status")]
            except ValueError as e:
                raise invalid("Status", str(e)) from None
            where.append(f"status IN ({', '.join('?' * len(values))})")
            params += values
        if invoke_type is not None:
            values = _as_list(invoke_type, "invoke_type")
            if not set(values) <= {"Event", "RequestResponse"}:
                raise invalid("InvokeType", f"invoke_type must be 'Event' (async) or 'RequestResponse' (sync), "
                                            f"got {invoke_type!r}")
            where.append(f"invoke_type IN ({', '.join('?' * len(values))})")
            params += values
        for column, interval in (("start_time", start_time), ("end_time", end_time)):
            _time_interval(column, interval, where, params)
        direction = str(order).upper()
        if direction not in ("ASC", "DESC"):
            raise invalid("Order", f"order must be 'ASC' or 'DESC', got {order!r}")
        columns = {"StartTime": "start_time", "EndTime": "end_time"}
        if orderby not in columns:
            raise invalid("Orderby", f"orderby must be 'StartTime' or 'EndTime', got {orderby!r}")
        offset, limit = _page(offset, limit)
        sql = (f"SELECT {', '.join(EVENT_LIST_COLUMNS)} FROM events WHERE {' AND '.join(where)} "
               f"ORDER BY {columns[orderby]} {direction} NULLS LAST, event_key {direction}")
        if limit is not None:
            sql += f" LIMIT {limit}"
        sql += f" OFFSET {offset}"
        return self.engine.store.query(sql, params)

    def overview(self, function: str | None = None, *, namespace: str | None = None,
                 since: Any = None) -> pd.DataFrame:
        """One row per status (QUEUED, RUNNING, FINISHED, FAILED, ABORTED; zero when none) with ``count`` and
        duration statistics in ms: ``avg_duration_ms``, ``p50_duration_ms``, ``p95_duration_ms``,
        ``max_duration_ms`` (NaN where no event has a duration).

        Without ``since`` it reads running aggregates the store keeps (no scan of the table): counts, avg and
        max are exact; p50/p95 are estimated from a log-scale histogram (16 buckets per doubling) and are
        within 2.2 % of the exact ``quantile_cont`` value for durations from 1 us to ~35 years (a duration
        under 1 us counts as 0). With ``since`` (events that started at or after it) all of it is computed
        exactly by a query.
        """
        if since is None:
            return overview_frame(self.engine.store.overview(namespace, function))
        where, params = ["traced"], []
        if function is not None:
            where.append("function_name = ?")
            params.append(function)
        if namespace is not None:
            where.append("namespace = ?")
            params.append(namespace)
        where.append("start_time >= to_timestamp(?)")
        params.append(_epoch(since, "since"))
        rows = self.engine.store.rows(
            "SELECT status, n, a, q[1], q[2], m FROM (SELECT status, count(*) AS n, avg(duration_ms) AS a, "
            "quantile_cont(duration_ms, [0.5, 0.95]) AS q, max(duration_ms) AS m FROM events "
            f"WHERE {' AND '.join(where)} GROUP BY status)", params)
        return overview_frame({r[0]: r[1:] for r in rows})

    def logs(self, request_id: str, *, since_seq: int | None = None, stream: str | None = None) -> pd.DataFrame:
        """The event's lines in ``seq`` order: columns ``seq, ts, stream, line``. ``since_seq`` returns only
        the lines after that one, so a caller can follow a running event. The logs of an untraced event
        (``trace=False``) are found too: as in SCF, logs are kept whatever status tracking says.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for a RequestId that names no event (or one purged).
        """
        return self._logs(request_id, since_seq, stream)

    def search_logs(self, text: str, *, function: str | None = None, namespace: str | None = None,
                    limit: int = 1000) -> pd.DataFrame:
        """Lines containing ``text`` (case-insensitive), newest events first, with their RequestId; untraced
        events' lines too."""
        if not isinstance(text, str) or not text:
            raise invalid("SearchText", "search_logs needs a non-empty string")
        where, params = ["contains(lower(l.line), lower(?))"], [text]
        if function is not None:
            where.append("e.function_name = ?")
            params.append(function)
        if namespace is not None:
            where.append("e.namespace = ?")
            params.append(namespace)
        _, limit = _page(0, limit)
        return self.engine.store.query(
            "SELECT e.request_id, e.function_name, l.seq, l.ts, l.stream, l.line FROM logs l "
            f"JOIN events e USING (event_key) WHERE {' AND '.join(where)} "
            f"ORDER BY l.event_key DESC, l.seq LIMIT {limit}", params)

    def export(self, path: str | Path) -> dict[str, int]:
        """Write events, logs and functions as Parquet files into folder ``path``; returns row counts.
        Use it to keep records past the retention window."""
        return self.engine.store.export(Path(path))

    def purge(self) -> int:
        """Apply the retention window now (the engine also does it on its own); returns events deleted."""
        return self.engine.purge()

    # -- observation (observe.py: one change feed fed by the store's commits; nothing polls) -----------------
    def follow(self, request_id: str, *, since_seq: int | None = None,
               timeout: float | None = None) -> LogFollower:
        """An iterator over the event's log lines (``LogLine``: ``seq, ts, stream, line``) in ``seq`` order, each
        once: those stored (after ``since_seq``), then each one as the store commits it, until the event has
        ended and its last line was given; at once after the stored lines for an ended event. Untraced events'
        lines too. ``close()`` it (or break out of the loop) to stop early: the event runs on.

        Args:
            since_seq: give only the lines after this one.
            timeout: stop waiting for new lines this many seconds after the call (the iteration just ends).

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for a RequestId that names no event,
                ``InvalidParameterValue.SinceSeq`` / ``.Timeout`` for bad values.
        """
        after, limit = follow_arguments(since_seq, timeout)
        return self.engine.store.feed.follow(self._key(request_id), after, lambda: self._ended(request_id), limit)

    def add_done_callback(self, event: Event | str, fn: Callable[[Event], Any]) -> None:
        """Call ``fn(event)`` once when the event ends, as ``concurrent.futures`` does: at once, in this thread,
        if it has ended; else on the change feed's callback thread (never the engine's) once its end is
        committed (within ``flush_interval``). An exception in ``fn`` is logged (logger ``scf_nb``) and
        harms nothing. Callbacks share one thread: keep them short.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for an unknown RequestId, ``InvalidParameterValue.Callback``
                when ``fn`` is not callable.
        """
        if not callable(fn):
            raise invalid("Callback", f"add_done_callback needs a callable, got {fn!r}")
        if isinstance(event, Event):
            handle = event
            self._status(handle.request_id)  # it exists
        else:
            handle = Event(self, event, self._record(event)["function_name"])
        rid = handle.request_id
        self.engine.store.feed.add_done_callback(rid, lambda: fn(handle), lambda: self._ended(rid))

    def subscribe(self, fn: Callable[[Changes], Any]) -> Subscription:
        """Call ``fn(changes)`` after each commit of the store that changed events (``Changes``: the RequestIds
        of events new or changed, of those with new log lines, of those that ended; merged into one call while
        ``fn`` was busy; ``overflow`` when too many to list). ``fn`` runs on a thread of its own: one that
        raises (logged) or blocks costs no other listener and not the engine. Stop with ``.close()`` or a
        ``with`` block.

        Raises:
            ScfError: ``InvalidParameterValue.Callback`` when ``fn`` is not callable.
        """
        if not callable(fn):
            raise invalid("Callback", f"subscribe needs a callable, got {fn!r}")
        return self.engine.store.feed.subscribe(fn)

    def close(self) -> None:
        self.engine.close()

    # -- used by Event (untraced events too: the handle works, the tracking views do not list them) ---------
    def _ended(self, request_id: str) -> bool:
        return st.parse(self._status(request_id)).is_terminal

    def _status(self, request_id: str) -> str:
        ev = self.engine.live(request_id)
        if ev is not None:
            return ev.status.value
        return self._record(request_id)["status"]

    def _terminate(self, request_id: str, grace: bool, wait: bool) -> str:
        ev = self.engine.live(request_id)
        if ev is None or ev.status.is_terminal:
            status = self._record(request_id)["status"]
            raise ScfError("FailedOperation.AsyncEventStatus",
                           f"event {request_id} has already ended ({status}); only QUEUED or RUNNING events "
                           f"can be terminated")
        self.engine.terminate(ev, grace)
        if not wait:
            return ev.status.value
        limit = (self.engine.config.grace_seconds if grace else 0) + 30
        return self.engine.wait(ev, limit).value

    def _logs(self, request_id: str, since_seq: int | None, stream: str | None) -> pd.DataFrame:
        key = self._key(request_id)
        where, params = ["event_key = ?"], [key]
        if since_seq is not None:
            seq = _whole(since_seq)
            if seq is None or seq < 0:
                raise invalid("SinceSeq", f"since_seq must be an integer >= 0, got {since_seq!r}")
            where.append("seq > ?")
            params.append(seq)
        if stream is not None:
            if stream not in ("stdout", "stderr"):
                raise invalid("Stream", f"stream must be 'stdout' or 'stderr', got {stream!r}")
            where.append("stream = ?")
            params.append(stream)
        return self.engine.store.query(
            f"SELECT seq, ts, stream, line FROM logs WHERE {' AND '.join(where)} ORDER BY seq", params)

    def _info(self, request_id: str) -> dict[str, Any]:
        rec = self._record(request_id)
        info = {c: rec.get(c) for c in _INFO_COLUMNS if c != "result"}
        info["error"] = ({"type": rec["error_type"], "message": rec["error_message"],
                          "traceback": rec["error_traceback"]} if rec["error_type"] else None)
        return info

    def _result_of(self, request_id: str) -> tuple[str | None, bytes | None]:
        """The stored result: its JSON text and its pickle (read only here: info() never loads the pickle)."""
        ev = self.engine.live(request_id)
        if ev is not None:
            return ev.result, ev.result_pickle
        rows = self.engine.store.rows("SELECT result, result_pickle FROM events WHERE event_key = ? AND "
                                      "request_id = ?", [key_of(request_id), request_id])
        if not rows:
            raise not_found_event(request_id)
        return rows[0][0], rows[0][1]

    def _key(self, request_id: str) -> int:
        ev = self.engine.live(request_id)
        if ev is not None:
            return ev.key
        self._record(request_id)
        return key_of(request_id)  # type: ignore[return-value]

    def _record(self, request_id: str, traced_only: bool = False) -> dict[str, Any]:
        """The event's fields: from memory while it is live, else from the store."""
        ev = self.engine.live(request_id)
        if ev is not None:
            if traced_only and not ev.traced:
                raise not_found_event(request_id)
            return _from_state(ev)
        key = key_of(request_id)
        if key is None:
            raise not_found_event(request_id)
        cur = self.engine.store
        cols = ", ".join(_INFO_COLUMNS)
        rows = cur.rows(f"SELECT {cols} FROM events WHERE event_key = ? AND request_id = ?", [key, request_id])
        if not rows or (traced_only and not rows[0][_INFO_COLUMNS.index("traced")]):
            raise not_found_event(request_id)
        return dict(zip(_INFO_COLUMNS, rows[0]))


def _from_state(ev: EventState) -> dict[str, Any]:
    rec = {c: getattr(ev, c) for c in _INFO_COLUMNS}
    rec["status"] = ev.status.value
    for c in ("start_time", "run_time", "end_time"):
        if rec[c] is not None:
            rec[c] = datetime.fromtimestamp(rec[c]).astimezone()
    return rec


def _local_tz() -> Any:
    return datetime.now().astimezone().tzinfo


def _as_list(value: Any, name: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise invalid(name.capitalize(), f"{name} must be a string or a list of strings, got {value!r}")
    return values


def _epoch(value: Any, name: str) -> float:
    """Epoch seconds from a datetime, a pandas Timestamp, a string (naive means local time) or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise invalid("TimeInterval", f"{name}: cannot read {value!r} as a time; use 'YYYY-MM-DD HH:MM:SS', "
                                      f"a datetime or epoch seconds") from None
    if ts is pd.NaT:
        raise invalid("TimeInterval", f"{name}: {value!r} is not a time")
    if ts.tzinfo is None:
        return ts.to_pydatetime().astimezone().timestamp()
    return ts.timestamp()


def _time_interval(column: str, interval: Any, where: list[str], params: list[Any]) -> None:
    if interval is None:
        return
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise invalid("TimeInterval", f"{column} must be a (start, end) pair, got {interval!r}")
    start, end = interval
    if start is not None:
        where.append(f"{column} >= to_timestamp(?)")
        params.append(_epoch(start, column))
    if end is not None:
        where.append(f"{column} < to_timestamp(?)")
        params.append(_epoch(end, column))


def _whole(value: Any) -> int | None:
    """An int from any integer type (numpy's too, as ``df.seq.iloc[-1]`` gives); None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _page(offset: Any, limit: Any) -> tuple[int, int | None]:
    off = _whole(offset)
    if off is None or off < 0:
        raise invalid("Offset", f"offset must be an integer >= 0, got {offset!r}")
    if limit is None:
        return off, None
    lim = _whole(limit)
    if lim is None or lim < 1:
        raise invalid("Limit", f"limit must be a positive integer or None, got {limit!r}")
    return off, lim
