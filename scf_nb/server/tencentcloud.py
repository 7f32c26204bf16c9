"""The TencentCloud-compatible API: TencentCloud's official SCF SDK (or any TC3-signed client), pointed at
``127.0.0.1:PORT``, creates functions, invokes them, lists, polls and terminates their events here, on any
client of the client protocol (the embedded ``Client``, or the one a Jupyter server's extension holds).

```
 SDK --POST / (X-TC-Action, TC3 signature, JSON body)--> tornado, on the current IOLoop: reads the request
                                                            |  (nothing else happens on the loop)
                                   thread pool  <-----------'
                                     Api.answer: tc3.verify -> tc_actions.ACTIONS[action](context, params)
                                                     -> one call (or a few) on the client protocol
 SDK <--HTTP 200, Content-Type: application/json, {"Response": {..., "RequestId"}}--'
```

Every answer is HTTP 200 with ``Content-Type: application/json`` exactly, errors included
(``{"Response": {"Error": {"Code", "Message"}, "RequestId"}}``): that is the only form in which the SDK reads
an error and raises ``TencentCloudSDKException`` with its code. The signature is checked before anything else,
so a request with a wrong key runs nothing. It listens on loopback by default, on a port of its own, because
the SDK posts to the root of its endpoint and signs the endpoint as its Host header.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from ..clients.protocol import ClientProtocol
from ..core.errors import ScfError
from . import tc3
from .tc_actions import ACTIONS, Context
from .tc_params import Params

API_VERSION = "2018-04-16"
MAX_BODY_BYTES = 72 * 1024 * 1024  # a 50 MB zip in base64, or a 6 MB sync event, with room to spare
THREADS = 32  # a sync Invoke holds one thread while its event runs
log = logging.getLogger("scf_nb")


class Api:
    """The API's request handling, off the event loop: verify, route, call, shape one answer."""

    def __init__(self, client: ClientProtocol, secret_id: str, secret_key: str) -> None:
        self.context = Context(client)
        self.secret_id = secret_id
        self.secret_key = secret_key

    def answer(self, req: tc3.Request) -> bytes:
        """The JSON text of the ``Response`` to ``req``, an error answer included."""
        request_id = str(uuid.uuid4())
        try:
            body = self._run(req)
        except ScfError as e:
            body = {"Error": {"Code": e.code, "Message": e.message}}
        except Exception as e:  # a bug here must still give the SDK an answer it can read
            log.exception("TencentCloud API: %s failed", req.headers.get("x-tc-action"))
            body = {"Error": {"Code": "InternalError", "Message": f"{type(e).__name__}: {e}"}}
        return json.dumps({"Response": {**body, "RequestId": request_id}}).encode()

    def _run(self, req: tc3.Request) -> dict[str, Any]:
        if req.method != "POST":
            raise ScfError("UnsupportedProtocol", f"{req.method} is not served: POST the request as JSON")
        tc3.verify(req, self.secret_id, self.secret_key)
        name = req.headers.get("x-tc-action", "")
        action = ACTIONS.get(name)
        if not name:
            raise ScfError("MissingParameter", "the request needs an X-TC-Action header")
        if action is None:
            raise ScfError("InvalidAction", f"unknown action {name!r}; served: {', '.join(ACTIONS)}")
        version = req.headers.get("x-tc-version", API_VERSION)
        if version != API_VERSION:
            raise ScfError("NoSuchVersion", f"X-TC-Version {version!r}: only {API_VERSION} (SCF's) is served")
        if req.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ScfError("InvalidParameter", "the body must be JSON (Content-Type: application/json)")
        try:
            fields = json.loads(req.body or b"{}")
        except ValueError as e:
            raise ScfError("InvalidParameter", f"the body is not JSON: {e}") from None
        if not isinstance(fields, dict):
            raise ScfError("InvalidParameter", "the body must be a JSON object of the action's fields")
        return action(self.context, Params(fields))


class _Handler(tornado.web.RequestHandler):
    """Hands each request, as it arrived, to the pool; writes the answer back."""

    def initialize(self, api: Api, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self.api = api
        self.pool = pool

    async def _serve(self) -> None:
        r = self.request
        headers = {k.lower(): v for k, v in r.headers.items()}
        req = tc3.Request(r.method or "", r.path, r.query, headers, r.body or b"")
        text = await asyncio.get_running_loop().run_in_executor(self.pool, self.api.answer, req)
        self.set_header("Content-Type", "application/json")
        self.finish(text)

    post = get = put = delete = patch = _serve  # each answered the SDK's way: only POST runs an action

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_status(200)  # the SDK reads no error from any other status
        self.set_header("Content-Type", "application/json")
        error = {"Code": "InternalError", "Message": f"HTTP {status_code}: {self._reason}"}
        self.finish(json.dumps({"Response": {"Error": error, "RequestId": str(uuid.uuid4())}}))


class TcServer:
    """A running TencentCloud-compatible API.

    Attributes:
        host, port: where it listens (the bound port, also when 0 was asked for).
    """

    def __init__(self, http: tornado.httpserver.HTTPServer, pool: concurrent.futures.ThreadPoolExecutor,
                 host: str, port: int) -> None:
        self._http = http
        self._pool = pool
        self.host = host
        self.port = port
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._closing: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT``: the SDK's endpoint is ``HOST:PORT`` with ``protocol="http"``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop listening and close every connection; from any thread. Requests already running in the pool
        (a sync Invoke waiting for its event) finish on their own; their events run on."""
        if self._loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._close()
            self._closing = self._loop.create_task(self.aclose())  # (held: a task nobody references may vanish)
        elif self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(timeout=30)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    async def wait_stopped(self) -> None:
        """Return once ``stop()`` was called."""
        await self._stopped.wait()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._http.stop()
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        """``stop()`` on the server's own loop, awaited: returns once every connection is closed (the
        extension's ``stop_extension`` awaits it)."""
        self._close()
        await self._http.close_all_connections()
        self._stopped.set()


def start(client: ClientProtocol, port: int, secret_id: str, secret_key: str, *,
          host: str = "127.0.0.1") -> TcServer:
    """Serve the TencentCloud-compatible API for ``client`` on ``host:port`` (port 0: a free one), on the
    asyncio loop running in this thread (a Jupyter server's, in its extension). Requests must be signed
    (TC3-HMAC-SHA256) with ``secret_id`` / ``secret_key``.

    Raises:
        ScfError: ``MissingParameter.SecretKey`` when either key is empty (the port is not opened: an unsigned
            API would run anyone's code), ``InvalidParameterValue.Port`` for a bad port.
        OSError: the port cannot be bound.
        RuntimeError: no asyncio loop runs in this thread.
    """
    if not (isinstance(secret_id, str) and secret_id and isinstance(secret_key, str) and secret_key):
        raise ScfError("MissingParameter.SecretKey", "the TencentCloud-compatible API needs a SecretId and a "
                                                     "SecretKey (SCF_NB_SECRET_ID / SCF_NB_SECRET_KEY); without "
                                                     "them it does not open its port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ScfError("InvalidParameterValue.Port", f"port must be an integer 0-65535, got {port!r}")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("tencentcloud.start needs a running asyncio loop in this thread (a Jupyter server's); "
                           "elsewhere use start_in_thread or serve_forever") from None
    pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="scf-nb-tc")
    api = Api(client, secret_id, secret_key)
    app = tornado.web.Application([(r"/.*", _Handler, {"api": api, "pool": pool})])
    if not _is_loopback(host):
        log.warning("TencentCloud API: listening on %s, beyond loopback: whoever reaches the port and holds the "
                    "key can run code here", host)
    sockets = tornado.netutil.bind_sockets(port, address=host)
    http = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY_BYTES)
    http.add_sockets(sockets)
    return TcServer(http, pool, host, sockets[0].getsockname()[1])


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            return False


def start_in_thread(client: ClientProtocol, port: int, secret_id: str, secret_key: str, *,
                    host: str = "127.0.0.1") -> TcServer:
    """``start`` on an event loop of its own, in a new thread (for a script, or a test); ``stop()`` ends the
    thread too. Raises as ``start``."""
    ready: concurrent.futures.Future[TcServer] = concurrent.futures.Future()

    async def main() -> None:
        try:
            server = start(client, port, secret_id, secret_key, host=host)
        except BaseException as e:
            ready.set_exception(e)
            return
        server._thread = threading.current_thread()
        ready.set_result(server)
        await server.wait_stopped()

    threading.Thread(target=asyncio.run, args=(main(),), name="scf-nb-tc-loop", daemon=True).start()
    return ready.result(timeout=60)


def serve_forever(client: ClientProtocol, port: int, secret_id: str, secret_key: str, *,
                  host: str = "127.0.0.1", ready: Callable[[TcServer], Any] | None = None) -> None:
    """``start`` on a new event loop in this thread and serve until ``stop()`` (from a signal handler or
    another thread) or Ctrl-C; ``ready(server)`` is called once it listens. Raises as ``start``."""

    async def main() -> None:
        server = start(client, port, secret_id, secret_key, host=host)
        try:
            if ready is not None:
                ready(server)
            await server.wait_stopped()
        finally:
            await server.aclose()

    asyncio.run(main())


def keys_from_environment(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The SecretId and SecretKey in ``SCF_NB_SECRET_ID`` / ``SCF_NB_SECRET_KEY`` ("" for one not set)."""
    env = os.environ if environ is None else environ
    return env.get("SCF_NB_SECRET_ID", ""), env.get("SCF_NB_SECRET_KEY", "")
