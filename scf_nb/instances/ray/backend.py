"""The Ray backend: :class:`scf_nb.instances.backend.Backend` with one Ray actor per instance, on any node of
a Ray cluster; the engine and its store stay in this process.

::

    engine process                                            a node of the cluster
    --------------                                            ---------------------
    RayBackend.start(fn) --- actor options (num_cpus, num_gpus, resources; no restarts, no retries) --->
                             InstanceActor.serve(address, key, token) ---------------------------> actor
    Acceptor thread  <------ TCP: handshake with this engine's key, hello(token) -------------- watchdog
    engine loop      <------ lines / done / died / mem on that socket (the instance's channel) --'   |
                     ------- load / run / kill -------------------------------------------------->  |
    DeathWatch thread <----- Ray: the serve call failed (ray.kill, the node lost) ------------- Ray (GCS)

Nothing is sent ahead: an event is offered only to an idle instance, which runs it at once, so the offer is
the claim (``Host.started`` from ``offer``) and the engine's FIFO, concurrency and statuses are as on loky.
An instance that dies is reaped once its channel is at EOF (its watchdog read the pipes to their end) or,
after a kill, ``REAP_AFTER_KILL_S`` at the latest (a node that vanished says nothing more).
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...core.errors import ScfError
from ..backend import BUSY, DYING, NOT_HELD, REAPED, Death, Done, Host, Instance, InstanceRecords, Outcome
from ..loky import wire
from ..loky.processes import new_mark
from .actor import InstanceActor
from .instance import Acceptor, DeathWatch, RayInstance

if TYPE_CHECKING:
    from ...core.config import Config
    from ...core.functions import Function
    from ...core.records import EventState
    from ...engine.loop import Loop

REAP_AFTER_KILL_S = 3.0  # a killed instance is reaped by then even if its node never answers again
CAUSE_WAIT_S = 2.0  # an instance that died on its own: how long its event's end waits for the cause
_CAUSE_RETRY_S = 0.02
_RECV_BYTES = 1 << 18  # what one read of an instance's channel takes at most
_RUNS_KEPT = 64  # an instance's last runs whose late lines (from processes they left) still find their event


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ScfError("FailedOperation.BackendUnavailable", "backend='ray' needs Ray: pip install 'scf_nb[ray]'"
                       ) from None
    return ray


class RayBackend:
    """Instances as Ray actors."""

    name = "ray"
    keeps_spare = False  # an actor's resources are its function's, fixed when it starts
    memory_limit_mode = "watchdog"

    def __init__(self, config: Config, loop: Loop, close_at_exit: Callable[[], None]) -> None:
        ray = self.ray = _ray()
        self.loop = loop
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            ray.init(address=config.ray_address, log_to_driver=False, configure_logging=False)
        self.mark = new_mark()
        self.key = os.urandom(32)
        self.actor_class = ray.remote(InstanceActor)
        self.live: dict[int, RayInstance] = {}
        self.by_token: dict[str, RayInstance] = {}
        self._numbers = itertools.count(1)
        self._runs = itertools.count(1)
        self.host: Host
        # listen where the actors can reach this process: its Ray node's address (loopback in a one-machine test)
        self.acceptor = Acceptor(ray.util.get_node_ip_address(), self.key,
                                 lambda sock, hello: loop.post(self._on_hello, sock, hello))
        self.acceptor.start()
        self.deaths = DeathWatch(lambda inst, text, lost: loop.post(self._ray_died, inst, text, lost))
        self.deaths.start()
        self._close_at_exit = close_at_exit
        atexit.register(close_at_exit)  # before Ray's own exit handler (registered earlier, runs later)

    def attach(self, host: Host) -> None:
        self.host = host

    def validate(self, fn: Function) -> None:
        return None  # num_cpus, num_gpus and resources are the actor's options; Ray says if none can fit

    def recover(self, records: InstanceRecords) -> list[int]:
        """Nothing to kill: a dead engine's actors died with it (their watchdogs saw the engine go, and Ray
        kills a driver's actors when it exits); the store fails its events."""
        return []

    def info(self) -> dict[str, Any]:
        ray = self.ray
        try:
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            address = ray.get_runtime_context().gcs_address
        except Exception:  # Ray is gone
            nodes, address = 0, None
        return {"backend": self.name, "ray_address": address, "nodes": nodes, "engine_address": self.acceptor.address,
                "instances": len(self.live), "memory_limit_mode": self.memory_limit_mode}

    # -- the life of an instance -------------------------------------------------------------------------------
    def start(self, fn: Function | None) -> Instance:
        inst = RayInstance(fn, next(self._numbers), os.urandom(16).hex())
        inst.started_at = time.monotonic()
        options: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0, "max_concurrency": 1,
                                   "num_cpus": 1.0 if fn is None or fn.num_cpus is None else fn.num_cpus}
        if fn is not None and fn.num_gpus:
            options["num_gpus"] = fn.num_gpus
        if fn is not None and fn.resources:
            options["resources"] = dict(fn.resources)
        inst.actor = self.actor_class.options(**options).remote()
        inst.ref = inst.actor.serve.remote(self.acceptor.address, self.key, inst.token, self.mark)
        self.live[inst.number] = inst
        self.by_token[inst.token] = inst
        self.deaths.watch(inst)
        return inst

    def _on_hello(self, sock: socket.socket, hello: tuple[Any, ...]) -> None:
        _, token, pid, node_id, node_ip = hello
        inst = self.by_token.pop(token, None)
        if inst is None or inst.state == REAPED:
            sock.close()
            return
        inst.pid, inst.node_id, inst.node_ip = int(pid), str(node_id), str(node_ip)
        inst.conn = sock  # blocking sends (whole frames); reads never block (MSG_DONTWAIT)
        self.loop.watch(sock.fileno(), self._on_conn, inst)
        self.host.connected(inst)
        if inst.state == DYING:  # killed while it started
            self._order(inst, signal.SIGKILL)

    def load(self, inst: Instance) -> None:
        assert isinstance(inst, RayInstance) and inst.fn is not None
        fn = inst.fn
        context = {"function_name": fn.name, "namespace": fn.namespace, "memory_limit_in_mb": fn.memory_mb}
        memory = {"limit": fn.memory_mb << 20, "cgroup": None, "oom_file": None} if fn.memory_mb else None
        spec = {"name": fn.name, "code": fn.code, "handler": fn.handler, "env": dict(fn.env), "context": context,
                "timeout": fn.effective_timeout, "records": "", "number": inst.number, "memory": memory}
        try:
            inst.send(("load", spec))
        except OSError:
            self.loop.post(self.host.lost, inst)

    def kill(self, inst: Instance, grace: float = 0.0) -> None:
        assert isinstance(inst, RayInstance)
        if grace <= 0 and inst.event is None and inst.actor is not None and self._ray_kill(inst):
            pass  # idle: Ray ends it as asked, and its watchdog then kills what the actor left (and exits)
        else:
            self._order(inst, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        if grace > 0:
            self.loop.call_later(grace, self._grace_over, inst)
        self.loop.call_later(grace + REAP_AFTER_KILL_S, self._reap_now, inst)

    def _order(self, inst: RayInstance, sig: int) -> None:
        """Signal the instance's tree through its watchdog; without one (not connected yet, or its channel is
        gone), through Ray."""
        try:
            inst.send(("kill", sig))
            return
        except OSError:
            pass
        if sig == signal.SIGKILL and inst.actor is not None:
            try:
                self.ray.kill(inst.actor, no_restart=True)
            except Exception:
                pass

    def _ray_kill(self, inst: RayInstance) -> bool:
        """``ray.kill`` of the instance's actor; False if Ray would not take it. An actor the engine ends this
        way is one Ray was told of: Ray's driver prints no "A worker died or was killed" line for it, as it
        does for a process that dies on a signal (an event's kill must be that: it works inside a C call)."""
        try:
            self.ray.kill(inst.actor, no_restart=True)
        except Exception:
            return False
        return True

    def _grace_over(self, inst: RayInstance) -> None:
        if inst.state != REAPED:
            self._order(inst, signal.SIGKILL)

    def _reap_now(self, inst: RayInstance) -> None:
        self._maybe_reap(inst, force=True)

    def cause_of_death(self, inst: Instance) -> Death:
        assert isinstance(inst, RayInstance)
        ray_says = inst.ray_cause or ""
        watchdog_says = inst.died.get("node_lost") if inst.died is not None else None
        if watchdog_says or (watchdog_says is None and inst.ray_node_lost):  # (a watchdog on a live node knows)
            extra = f": {ray_says}" if ray_says else ""
            return Death(f"the Ray node {inst.node} running the instance was lost{extra}")
        if inst.died is not None:
            how = f": {ray_says}" if ray_says else " (killed from outside, or out of memory)"
            return Death(f"the instance's Ray actor process on node {inst.node} died{how}")
        if ray_says:
            return Death(f"the instance's Ray actor died: {ray_says}")
        return Death(f"the instance's channel from node {inst.node} broke")

    def tick(self) -> None:
        return None

    # -- its channel ------------------------------------------------------------------------------------------------
    def _on_conn(self, fd: int, inst: RayInstance) -> bool:
        """Read what the watchdog sent; True if anything came."""
        conn = inst.conn
        assert conn is not None
        data = wire.read_now(conn, _RECV_BYTES)
        if data is None:
            return False
        if not data:
            self._close(inst)
            self.host.lost(inst)
            self._maybe_reap(inst)
            return False
        inst.msgs.extend(inst.reader.feed(data))
        self._pump(inst)
        return True

    def _pump(self, inst: RayInstance) -> None:
        """Handle what came, in order. The messages wait on the instance, not in a local list, so a kill decided
        while handling one (``settle`` reads on) still handles the ones after it first."""
        while inst.msgs:
            self._handle(inst, inst.msgs.popleft())

    def _handle(self, inst: RayInstance, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "lines":
            ev = inst.runs.get(msg[1])
            if ev is not None:
                self.host.lines(ev, msg[2], msg[3])
        elif kind == "done":
            self._on_done(inst, msg)
        elif kind == "mem":
            inst.mem = msg[1]
        elif kind == "died":
            inst.died = msg[1]
            self.host.lost(inst)

    def _on_done(self, inst: RayInstance, msg: tuple[Any, ...]) -> None:
        _, run, status, payload, duration_ms, mem, ended_at, init_ms, pickled = msg
        ev = inst.runs.get(run)
        if inst.state == DYING:  # terminated with grace, and it stopped: stop it for good
            self._order(inst, signal.SIGKILL)
            return
        if ev is None or inst.event is not ev:
            return
        host = self.host
        if not host.finished(inst, ev, Done(status, payload, duration_ms, mem, host.wall(ended_at), init_ms, pickled)):
            return  # the engine is replacing it (an exception, a memory limit)
        if inst.state != BUSY:
            host.need_dispatch()
            return
        host.idle(inst)
        if inst.settling:  # in the middle of a kill decision: dispatch later, never onto this instance now
            host.need_dispatch()
            return
        host.dispatch(ev.fn.key, inst)

    def _close(self, inst: RayInstance) -> None:
        inst.closed = True
        if inst.conn is not None:
            try:
                self.loop.unwatch(inst.conn.fileno())
            except (KeyError, ValueError):
                pass
            inst.conn.close()
            inst.conn = None

    def _ray_died(self, inst: RayInstance, text: str, node_lost: bool) -> None:
        """Ray says the actor is dead (or its node unreachable): the cause, and a loss if nobody asked."""
        inst.ray_cause, inst.ray_node_lost = text, node_lost
        if inst.state == REAPED:
            return
        if inst.conn is None and not inst.closed and inst.state != DYING:
            inst.closed = True  # it never connected and never will
        self.host.lost(inst)
        self._maybe_reap(inst)

    def _maybe_reap(self, inst: RayInstance, force: bool = False) -> None:
        if inst.state == REAPED or (not force and not inst.closed):
            return
        if self._cause_pending(inst):
            return
        if inst.conn is not None:  # forced: what came is read first
            self._drain(inst)
            self._close(inst)
        inst.state = REAPED
        self.live.pop(inst.number, None)
        self.by_token.pop(inst.token, None)
        self.deaths.forget(inst)
        self.host.forget(inst)
        self.host.gone(inst)
        if inst.actor is not None:
            try:  # (dead already, in every case but a channel that broke)
                self.ray.kill(inst.actor, no_restart=True)
            except Exception:
                pass
            inst.actor = None

    def _cause_pending(self, inst: RayInstance) -> bool:
        """An instance that died on its own with its event running: its end waits (up to ``CAUSE_WAIT_S``) for
        a cause, from its watchdog or from Ray."""
        ev = inst.event
        if ev is None or ev.status.is_terminal or (inst.outcome is not None and inst.outcome.status is not None):
            return False
        if inst.died is not None and (inst.died.get("node_lost") or inst.ray_cause):
            return False
        now = time.monotonic()
        if not inst.cause_until:
            inst.cause_until = now + CAUSE_WAIT_S
            inst.outcome = Outcome(None)  # it died on its own: a kill decided meanwhile does not become the cause
        if now >= inst.cause_until:
            return False
        self.loop.call_later(_CAUSE_RETRY_S, self._reap_later, inst)
        return True

    def _reap_later(self, inst: RayInstance) -> None:
        self._maybe_reap(inst, force=True)

    def _drain(self, inst: RayInstance) -> None:
        while inst.conn is not None:
            data = wire.read_now(inst.conn, _RECV_BYTES)
            if not data:  # nothing more now, or gone
                return
            inst.msgs.extend(inst.reader.feed(data))
            self._pump(inst)

    # -- every event starts by an instance's claim: here, the offer to an idle instance is the claim ------------
    def unoffered(self, key: tuple[str, str]) -> EventState | None:
        return None

    def waiting(self, key: tuple[str, str]) -> int:
        return 0

    def offer(self, inst: Instance, ev: EventState, from_fifo: bool) -> bool:
        assert isinstance(inst, RayInstance)
        run = next(self._runs)
        try:
            inst.send(("run", run, ev.request_id, ev.payload, ev.qualifier, ev.fn.version))
        except OSError:  # its channel is gone: it is lost, the event waits for another
            self.loop.post(self.host.lost, inst)
            return False
        inst.runs[run] = ev
        if len(inst.runs) > _RUNS_KEPT:
            del inst.runs[min(inst.runs)]
        self.host.started(inst, ev, self.host.wall(time.time()))
        return True

    def send_ahead(self, queue: Any) -> int:
        return 0

    def take_back(self, ev: EventState) -> str:
        return NOT_HELD

    def take_oldest(self, key: tuple[str, str], revision: int, before: int | None) -> EventState | str | None:
        return None

    def take_back_all(self) -> list[EventState]:
        return []

    def settle(self, inst: Instance) -> bool:
        """Read what the instance sent: an event that has just returned ends before any kill is decided."""
        assert isinstance(inst, RayInstance)
        inst.settling = True
        try:
            self._drain(inst)
        finally:
            inst.settling = False
        return True

    def unban(self, inst: Instance) -> None:
        inst.banned = False

    # -- memory (the engine's watchdog samples what the instance's watchdog reports) ---------------------------------
    def limit_memory(self, inst: Instance, limit: int) -> bool:
        return False

    def memory(self, inst: Instance) -> int:
        assert isinstance(inst, RayInstance)
        return inst.mem

    def oom_killed(self, inst: Instance, ended: bool = False) -> int | None:
        return None

    def close(self) -> None:
        atexit.unregister(self._close_at_exit)
        for inst in list(self.live.values()):  # none, unless the engine could not start (or its loop hung)
            if inst.outcome is None:
                inst.outcome = Outcome(None)
            self._order(inst, signal.SIGKILL)
            if inst.actor is not None:
                try:
                    self.ray.kill(inst.actor, no_restart=True)
                except Exception:
                    pass
            self._close(inst)
        self.acceptor.stop()
        self.deaths.stop()
        if self.owns_ray:
            self.ray.shutdown()
