"""The instance's connection to its engine: TCP, authenticated both ways with the engine's key (the challenge
and answer of ``multiprocessing.connection``), then the framed messages of ``loky/wire.py``.

::

    watchdog (node)                                  engine (acceptor thread, then the engine's loop)
    connect(host:port) ----------------------------> accept
    answer the engine's challenge <----------------- deliver_challenge(key)   (a wrong key: closed)
    deliver_challenge(key) ------------------------> answer                   (a fake engine fails here)
    ("hello", token, pid, node id, node ip) -------> the instance of that token (one hello per token)

Nothing reaches an engine's events without its key, and a token names one instance of it: lines and results
from anywhere else are never read. Both sides import this module: it stays light.
"""

from __future__ import annotations

import os
import socket
import struct
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from ..loky import wire

HANDSHAKE_S = 5  # a peer that does not finish the handshake by then is dropped
_HEADER = struct.Struct("!I")
_MAX_HELLO = 1 << 16


def _timeouts(sock: socket.socket, seconds: int) -> None:
    """Kernel-level timeouts (they apply to a dup of the fd too, unlike ``settimeout``)."""
    sock.setblocking(True)
    value = struct.pack("ll", seconds, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _handshake(sock: socket.socket, key: bytes, server: bool) -> None:
    conn = Connection(os.dup(sock.fileno()))
    try:
        if server:
            deliver_challenge(conn, key)
            answer_challenge(conn, key)
        else:
            answer_challenge(conn, key)
            deliver_challenge(conn, key)
    finally:
        conn.close()


def accept(sock: socket.socket, key: bytes) -> tuple[Any, ...]:
    """The engine's side, on an accepted socket: authenticate the peer and read its hello. Raises OSError (or
    ``multiprocessing.AuthenticationError``, EOFError, ValueError) for anything else; then close it."""
    _timeouts(sock, HANDSHAKE_S)
    _handshake(sock, key, server=True)
    head = _read_exactly(sock, _HEADER.size)
    (size,) = _HEADER.unpack(head)
    if size > _MAX_HELLO:
        raise ValueError("hello too long")
    msgs = wire.Reader().feed(head + _read_exactly(sock, size))
    if len(msgs) != 1 or msgs[0][0] != "hello":
        raise ValueError("not a hello")
    _timeouts(sock, 0)  # 0: no timeout
    return msgs[0]


def connect(address: str, key: bytes, hello: tuple[Any, ...]) -> socket.socket:
    """The watchdog's side: connect to the engine at ``host:port``, authenticate both ways, say hello."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=HANDSHAKE_S)
    try:
        _timeouts(sock, HANDSHAKE_S)
        _handshake(sock, key, server=False)
        sock.sendall(wire.frame(hello))
        _timeouts(sock, 0)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed during the handshake")
        data += chunk
    return data
