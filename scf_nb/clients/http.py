"""The HTTP client: ``protocol.ClientProtocol`` over the REST API of a Jupyter server that hosts the engine
(``scf_nb.server``). The same calls give the same results, DataFrames (dtypes included, see ``wire.py``) and
errors (``ScfError`` codes and messages, ``FunctionError``, ``EventAborted``, ``TimeoutError``) as the embedded
client on that engine. Stdlib transport (``http.client``), so a plain script can use it.

::

    caller threads                         HttpClient                                 server (scf_nb.server)
    --------------                         ----------                                 ----------------------
    list_events(), invoke(), ...  ---->    one keep-alive connection per thread  --->  /scf/api/...  (REST)
    wait_event(), event_result()  ---->    waits of at most WAIT_CHUNK_S, repeated ->  answered when it ends
    subscribe(), add_done_callback(),      _ChangeStream: one thread reading     <---  /scf/api/changes (SSE):
    follow()                               one Server-Sent-Events stream               Changes after each commit
                                           -> Subscriptions, the done callbacks'
                                              thread, the followers' wake-ups

Live updates are pushed, never polled: a follower reads the stored lines, then waits until a change notice
says its event has new lines (or ended) and reads those. The stream starts with the first listener and
reconnects if it breaks; listeners then get ``overflow`` (anything may have changed) and re-read.
``close()`` only disconnects: the server's engine runs on.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..core.errors import ScfError, invalid
from ..core.functions import LATEST, Function
from ..core.payload import event_text
from ..core.results import decode as decode_result
from ..core.status import Status
from ..store.follow import Follower, LogLine, follow_arguments
from ..store.observe import Changes, Subscription, call_back, safely_ended
from . import wire
from .events import Event
from .protocol import WaitResult, documented

if TYPE_CHECKING:
    from .protocol import ClientProtocol

log = logging.getLogger("scf_nb")
WAIT_CHUNK_S = 25.0  # a wait asks the server for at most this long at a time (the server answers within 30 s)
REQUEST_TIMEOUT_S = 120.0  # a request that blocks on nothing (not a wait, a sync invoke or a terminate)
STREAM_IDLE_S = 60.0  # the server sends a keep-alive every 15 s: this long without anything, the stream is dead
PAGE = 10_000  # log lines a follower reads at a time
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TERMINAL = frozenset(s.value for s in Status if s.is_terminal)


@documented
class HttpClient:
    """Event management on the engine a Jupyter server hosts, over its REST API.

    Args:
        url: the server's URL with its base URL, e.g. ``http://127.0.0.1:8888/``.
        token: the server's token (sent as ``Authorization: token ...``).
    """

    def __init__(self, url: str, token: str = "") -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise invalid("Url", f"the server's URL must be http(s)://host:port/..., got {url!r}")
        self.url = url if url.endswith("/") else url + "/"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._api = parts.path.rstrip("/") + "/scf/api"
        self._headers = {"Authorization": f"token {token}"} if token else {}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._closed = False
        self._lost = False
        self._stream: _ChangeStream | None = None
        self._conns: set[http.client.HTTPConnection] = set()  # each thread's, closed by close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called or the server stopped answering."""
        return self._closed or self._lost

    # -- functions ------------------------------------------------------------------------------------------
    def create_function(self, name: str, code: str, *, async_run: bool = False, trace: bool = True,
                        timeout: float | None = None, concurrency: int | None = None,
                        qps_limit: float | None = None, handler: str = "main_handler",
                        namespace: str = "default", env: dict[str, str] | None = None,
                        memory_mb: int | None = None, description: str = "", num_cpus: float | None = None,
                        num_gpus: float | None = None, resources: dict[str, float] | None = None) -> Function:
        body = {"name": name, "code": code, "async_run": async_run, "trace": trace, "timeout": timeout,
                "concurrency": concurrency, "qps_limit": qps_limit, "handler": handler, "namespace": namespace,
                "env": env, "memory_mb": memory_mb, "description": description, "num_cpus": num_cpus,
                "num_gpus": num_gpus, "resources": resources}
        return wire.function_from(self._call("POST", "/functions", body=body)["function"])

    def publish_version(self, name: str, *, namespace: str = "default", description: str = "") -> str:
        body = {"namespace": namespace, "description": description}
        return str(self._call("POST", f"/functions/{_part(name)}/publish", body=body)["version"])

    def get_function(self, name: str, *, namespace: str = "default", qualifier: str = LATEST) -> Function:
        answer = self._call("GET", f"/functions/{_part(name)}", {"namespace": namespace, "qualifier": qualifier})
        return wire.function_from(answer["function"])

    def list_functions(self, *, namespace: str | None = None) -> pd.DataFrame:
        return wire.frame_from(self._call("GET", "/functions", {"namespace": namespace})["functions"])

    def delete_function(self, name: str, *, namespace: str = "default") -> None:
        self._call("DELETE", f"/functions/{_part(name)}", {"namespace": namespace})

    # -- events ---------------------------------------------------------------------------------------------
    def invoke(self, name: str, event: Any = None, *, qualifier: str = LATEST,
               namespace: str = "default", wait: bool = True) -> Event:
        head = json.dumps({"function": name, "qualifier": qualifier, "namespace": namespace, "wait": wait})
        body = head[:-1] + ', "event": ' + event_text(event) + "}"  # the event's text as the engine checks it
        answer = self._call("POST", "/invoke", raw_body=body.encode("utf-8"), timeout=None)
        return Event(self, answer["request_id"], answer["function_name"])

    def get_event(self, request_id: str) -> Event:
        info = self._call("GET", f"/events/{_part(request_id)}", {"traced_only": True})["info"]
        return Event(self, request_id, info["function_name"])

    def get_event_status(self, request_id: str) -> str:
        return str(self._call("GET", f"/events/{_part(request_id)}/status", {"traced_only": True})["status"])

    def event_status(self, request_id: str) -> str:
        return str(self._call("GET", f"/events/{_part(request_id)}/status")["status"])

    def event_info(self, request_id: str) -> dict[str, Any]:
        return wire.info_from(self._call("GET", f"/events/{_part(request_id)}")["info"])

    def wait_event(self, request_id: str, timeout: float | None = None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WAIT_CHUNK_S if deadline is None else max(0.0, min(WAIT_CHUNK_S, deadline - time.monotonic()))
            status = str(self._call("GET", f"/events/{_part(request_id)}/wait", {"timeout": left},
                                    timeout=left + REQUEST_TIMEOUT_S)["status"])
            if status in _TERMINAL or (deadline is not None and time.monotonic() >= deadline):
                return status

    def wait(self, events: Iterable[Event | str], *, timeout: float | None = None) -> WaitResult:
        handles = [e if isinstance(e, Event) else self.get_event(e) for e in events]
        deadline = None if timeout is None else time.monotonic() + timeout
        ended: set[str] = set()
        while True:
            pending = list(dict.fromkeys(h.request_id for h in handles if h.request_id not in ended))
            if not pending:
                break
            left = WAIT_CHUNK_S if deadline is None else max(0.0, min(WAIT_CHUNK_S, deadline - time.monotonic()))
            answer = self._call("POST", "/wait", body={"request_ids": pending, "timeout": left},
                                timeout=left + REQUEST_TIMEOUT_S)
            ended.update(answer["done"])
            if deadline is not None and time.monotonic() >= deadline:
                break
        return WaitResult([h for h in handles if h.request_id in ended],
                          [h for h in handles if h.request_id not in ended])

    def event_result(self, request_id: str, timeout: float | None = None) -> Any:
        return decode_result(*self.stored_result(request_id, timeout), request_id)

    def stored_result(self, request_id: str, timeout: float | None = None) -> tuple[str | None, bytes | None]:
        status = self.wait_event(request_id, timeout)
        if status not in _TERMINAL:
            raise TimeoutError(f"event {request_id} is still {status} after {timeout} s")
        return wire.result_from(self._call("GET", f"/events/{_part(request_id)}/result")["result"])

    def terminate(self, request_id: str, *, grace: bool = False, wait: bool = True) -> str:
        body = {"request_id": request_id, "grace": grace, "wait": wait}
        return str(self._call("POST", "/terminate", body=body, timeout=None)["status"])

    def terminate_event(self, request_id: str, *, grace: bool = False, wait: bool = True) -> str:
        body = {"request_id": request_id, "grace": grace, "wait": wait, "traced_only": False}
        return str(self._call("POST", "/terminate", body=body, timeout=None)["status"])

    def list_events(self, function: str | None = None, *, namespace: str | None = None,
                    qualifier: str | None = None, status: str | Iterable[str] | None = None,
                    invoke_type: str | Iterable[str] | None = None, request_id: str | None = None,
                    start_time: tuple[Any, Any] | None = None, end_time: tuple[Any, Any] | None = None,
                    order: str = "DESC", orderby: str = "StartTime", offset: int = 0,
                    limit: int | None = 20) -> pd.DataFrame:
        query = _filters(function, namespace, qualifier, status, invoke_type, request_id, start_time, end_time)
        query.update(order=order, orderby=orderby, offset=offset, limit=limit, total=False)
        return wire.frame_from(self._call("GET", "/events", query)["events"])

    def count_events(self, function: str | None = None, *, namespace: str | None = None,
                     qualifier: str | None = None, status: str | Iterable[str] | None = None,
                     invoke_type: str | Iterable[str] | None = None, request_id: str | None = None,
                     start_time: tuple[Any, Any] | None = None, end_time: tuple[Any, Any] | None = None) -> int:
        query = _filters(function, namespace, qualifier, status, invoke_type, request_id, start_time, end_time)
        return int(self._call("GET", "/events/count", query)["total"])

    def overview(self, function: str | None = None, *, namespace: str | None = None,
                 since: Any = None) -> pd.DataFrame:
        query = {"function": function, "namespace": namespace, "since": since}
        return wire.frame_from(self._call("GET", "/overview", query)["overview"])

    def logs(self, request_id: str, *, since_seq: int | None = None, stream: str | None = None,
             limit: int | None = None) -> pd.DataFrame:
        query = {"since_seq": since_seq, "stream": stream, "limit": limit}
        return wire.frame_from(self._call("GET", f"/events/{_part(request_id)}/logs", query)["logs"])

    def search_logs(self, text: str, *, function: str | None = None, namespace: str | None = None,
                    limit: int | None = 1000) -> pd.DataFrame:
        query = {"text": text, "function": function, "namespace": namespace, "limit": limit}
        return wire.frame_from(self._call("GET", "/logs", query)["logs"])

    # -- observing: one Server-Sent-Events stream feeds all of it --------------------------------------------------
    def follow(self, request_id: str, *, since_seq: int | None = None,
               timeout: float | None = None) -> Follower:
        after, limit = follow_arguments(since_seq, timeout)
        return HttpFollower(self, request_id, after, limit)

    def add_done_callback(self, event: Event | str, fn: Callable[[Event], Any]) -> None:
        if not callable(fn):
            raise invalid("Callback", f"add_done_callback needs a callable, got {fn!r}")
        if isinstance(event, Event):
            handle = event
            self.event_status(handle.request_id)  # it exists
        else:
            handle = Event(self, event, self.event_info(event)["function_name"])
        stream = self._changes()
        call: Callable[[], Any] = lambda: fn(handle)  # noqa: E731 - one object, to find it again below
        stream.add_done(handle.request_id, call)
        if self.event_status(handle.request_id) in _TERMINAL and stream.take_done(handle.request_id, call):
            call_back(call)

    def subscribe(self, fn: Callable[[Changes], Any]) -> Subscription:
        if not callable(fn):
            raise invalid("Callback", f"subscribe needs a callable, got {fn!r}")
        return self._changes().subscribe(fn)

    def export(self, path: str | Path) -> dict[str, int]:
        folder = str(Path(path).expanduser().absolute())  # this process's folder, wherever the server runs
        answer = self._call("POST", "/export", body={"path": folder}, timeout=None)
        return {str(k): int(v) for k, v in answer["counts"].items()}

    def purge(self) -> int:
        return int(self._call("POST", "/purge", body={}, timeout=None)["deleted"])

    def close(self) -> None:
        """Disconnect (idempotent): the server's engine and its events run on."""
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
            conns, self._conns = self._conns, set()
        if stream is not None:
            stream.close()
        for conn in conns:
            conn.close()

    # -- not part of the protocol ---------------------------------------------------------------------------------
    def engine_info(self) -> dict[str, Any]:
        """What the server says of its engine (``scf_nb.engine_info()`` adds how it was found)."""
        return dict(self._call("GET", "/engine")["engine"])

    def ended(self, request_id: str) -> bool:
        """Whether the event has ended (any event: the handle's view)."""
        return self.event_status(request_id) in _TERMINAL

    # -- the transport ---------------------------------------------------------------------------------------------
    def _changes(self) -> _ChangeStream:
        with self._lock:
            if self._closed:
                raise _closed_error()
            if self._stream is None or self._stream.dead:
                self._stream = _ChangeStream(self)
            stream = self._stream
        stream.wait_ready()
        return stream

    def connect(self, timeout: float | None) -> http.client.HTTPConnection:
        """A new connection to the server (the change stream has its own)."""
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def _call(self, method: str, path: str, query: dict[str, Any] | None = None, *, body: Any = None,
              raw_body: bytes | None = None, timeout: float | None = REQUEST_TIMEOUT_S) -> Any:
        """One request; the answer's JSON, or the error it carries raised as the embedded client would."""
        if self._closed:
            raise _closed_error()
        target = self._api + path
        if query:  # every argument, None too (``null``): the server's default may differ from the caller's
            target += "?" + urllib.parse.urlencode({k: wire.query_text(v) for k, v in query.items()})
        headers = dict(self._headers, Accept="application/json")
        data = raw_body if raw_body is not None else None if body is None else json.dumps(body).encode("utf-8")
        if data is not None:
            headers["Content-Type"] = "application/json"
        status, raw = self._send(method, target, data, headers, timeout)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"error": {"code": "InternalError", "message": raw[:300].decode("utf-8", "replace")}}
        if status >= 400:
            raise wire.error_from(answer)
        return answer

    def _send(self, method: str, target: str, data: bytes | None, headers: dict[str, str],
              timeout: float | None) -> tuple[int, bytes]:
        for attempt in (0, 1):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = self._local.conn = self.connect(timeout)
                with self._lock:
                    self._conns.add(conn)
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                else:
                    conn.timeout = timeout
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self._drop(conn)
                if reused and attempt == 0:
                    continue  # a keep-alive connection the server had closed: once more on a new one
                raise self._unavailable(e) from None
            except (OSError, http.client.HTTPException) as e:
                self._drop(conn)
                if isinstance(e, (TimeoutError, socket.timeout)):
                    raise ScfError("FailedOperation.ServerTimeout",
                                   f"the scf_nb server at {self.url} did not answer {method} {target} "
                                   f"within {timeout} s") from None
                raise self._unavailable(e) from None
        raise AssertionError("unreachable")

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._lock:
            self._conns.discard(conn)

    def _unavailable(self, e: BaseException) -> ScfError:
        self._lost = True  # scf_nb.client() chooses again on its next call
        return ScfError("FailedOperation.EngineStopped",
                        f"the scf_nb server at {self.url} does not answer ({type(e).__name__}: {e}); its engine "
                        f"may have stopped")


class HttpFollower(Follower):
    """``follow`` over HTTP: the stored lines, then, each time a change notice says the event has new lines or
    ended, the lines after the last one given; it ends once the event has ended and its last line was given,
    or at the timeout."""

    def __init__(self, client: HttpClient, request_id: str, after_seq: int, timeout: float | None) -> None:
        self._client = client
        self._rid = request_id
        self._last = after_seq
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._ready: deque[LogLine] = deque()
        self._cond = threading.Condition()
        self._stale = True  # there may be lines to read
        self._done = False
        self._stream = client._changes()
        self._stream.watch(request_id, self._notice)
        try:
            self._final = client.ended(request_id)  # it exists (else ResourceNotFound, as the embedded one)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> HttpFollower:
        return self

    def __next__(self) -> LogLine:
        while not self._ready:
            if self._done:
                raise StopIteration
            if self._stale or self._final:
                self._read()
            else:
                self._wait()
        return self._ready.popleft()

    def close(self) -> None:
        with self._cond:
            self._done = True
            self._ready.clear()
            self._cond.notify_all()
        self._stream.unwatch(self._rid, self._notice)

    def _notice(self, changes: Changes) -> None:
        if changes.overflow or self._rid in changes.logs or self._rid in changes.ended:
            with self._cond:
                self._stale = True
                self._cond.notify_all()

    def _wait(self) -> None:
        with self._cond:
            while not (self._stale or self._done):
                left = None if self._deadline is None else self._deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(None if left is None else min(left, threading.TIMEOUT_MAX))
            if not self._stale and not self._done:  # the timeout passed
                self._done = True
        if self._done:
            self._stream.unwatch(self._rid, self._notice)

    def _read(self) -> None:
        with self._cond:
            self._stale = False
        final = self._final or self._client.ended(self._rid)  # before the read: then it holds every line
        frame = self._client.logs(self._rid, since_seq=self._last, limit=PAGE)
        for seq, ts, stream, line in zip(frame["seq"].tolist(), frame["ts"].tolist(), frame["stream"].tolist(),
                                         frame["line"].tolist(), strict=True):
            self._ready.append(LogLine(int(seq), (_EPOCH + timedelta(microseconds=ts.value // 1000)).astimezone(),
                                       str(stream), str(line)))
        if len(frame):
            self._last = int(frame["seq"].iloc[-1])
        if len(frame) == PAGE:
            with self._cond:
                self._stale = True  # more stored
            return
        if final:
            self._final = False
            with self._cond:
                self._done = True
            self._stream.unwatch(self._rid, self._notice)


class _ChangeStream:
    """The one Server-Sent-Events stream of an HttpClient (``GET /scf/api/changes``) and what it feeds."""

    def __init__(self, client: HttpClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._subs: list[Subscription] = []
        self._watchers: dict[str, list[Callable[[Changes], None]]] = {}
        self._done: dict[str, list[Callable[[], Any]]] = {}
        self._runner = Subscription(None, self._run_callbacks, "scf_nb-http-callbacks")
        self._conn: http.client.HTTPConnection | None = None
        self._error: BaseException | None = None
        self.closed = False
        self.dead = False
        self._thread = threading.Thread(target=self._run, name="scf_nb-http-changes", daemon=True)
        self._thread.start()

    def wait_ready(self) -> None:
        if not self._ready.wait(REQUEST_TIMEOUT_S) or self.dead:
            error = self._error
            if isinstance(error, ScfError):
                raise error
            raise self._client._unavailable(error or TimeoutError("no change stream"))

    # -- listeners ----------------------------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[Changes], Any]) -> Subscription:
        sub = Subscription(None, fn)
        with self._lock:
            self._subs = [s for s in self._subs if not s.closed] + [sub]
        return sub

    def watch(self, request_id: str, fn: Callable[[Changes], None]) -> None:
        with self._lock:
            self._watchers.setdefault(request_id, []).append(fn)

    def unwatch(self, request_id: str, fn: Callable[[Changes], None]) -> None:
        with self._lock:
            fns = [f for f in self._watchers.get(request_id, []) if f is not fn]
            if fns:
                self._watchers[request_id] = fns
            else:
                self._watchers.pop(request_id, None)

    def add_done(self, request_id: str, call: Callable[[], Any]) -> None:
        with self._lock:
            self._done.setdefault(request_id, []).append(call)

    def take_done(self, request_id: str, call: Callable[[], Any]) -> bool:
        with self._lock:
            calls = self._done.get(request_id, [])
            for i, c in enumerate(calls):
                if c is call:
                    del calls[i]
                    if not calls:
                        del self._done[request_id]
                    return True
        return False

    def close(self) -> None:
        self.closed = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for sub in self._subs:
            sub.close()
        self._runner.close()

    # -- the stream's thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.05
        connected_once = False
        while not self.closed:
            try:
                for changes in self._read_stream():
                    if changes is None:  # the server says the stream is ready
                        if connected_once:  # what changed while it was down is not known: read again
                            self._deliver(Changes(overflow=True))
                        connected_once = True
                        delay = 0.05
                        self._ready.set()
                    else:
                        self._deliver(changes)
            except ScfError as e:  # the server refused the stream (authentication): it will not do better
                self._error = e
                break
            except Exception as e:
                self._error = e
                if not connected_once and not self._ready.is_set():
                    break  # never connected: the caller gets the error
            if self.closed:
                break
            time.sleep(delay)  # reconnect after a break, backing off
            delay = min(2.0, delay * 2)
        self.dead = True
        self._ready.set()

    def _read_stream(self) -> Iterable[Changes | None]:
        client = self._client
        conn = self._conn = client.connect(STREAM_IDLE_S)
        try:
            conn.request("GET", client._api + "/changes",
                         headers=dict(client._headers, Accept="text/event-stream"))
            response = conn.getresponse()
            if response.status != 200:
                body = response.read()
                try:
                    raise wire.error_from(json.loads(body))
                except ValueError:
                    raise ScfError("InternalError", f"change stream: HTTP {response.status}") from None
            kind, data = "message", ""
            while not self.closed:
                raw = response.readline()
                if not raw:
                    return  # the server closed it
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    continue  # keep-alive
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line:
                    if kind == "ready":
                        yield None
                    elif data:
                        yield _changes_from(json.loads(data))
                    kind, data = "message", ""
        finally:
            self._conn = None
            conn.close()

    def _deliver(self, changes: Changes) -> None:
        with self._lock:
            subs = self._subs = [s for s in self._subs if not s.closed]
            watchers = [fn for rid, fns in self._watchers.items()
                        if changes.overflow or rid in changes.logs or rid in changes.ended for fn in fns]
            callbacks = bool(self._done)
        for sub in subs:
            sub.push(changes)
        for fn in watchers:
            try:
                fn(changes)
            except Exception:
                log.exception("scf_nb: a follower's wake-up raised")
        if callbacks and (changes.ended or changes.overflow):
            self._runner.push(changes)

    def _run_callbacks(self, changes: Changes) -> None:
        with self._lock:
            waiting = list(self._done)
        if changes.overflow:  # which ended is not known: ask the server for each event that has callbacks
            ended = {rid for rid in waiting if safely_ended(partial(self._client.ended, rid))}
        else:
            ended = set(changes.ended) & set(waiting)
        with self._lock:
            due = [call for rid in ended if rid in self._done for call in self._done.pop(rid)]
        for call in due:
            call_back(call)


def _changes_from(data: dict[str, Any]) -> Changes:
    return Changes(frozenset(data.get("events", ())), frozenset(data.get("logs", ())),
                   frozenset(data.get("ended", ())), bool(data.get("overflow", False)))


def _filters(function: Any, namespace: Any, qualifier: Any, status: Any, invoke_type: Any, request_id: Any,
             start_time: Any, end_time: Any) -> dict[str, Any]:
    return {"function": function, "namespace": namespace, "qualifier": qualifier, "status": status,
            "invoke_type": invoke_type, "request_id": request_id, "start_time": start_time, "end_time": end_time}


def _part(value: str) -> str:
    """One path segment: any text, quoted (a '/' or '..' in a name stays inside its segment)."""
    return urllib.parse.quote(str(value), safe="")


def _closed_error() -> ScfError:
    return ScfError("FailedOperation.ClientClosed", "this HttpClient was closed; make a new one (scf_nb.client())")


if TYPE_CHECKING:
    def _conforms(client: HttpClient) -> ClientProtocol:
        return client  # mypy checks here that HttpClient implements the whole protocol, with the same types
