"""The engine a Jupyter server hosts, as the REST handlers reach it: a client call runs in a thread pool (never
on the server's event loop), but for the two that never block, which ``POST invoke`` makes on the loop (the
function's in-memory record, and the accept with ``wait=False``); waits are answered from done callbacks (no
thread blocks on them), and one subscription to the change feed fans out to every open stream.

::

    handler (event loop)                   EngineHost                              engine (embedded Client)
    --------------------                   ----------                              ------------------------
    await host.run(lambda c: c.X(...))     quick pool (reads, writes)       --->   protocol call
    await host.run(..., slow=True)         long pool (terminate, export,
                                           purge)                           --->
    await host.wait(ids, timeout)          add_done_callback per id -> a future    the feed's callbacks thread
    await host.broker.listen(fn)           one subscribe() for all streams  <---   Changes after each commit
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..clients import discovery
from ..clients.protocol import ClientProtocol
from ..core.errors import ScfError
from ..store.observe import Changes, Subscription, Unread

log = logging.getLogger("scf_nb")
_T = TypeVar("_T")
QUICK_THREADS = 8  # reads and short writes; DuckDB reads run in parallel, one cursor per thread
SLOW_THREADS = 64  # calls that may block long: a sync invoke, a terminate that waits, an export
MAX_WAIT_S = 30.0  # a wait request answers after at most this long (the HTTP client asks again)


class EngineHost:
    """The server's engine and the pools its handlers call it in.

    Args:
        client: the engine's client (the process's default embedded client), or None if it could not start.
        error: why it could not start (every call then raises it), e.g. ``FailedOperation.StoreLocked``.
    """

    def __init__(self, client: ClientProtocol | None, error: ScfError | None = None) -> None:
        self.client = client
        self.error = error
        self.info: discovery.ServerInfo | None = None
        self._environ: dict[str, str | None] = {}
        self._quick = ThreadPoolExecutor(QUICK_THREADS, thread_name_prefix="scf_nb-rest")
        self._slow = ThreadPoolExecutor(SLOW_THREADS, thread_name_prefix="scf_nb-rest-long")
        self.broker = ChangeBroker(self)
        self._token_user: Any = None

    def token_user(self, make: Callable[[], _T]) -> _T:
        """The one user every request with the server's token is (``make()`` the first time)."""
        if self._token_user is None:
            self._token_user = make()
        user: _T = self._token_user
        return user

    def engine(self) -> ClientProtocol:
        if self.client is None or self.client.closed:
            raise self.error or ScfError("FailedOperation.EngineStopped", "the server's engine was shut down")
        return self.client

    async def run(self, fn: Callable[[ClientProtocol], _T], *, slow: bool = False) -> _T:
        """``fn(client)`` in a pool thread; its answer (or its exception) here."""
        client = self.engine()
        return await asyncio.get_running_loop().run_in_executor(self._slow if slow else self._quick, fn, client)

    async def wait(self, request_ids: list[str], timeout: float) -> set[str]:
        """Which of the events have ended within ``timeout`` seconds (at most ``MAX_WAIT_S``); no thread waits.

        Raises:
            ScfError: ``ResourceNotFound.AsyncEvent`` for an id that names no event.
        """
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[Any]] = {rid: loop.create_future() for rid in dict.fromkeys(request_ids)}

        def register(client: ClientProtocol) -> None:
            for rid, future in futures.items():
                client.add_done_callback(rid, _Resolver(loop, future))

        await self.run(register)
        pending = [f for f in futures.values() if not f.done()]
        if pending and timeout > 0:
            await asyncio.wait(pending, timeout=min(timeout, MAX_WAIT_S))
        return {rid for rid, f in futures.items() if f.done()}

    def publish(self, info: discovery.ServerInfo) -> None:
        """Tell this process's children (kernels) and other processes of the home where the engine answers."""
        self.info = info
        self._environ = {name: os.environ.get(name) for name in (discovery.ENV, "SCF_NB_HOME")}
        os.environ[discovery.ENV] = info.text()
        os.environ["SCF_NB_HOME"] = info.home
        discovery.write(info)

    async def close(self, shutdown: Callable[[], None]) -> None:
        """At server stop: no more streams, the discovery file gone, then ``shutdown()`` (the engine: instances
        stopped, store flushed) in a thread, so the loop runs on meanwhile."""
        self.broker.close()
        if self.info is not None:
            discovery.remove(self.info)
            for name, value in self._environ.items():  # as they were before (a server run inside a test)
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self._quick.shutdown(wait=False, cancel_futures=True)
        self._slow.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, shutdown)


class _Resolver:
    """A done callback that resolves a future of the event loop (from the feed's callbacks thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self._loop = loop
        self._future = future

    def __call__(self, _event: Any) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self._future.done():
            self._future.set_result(True)


class ChangeBroker:
    """One subscription to the engine's change feed, fanned out on the event loop to every listener (each open
    stream). It subscribes with the first listener."""

    def __init__(self, host: EngineHost) -> None:
        self._host = host
        self._listeners: list[Callable[[Changes], None]] = []
        self._sub: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Lock | None = None

    async def listen(self, fn: Callable[[Changes], None]) -> Callable[[], None]:
        """Call ``fn(changes)`` on the loop after each commit from now on; returns what stops it."""
        if self._sub is None:
            self._starting = self._starting or asyncio.Lock()
            async with self._starting:
                if self._sub is None:
                    self._loop = asyncio.get_running_loop()
                    self._sub = await self._host.run(lambda client: client.subscribe(self._from_feed))
        self._listeners.append(fn)

        def stop() -> None:
            if fn in self._listeners:
                self._listeners.remove(fn)
        return stop

    def close(self) -> None:
        self._listeners.clear()
        if self._sub is not None:
            self._sub.close()

    def _from_feed(self, changes: Changes) -> None:  # the subscription's own thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fan_out, changes)

    def _fan_out(self, changes: Changes) -> None:
        for fn in list(self._listeners):
            try:
                fn(changes)
            except Exception:
                log.exception("scf_nb: a change stream listener raised")


class Pending:
    """What one stream has not sent yet: changes merged and bounded (``observe.Unread``), and its wake-up."""

    def __init__(self) -> None:
        self._unread = Unread()
        self.wake = asyncio.Event()

    def add(self, changes: Changes) -> None:
        self._unread.add(changes)
        self.wake.set()

    async def take(self, timeout: float) -> dict[str, Any] | None:
        """What changed since the last take, as JSON data; None when nothing did within ``timeout`` s."""
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        self.wake.clear()
        if not self._unread:
            return None
        c = self._unread.take()
        return {"events": sorted(c.events), "logs": sorted(c.logs), "ended": sorted(c.ended), "overflow": c.overflow}
