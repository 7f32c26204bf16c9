"""The Ray backend's handle on one instance (an actor and its watchdog's channel), and the two threads the
backend keeps beside the engine's loop: one accepting the watchdogs' connections (the handshake may wait on a
slow or hostile peer: never on the engine thread), one waiting on Ray for actors that die."""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..backend import Instance
from ..loky import wire
from . import link

if TYPE_CHECKING:
    from ...core.functions import Function
    from ...core.records import EventState


class RayInstance(Instance):
    """One Ray actor serving one function version; its watchdog's socket is its channel."""

    def __init__(self, fn: Function | None, number: int, token: str) -> None:
        super().__init__(fn, number)
        self.token = token
        self.actor: Any = None  # the ActorHandle (dropping the last one would let Ray kill the actor)
        self.ref: Any = None  # the ObjectRef of its serve call: an error there is Ray's word on its death
        self.conn: socket.socket | None = None
        self.reader = wire.Reader()
        self.msgs: deque[tuple[Any, ...]] = deque()  # received, not handled yet
        self.runs: dict[int, EventState] = {}  # run number -> its event (lines of leftovers come late)
        self.node_id = ""
        self.node_ip = ""
        self.closed = False  # its channel reached EOF (or was never opened and will not be)
        self.died: dict[str, Any] | None = None  # what its watchdog said when the actor process ended
        self.ray_cause: str | None = None  # what Ray said about its death
        self.ray_node_lost = False  # ... and whether it said its node was lost
        self.cause_until = 0.0
        self.mem = 0  # the newest sample of its tree's memory (a limited function), bytes
        self.settling = False

    def send(self, msg: tuple[Any, ...]) -> None:
        """Raises OSError if the channel is gone."""
        if self.conn is None:
            raise OSError("not connected")
        self.conn.sendall(wire.frame(msg))

    @property
    def node(self) -> str:
        ip = f" ({self.node_ip})" if self.node_ip else ""
        return f"{self.node_id or 'unknown'}{ip}"


class Acceptor(threading.Thread):
    """Accepts watchdogs on ``host`` (a free port), authenticates them and passes each hello on."""

    def __init__(self, host: str, key: bytes, deliver: Callable[[socket.socket, tuple[Any, ...]], None]) -> None:
        super().__init__(name="scf_nb-ray-acceptor", daemon=True)
        self.key = key
        self.deliver = deliver
        self.sock = socket.create_server((host, 0), backlog=128)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.stopped = False

    def run(self) -> None:
        while not self.stopped:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            try:
                hello = link.accept(conn, self.key)
            except Exception:  # a wrong key, a stranger, a peer that went: nobody's events hear of it
                conn.close()
                continue
            self.deliver(conn, hello)

    def stop(self) -> None:
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class DeathWatch(threading.Thread):
    """Waits on every live instance's serve call: Ray ends it with an error when the actor dies (killed,
    its node lost); ``report(inst, text, node_lost)`` gets Ray's explanation."""

    def __init__(self, report: Callable[[RayInstance, str, bool], None]) -> None:
        super().__init__(name="scf_nb-ray-deaths", daemon=True)
        import ray

        self.ray = ray
        self.report = report
        self.lock = threading.Lock()
        self.refs: dict[Any, RayInstance] = {}
        self.wake = threading.Event()
        self.stopped = False

    def watch(self, inst: RayInstance) -> None:
        with self.lock:
            self.refs[inst.ref] = inst
        self.wake.set()

    def forget(self, inst: RayInstance) -> None:
        with self.lock:
            self.refs.pop(inst.ref, None)

    def run(self) -> None:
        ray = self.ray
        while not self.stopped:
            with self.lock:
                refs = list(self.refs)
            if not refs:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            try:
                ready, _ = ray.wait(refs, num_returns=1, timeout=0.2)
            except Exception:  # Ray is shutting down
                return
            for ref in ready:
                with self.lock:
                    inst = self.refs.pop(ref, None)
                if inst is None:
                    continue
                try:
                    ray.get(ref, timeout=0)
                    text, node_lost = "its serve call returned", False
                except Exception as e:
                    text = _why(e)
                    node_lost = type(e).__name__ == "ActorUnavailableError" or "its node has died" in text
                self.report(inst, text, node_lost)

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()


def _why(e: Exception) -> str:
    """Ray's reason for an actor's death, in one sentence where it gives one."""
    text = str(e)
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("The actor is dead because") or line.startswith("The actor died because"):
            for tail in (" Some common causes", " There are some potential root causes"):
                line = line.split(tail)[0]
            return line
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"{type(e).__name__}: {first}"
