"""The embedded client: ``protocol.ClientProtocol`` on an engine in this process. Magics, widgets, the server
extension and the CLI call the protocol's methods and nothing below them; an HTTP client implementing the
same protocol can stand in for this one. Each method's contract is its docstring in the protocol.

Reads come from the engine's memory while an event is live, else from the store through ``query.py``, which
also checks every filter, page and window: this module holds no SQL."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..core.errors import EventAborted, FunctionError, ScfError, invalid, not_found_event
from ..core.functions import LATEST, Function, make_function
from ..core.records import EventState, key_of
from ..core.results import decode as decode_result
from ..core.status import Status
from ..engine.engine import Engine
from ..store import query
from ..store.follow import Follower, follow_arguments
from ..store.observe import Changes, Subscription
from ..store.query import EVENT_LIST_COLUMNS as EVENT_LIST_COLUMNS
from ..store.query import INFO_COLUMNS as _INFO_COLUMNS
from .events import Event
from .protocol import WaitResult, documented

if TYPE_CHECKING:
    from .protocol import ClientProtocol

__all__ = ["Client", "WaitResult", "EVENT_LIST_COLUMNS"]


@documented
class Client:
    """Event management on one engine in this process. ``scf_nb``'s module functions call the default one
    (``scf_nb.client()``).

    Attributes:
        engine: the engine (embedded clients only; not part of the protocol).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called or the engine stopped."""
        return self.engine.closed

    # -- functions ------------------------------------------------------------------------------------------
    def create_function(self, name: str, code: str, *, async_run: bool = False, trace: bool = True,
                        timeout: float | None = None, concurrency: int | None = None,
                        qps_limit: float | None = None, handler: str = "main_handler",
                        namespace: str = "default", env: dict[str, str] | None = None,
                        memory_mb: int | None = None, description: str = "", num_cpus: float | None = None,
                        num_gpus: float | None = None, resources: dict[str, float] | None = None) -> Function:
        fn = make_function(name, code, async_run=async_run, trace=trace, timeout=timeout,
                           concurrency=concurrency, qps_limit=qps_limit, handler=handler, namespace=namespace,
                           env=env, memory_mb=memory_mb, description=description, num_cpus=num_cpus,
                           num_gpus=num_gpus, resources=resources)
        return self.engine.create_function(fn)

    def publish_version(self, name: str, *, namespace: str = "default", description: str = "") -> str:
        return self.engine.publish_version(namespace, name, description).version

    def get_function(self, name: str, *, namespace: str = "default", qualifier: str = LATEST) -> Function:
        return self.engine.registry.get(namespace, name, qualifier)

    def list_functions(self, *, namespace: str | None = None) -> pd.DataFrame:
        rows = [fn.as_dict() for fn in self.engine.registry.all() if namespace in (None, fn.namespace)]
        cols = ["name", "namespace", "version", "async_run", "trace", "timeout", "concurrency", "qps_limit",
                "memory_mb", "num_cpus", "num_gpus", "resources", "handler", "description", "revision", "created_at",
                "updated_at"]
        frame = pd.DataFrame(rows, columns=cols)
        for c in ("created_at", "updated_at"):
            frame[c] = pd.to_datetime(frame[c], unit="s", utc=True).dt.tz_convert(_local_tz())
        return frame.sort_values(["namespace", "name", "version"], ignore_index=True)

    def delete_function(self, name: str, *, namespace: str = "default") -> None:
        self.engine.delete_function(namespace, name)

    # -- events ---------------------------------------------------------------------------------------------
    def invoke(self, name: str, event: Any = None, *, qualifier: str = LATEST,
               namespace: str = "default", wait: bool = True) -> Event:
        ev = self.engine.invoke(name, event, str(qualifier), namespace)
        handle = Event(self, ev.request_id, name)
        if wait and not ev.fn.async_run:
            self.engine.wait(ev, None)
        return handle

    def get_event(self, request_id: str) -> Event:
        rec = self._record(request_id, traced_only=True)
        return Event(self, request_id, rec["function_name"])

    def get_event_status(self, request_id: str) -> str:
        return self._status(request_id, traced_only=True)

    def event_status(self, request_id: str) -> str:
        return self._status(request_id, traced_only=False)

    def event_info(self, request_id: str) -> dict[str, Any]:
        rec = self._record(request_id)
        info = {c: rec.get(c) for c in _INFO_COLUMNS if c != "result"}
        info["error"] = ({"type": rec["error_type"], "message": rec["error_message"],
                          "traceback": rec["error_traceback"]} if rec["error_type"] else None)
        ev = self.engine.live(request_id)
        info["log_seq"] = ev.log_seq if ev is not None else query.last_log_seq(self.engine.store, key_of(request_id))
        return info

    def wait_event(self, request_id: str, timeout: float | None = None) -> str:
        ev = self.engine.live(request_id)
        if ev is not None:
            status = ev.status
            return (status if status.is_terminal else self.engine.wait(ev, timeout)).value
        return self.event_status(request_id)

    def wait(self, events: Iterable[Event | str], *, timeout: float | None = None) -> WaitResult:
        handles = [e if isinstance(e, Event) else self.get_event(e) for e in events]
        live = [(h, self.engine.live(h.request_id)) for h in handles]
        self.engine.wait_all([ev for _, ev in live if ev is not None], timeout)
        done: list[Event] = []
        not_done: list[Event] = []
        for h, ev in live:  # one that is not live has ended (it is on disk in its final state)
            (not_done if ev is not None and not ev.status.is_terminal else done).append(h)
        return WaitResult(done, not_done)

    def event_result(self, request_id: str, timeout: float | None = None) -> Any:
        return decode_result(*self.stored_result(request_id, timeout), request_id)

    def stored_result(self, request_id: str, timeout: float | None = None) -> tuple[str | None, bytes | None]:
        status = self.wait_event(request_id, timeout)
        if status == Status.FINISHED:
            return self._result_of(request_id)
        rec = self._record(request_id)
        if status == Status.FAILED:
            raise FunctionError(request_id, rec["error_type"] or "Error", rec["error_message"] or "",
                                rec["error_traceback"] or "")
        if status == Status.ABORTED:
            raise EventAborted(request_id, rec["exit_reason"] or "terminated")
        raise TimeoutError(f"event {request_id} is still {status} after {timeout} s")

    def terminate(self, request_id: str, *, grace: bool = False, wait: bool = True) -> str:
        self._record(request_id, traced_only=True)
        return self.terminate_event(request_id, grace=grace, wait=wait)

    def terminate_event(self, request_id: str, *, grace: bool = False, wait: bool = True) -> str:
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

    def list_events(self, function: str | None = None, *, namespace: str | None = None,
                    qualifier: str | None = None, status: str | Iterable[str] | None = None,
                    invoke_type: str | Iterable[str] | None = None, request_id: str | None = None,
                    start_time: tuple[Any, Any] | None = None, end_time: tuple[Any, Any] | None = None,
                    order: str = "DESC", orderby: str = "StartTime", offset: int = 0,
                    limit: int | None = 20) -> pd.DataFrame:
        f = query.EventFilter.from_args(function, namespace=namespace, qualifier=qualifier, status=status,
                                        invoke_type=invoke_type, request_id=request_id, start_time=start_time,
                                        end_time=end_time, order=order, orderby=orderby, offset=offset,
                                        limit=limit)
        return query.list_events(self.engine.store, f)

    def count_events(self, function: str | None = None, *, namespace: str | None = None,
                     qualifier: str | None = None, status: str | Iterable[str] | None = None,
                     invoke_type: str | Iterable[str] | None = None, request_id: str | None = None,
                     start_time: tuple[Any, Any] | None = None, end_time: tuple[Any, Any] | None = None) -> int:
        f = query.EventFilter.from_args(function, namespace=namespace, qualifier=qualifier, status=status,
                                        invoke_type=invoke_type, request_id=request_id, start_time=start_time,
                                        end_time=end_time)
        return query.count_events(self.engine.store, f)

    def overview(self, function: str | None = None, *, namespace: str | None = None,
                 since: Any = None) -> pd.DataFrame:
        return query.overview(self.engine.store, query.OverviewFilter(function, namespace, since))

    def logs(self, request_id: str, *, since_seq: int | None = None, stream: str | None = None,
             limit: int | None = None) -> pd.DataFrame:
        key = self._key(request_id)  # an unknown id is named before a bad filter, as it always was
        return query.logs(self.engine.store, key, query.LogFilter(since_seq, stream, limit))

    def search_logs(self, text: str, *, function: str | None = None, namespace: str | None = None,
                    limit: int | None = 1000) -> pd.DataFrame:
        return query.search_logs(self.engine.store, query.SearchFilter(text, function, namespace, limit))

    def follow(self, request_id: str, *, since_seq: int | None = None,
               timeout: float | None = None) -> Follower:
        after, limit = follow_arguments(since_seq, timeout)
        return self.engine.store.feed.follow(self._key(request_id), after, lambda: self._ended(request_id), limit)

    def add_done_callback(self, event: Event | str, fn: Callable[[Event], Any]) -> None:
        if not callable(fn):
            raise invalid("Callback", f"add_done_callback needs a callable, got {fn!r}")
        if isinstance(event, Event):
            handle = event
            self.event_status(handle.request_id)  # it exists
        else:
            handle = Event(self, event, self._record(event)["function_name"])
        rid = handle.request_id
        self.engine.store.feed.add_done_callback(rid, lambda: fn(handle), lambda: self._ended(rid))

    def subscribe(self, fn: Callable[[Changes], Any]) -> Subscription:
        if not callable(fn):
            raise invalid("Callback", f"subscribe needs a callable, got {fn!r}")
        return self.engine.store.feed.subscribe(fn)

    def export(self, path: str | Path) -> dict[str, int]:
        return self.engine.store.export(Path(path))

    def purge(self) -> int:
        return self.engine.purge()

    def close(self) -> None:
        self.engine.close()

    # -- reads: memory while live, else the store -----------------------------------------------------------
    def _ended(self, request_id: str) -> bool:
        return Status(self.event_status(request_id)).is_terminal

    def _status(self, request_id: str, traced_only: bool) -> str:
        ev = self.engine.live(request_id)
        if ev is not None:
            if traced_only and not ev.traced:
                raise not_found_event(request_id)
            return ev.status.value
        found = query.event_status(self.engine.store, request_id)
        if found is None or (traced_only and not found[1]):
            raise not_found_event(request_id)
        return found[0]

    def _result_of(self, request_id: str) -> tuple[str | None, bytes | None]:
        """The stored result: its JSON text and its pickle (read only here: info() never loads the pickle)."""
        ev = self.engine.live(request_id)
        if ev is not None:
            return ev.result, ev.result_pickle
        found = query.event_result(self.engine.store, request_id)
        if found is None:
            raise not_found_event(request_id)
        return found

    def _key(self, request_id: str) -> int:
        ev = self.engine.live(request_id)
        if ev is not None:
            return ev.key
        self._record(request_id)
        return key_of(request_id)  # type: ignore[return-value]  # a stored event's id is one of ours

    def _record(self, request_id: str, traced_only: bool = False) -> dict[str, Any]:
        """The event's fields: from memory while it is live, else from the store."""
        ev = self.engine.live(request_id)
        if ev is not None:
            if traced_only and not ev.traced:
                raise not_found_event(request_id)
            return _from_state(ev)
        rec = query.event_record(self.engine.store, request_id)
        if rec is None or (traced_only and not rec["traced"]):
            raise not_found_event(request_id)
        return rec


def _from_state(ev: EventState) -> dict[str, Any]:
    rec = {c: getattr(ev, c) for c in _INFO_COLUMNS}
    rec["status"] = ev.status.value
    for c in ("start_time", "run_time", "end_time"):
        if rec[c] is not None:
            rec[c] = datetime.fromtimestamp(rec[c]).astimezone()
    return rec


def _local_tz() -> Any:
    return datetime.now().astimezone().tzinfo


if TYPE_CHECKING:
    def _conforms(client: Client) -> ClientProtocol:
        return client  # mypy checks here that Client implements the whole protocol, with the same types
