"""The engine's side of an instance's stdout/stderr pipes: bytes in, lines out, end-of-event markers found.

A line ends at ``\\n``; a lone ``\\r`` (a progress bar redrawing) also ends one, so progress is live, but a
``\\r`` on an empty line makes no line. A line longer than ``MAX_LINE`` is stored in ``MAX_LINE`` pieces.
Bytes that are not UTF-8 are kept as backslash escapes. Nothing is dropped.
"""

from __future__ import annotations

from .worker import END_MARKER

MAX_LINE = 1 << 20
_KEEP = len(END_MARKER) + 1


class LineSplitter:
    """Splits one stream of one instance. ``feed`` returns lines (str) and ``None`` where an event ended."""

    __slots__ = ("stream", "pending", "ended")

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.pending = b""
        self.ended = False

    def feed(self, data: bytes) -> list[str | None]:
        if self.pending:
            data = self.pending + data
        if b"\r" in data:
            parts = _split_cr(data)
        else:
            parts = data.split(b"\n")
        tail = parts.pop()
        if len(tail) > MAX_LINE:  # a huge line: store what we have, keep a tail that may hold a marker
            parts.append(tail[:-_KEEP])
            tail = tail[-_KEEP:]
        self.pending = tail
        if b"\x00" not in data:
            return [p.decode("utf-8", "backslashreplace") for p in parts]
        out: list[str | None] = []
        for p in parts:
            if p.endswith(END_MARKER):
                if len(p) > len(END_MARKER):
                    out.append(p[: -len(END_MARKER)].decode("utf-8", "backslashreplace"))
                out.append(None)
            else:
                out.append(p.decode("utf-8", "backslashreplace"))
        return out

    def close(self) -> list[str | None]:
        """At EOF: what is left without a newline is a line too."""
        rest, self.pending = self.pending, b""
        return self.feed(rest + b"\n") if rest else []


def _split_cr(data: bytes) -> list[bytes]:
    data = data.replace(b"\r\n", b"\n")
    out: list[bytes] = []
    for piece in data.split(b"\n"):
        subs = piece.split(b"\r")
        out.extend(s for s in subs[:-1] if s)
        out.append(subs[-1])
    return out
