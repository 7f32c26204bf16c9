"""The client protocol: the one typed interface every client implements, the embedded one (``Client``, an
engine in this process) and a later HTTP one alike. ``Event``, the magics, widgets and the CLI use nothing
else, so each works unchanged over any client.

Two kinds of method: the tracking views (``get_event``, ``get_event_status``, ``terminate``, ``list_events``,
``overview``) see traced events only, as SCF's status tracking does; the handle's methods (``event_status``,
``event_info``, ``wait_event``, ``event_result``, ``terminate_event``, ``logs``) serve an ``Event`` and find
untraced events (``trace=False``) too, so their handles work.

Argument checks live with the store (``query.py``): a client passes what it was given and the same
``ScfError`` comes back whichever client it went through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import pandas as pd

from ..core.functions import LATEST, Function
from ..store.follow import Follower
from ..store.observe import Changes, Subscription
from .events import Event

_T = TypeVar("_T")


class WaitResult(NamedTuple):
    """What ``wait`` returns: the events that have ended and those that have not (each in the order given)."""

    done: list[Event]
    not_done: list[Event]


@runtime_checkable
class ClientProtocol(Protocol):
    """Event management on one engine, wherever it runs."""

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called or the engine behind the client stopped."""
        ...

    # -- functions ----------------------------------------------------------------------------------------------
    def create_function(self, name: str, code: str, *, async_run: bool = False, trace: bool = True,
                        timeout: float | None = None, concurrency: int | None = None,
                        qps_limit: float | None = None, handler: str = "main_handler",
                        namespace: str = "default", env: dict[str, str] | None = None,
                        memory_mb: int | None = None, description: str = "", num_cpus: float | None = None,
                        num_gpus: float | None = None, resources: dict[str, float] | None = None) -> Function:
        """Register ``code`` as function ``name`` (its ``$LATEST``); the same name again updates it.

        ``num_cpus``, ``num_gpus`` and ``resources`` (custom resources, name -> amount) are what each of its
        instances holds on a Ray cluster (the ``ray`` backend: its actor's options; ``num_cpus`` defaults to
        1 there). The ``loky`` backend runs instances on this machine: it takes ``num_cpus`` as a hint it
        does not enforce and refuses ``num_gpus`` > 0 and custom resources.

        Raises:
            ScfError: ``InvalidParameterValue.Code`` (syntax error, with the line), ``.Handler`` (no such
                top-level function), ``.AsyncRunEnable`` (sync/async differs from creation), ``.NumGpus`` /
                ``.Resources`` (not available on this backend), other bad values.
        """
        ...

    def publish_version(self, name: str, *, namespace: str = "default", description: str = "") -> str:
        """Snapshot ``$LATEST`` as an immutable version; returns its number ("1", "2", ...)."""
        ...

    def get_function(self, name: str, *, namespace: str = "default", qualifier: str = LATEST) -> Function:
        """One version of a function (``$LATEST`` by default).

        Raises:
            ScfError: ``ResourceNotFound.Function`` or ``ResourceNotFound.Version``.
        """
        ...

    def list_functions(self, *, namespace: str | None = None) -> pd.DataFrame:
        """One row per function version: name, namespace, version, async_run, trace, timeout, ..."""
        ...

    def delete_function(self, name: str, *, namespace: str = "default") -> None:
        """Delete a function and its versions (its event history stays). Refused while its events run."""
        ...

    # -- events ---------------------------------------------------------------------------------------------------
    def invoke(self, name: str, event: Any = None, *, qualifier: str = LATEST,
               namespace: str = "default", wait: bool = True) -> Event:
        """Invoke a function with ``event`` (JSON data). Async functions return at once with the event
        QUEUED or RUNNING; sync ones return when it has ended, or at once too with ``wait=False`` (its end
        then through ``wait_event``, ``event_result`` or a done callback).

        Raises:
            ScfError: ``ResourceNotFound.Function``, ``InvalidParameterValue.ClientContext`` (not JSON, or
                over 128 KB async / 6 MB sync), ``LimitExceeded.Qps`` (rate limit; nothing recorded).
        """
        ...

    def get_event(self, request_id: str) -> Event:
        """A handle on any recorded (traced) event, of this session or an earlier one.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent``.
        """
        ...

    def get_event_status(self, request_id: str) -> str:
        """A traced event's status: QUEUED, RUNNING, FINISHED, FAILED or ABORTED.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` (also for an untraced event).
        """
        ...

    def event_status(self, request_id: str) -> str:
        """``Event.status``: the status now, of a traced or an untraced event.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent``.
        """
        ...

    def event_info(self, request_id: str) -> dict[str, Any]:
        """``Event.info()``: status, times, duration_ms, init_duration_ms (the cold start before it; None on a
        warm instance), billed_duration_ms, mem_usage_bytes, error (type, message, traceback), exit reason and
        ``log_seq`` (the seq of the event's last log line so far; 0 if it has none).

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent``.
        """
        ...

    def wait_event(self, request_id: str, timeout: float | None = None) -> str:
        """``Event.wait()``: block until the event has ended (or ``timeout`` seconds passed); its status then.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent``.
        """
        ...

    def wait(self, events: Iterable[Event | str], *, timeout: float | None = None) -> WaitResult:
        """Block until all ``events`` (Event handles or RequestIds) have ended, or ``timeout`` seconds passed:
        one wait for many, as ``concurrent.futures.wait``.

        Returns:
            ``(done, not_done)``: the handles, each list in the order given.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for a RequestId that names no event.
        """
        ...

    def event_result(self, request_id: str, timeout: float | None = None) -> Any:
        """``Event.result()``: what the handler returned, once the event has ended (see ``results.decode``:
        the value itself wherever it can be unpickled here, else its JSON form with a ``ResultWarning``).

        Raises:
            FunctionError: the event FAILED (carries the remote type, message and traceback).
            EventAborted: the event was terminated.
            TimeoutError: still not ended after ``timeout`` seconds.
        """
        ...

    def stored_result(self, request_id: str, timeout: float | None = None) -> tuple[str | None, bytes | None]:
        """The result as the store keeps it, not decoded: its JSON text and its pickle (None where there is
        none), once the event has ended; ``event_result`` is ``results.decode`` of it. For a client that decodes
        it elsewhere (the HTTP client decodes in its own process, so the value is what it would be here).

        Raises:
            FunctionError, EventAborted, TimeoutError: as ``event_result``.
        """
        ...

    def terminate(self, request_id: str, *, grace: bool = False, wait: bool = True) -> str:
        """Stop a queued or running traced event; it becomes ABORTED and no other event is touched.

        Args:
            grace: SIGTERM first (the handler may catch it), SIGKILL after ``grace_seconds``.
            wait: return only once the event is ABORTED (the default).

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for an unknown (or untraced) id,
                ``FailedOperation.AsyncEventStatus`` for an event that has already ended.
        """
        ...

    def terminate_event(self, request_id: str, *, grace: bool = False, wait: bool = True) -> str:
        """``Event.terminate()``: ``terminate`` for a traced or an untraced event; its status afterwards.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent``, ``FailedOperation.AsyncEventStatus`` (already ended).
        """
        ...

    def list_events(self, function: str | None = None, *, namespace: str | None = None,
                    qualifier: str | None = None, status: str | Iterable[str] | None = None,
                    invoke_type: str | Iterable[str] | None = None, request_id: str | None = None,
                    start_time: tuple[Any, Any] | None = None, end_time: tuple[Any, Any] | None = None,
                    order: str = "DESC", orderby: str = "StartTime", offset: int = 0,
                    limit: int | None = 20) -> pd.DataFrame:
        """Traced events as a DataFrame, filtered as TencentCloud's ListAsyncEvents does.

        Args:
            status, invoke_type: one value or a list.
            start_time, end_time: ``(start, end)``, left-closed right-open; either may be None; each a
                datetime, a "%Y-%m-%d %H:%M:%S" string (local time) or epoch seconds.
            order: "ASC" or "DESC"; orderby: "StartTime" or "EndTime"; limit None for all.

        Raises:
            ScfError: ``InvalidParameterValue.<Status|InvokeType|TimeInterval|Order|Orderby|Offset|Limit>``
                (see ``query.EventFilter``).
        """
        ...

    def count_events(self, function: str | None = None, *, namespace: str | None = None,
                     qualifier: str | None = None, status: str | Iterable[str] | None = None,
                     invoke_type: str | Iterable[str] | None = None, request_id: str | None = None,
                     start_time: tuple[Any, Any] | None = None, end_time: tuple[Any, Any] | None = None) -> int:
        """How many traced events ``list_events`` with these filters finds in all (ListAsyncEvents' TotalCount),
        whatever page it returns.

        Raises:
            ScfError: as ``list_events`` for a bad filter.
        """
        ...

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
        ...

    def logs(self, request_id: str, *, since_seq: int | None = None, stream: str | None = None,
             limit: int | None = None) -> pd.DataFrame:
        """The event's lines in ``seq`` order: columns ``seq, ts, stream, line``. ``since_seq`` returns only
        the lines after that one, so a caller can follow a running event; ``limit`` at most that many of them
        (the first ones; None: all). The logs of an untraced event
        (``trace=False``) are found too: as in SCF, logs are kept whatever status tracking says.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for a RequestId that names no event (or one purged),
                ``InvalidParameterValue.SinceSeq``, ``.Stream``, ``.Limit``.
        """
        ...

    def search_logs(self, text: str, *, function: str | None = None, namespace: str | None = None,
                    limit: int | None = 1000) -> pd.DataFrame:
        """Lines containing ``text`` (case-insensitive), newest events first, with their RequestId; untraced
        events' lines too. ``limit`` None for all."""
        ...

    # -- observing (no polling: each is fed by the store's commits) ----------------------------------------------
    def follow(self, request_id: str, *, since_seq: int | None = None,
               timeout: float | None = None) -> Follower:
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
        ...

    def add_done_callback(self, event: Event | str, fn: Callable[[Event], Any]) -> None:
        """Call ``fn(event)`` once when the event ends, as ``concurrent.futures`` does: at once, in this thread,
        if it has ended; else on the change feed's callback thread (never the engine's) once its end is
        committed (within ``flush_interval``). An exception in ``fn`` is logged (logger ``scf_nb``) and
        harms nothing. Callbacks share one thread: keep them short.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for an unknown RequestId, ``InvalidParameterValue.Callback``
                when ``fn`` is not callable.
        """
        ...

    def subscribe(self, fn: Callable[[Changes], Any]) -> Subscription:
        """Call ``fn(changes)`` after each commit of the store that changed events (``Changes``: the RequestIds
        of events new or changed, of those with new log lines, of those that ended; merged into one call while
        ``fn`` was busy; ``overflow`` when too many to list). ``fn`` runs on a thread of its own: one that
        raises (logged) or blocks costs no other listener and not the engine. Stop with ``.close()`` or a
        ``with`` block.

        Raises:
            ScfError: ``InvalidParameterValue.Callback`` when ``fn`` is not callable.
        """
        ...

    def export(self, path: str | Path) -> dict[str, int]:
        """Write events, logs and functions as Parquet files into folder ``path``; returns row counts.
        Use it to keep records past the retention window."""
        ...

    def purge(self) -> int:
        """Apply the retention window now (the engine also does it on its own); returns events deleted."""
        ...

    def close(self) -> None:
        """Let go of the engine (the embedded client stops it: running events become FAILED)."""
        ...


def members() -> list[str]:
    """The protocol's public names, in the order written."""
    return [name for name, value in vars(ClientProtocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))]


def documented(target: _T) -> _T:
    """Give ``target``, a class implementing the protocol or a function named as one of its methods, the
    protocol's docstrings where it has none of its own: the contract is written once, here."""
    functions: list[Callable[..., Any]]
    if isinstance(target, type):
        functions = [f for f in (target.__dict__.get(name) for name in members()) if callable(f)]
    else:
        functions = [target]  # type: ignore[list-item]
    for fn in functions:
        if not fn.__doc__:
            fn.__doc__ = getattr(ClientProtocol, fn.__name__).__doc__
    return target
