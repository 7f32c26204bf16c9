"""Notebook views on events (ipywidgets; imported only here, never by ``scf_nb.core``): a live event view, a
log pane, the event table and the overview's pictures.

Each is a thin layer over the client protocol (``scf_nb.client()``) and its observation seam: ``follow``,
``add_done_callback`` and one shared subscription per client (``hub.py``). They read no SQL, change no status
and run no polling loop; updates come from background threads, as ipywidgets advises (trait assignments,
``hold_sync`` to batch). Fed from the store, a view re-run later, or after a kernel restart, shows the whole
history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

try:
    import ipywidgets as _ipywidgets  # noqa: F401
except ImportError as e:  # pragma: no cover - the magics check for this before they import us
    raise ImportError("scf_nb's notebook views need ipywidgets: pip install 'scf_nb[widgets]'") from e

from .eventview import EventView
from .filters import TableQuery
from .logpane import MAX_LINES, LogPane
from .overview import overview_view
from .table import EventTable

if TYPE_CHECKING:
    from ..clients.events import Event
    from ..clients.protocol import ClientProtocol

__all__ = ["EventTable", "EventView", "LogPane", "event_table", "event_view", "log_pane", "overview_view"]


def event_view(event: Event | str, *, client: ClientProtocol | None = None, max_lines: int = MAX_LINES) -> EventView:
    """A live view of one event (an ``Event`` or a RequestId): status, elapsed time, Terminate, its log, its
    result or error at the end.

    Raises:
        ScfError: ``ResourceNotFound.AsyncEvent`` for a RequestId that names no event,
            ``InvalidParameterValue.MaxLines``.
    """
    _check_max_lines(max_lines)
    return EventView(event, client=client, max_lines=max_lines)


def log_pane(request_id: str, *, client: ClientProtocol | None = None, max_lines: int = MAX_LINES,
             stream: str | None = None) -> LogPane:
    """One event's log (only ``stream``'s lines, "stdout" or "stderr", if given), following it until it ends;
    the last ``max_lines`` lines in the browser, the rest reachable with "show earlier".

    Raises:
        ScfError: ``ResourceNotFound.AsyncEvent`` for a RequestId that names no event,
            ``InvalidParameterValue.MaxLines``, ``.Stream``.
    """
    _check_max_lines(max_lines)
    return LogPane(request_id, client=client, max_lines=max_lines, stream=stream)


def event_table(function: str | None = None, *, namespace: str | None = None,
                status: str | Iterable[str] | None = None, request_id: str | None = None, since: Any = None,
                until: Any = None, page_size: int = 20, order: str = "DESC",
                client: ClientProtocol | None = None) -> EventTable:
    """The live event table: counts per status, filters (function, statuses, start-time window ``since`` /
    ``until``, RequestId), one page of ``page_size`` events at a time, Terminate on live rows, the selected
    row's log pane. It refreshes itself (at most once a second, while shown) when events change.

    Raises:
        ScfError: ``InvalidParameterValue.Limit`` for a page size that is not a positive integer; for a bad
            filter, the error ``list_events`` gives (``.Status``, ``.Order``, ``.TimeInterval``, ...);
            ``.Function``, ``.Namespace``, ``.RequestId`` for one that is not a string.
    """
    from .. import api
    from ..core.errors import invalid

    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 500:
        raise invalid("Limit", f"page_size must be an integer from 1 to 500, got {page_size!r}")
    for name, text in (("function", function), ("namespace", namespace), ("request_id", request_id)):
        if text is not None and not isinstance(text, str):  # a text box shows it: not coerced, as list_events does
            raise invalid(name.title().replace("_", ""), f"{name} must be a string or None, got {text!r}")
    client = client if client is not None else api.client()
    window = (since, until) if since is not None or until is not None else None
    client.list_events(function, namespace=namespace, status=status, request_id=request_id, start_time=window,
                       order=order, limit=1)  # a bad filter raises here, as list_events, before any widget
    query = TableQuery.make(function, namespace=namespace, status=status, request_id=request_id, since=since,
                            until=until, page_size=page_size, order=order)
    return EventTable(query, client=client)


def _check_max_lines(max_lines: Any) -> None:
    from ..core.errors import invalid

    if isinstance(max_lines, bool) or not isinstance(max_lines, int) or max_lines < 1:
        raise invalid("MaxLines", f"max_lines must be a positive integer, got {max_lines!r}")
