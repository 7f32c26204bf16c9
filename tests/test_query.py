"""The query layer: each request's dataclass checks its arguments as the client API always did (same codes,
same messages), so a REST handler building them gets the Python API's errors; and it answers from the store."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

import pytest

from scf_nb.core.errors import ScfError
from scf_nb.core.records import key_of
from scf_nb.store import query
from scf_nb.store.query import EventFilter, LogFilter, OverviewFilter, SearchFilter

BAD_FILTERS = [
    (dict(status="DONE"), "InvalidParameterValue.Status",
     "unknown status 'DONE': use one of QUEUED, RUNNING, FINISHED, FAILED, ABORTED"),
    (dict(status=[]), "InvalidParameterValue.Status", "status must be a string or a list of strings, got []"),
    (dict(status=["FINISHED", 3]), "InvalidParameterValue.Status",
     "status must be a string or a list of strings, got ['FINISHED', 3]"),
    (dict(invoke_type="Nope"), "InvalidParameterValue.InvokeType",
     "invoke_type must be 'Event' (async) or 'RequestResponse' (sync), got 'Nope'"),
    (dict(start_time="2024-01-01 00:00:00"), "InvalidParameterValue.TimeInterval",
     "start_time must be a (start, end) pair, got '2024-01-01 00:00:00'"),
    (dict(start_time=("not a time", None)), "InvalidParameterValue.TimeInterval",
     "start_time: cannot read 'not a time' as a time; use 'YYYY-MM-DD HH:MM:SS', a datetime or epoch seconds"),
    (dict(end_time=(None, "2024-13-45 99:00:00")), "InvalidParameterValue.TimeInterval",
     "end_time: cannot read '2024-13-45 99:00:00' as a time; use 'YYYY-MM-DD HH:MM:SS', a datetime or epoch "
     "seconds"),
    (dict(order="UP"), "InvalidParameterValue.Order", "order must be 'ASC' or 'DESC', got 'UP'"),
    (dict(orderby="Start"), "InvalidParameterValue.Orderby", "orderby must be 'StartTime' or 'EndTime', got 'Start'"),
    (dict(offset=-1), "InvalidParameterValue.Offset", "offset must be an integer >= 0, got -1"),
    (dict(offset=1.5), "InvalidParameterValue.Offset", "offset must be an integer >= 0, got 1.5"),
    (dict(limit=0), "InvalidParameterValue.Limit", "limit must be a positive integer or None, got 0"),
    (dict(limit=True), "InvalidParameterValue.Limit", "limit must be a positive integer or None, got True"),
    # checked in this order: the first bad argument is the one named
    (dict(status="DONE", order="UP"), "InvalidParameterValue.Status",
     "unknown status 'DONE': use one of QUEUED, RUNNING, FINISHED, FAILED, ABORTED"),
]


def raised(call: Any) -> tuple[str, str]:
    with pytest.raises(ScfError) as e:
        call()
    return e.value.code, e.value.message


@pytest.mark.parametrize("kwargs, code, message", BAD_FILTERS)
def test_a_bad_filter_gives_the_same_error_as_list_events(scf: Any, kwargs: dict[str, Any], code: str,
                                                          message: str) -> None:
    assert raised(lambda: scf.list_events(**kwargs)) == (code, message)
    assert raised(lambda: EventFilter.from_args(**kwargs)) == (code, message)
    assert raised(lambda: EventFilter(**kwargs)) == (code, message)  # as a REST handler would build it


def test_a_filter_is_frozen_and_normalized_once_for_all() -> None:
    f = EventFilter.from_args("fn", status=["finished", "FAILED"], invoke_type="Event", order="asc",
                              start_time=(datetime(2024, 1, 1, tzinfo=timezone.utc), None), limit=None)
    assert (f.status, f.invoke_type, f.order, f.limit) == (("FINISHED", "FAILED"), ("Event",), "ASC", None)
    assert f.start_time == (1704067200.0, None)
    assert EventFilter(**dataclasses.asdict(f)) == f  # checking what is already checked changes nothing
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.limit = 5  # type: ignore[misc]
    assert EventFilter(status="running").status == ("RUNNING",)


def test_the_other_requests_check_their_arguments() -> None:
    assert raised(lambda: LogFilter(since_seq=-1)) == (
        "InvalidParameterValue.SinceSeq", "since_seq must be an integer >= 0, got -1")
    assert raised(lambda: LogFilter(since_seq="3")) == (  # type: ignore[arg-type]
        "InvalidParameterValue.SinceSeq", "since_seq must be an integer >= 0, got '3'")
    assert raised(lambda: LogFilter(stream="both")) == (
        "InvalidParameterValue.Stream", "stream must be 'stdout' or 'stderr', got 'both'")
    assert raised(lambda: LogFilter(limit=0)) == (
        "InvalidParameterValue.Limit", "limit must be a positive integer or None, got 0")
    assert raised(lambda: LogFilter(limit="5")) == (  # type: ignore[arg-type]
        "InvalidParameterValue.Limit", "limit must be a positive integer or None, got '5'")
    assert LogFilter(limit=None).limit is None
    assert raised(lambda: SearchFilter("")) == ("InvalidParameterValue.SearchText",
                                                "search_logs needs a non-empty string")
    assert raised(lambda: SearchFilter("x", limit=0)) == (
        "InvalidParameterValue.Limit", "limit must be a positive integer or None, got 0")
    assert raised(lambda: OverviewFilter(since="yesterday-ish"))[0] == "InvalidParameterValue.TimeInterval"
    assert OverviewFilter(since="2024-01-01 00:00:00+00:00").since == 1704067200.0


def test_the_same_errors_through_the_client(scf: Any) -> None:
    scf.create_function("f", "def main_handler(event, context):\n    print('hi')\n", async_run=True)
    ev = scf.invoke("f")
    ev.result(timeout=60)
    assert raised(lambda: scf.logs(ev.request_id, stream="both")) == raised(lambda: LogFilter(stream="both"))
    assert raised(lambda: scf.search_logs("")) == raised(lambda: SearchFilter(""))
    assert raised(lambda: scf.overview(since="yesterday-ish")) == raised(
        lambda: OverviewFilter(since="yesterday-ish"))
    assert scf.search_logs("HI", limit=None)["line"].tolist() == ["hi"]  # all lines (was a DuckDB error)
    # an unknown id is named before a bad filter
    assert raised(lambda: scf.logs("nope", stream="both"))[0] == "ResourceNotFound.AsyncEvent"


def test_queries_answer_from_the_store(scf: Any) -> None:
    scf.create_function("f", "def main_handler(event, context):\n    print('line', event)\n    return event\n",
                        async_run=True)
    events = [scf.invoke("f", i) for i in range(3)]
    scf.wait(events, timeout=60)
    store = scf.client().engine.store
    frame = query.list_events(store, EventFilter(function="f", order="ASC"))
    assert frame["request_id"].tolist() == [e.request_id for e in events]
    assert frame.equals(scf.list_events("f", order="ASC"))
    assert query.list_events(store, EventFilter(offset=1, limit=1, order="ASC"))["request_id"].tolist() == [
        events[1].request_id]
    assert query.event_status(store, events[0].request_id) == ("FINISHED", True)
    assert query.event_result(store, events[2].request_id) == ("2", None)
    assert query.event_record(store, events[1].request_id)["status"] == "FINISHED"  # type: ignore[index]
    assert query.event_record(store, "not one of ours") is None
    key = key_of(events[0].request_id)
    assert query.logs(store, key, LogFilter())["line"].tolist() == ["line 0"]  # type: ignore[arg-type]
    found = query.search_logs(store, SearchFilter("LINE", function="f", limit=None))
    assert sorted(found["line"]) == ["line 0", "line 1", "line 2"]
    assert query.overview(store, OverviewFilter(function="f")).set_index("status")["count"]["FINISHED"] == 3


def test_count_events_counts_what_list_events_pages_through(scf: Any) -> None:
    scf.create_function("ok", "def main_handler(event, context):\n    return event\n", async_run=True)
    scf.create_function("bad", "def main_handler(event, context):\n    raise ValueError(event)\n", async_run=True)
    events = [scf.invoke("ok", i) for i in range(5)] + [scf.invoke("bad", i) for i in range(2)]
    scf.wait(events, timeout=60)
    assert scf.count_events() == 7
    assert scf.count_events("ok") == 5 == len(scf.list_events("ok", limit=None))
    assert scf.count_events(status="FAILED") == 2
    assert scf.count_events("ok", status=["FAILED", "ABORTED"]) == 0
    assert scf.count_events(request_id=events[0].request_id) == 1
    # the page does not change the total: TotalCount of ListAsyncEvents
    assert len(scf.list_events(offset=5, limit=20)) == 2 and scf.count_events() == 7
    assert raised(lambda: scf.count_events(status="DONE")) == raised(lambda: scf.list_events(status="DONE"))
