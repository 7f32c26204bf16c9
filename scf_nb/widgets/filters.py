"""What an event table asks for: its filters and its page, as ``list_events`` arguments. The client checks
them (a bad time comes back as the ``ScfError`` any caller gets); nothing here reads the store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _time(value: Any) -> Any:
    """A time filter as given: a string trimmed (None if empty), a datetime or epoch seconds unchanged."""
    return _text(value) if value is None or isinstance(value, str) else value


def time_text(value: Any) -> str:
    """A time filter as its text box shows it, in a form ``list_events`` reads back."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value).astimezone()
    return value.isoformat(sep=" ") if isinstance(value, datetime) else str(value)


@dataclass(frozen=True)
class TableQuery:
    """Filters (function, namespace, statuses, RequestId, a start-time window) and a page of a table."""

    function: str | None = None
    namespace: str | None = None
    statuses: tuple[str, ...] = ()
    request_id: str | None = None
    since: Any = None  # start time, as list_events reads it: "YYYY-MM-DD HH:MM:SS" (local), a datetime, ...
    until: Any = None
    page: int = 0
    page_size: int = 20
    order: str = "DESC"

    @classmethod
    def make(cls, function: str | None = None, *, namespace: str | None = None,
             status: str | Iterable[str] | None = None, request_id: str | None = None, since: Any = None,
             until: Any = None, page_size: int = 20, order: str = "DESC", page: int = 0) -> TableQuery:
        statuses = (status,) if isinstance(status, str) else tuple(status or ())
        return cls(_text(function), _text(namespace), tuple(s.upper() for s in statuses), _text(request_id),
                   _time(since), _time(until),
                   max(0, int(page)), int(page_size), order)

    def with_filters(self, function: str, statuses: tuple[str, ...], since: str, until: str,
                     request_id: str) -> TableQuery:
        """The same table with new filters, back on its first page."""
        return replace(self, function=_text(function), statuses=statuses, since=_text(since), until=_text(until),
                       request_id=_text(request_id), page=0)

    def at_page(self, page: int) -> TableQuery:
        return replace(self, page=page)

    def list_args(self) -> dict[str, Any]:
        """``list_events``' arguments for this page, one row more than a page (is there a next page?)."""
        window = (self.since, self.until) if self.since is not None or self.until is not None else None
        return {"function": self.function, "namespace": self.namespace, "status": list(self.statuses) or None,
                "request_id": self.request_id, "start_time": window, "order": self.order,
                "offset": self.page * self.page_size, "limit": self.page_size + 1}
