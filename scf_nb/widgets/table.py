"""The event table (``event_table(...)``, ``%scf_events``): the counts per status, filters, one page of events,
a Terminate button on each live row and, for the row selected, its log pane.

A refresh is two calls of the client protocol, ``list_events`` for one page (``page_size + 1`` rows: the
extra one only says whether there is a next page) and ``overview`` for the counts (the store's running
aggregates): its cost does not grow with the number of stored events. The table refreshes when the user
changes a filter or a page, and when the store's changes (the hub's one subscription) say events changed, at
most once every ``REFRESH_S`` and only while a browser shows it; with nothing changing it does nothing.

The page's lines are a fixed pool of widgets, redrawn with whichever events a page holds (a new page costs
new values, not new widgets). A click always acts on the event the browser showed where it was clicked, even
when a refresh moved the rows before the click arrived:

- a Terminate button belongs to one live RequestId for as long as it lives (made when the event shows up live,
  closed when it has ended or left the page): stopping the wrong event would do harm;
- a line's "log" toggle stays with the line, and says which event the browser has drawn on it: a link run by
  the browser (``jsdlink``) copies the line's cells (their ``data-rid``) into the toggle's ``drawn``
  attribute as soon as the browser has applied them. The toggle's changes leave the browser in order (one
  model's), so when a click comes, ``drawn`` holds the line the user saw. (Per-RequestId toggles did the same
  at the cost of 50 widgets made and closed on every new page: ~25 ms of its ~60.)
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
from ipywidgets.widgets.widget_bool import ToggleButtonStyle
from traitlets import Unicode

from ..core.errors import ScfError
from ..core.status import ALL
from . import render
from .filters import TableQuery, time_text
from .hub import Shown, hub_for
from .logpane import LogPane

if TYPE_CHECKING:
    import pandas as pd

    from ..clients.protocol import ClientProtocol
    from ..store.observe import Changes

REFRESH_S = 1.0
STATUSES = tuple(s.value for s in ALL)
LIVE = ("QUEUED", "RUNNING")
COLUMNS = (("RequestId", "25em"), ("function", "9em"), ("qualifier", "6em"), ("status", "6.5em"),
           ("start", "9.5em"), ("end", "9.5em"), ("duration", "7em"), ("memory", "5em"))


class _LineToggle(widgets.ToggleButton):
    """A line's "log" toggle; ``drawn``: the line's cells as the browser had drawn them when it last sent a
    change of the toggle."""

    drawn = Unicode("").tag(sync=True, echo_update=False)


class Row:
    """One line of the page: its cells (one HTML) and its "log" toggle, drawn with whichever event is on that line
    now, and, while that event is live, its Terminate button (made per RequestId: see the module's docstring)."""

    def __init__(self, shared: dict[str, Any], on_click: Any) -> None:
        self.request_id = ""
        self.status = ""
        self.cells = widgets.HTML(layout=shared["cells"])
        self.toggle = _LineToggle(description="log", layout=shared["button"], style=shared["toggle"],
                                  tooltip="show this event's log below",
                                  _dom_classes=("scf-select",))  # one message, not a second for the class
        self._link = widgets.jsdlink((self.cells, "value"), (self.toggle, "drawn"))
        self.toggle.observe(lambda change: on_click(self, change["new"]), names="value")
        self.box = widgets.HBox([self.cells, self.toggle], layout=shared["row"])
        self.box.add_class("scf-row-box")

    @property
    def terminate(self) -> widgets.Button | None:
        """The Terminate button drawn on this line (its event is live), else None."""
        children = self.box.children
        return children[2] if len(children) > 2 else None

    @property
    def shown_id(self) -> str:
        """The RequestId the browser showed on this line when it sent the toggle's last change (the one drawn
        now if no browser has said, as in a kernel without one)."""
        _, found, rest = self.toggle.drawn.partition(' data-rid="')
        return rest.partition('"')[0] if found else self.request_id

    def draw(self, record: Any, selected: bool, terminate: Any) -> None:
        self.request_id, self.status = record.request_id, record.status
        values = (render.esc(self.request_id), render.esc(record.function_name), render.esc(record.qualifier),
                  render.badge(record.status), render.clock(record.start_time), render.clock(record.end_time),
                  render.duration(_seconds(record)), render.megabytes(record.mem_usage_bytes))
        spans = "".join(f'<span style="width:{w}">{v}</span>' for (_, w), v in zip(COLUMNS, values, strict=True))
        classes = "scf-row scf-selected" if selected else "scf-row"
        cells = (f'<div class="{classes}" data-rid="{render.esc(self.request_id)}" '
                 f'data-status="{render.esc(record.status)}">{spans}</div>')
        if self.cells.value != cells:
            self.cells.value = cells
        toggle = self.toggle
        if toggle.value != selected:
            toggle.value = selected
        children = (self.cells, toggle) if terminate is None else (self.cells, toggle, terminate)
        if self.box.children != children:
            self.box.children = children

    def close(self) -> None:
        for w in (self._link, self.toggle, self.cells, self.box):
            w.close()


def _seconds(record: Any) -> float | None:
    ms = record.duration_ms
    if ms == ms and ms is not None:  # not NaN
        return float(ms) / 1000
    start = render.epoch(record.start_time)
    return time.time() - start if record.status == "RUNNING" and start else None


class EventTable(Shown, widgets.VBox):
    """The live event table; see ``event_table``."""

    def __init__(self, query: TableQuery, *, client: ClientProtocol | None = None, **kwargs: Any) -> None:
        from .. import api

        self._client = client if client is not None else api.client()
        self.query = query
        self._hub = hub_for(self._client)
        self._lock = threading.RLock()
        self._lines: list[Row] = []  # the page's lines, made as a page first needs them
        self._buttons: dict[str, widgets.Button] = {}  # live RequestId on the page -> its Terminate button
        self._shared = {"cells": widgets.Layout(), "button": widgets.Layout(width="auto"),
                        "style": widgets.ButtonStyle(), "toggle": ToggleButtonStyle(),
                        "row": widgets.Layout(align_items="center")}
        self._pending: set[str] = set()  # terminate sent, not yet seen ended
        self._selected: str | None = None
        self._drawing = False  # the toggles' values change because a redraw sets them (not a click)
        self._last_refresh = 0.0
        self._stale = False
        self.refreshes = 0
        self.page_frame: pd.DataFrame | None = None
        self._build_controls()
        self._style = render.style_sheet()
        super().__init__([self._style, self.counts, self._filters, self._paging, self.error, self._head, self._body,
                          self._pane_box], **kwargs)
        self.add_class("scf-table")
        self._track_views()
        self._hub.listen(self)  # before the first read: a change committed in between is not missed
        self.refresh()

    # -- building ---------------------------------------------------------------------------------------------
    def _build_controls(self) -> None:
        q = self.query
        self.counts = widgets.HTML()
        self.counts.add_class("scf-counts")
        self.function = widgets.Text(value=q.function or "", placeholder="function", continuous_update=False,
                                     layout=widgets.Layout(width="11em"))
        self.request_id = widgets.Text(value=q.request_id or "", placeholder="RequestId", continuous_update=False,
                                       layout=widgets.Layout(width="24em"))
        self.since = widgets.Text(value=time_text(q.since), placeholder="from YYYY-MM-DD HH:MM:SS",
                                  continuous_update=False, layout=widgets.Layout(width="13em"))
        self.until = widgets.Text(value=time_text(q.until), placeholder="to YYYY-MM-DD HH:MM:SS",
                                  continuous_update=False, layout=widgets.Layout(width="13em"))
        self.status = {s: widgets.ToggleButton(value=s in q.statuses, description=s,
                                               layout=widgets.Layout(width="auto")) for s in STATUSES}
        for w in (self.function, self.request_id, self.since, self.until, *self.status.values()):
            w.observe(self._on_filter, names="value")
        self._filters = widgets.HBox([self.function, *self.status.values(), self.since, self.until, self.request_id],
                                     layout=widgets.Layout(flex_flow="row wrap"))
        self.newer = widgets.Button(description="< newer", layout=widgets.Layout(width="auto"))
        self.older = widgets.Button(description="older >", layout=widgets.Layout(width="auto"))
        self.newer.on_click(lambda _: self.go(self.query.page - 1))
        self.older.on_click(lambda _: self.go(self.query.page + 1))
        self.page_label = widgets.HTML()
        self.graceful = widgets.Checkbox(description="graceful terminate", indent=False)
        self._paging = widgets.HBox([self.newer, self.page_label, self.older, self.graceful])
        self.error = widgets.HTML()
        head = "".join(f'<span style="width:{w}">{name}</span>' for name, w in COLUMNS)
        self._head = widgets.HTML(f'<div class="scf-head">{head}</div>')
        self._body = widgets.VBox()
        self._pane_box = widgets.VBox()

    @property
    def lines(self) -> list[Row]:
        """The page's lines as drawn now, top to bottom: each with its ``request_id``, ``status``, ``cells``,
        ``toggle`` ("log") and ``terminate`` (its Terminate button while the event is live, else None)."""
        with self._lock:
            return self._lines[:len(self.page_frame) if self.page_frame is not None else 0]

    # -- refresh ------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the page and the counts, and draw them (from any thread)."""
        with self._lock:
            self._last_refresh = time.monotonic()
            self._stale = False
            q = self.query
            try:
                frame = self._client.list_events(**q.list_args())
                counts = self._client.overview(q.function, namespace=q.namespace)
            except ScfError as e:
                self.error.value = f'<span class="scf-stderr">{render.esc(e)}</span>'
                return
            if self.error.value:
                self.error.value = ""
            self.refreshes += 1
            self._draw(frame.head(q.page_size), len(frame) > q.page_size, counts)

    def _draw(self, frame: pd.DataFrame, has_next: bool, counts: pd.DataFrame) -> None:
        self.page_frame = frame
        by_status = dict(zip(counts["status"], counts["count"], strict=True))
        self.counts.value = " ".join(
            f'{render.badge(s)} <span class="scf-count" data-status="{s}">{int(by_status.get(s, 0)):,}</span>'
            for s in STATUSES)
        records: list[Any] = list(frame.itertuples(index=False))
        while len(self._lines) < len(records):
            self._lines.append(Row(self._shared, self._clicked))
        live = {r.request_id for r in records if r.status in LIVE}
        self._pending -= {r.request_id for r in records if r.status not in LIVE}
        for rid in [rid for rid in self._buttons if rid not in live]:  # ended, or off the page
            self._buttons.pop(rid).close()
        self._redraw_rows()
        rows = tuple(line.box for line in self._lines[:len(records)])
        if rows != self._body.children:
            self._body.children = rows
        q = self.query
        first = q.page * q.page_size
        shown = f"{first + 1:,}-{first + len(rows):,}" if rows else "none"
        self.page_label.value = f"&nbsp;page {q.page + 1:,}: events {shown}&nbsp;"
        self.newer.disabled = q.page == 0
        self.older.disabled = not has_next

    def _button(self, rid: str, live: set[str]) -> widgets.Button | None:
        """The Terminate button of ``rid`` if it is live (made once per RequestId, never drawn for another)."""
        if rid not in live:
            return None
        button = self._buttons.get(rid)
        if button is None:
            button = widgets.Button(description="Terminate", button_style="danger", layout=self._shared["button"],
                                    style=self._shared["style"], tooltip=f"stop {rid}: it becomes ABORTED")
            button.add_class("scf-terminate")
            self._buttons[rid] = button
            button.on_click(lambda b: self._terminate(rid, b))
        pending = rid in self._pending
        if button.disabled != pending:
            with button.hold_sync():
                button.disabled = pending
                button.description = "terminating..." if pending else "Terminate"
        return button

    # -- the hub ------------------------------------------------------------------------------------------------
    def _changed(self, changes: Changes) -> None:
        if changes.events or changes.overflow:
            self._hub.schedule(self, self._last_refresh + REFRESH_S - time.monotonic())

    def _turn(self) -> None:
        if self._client.closed:  # its engine was shut down: nothing more will change
            self._hub.forget(self)
        elif self.shown:
            self.refresh()
        else:
            self._stale = True  # refreshed when a browser shows it again

    def _became_shown(self) -> None:
        if self._stale:
            self._hub.schedule(self, self._last_refresh + REFRESH_S - time.monotonic())

    # -- user actions -------------------------------------------------------------------------------------------
    def _on_filter(self, _change: Any) -> None:
        statuses = tuple(s for s, w in self.status.items() if w.value)
        try:
            self.query = self.query.with_filters(self.function.value, statuses, self.since.value, self.until.value,
                                                 self.request_id.value)
        except ScfError as e:
            self.error.value = f'<span class="scf-stderr">{render.esc(e)}</span>'
            return
        self.refresh()

    def go(self, page: int) -> None:
        """Show page ``page`` (0: the newest events, in the default order)."""
        self.query = self.query.at_page(max(0, page))
        self.refresh()

    def _terminate(self, rid: str, button: Any) -> None:
        with self._lock:
            current = self._buttons.get(rid)
            if rid in self._pending or current is None or current is not button:  # sent already, or it ended
                return
            self._pending.add(rid)
        with button.hold_sync():
            button.disabled = True
            button.description = "terminating..."
        try:
            self._client.terminate_event(rid, grace=self.graceful.value, wait=False)
        except Exception as e:  # it ended meanwhile (the refresh drops its button), or the request failed
            self.error.value = f"<i>{render.esc(e if isinstance(e, ScfError) else f'{type(e).__name__}: {e}')}</i>"
            with self._lock:
                self._pending.discard(rid)  # it can be asked again
            with button.hold_sync():
                button.disabled = False
                button.description = "Terminate"

    def _clicked(self, line: Row, on: bool) -> None:
        """``line``'s "log" toggle changed: a click selects (or unselects) the event the browser showed there."""
        with self._lock:
            if self._drawing:
                return
            rid = line.shown_id
            if on or self._selected == rid:  # (else: it unselected a line that no longer shows the selection)
                self._selected = rid if on else None
                self._open_pane(self._selected)
            self._redraw_rows()

    def _redraw_rows(self) -> None:
        records: list[Any] = list(self.page_frame.itertuples(index=False)) if self.page_frame is not None else []
        live = {r.request_id for r in records if r.status in LIVE}
        self._drawing = True
        try:
            for line, record in zip(self._lines, records, strict=False):  # the pool may hold more lines
                rid = record.request_id
                line.draw(record, rid == self._selected, self._button(rid, live))
        finally:
            self._drawing = False

    def _open_pane(self, request_id: str | None) -> None:
        for old in self._pane_box.children:
            old.close()
        self.pane: LogPane | None = LogPane(request_id, client=self._client) if request_id else None
        self._pane_box.children = (self.pane,) if self.pane is not None else ()

    def close(self) -> None:
        if hasattr(self, "_pane_box"):  # also called by ipywidgets' __del__, maybe on a half-built table
            self._hub.forget(self)
            self._open_pane(None)
            for row in self._lines:
                row.close()
            for button in self._buttons.values():
                button.close()
        super().close()
