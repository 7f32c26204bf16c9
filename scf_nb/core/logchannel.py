"""The engine's side of an instance's stdout/stderr pipes: bytes in, lines out, end-of-event markers found.

A line ends at ``\\n``; a lone ``\\r`` (a progress bar redrawing) also ends one, so progress is live, but a
``\\r`` on an empty line makes no line. A line longer than ``MAX_LINE`` bytes is stored in pieces of
``MAX_LINE`` bytes each (the cut moved back, by at most 3 bytes, to a character boundary) and a last one with
the rest; every piece but the last ends with ``CONTINUED``, so a reader can join them: the next piece is the
next line of the same stream (the other stream's lines may come between). Bytes that are not UTF-8 are kept
as backslash escapes. Nothing is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable

# Written by an instance after an event's last byte on each stream (its capture writes it; see the worker).
END_MARKER = b"\x00\x1fscf_nb:end\x1f\x00"
MAX_LINE = 1 << 20
CONTINUED = " [scf_nb: continued in the next line of this stream]"
_KEEP = len(END_MARKER) + 1  # a marker may straddle two reads: never cut into the last bytes of a tail


class LineSplitter:
    """Splits one stream of one instance. ``feed`` returns lines (str) and ``None`` where an event ended."""

    __slots__ = ("ended", "held", "pending", "stream")

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.pending = b""
        self.ended = False  # the current event's END marker has been read on this stream
        self.held: list[str | None] = []  # what came after it: the next event's, once the current one ended

    def feed(self, data: bytes) -> list[str | None]:
        if self.pending:
            data = self.pending + data
        held = b""
        if b"\r" in data:
            if data.endswith(b"\r"):  # may be the first half of a CRLF: decide with the next read
                data, held = data[:-1], b"\r"
            parts = _split_cr(data)
        else:
            parts = data.split(b"\n")
        tail = parts.pop()
        cut: list[bytes] = []
        start = 0
        while len(tail) - start > MAX_LINE + _KEEP:  # a huge line: store its whole pieces now, keep the rest
            end = _char_boundary(tail, start + MAX_LINE)
            cut.append(tail[start:end])
            start = end
        if start:
            tail = tail[start:]
        self.pending = tail + held
        if b"\x00" not in data:
            if len(data) <= MAX_LINE:
                return [p.decode("utf-8", "backslashreplace") for p in parts]
            out: list[str | None] = [piece for p in parts for piece in _pieces(p)]
        else:
            out = []
            for p in parts:
                marker = p.endswith(END_MARKER)
                if marker:
                    p = p[: -len(END_MARKER)]
                if p or not marker:
                    out.extend(_pieces(p))
                if marker:
                    out.append(None)
        out.extend(_decode(piece) + CONTINUED for piece in cut)
        return out

    def close(self) -> list[str | None]:
        """At EOF: what is left without a newline is a line too."""
        rest, self.pending = self.pending, b""
        return self.feed(rest + b"\n") if rest else []


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _pieces(line: bytes) -> list[str]:
    """``line`` decoded, in pieces of ``MAX_LINE`` bytes (moved back to a character boundary) and the rest;
    each piece but the last ends with ``CONTINUED``."""
    if len(line) <= MAX_LINE:
        return [_decode(line)]
    out = []
    start = 0
    while len(line) - start > MAX_LINE:
        end = _char_boundary(line, start + MAX_LINE)
        out.append(_decode(line[start:end]) + CONTINUED)
        start = end
    out.append(_decode(line[start:]))
    return out


def _char_boundary(b: bytes, i: int) -> int:
    """``i`` moved back (at most 3 bytes) so that it does not fall inside a UTF-8 character."""
    j = i
    while j > i - 3 and j > 0 and (b[j] & 0xC0) == 0x80:
        j -= 1
    return j if j > 0 else i


def _split_cr(data: bytes) -> list[bytes]:
    data = data.replace(b"\r\n", b"\n")
    out: list[bytes] = []
    for piece in data.split(b"\n"):
        subs = piece.split(b"\r")
        out.extend(s for s in subs[:-1] if s)
        out.append(subs[-1])
    return out


def read_to_eof(fd: int, splitter: LineSplitter, sink: Callable[[list[str | None]], None]) -> None:
    """Read a pipe whose writers are gone (or going) to its end, handing each batch of lines to ``sink``."""
    try:
        while data := os.read(fd, 1 << 18):
            sink(splitter.feed(data))
    except OSError:
        pass
    sink(splitter.close())
