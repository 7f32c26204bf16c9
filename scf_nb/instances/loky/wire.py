"""The messages between the engine and an instance: pickled tuples on a Unix stream socket, each framed by
its 4-byte length.

``multiprocessing.connection`` did the same job at ~3x the cost per message (a ``ForkingPickler`` per send,
two reads per receive, a selector per ``poll``); here one ``recv`` can bring several messages and a send is
one syscall. Both sides import this module, so it stays light.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

_HEADER = struct.Struct("!I")
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def frame(msg: tuple[Any, ...]) -> bytes:
    """``msg`` as the bytes to send: its length, then its pickle."""
    body = pickle.dumps(msg, _PROTOCOL)
    return _HEADER.pack(len(body)) + body


class Reader:
    """Collects received bytes and cuts them into messages; a message split across reads waits for its rest."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # the common case: whole messages, no copy
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if end - pos - 4 < size:
                break
            out.append(pickle.loads(buf[pos + 4:pos + 4 + size]))
            pos += 4 + size
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf += buf[pos:]
        return out

    @property
    def pending(self) -> int:
        """Bytes of a message not complete yet."""
        return len(self._buf)


def read_now(sock: socket.socket, size: int) -> bytes | None:
    """Up to ``size`` bytes that ``sock`` holds now, without waiting: None if it holds none yet, ``b""`` if the
    peer closed it or it broke."""
    try:
        return sock.recv(size, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""
