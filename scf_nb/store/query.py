"""The store's read side: the checks of every filter, page, id and time window the client API takes, and the
SQL that answers them, run through the ``Store``.

Each kind of request is a frozen dataclass whose constructor checks and normalizes its fields (``EventFilter``,
``LogFilter``, ``SearchFilter``, ``OverviewFilter``), raising the ``ScfError`` a caller of ``list_events`` gets
for the same input; ``from_args`` takes the arguments as the client API does (a status or a list of them,
times as datetimes, text or epoch seconds). So the Python API and a REST handler built on these give the same
errors, and only the store's layer (``store.py``, ``stats.py``, ``logbuffer.py``, this module) holds SQL.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..core import status as st
from ..core.errors import invalid
from ..core.records import key_of
from .stats import overview_frame
from .store import Store

EVENT_LIST_COLUMNS = ("request_id", "function_name", "namespace", "qualifier", "invoke_type", "status",
                      "start_time", "end_time", "duration_ms", "init_duration_ms", "billed_duration_ms",
                      "mem_usage_bytes", "error_type", "error_message", "exit_reason")
INFO_COLUMNS = EVENT_LIST_COLUMNS[:7] + ("run_time",) + EVENT_LIST_COLUMNS[7:] + ("error_traceback", "result",
                                                                                  "traced", "instance_pid")
INVOKE_TYPES = ("Event", "RequestResponse")
ORDER_COLUMNS = {"StartTime": "start_time", "EndTime": "end_time"}
Interval = tuple[float | None, float | None]  # epoch seconds, left-closed right-open


# -- checks (each idempotent: a value it returned passes again unchanged) --------------------------------------
def as_list(value: Any, name: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise invalid(name.capitalize(), f"{name} must be a string or a list of strings, got {value!r}")
    return values


def epoch(value: Any, name: str) -> float:
    """Epoch seconds from a datetime, a pandas Timestamp, a string (naive means local time) or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise invalid("TimeInterval", f"{name}: cannot read {value!r} as a time; use 'YYYY-MM-DD HH:MM:SS', "
                                      f"a datetime or epoch seconds") from None
    if pd.isna(ts):  # pd.Timestamp gives NaT for 'NaT', '' or None (its stubs say Timestamp)
        raise invalid("TimeInterval", f"{name}: {value!r} is not a time")
    if ts.tzinfo is None:
        return float(ts.to_pydatetime().astimezone().timestamp())
    return float(ts.timestamp())


def interval(column: str, value: Any) -> Interval | None:
    """A ``(start, end)`` pair in epoch seconds (either may be None), or None for no window."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise invalid("TimeInterval", f"{column} must be a (start, end) pair, got {value!r}")
    start, end = value
    return (None if start is None else epoch(start, column), None if end is None else epoch(end, column))


def whole(value: Any) -> int | None:
    """An int from any integer type (numpy's too, as ``df.seq.iloc[-1]`` gives); None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def page(offset: Any, limit: Any) -> tuple[int, int | None]:
    off = whole(offset)
    if off is None or off < 0:
        raise invalid("Offset", f"offset must be an integer >= 0, got {offset!r}")
    if limit is None:
        return off, None
    lim = whole(limit)
    if lim is None or lim < 1:
        raise invalid("Limit", f"limit must be a positive integer or None, got {limit!r}")
    return off, lim


def statuses(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return tuple(st.parse(s).value for s in as_list(value, "status"))
    except ValueError as e:
        raise invalid("Status", str(e)) from None


def invoke_types(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    values = as_list(value, "invoke_type")
    if not set(values) <= set(INVOKE_TYPES):
        raise invalid("InvokeType", f"invoke_type must be 'Event' (async) or 'RequestResponse' (sync), "
                                    f"got {value!r}")
    return tuple(values)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# -- the requests ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventFilter:
    """What ``list_events`` selects: TencentCloud ListAsyncEvents' filters, an order and a page.

    Raises (constructor and ``from_args``):
        ScfError: ``InvalidParameterValue.Status``, ``.InvokeType``, ``.TimeInterval``, ``.Order``,
            ``.Orderby``, ``.Offset`` or ``.Limit``, checked in that order.
    """

    function: str | None = None
    namespace: str | None = None
    qualifier: str | None = None
    status: tuple[str, ...] | None = None
    invoke_type: tuple[str, ...] | None = None
    request_id: str | None = None
    start_time: Interval | None = None
    end_time: Interval | None = None
    order: str = "DESC"
    orderby: str = "StartTime"
    offset: int = 0
    limit: int | None = 20

    def __post_init__(self) -> None:
        put = object.__setattr__
        for name in ("function", "namespace", "qualifier", "request_id"):
            put(self, name, _text(getattr(self, name)))
        put(self, "status", statuses(self.status))
        put(self, "invoke_type", invoke_types(self.invoke_type))
        put(self, "start_time", interval("start_time", self.start_time))
        put(self, "end_time", interval("end_time", self.end_time))
        direction = str(self.order).upper()
        if direction not in ("ASC", "DESC"):
            raise invalid("Order", f"order must be 'ASC' or 'DESC', got {self.order!r}")
        put(self, "order", direction)
        if self.orderby not in ORDER_COLUMNS:
            raise invalid("Orderby", f"orderby must be 'StartTime' or 'EndTime', got {self.orderby!r}")
        offset, limit = page(self.offset, self.limit)
        put(self, "offset", offset)
        put(self, "limit", limit)

    @classmethod
    def from_args(cls, function: str | None = None, *, namespace: str | None = None,
                  qualifier: str | None = None, status: str | Iterable[str] | None = None,
                  invoke_type: str | Iterable[str] | None = None, request_id: str | None = None,
                  start_time: tuple[Any, Any] | None = None, end_time: tuple[Any, Any] | None = None,
                  order: str = "DESC", orderby: str = "StartTime", offset: int = 0,
                  limit: int | None = 20) -> EventFilter:
        """The filter for ``list_events``' arguments, as it takes them (see there)."""
        return cls(function, namespace, qualifier, statuses(status), invoke_types(invoke_type), request_id,
                   interval("start_time", start_time), interval("end_time", end_time), order, orderby,
                   offset, limit)

    def sql(self) -> tuple[str, list[Any]]:
        """The query and its parameters."""
        where, params = self._where()
        d = self.order
        order = f"ORDER BY {ORDER_COLUMNS[self.orderby]} {d} NULLS LAST, event_key {d}"
        columns = ", ".join(EVENT_LIST_COLUMNS)
        if self.limit is None:
            return f"SELECT {columns} FROM events WHERE {' AND '.join(where)} {order} OFFSET {self.offset}", params
        # A page: its keys first, sorted on two columns only, then those rows' columns (DuckDB's top-N with an
        # offset reads every column of every row otherwise: 27 vs 15 ms for page 2 of 100k events here).
        keys = (f"SELECT event_key FROM events WHERE {' AND '.join(where)} {order} "
                f"LIMIT {self.limit} OFFSET {self.offset}")
        return f"SELECT {columns} FROM events WHERE event_key IN ({keys}) {order}", params

    def count_sql(self) -> tuple[str, list[Any]]:
        """The query counting every event the filter matches (order, offset and limit aside), its parameters."""
        where, params = self._where()
        return f"SELECT count(*) FROM events WHERE {' AND '.join(where)}", params

    def _where(self) -> tuple[list[str], list[Any]]:
        where: list[str] = ["traced"]
        params: list[Any] = []
        _equal(where, params, function_name=self.function, namespace=self.namespace, qualifier=self.qualifier,
               request_id=self.request_id)
        for column, values in (("status", self.status), ("invoke_type", self.invoke_type)):
            if values is not None:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += values
        for column, window in (("start_time", self.start_time), ("end_time", self.end_time)):
            start, end = window or (None, None)
            if start is not None:
                where.append(f"{column} >= to_timestamp(?)")
                params.append(start)
            if end is not None:
                where.append(f"{column} < to_timestamp(?)")
                params.append(end)
        return where, params


@dataclass(frozen=True)
class LogFilter:
    """Which of an event's lines ``logs`` returns: those after ``since_seq``, of one ``stream``, at most ``limit``.

    Raises:
        ScfError: ``InvalidParameterValue.SinceSeq`` (not an integer >= 0), ``.Stream`` (not stdout/stderr),
            ``.Limit`` (not a positive integer or None).
    """

    since_seq: int | None = None
    stream: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.since_seq is not None:
            seq = whole(self.since_seq)
            if seq is None or seq < 0:
                raise invalid("SinceSeq", f"since_seq must be an integer >= 0, got {self.since_seq!r}")
            object.__setattr__(self, "since_seq", seq)
        if self.stream is not None and self.stream not in ("stdout", "stderr"):
            raise invalid("Stream", f"stream must be 'stdout' or 'stderr', got {self.stream!r}")
        _, limit = page(0, self.limit)
        object.__setattr__(self, "limit", limit)


@dataclass(frozen=True)
class SearchFilter:
    """What ``search_logs`` looks for: lines containing ``text`` (any case), at most ``limit`` (None: all).

    Raises:
        ScfError: ``InvalidParameterValue.SearchText`` (not a non-empty string), ``.Limit``.
    """

    text: str
    function: str | None = None
    namespace: str | None = None
    limit: int | None = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise invalid("SearchText", "search_logs needs a non-empty string")
        _, limit = page(0, self.limit)
        object.__setattr__(self, "limit", limit)


@dataclass(frozen=True)
class OverviewFilter:
    """Which events ``overview`` sums up; ``since`` (epoch seconds, or anything ``epoch`` reads): those that
    started at or after it, computed exactly by a query, else the store's running aggregates.

    Raises:
        ScfError: ``InvalidParameterValue.TimeInterval`` for a ``since`` that is not a time.
    """

    function: str | None = None
    namespace: str | None = None
    since: float | None = None

    def __post_init__(self) -> None:
        if self.since is not None:
            object.__setattr__(self, "since", epoch(self.since, "since"))


# -- the queries -----------------------------------------------------------------------------------------------
def list_events(store: Store, f: EventFilter) -> pd.DataFrame:
    return store.query(*f.sql())


def count_events(store: Store, f: EventFilter) -> int:
    return int(store.rows(*f.count_sql())[0][0])


def overview(store: Store, f: OverviewFilter) -> pd.DataFrame:
    if f.since is None:
        return overview_frame(store.overview(f.namespace, f.function))
    where: list[str] = ["traced"]
    params: list[Any] = []
    _equal(where, params, function_name=f.function, namespace=f.namespace)
    where.append("start_time >= to_timestamp(?)")
    params.append(f.since)
    rows = store.rows(
        "SELECT status, n, a, q[1], q[2], m FROM (SELECT status, count(*) AS n, avg(duration_ms) AS a, "
        "quantile_cont(duration_ms, [0.5, 0.95]) AS q, max(duration_ms) AS m FROM events "
        f"WHERE {' AND '.join(where)} GROUP BY status)", params)
    return overview_frame({r[0]: r[1:] for r in rows})


def logs(store: Store, event_key: int, f: LogFilter) -> pd.DataFrame:
    """Lines of the event with ``event_key``, in ``seq`` order: ``seq, ts, stream, line``."""
    where: list[str] = ["event_key = ?"]
    params: list[Any] = [event_key]
    if f.since_seq is not None:
        where.append("seq > ?")
        params.append(f.since_seq)
    _equal(where, params, stream=f.stream)
    sql = f"SELECT seq, ts, stream, line FROM logs WHERE {' AND '.join(where)} ORDER BY seq"
    return store.query(sql if f.limit is None else f"{sql} LIMIT {f.limit}", params)


def last_log_seq(store: Store, event_key: int | None) -> int:
    """The seq of the event's last stored line; 0 if it has none."""
    rows = store.rows("SELECT coalesce(max(seq), 0) FROM logs WHERE event_key = ?", [event_key])
    return int(rows[0][0])


def search_logs(store: Store, f: SearchFilter) -> pd.DataFrame:
    where: list[str] = ["contains(lower(l.line), lower(?))"]
    params: list[Any] = [f.text]
    _equal(where, params, **{"e.function_name": f.function, "e.namespace": f.namespace})
    sql = ("SELECT e.request_id, e.function_name, l.seq, l.ts, l.stream, l.line FROM logs l "
           f"JOIN events e USING (event_key) WHERE {' AND '.join(where)} ORDER BY l.event_key DESC, l.seq")
    return store.query(sql if f.limit is None else f"{sql} LIMIT {f.limit}", params)


def _equal(where: list[str], params: list[Any], **columns: Any) -> None:
    """``column = value`` conditions for the values that are not None (the names are ours, never input)."""
    for column, value in columns.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)


def _one(store: Store, columns: str, request_id: str) -> tuple[Any, ...] | None:
    """One event's ``columns`` by its RequestId (found by the integer key in it); None if there is none."""
    key = key_of(request_id)
    if key is None:
        return None
    rows = store.rows(f"SELECT {columns} FROM events WHERE event_key = ? AND request_id = ?", [key, request_id])
    return rows[0] if rows else None


def event_record(store: Store, request_id: str) -> dict[str, Any] | None:
    """The stored event's ``INFO_COLUMNS`` (the result's JSON text, never its pickle); None if there is none."""
    row = _one(store, ", ".join(INFO_COLUMNS), request_id)
    return None if row is None else dict(zip(INFO_COLUMNS, row, strict=True))


def event_status(store: Store, request_id: str) -> tuple[str, bool] | None:
    """The stored event's status and whether it is traced; None if there is none."""
    row = _one(store, "status, traced", request_id)
    return None if row is None else (row[0], bool(row[1]))


def event_result(store: Store, request_id: str) -> tuple[str | None, bytes | None] | None:
    """The stored result: its JSON text and its pickle; None if there is no such event."""
    row = _one(store, "result, result_pickle", request_id)
    return None if row is None else (row[0], row[1])
