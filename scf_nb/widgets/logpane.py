"""The log pane: one event's lines, fed by ``follow`` (the store's history first, then each line as it is
committed), drawn in batches and bounded in the browser.

The pane keeps the last ``max_lines`` lines (``LogWindow``); older ones stay in the store and "show earlier"
reads them back a window at a time (``logs(since_seq=...)``). Lines arrive on the pane's follower thread and
are sent by the hub's thread at most every ``FLUSH_S`` seconds as one new value of one HTML widget: one widget
message per batch, however many lines it holds, and never more than the window's lines.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import ipywidgets as widgets

from . import render
from .hub import Shown, hub_for

if TYPE_CHECKING:
    from ..clients.protocol import ClientProtocol
    from ..store.follow import Follower
    from ..store.observe import Changes

FLUSH_S = 0.1  # at most one batch of lines this often: <= 10 widget messages a second
MAX_LINES = 1000


class Line(NamedTuple):
    seq: int
    stream: str
    html: str  # drawn once, when it arrives


def drawn(seq: int, ts: Any, stream: str, text: str) -> Line:
    return Line(int(seq), stream, render.log_line(ts, stream, text))


class LogWindow:
    """What a pane shows, apart from any widget: the newest ``max_lines`` lines (live), or a window of earlier
    ones read back from the store (``earlier``), while newer lines keep arriving into ``tail``."""

    def __init__(self, max_lines: int = MAX_LINES) -> None:
        self.max_lines = max_lines
        self.tail: deque[Line] = deque(maxlen=max_lines)
        self.last_seq = 0  # the newest line received
        self.earlier: list[Line] | None = None

    def add(self, lines: Sequence[Line]) -> None:
        if lines:
            self.tail.extend(lines)
            self.last_seq = lines[-1].seq

    @property
    def shown(self) -> Sequence[Line]:
        return self.earlier if self.earlier is not None else self.tail

    @property
    def first_shown(self) -> int:
        """The seq of the first line shown (``last_seq + 1`` when none is)."""
        shown = self.shown
        return shown[0].seq if shown else self.last_seq + 1

    @property
    def live(self) -> bool:
        return self.earlier is None

    def has_earlier(self) -> bool:
        return self.first_shown > 1

    def header(self, ended: bool) -> str:
        shown = self.shown
        if not shown:
            return "no lines yet" if not ended else "no lines"
        where = "" if self.live else f" (showing earlier lines; {self.last_seq:,} received)"
        return f"lines {shown[0].seq:,}-{shown[-1].seq:,} of {self.last_seq:,}{where}"


class LogPane(Shown, widgets.VBox):
    """A live log pane for one event (``log_pane(request_id)``): it follows the event until it has ended,
    showing the last ``max_lines`` lines; "show earlier" / "show latest" move through the rest. While no
    browser shows it, it keeps the newest lines (bounded) and draws nothing; it draws them when shown again."""

    def __init__(self, request_id: str, *, client: ClientProtocol | None = None, max_lines: int = MAX_LINES,
                 stream: str | None = None, **kwargs: Any) -> None:
        from .. import api
        from ..core.errors import invalid

        if stream not in (None, "stdout", "stderr"):
            raise invalid("Stream", f"stream must be 'stdout' or 'stderr', got {stream!r}")
        self._client = client if client is not None else api.client()
        self.request_id = request_id
        self.stream = stream  # only this stream's lines (None: both)
        self._seen = 0  # the newest line the follower gave, of any stream
        self._window = LogWindow(max_lines)
        self._lock = threading.Lock()  # what the follower thread hands over
        self._drawing = threading.RLock()  # the window and its drawing: the hub's thread and button clicks
        self._pending: deque[Line] = deque(maxlen=max_lines)  # arrived, not yet drawn: older ones are in the store
        self._scheduled = False
        self._last_flush = 0.0
        self._ended = False  # the follower has given every line (set by its thread)
        self._drawn_end = False  # ... and they were all drawn (set by the hub's)
        self.messages = 0  # new values sent to the browser (one per batch)
        self._hub = hub_for(self._client)
        last = self._client.event_info(request_id)["log_seq"]  # an unknown id raises here, at once
        self._follower: Follower = self._client.follow(request_id, since_seq=max(0, last - max_lines))
        self.html = widgets.HTML(value=self._draw())
        self.earlier_button = widgets.Button(description="show earlier", disabled=True,
                                             layout=widgets.Layout(width="auto"))
        self.latest_button = widgets.Button(description="show latest", disabled=True,
                                            layout=widgets.Layout(width="auto"))
        self.earlier_button.on_click(lambda _: self.show_earlier())
        self.latest_button.on_click(lambda _: self.show_latest())
        self.earlier_button.add_class("scf-earlier")
        self.latest_button.add_class("scf-latest")
        self._style = render.style_sheet()
        super().__init__([self._style, widgets.HBox([self.earlier_button, self.latest_button]), self.html], **kwargs)
        self.add_class("scf-logpane")
        self._track_views()
        self._thread = threading.Thread(target=self._follow, name="scf_nb-logpane", daemon=True)
        self._thread.start()

    # -- what it shows (for the views around it, and tests) ------------------------------------------------------
    @property
    def window(self) -> LogWindow:
        return self._window

    @property
    def ended(self) -> bool:
        """The event has ended and every line of it was drawn."""
        return self._drawn_end

    # -- the follower thread ---------------------------------------------------------------------------------
    def _follow(self) -> None:
        follower = self._follower
        try:
            for ln in follower:
                if self.stream in (None, ln.stream):
                    self._arrive(drawn(ln.seq, ln.ts, ln.stream, ln.line))
                else:
                    self._seen = ln.seq  # read by the next turn: "show earlier" starts before it
        finally:
            follower.close()
            with self._lock:
                self._ended = True  # set under the lock: the last flush sees it with the last lines
            self._hub.schedule(self)

    def _arrive(self, line: Line) -> None:
        with self._lock:
            self._pending.append(line)
            if self._scheduled:
                return
            self._scheduled = True
        self._hub.schedule(self, self._last_flush + FLUSH_S - time.monotonic())

    # -- the hub's turn: one batch ------------------------------------------------------------------------------
    def _turn(self) -> None:
        with self._lock:
            lines, self._pending = list(self._pending), deque(maxlen=self._window.max_lines)
            ended = self._ended
        with self._drawing:
            self._window.add(lines)
            self._window.last_seq = max(self._window.last_seq, self._seen)
            if self.shown:
                self._redraw(ended)
                self._drawn_end = ended
        with self._lock:  # lines that came while this batch was drawn wait FLUSH_S from its sending
            self._last_flush = time.monotonic()
            again = self._scheduled = bool(self._pending) or self._ended != ended
        if again:
            self._hub.schedule(self, FLUSH_S)

    def _became_shown(self) -> None:
        self._hub.schedule(self)  # draws what came while hidden

    def _changed(self, changes: Changes) -> None:
        pass  # fed by its follower, not by the change feed

    def _redraw(self, ended: bool) -> None:
        with self._drawing:
            value = self._draw(ended)
            if value != self.html.value:
                self.html.value = value
                self.messages += 1
            w = self._window
            self.earlier_button.disabled = not w.has_earlier()
            self.latest_button.disabled = w.live

    def _draw(self, ended: bool = False) -> str:
        w = self._window
        return (f'<div class="scf-pane-head">{render.esc(w.header(ended))}</div>'
                f'<div class="scf-log"><pre>{"".join(line.html for line in w.shown)}</pre></div>')

    # -- buttons --------------------------------------------------------------------------------------------------
    def show_earlier(self) -> None:
        """Show the ``max_lines`` lines before the first one shown (read from the store)."""
        w = self._window
        with self._drawing:
            first = w.first_shown
            if first <= 1:
                return
            frame = self._read_before(first)
            if frame.empty:
                return
            columns = (frame[c].tolist() for c in ("seq", "ts", "stream", "line"))
            w.earlier = [drawn(*row) for row in zip(*columns, strict=True)]
            self._redraw(self._ended)

    def _read_before(self, first: int) -> Any:
        """The last lines (at most ``max_lines``) before seq ``first``: one window of seqs, stepping further
        back (one bounded read each) while a stream filter finds none of its lines in one."""
        n = self._window.max_lines
        while True:
            since = max(0, first - n - 1)
            frame = self._client.logs(self.request_id, since_seq=since, stream=self.stream, limit=first - 1 - since)
            frame = frame[frame.seq < first]  # with a stream, the limit's lines may reach past the window
            if not frame.empty or since == 0:
                return frame
            first = since + 1

    def show_latest(self) -> None:
        """Back to the newest lines, following again."""
        with self._drawing:
            self._window.earlier = None
            self._redraw(self._ended)

    def close(self) -> None:
        """Stop following (the event runs on) and close the widgets."""
        if not hasattr(self, "_latest"):  # also called by ipywidgets' __del__, maybe on a half-built pane
            super().close()
            return
        self._follower.close()
        self._hub.forget(self)
        for child in (self._style, self.html, self.earlier_button, self.latest_button, *self.children):
            child.close()
        super().close()
