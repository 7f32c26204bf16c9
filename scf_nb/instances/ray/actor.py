"""What runs in an instance's Ray actor: the loky worker's event runner (``loky/worker.py``: cold start, warm
state, capture of fds 1/2, results, exceptions, memory) fed by a watchdog process on the same node::

    actor process (Ray worker, own process group)          watchdog (its own session, not the actor's child)
    ---------------------------------------------          ----------------------------------------------------
    serve(): fds 1/2 := capture pipes ------ read ends --> reads them: lines tagged with the event, to the engine
             start the watchdog, hand it the pipes         connects to the engine (TCP, authenticated), hello
             <-- ("load", spec) / ("run", ...) ----------  from the engine
             run the event (worker._Runner) --- "done" --> after its last line, to the engine
                                                           kill orders: signals the actor's process tree

The watchdog is a grandchild that was orphaned at once, so neither Ray (which kills an actor's direct
children when it kills the actor) nor a kill of the actor's process group stops it: what the actor wrote just
before it was killed is still read out of the pipes. This module imports nothing heavy (Ray itself is
imported by the backend, which wraps ``InstanceActor`` with ``ray.remote``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from ..loky.worker import INSTANCE_MARK, _capture_stdio, _libc, _reap_orphans, _Runner

INSTANCE_TOKEN = "SCF_NB_RAY_INSTANCE"  # in the environment of the actor and all it starts: the watchdog's kills
_PR_SET_CHILD_SUBREAPER = 36
_IDLE_S = 1.0  # idle, the actor collects adopted orphans this often


class _ActorRunner(_Runner):
    """The loky runner, fed one event at a time: nothing is ever sent ahead to an actor, so it claims nothing
    at an event's end (the engine sends the next event once it has this one's "done")."""

    def _claim(self) -> tuple[tuple[Any, ...] | None, float]:
        return None, 0.0


class InstanceActor:
    """One instance: ``serve`` runs for the actor's life (its method calls are never used otherwise)."""

    def serve(self, address: str, key: bytes, token: str, mark: str) -> None:
        """Capture fds 1/2, start the watchdog (which connects to the engine at ``address`` with ``key`` and
        names this instance by ``token``), then run events until the engine goes."""
        import ray  # present: this runs in a Ray worker

        ctx = ray.get_runtime_context()
        serve(address, key, token, mark, ctx.get_node_id(), ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


def serve(address: str, key: bytes, token: str, mark: str, node_id: str, node_ip: str) -> None:
    os.environ[INSTANCE_MARK] = mark
    os.environ[INSTANCE_TOKEN] = token
    try:
        os.setpgid(0, 0)  # (a Ray worker leads its own group already)
    except OSError:
        pass
    read_ends = _capture_stdio()
    ctl, ctl_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    side, side_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = [*read_ends, ctl_peer.fileno(), side_peer.fileno()]
    config = {"address": address, "key": key.hex(), "token": token, "pid": os.getpid(), "pgid": os.getpgid(0),
              "raylet_pid": os.getppid(), "node_id": node_id, "node_ip": node_ip,
              "fds": fds}
    starter = subprocess.Popen(
        [sys.executable, "-m", "scf_nb.instances.ray.watchdog"], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=fds, start_new_session=True)
    assert starter.stdin is not None
    starter.stdin.write(json.dumps(config).encode())  # not argv: other users on the node can read that
    starter.stdin.close()
    for fd in read_ends:
        os.close(fd)
    ctl_peer.close()
    side_peer.close()
    starter.wait()  # it forks the watchdog and exits at once
    try:  # what an event leaves behind (a daemon) stays our descendant, so a kill finds it
        _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        pass
    _loop(ctl, side)


def _loop(ctl: socket.socket, side: socket.socket) -> None:
    runner = _ActorRunner(ctl, side)
    signal.signal(signal.SIGTERM, runner.on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl.settimeout(_IDLE_S)
    while True:
        try:
            data = ctl.recv(1 << 16)
        except TimeoutError:
            _reap_orphans()
            continue
        except OSError:
            return
        if not data:  # the watchdog is gone (the engine went, or we are being killed)
            return
        for msg in runner.reader.feed(data):
            if msg[0] == "run":
                runner._run_one(msg[2], msg[3], msg[4], msg[5], None)
            elif msg[0] == "load":
                runner.spec = msg[1]
                os.environ.update(runner.spec["env"])
            elif msg[0] == "stop":
                return
