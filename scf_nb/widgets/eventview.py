"""The event view ``%scf_invoke`` shows: RequestId, function, a status badge and the elapsed time, a Terminate
button (with a "graceful" choice) while the event is live, its log pane, and at the end the result or the
error with its traceback, under a "finished" notice.

Everything comes from the event's handle (``Event``: ``info``, ``status``, ``terminate``, ``result``,
``add_done_callback``), its log pane's ``follow`` and the hub's shared subscription: a status change arrives
as a change of the store, the end as the done callback. The elapsed time is redrawn once a second while the
event is live and the view is shown (arithmetic on the times read once; no read of the store).
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..clients.events import Event
from ..core.errors import ScfError
from . import render
from .hub import Shown, hub_for
from .logpane import MAX_LINES, LogPane

if TYPE_CHECKING:
    from ..clients.protocol import ClientProtocol
    from ..store.observe import Changes

TICK_S = 1.0
MAX_RESULT_CHARS = 4000
LIVE = ("QUEUED", "RUNNING")


class EventView(Shown, widgets.VBox):
    """A live view of one event (``event_view(ev)``)."""

    def __init__(self, event: Event | str, *, client: ClientProtocol | None = None, max_lines: int = MAX_LINES,
                 **kwargs: Any) -> None:
        from .. import api

        client = client if client is not None else api.client()
        self.event = event if isinstance(event, Event) else Event(client, event)
        self.request_id = self.event.request_id
        self._info = self.event.info()  # an unknown id raises here
        self.status = self._info["status"]
        self._hub = hub_for(client)
        self._client = client
        self._lock = threading.Lock()
        self._status_due = False
        self._done_due = False
        self._finished = False
        self._terminating = False
        self._header = widgets.HTML()
        self.terminate_button = widgets.Button(description="Terminate", button_style="danger",
                                               tooltip="stop this event: it becomes ABORTED")
        self.terminate_button.add_class("scf-terminate")
        self.graceful = widgets.Checkbox(description="graceful", indent=False,
                                         tooltip="SIGTERM first, SIGKILL after the grace period")
        self.terminate_button.on_click(self._on_terminate)
        self._controls = widgets.HBox([self.terminate_button, self.graceful])
        self.notice = widgets.HTML()
        self.notice.add_class("scf-finished")
        self.pane = LogPane(self.request_id, client=client, max_lines=max_lines)
        self.outcome = widgets.HTML()
        self.outcome.add_class("scf-outcome")
        self._style = render.style_sheet()
        super().__init__([self._style, self._header, self._controls, self.notice, self.pane, self.outcome], **kwargs)
        self.add_class("scf-eventview")
        self._track_views()
        self._draw_header()
        self._hub.listen(self)
        self._status_due = True  # read again once listening: a change committed before is not missed
        self._hub.schedule(self)
        self.event.add_done_callback(self._done)  # at once, in this thread, if it has ended
        if self.status in LIVE:
            self._hub.schedule(self, TICK_S)

    @property
    def finished(self) -> bool:
        """The end was drawn: final status, outcome, notice."""
        return self._finished

    @property
    def header(self) -> str:
        return str(self._header.value)

    # -- from the change feed and the done callback ---------------------------------------------------------------
    def _changed(self, changes: Changes) -> None:
        if changes.overflow or self.request_id in changes.events:
            self._status_due = True
            self._hub.schedule(self)

    def _done(self, _event: Event) -> None:
        self._done_due = True
        self._hub.schedule(self)

    def _became_shown(self) -> None:
        self._hub.schedule(self)

    # -- the hub's turn -------------------------------------------------------------------------------------------
    def _turn(self) -> None:
        if self._finished or self._closed_client():
            return
        if self._done_due:
            self._finish()
            return
        if self._status_due:
            self._status_due = False
            status = self.event.status
            if status != self.status:
                self._info, self.status = self.event.info(), status
        self._draw_header()
        if self.status in LIVE and self.shown:
            self._hub.schedule(self, TICK_S)

    def _closed_client(self) -> bool:
        if not self._client.closed:
            return False
        self._hub.forget(self)  # its engine was shut down: what the view shows stays as it was
        return True

    def _draw_header(self) -> None:
        info = self._info
        self._header.value = (
            f'<div class="scf-head-line"><b>{render.esc(info["function_name"])}</b> '
            f'<code class="scf-rid">{render.esc(self.request_id)}</code> {render.badge(self.status)} '
            f'<span class="scf-elapsed">{render.esc(self._elapsed())}</span></div>')

    def _elapsed(self) -> str:
        info, now = self._info, time.time()
        run, start = render.epoch(info.get("run_time")), render.epoch(info.get("start_time"))
        if self.status == "QUEUED":
            return f"queued {render.duration(now - start)}" if start else "queued"
        if self.status == "RUNNING":
            return f"running {render.duration(now - run)}" if run else "running"
        ms = info.get("duration_ms")
        took = ms / 1000 if isinstance(ms, (int, float)) and ms == ms else None
        return f"took {render.duration(took)}" if took is not None else ""

    def _finish(self) -> None:
        self._info = info = self.event.info()
        self.status = info["status"]
        self._controls.layout.display = "none"
        self._draw_header()
        self.outcome.value = self._outcome_html(info)
        end = render.clock(info.get("end_time"), with_date=False)
        color = render.STATUS_COLORS.get(self.status, "#374151")
        self.notice.value = (f'<div class="scf-notice" style="border:2px solid {color}">finished: '
                             f'{render.badge(self.status)} at {render.esc(end)} '
                             f'({render.esc(self._elapsed())})</div>')
        self._finished = True
        self._hub.forget(self)

    def _outcome_html(self, info: dict[str, Any]) -> str:
        if self.status == "FINISHED":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    text = repr(self.event.result(timeout=0))
                except Exception as e:  # a result that cannot be loaded here: say so, do not break the view
                    text = f"(the result could not be loaded here: {type(e).__name__}: {e})"
            if len(text) > MAX_RESULT_CHARS:
                text = text[:MAX_RESULT_CHARS] + f"... ({len(text):,} characters; ev.result() has all)"
            notes = "".join(f"<div><i>{render.esc(w.message)}</i></div>" for w in caught)
            return f"<b>result</b><pre>{render.esc(text)}</pre>{notes}"
        error = info.get("error")
        if self.status == "FAILED" and error:
            return (f'<b class="scf-stderr">{render.esc(error["type"])}: {render.esc(error["message"])}</b>'
                    f'<pre class="scf-traceback">{render.esc(error["traceback"] or "")}</pre>')
        return f"<i>{render.esc(info.get('exit_reason') or self.status)}</i>"

    # -- the Terminate button -------------------------------------------------------------------------------------
    def _on_terminate(self, _button: Any) -> None:
        with self._lock:
            if self._terminating:  # a second click that left the browser before it showed the first one
                return
            self._terminating = True
        with self.terminate_button.hold_sync():
            self.terminate_button.disabled = True
            self.terminate_button.description = "terminating..."
        self.graceful.disabled = True
        try:
            self.event.terminate(grace=self.graceful.value, wait=False)
        except Exception as e:  # it ended meanwhile (the done callback draws the end), or the request failed
            self.notice.value = f"<i>{render.esc(e if isinstance(e, ScfError) else f'{type(e).__name__}: {e}')}</i>"
            with self._lock:
                self._terminating = False  # it can be asked again
            with self.terminate_button.hold_sync():
                self.terminate_button.disabled = False
                self.terminate_button.description = "Terminate"
            self.graceful.disabled = False

    def close(self) -> None:
        if not hasattr(self, "outcome"):  # also called by ipywidgets' __del__, maybe on a half-built view
            super().close()
            return
        self._hub.forget(self)
        self.pane.close()
        for child in (self._style, self._header, self.terminate_button, self.graceful, self._controls, self.notice,
                      self.outcome):
            child.close()
        super().close()
