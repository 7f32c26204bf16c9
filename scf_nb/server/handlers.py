"""The REST API under ``<base_url>scf/api/`` (docs/server.md; ``openapi.json`` beside this file). Each handler
parses, makes one call on the client protocol (in a pool thread: ``host.EngineHost``) and answers JSON; the
base handler requires Jupyter's authentication on every method (token, or login cookie plus XSRF for a
browser's writes) and maps errors to statuses once:

==============================================================  ======
``ResourceNotFound.*``                                           404
``InvalidParameter*``, ``UnsupportedOperation.*``, bad JSON      400
``LimitExceeded.*``, ``RequestLimitExceeded``                    429
``FailedOperation.*`` (``FunctionError``, ``EventAborted`` too)  409
``TimeoutError`` (a result asked for before the event ended)     408
anything unexpected (logged with its traceback)                  500
==============================================================  ======

Every error body is ``{"error": {"code": ..., "message": ..., "kind": ...}}`` (``wire.error_json``).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.iostream import StreamClosedError

from ..clients import wire
from ..clients.protocol import ClientProtocol
from ..core.errors import ScfError
from ..core.status import Status
from ..store.follow import PAGE, follow_arguments
from ..store.observe import Changes
from .host import MAX_WAIT_S, EngineHost, Pending

Method = Callable[..., Awaitable[None]]
_T = TypeVar("_T")
KEEPALIVE_S = 15.0
FILTERS = ("function", "namespace", "qualifier", "status", "invoke_type", "request_id", "start_time", "end_time")
IGNORED = {"token", "_xsrf", "no_track_activity"}  # Jupyter's own query arguments
DEFAULT_PROVIDERS = (IdentityProvider, PasswordIdentityProvider)  # whose token rule ScfHandler._known_token follows
TERMINAL = frozenset(s.value for s in Status if s.is_terminal)


def status_for(e: BaseException) -> int:
    """The HTTP status of an error the API raises (see the module's docstring)."""
    if isinstance(e, web.HTTPError):
        return e.status_code
    if isinstance(e, ScfError):
        code = e.code
        if code.startswith("ResourceNotFound"):
            return 404
        if code.startswith(("InvalidParameter", "UnsupportedOperation", "MissingParameter")):
            return 400
        if code.startswith("LimitExceeded") or code == "RequestLimitExceeded":
            return 429
        if code.startswith("AuthFailure"):
            return 403
        return 409
    if isinstance(e, TimeoutError):
        return 408
    return 500


def endpoint(method: Method) -> Method:
    """Jupyter's authentication (401/403 without it) and authorization, on the ``scf_nb`` resource."""
    return web.authenticated(authorized(method))  # type: ignore[return-value]  # tornado: "or None"


class ScfHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every handler: auth, the host, parsing, answers, and the one mapping of errors to statuses."""

    auth_resource = "scf_nb"

    async def prepare(self) -> None:  # type: ignore[override]  # Jupyter's: "Awaitable | None"
        self._known_token()
        await super().prepare()

    def _known_token(self) -> None:
        """The server's own token in the ``Authorization`` header, under one of Jupyter's default identity
        providers: the request is token-authenticated as the one anonymous user the host keeps, as Jupyter would
        decide it, less a new random user and a signed login cookie on every call (14% of the loop's time under
        a load of invokes). Anything else (a ``?token=`` argument, a cookie, a wrong token, another identity
        provider such as JupyterHub's) goes Jupyter's whole way; authorization and the XSRF rules run as ever."""
        provider = self.identity_provider
        token = provider.token if type(provider) in DEFAULT_PROVIDERS else None
        if not token:
            return
        match = provider.auth_header_pat.match(self.request.headers.get("Authorization", ""))
        if match is None or "token" in self.request.query_arguments:
            return
        if hmac.compare_digest(match.group(2).encode(), token.encode()):
            self._jupyter_current_user = self.host.token_user(lambda: provider.generate_anonymous_user(self))
            self._token_authenticated = True  # Jupyter's mark of a token-authenticated request (no XSRF)

    @property
    def host(self) -> EngineHost:
        host: EngineHost = self.settings["scf_nb_host"]
        return host

    async def run(self, fn: Callable[[ClientProtocol], Any], slow: bool = False) -> Any:
        """``fn(client)`` in the host's pool. A ``TypeError``/``ValueError`` out of the call is a value of a
        wrong kind that a client sent and the API's checks did not name: a 400 ``InvalidParameter``."""
        try:
            return await self.host.run(fn, slow=slow)
        except (TypeError, ValueError) as e:
            raise self._bad_value(e) from None

    def now(self, fn: Callable[[ClientProtocol], _T]) -> _T:
        """``fn(client)`` here, on the event loop: only for a call that never blocks (an in-memory read, an
        async accept). Errors as ``run``'s."""
        try:
            return fn(self.host.engine())
        except (TypeError, ValueError) as e:
            raise self._bad_value(e) from None

    def _bad_value(self, e: Exception) -> ScfError:
        self.log.warning("scf_nb: %s %s: a bad value reached the engine", self.request.method, self.request.path,
                         exc_info=True)
        return ScfError("InvalidParameter", f"{type(e).__name__}: {e}")

    # -- input ------------------------------------------------------------------------------------------------
    def params(self, *names: str) -> dict[str, Any]:
        """The query's arguments (``wire.query_value``: JSON where it parses, else text; a repeated one is a
        list); an argument not in ``names`` is a 400 ``InvalidParameter``."""
        out: dict[str, Any] = {}
        for name, raw in self.request.query_arguments.items():
            if name in IGNORED:
                continue
            if name not in names:
                raise ScfError("InvalidParameter", f"unknown query argument {name!r}; this path takes: "
                                                   f"{', '.join(names) or 'none'}")
            values = [wire.query_value(v.decode("utf-8", "replace")) for v in raw]
            out[name] = values[0] if len(values) == 1 else values
        return out

    def body(self, *names: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
        """The JSON object of the body, with only ``names`` (``required`` among them); no query arguments."""
        self.params()
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise ScfError("InvalidParameter", f"the body must be a JSON object: {e}") from None
        if not isinstance(data, dict):
            raise ScfError("InvalidParameter", f"the body must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ScfError("InvalidParameter", f"unknown field(s) {', '.join(map(repr, unknown))}; this path "
                                               f"takes: {', '.join(names)}")
        missing = [n for n in required if n not in data]
        if missing:
            raise ScfError("InvalidParameter", f"missing field(s): {', '.join(missing)}")
        return data

    def filters(self, *names: str) -> dict[str, Any]:
        """``list_events``' filters (and ``names``) from the query; a time window is a ``(start, end)`` pair."""
        p = self.params(*FILTERS, *names)
        for window in ("start_time", "end_time"):
            if isinstance(p.get(window), list):
                p[window] = tuple(p[window])
        return p

    @staticmethod
    def flag(values: dict[str, Any], name: str, default: bool) -> bool:
        value = values.pop(name, default)
        if value in (True, 1, "true", "1"):
            return True
        if value in (False, 0, "false", "0", None):
            return False
        raise ScfError("InvalidParameter", f"{name} must be true or false, got {value!r}")

    @staticmethod
    def seconds(values: dict[str, Any], name: str, default: float | None) -> float | None:
        value = values.pop(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ScfError("InvalidParameterValue.Timeout", f"{name} must be a number of seconds >= 0, got {value!r}")
        return float(value)

    # -- output -----------------------------------------------------------------------------------------------
    def answer(self, data: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, allow_nan=False))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if exc is not None and status_code == 500:
            status_code = status_for(exc)
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, (ScfError, TimeoutError)):
            body = wire.error_json(exc)
        else:
            message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
            code = {401: "AuthFailure", 403: "AuthFailure", 404: "ResourceNotFound",
                    405: "UnsupportedOperation"}.get(status_code, "InternalError")
            body = {"error": {"code": code, "message": message, "kind": "HTTPError"}}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if status_for(value) < 500 and not isinstance(value, web.HTTPError):
            self.log.info("scf_nb %s %s: %s", self.request.method, self.request.path, value)
        else:
            super().log_exception(typ, value, tb)

    # -- Server-Sent Events -----------------------------------------------------------------------------------
    def start_stream(self) -> None:
        self.gone = False
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    async def send(self, data: Any = None, event: str | None = None, event_id: int | None = None,
                   comment: str | None = None) -> None:
        text = f": {comment}\n" if comment is not None else ""
        if event_id is not None:
            text += f"id: {event_id}\n"
        if event is not None:
            text += f"event: {event}\n"
        if data is not None:
            text += f"data: {json.dumps(data, allow_nan=False)}\n"
        self.write(text + "\n")
        await self.flush()

    def on_connection_close(self) -> None:
        self.gone = True
        wake = getattr(self, "wake", None)
        if wake is not None:
            wake()


# -- functions ------------------------------------------------------------------------------------------------
FUNCTION_FIELDS = ("name", "code", "async_run", "trace", "timeout", "concurrency", "qps_limit", "handler",
                   "namespace", "env", "memory_mb", "description", "num_cpus", "num_gpus", "resources")


class FunctionsHandler(ScfHandler):
    @endpoint
    async def get(self) -> None:
        p = self.params("namespace")
        frame = await self.run(lambda c: c.list_functions(**p))
        self.answer({"functions": wire.frame_json(frame)})

    @endpoint
    async def post(self) -> None:
        b = self.body(*FUNCTION_FIELDS, required=("name", "code"))
        for name in ("async_run", "trace"):
            if name in b:
                b[name] = self.flag(b, name, False)
        fn = await self.run(lambda c: c.create_function(**b))
        self.answer({"function": wire.function_json(fn)})


class FunctionHandler(ScfHandler):
    @endpoint
    async def get(self, name: str) -> None:
        p = self.params("namespace", "qualifier")
        fn = await self.run(lambda c: c.get_function(name, **p))
        self.answer({"function": wire.function_json(fn)})

    @endpoint
    async def delete(self, name: str) -> None:
        p = self.params("namespace")
        await self.run(lambda c: c.delete_function(name, **p))
        self.answer({"deleted": name})


class PublishHandler(ScfHandler):
    @endpoint
    async def post(self, name: str) -> None:
        b = self.body("namespace", "description")
        version = await self.run(lambda c: c.publish_version(name, **b))
        self.answer({"version": version})


# -- events ---------------------------------------------------------------------------------------------------
class InvokeHandler(ScfHandler):
    @endpoint
    async def post(self) -> None:
        b = self.body("function", "event", "qualifier", "namespace", "wait", required=("function",))
        name = b.pop("function")
        wait = self.flag(b, "wait", True)
        where = {k: b[k] for k in ("qualifier", "namespace") if k in b}
        # Both on the loop, neither blocks: an in-memory read, and an accept (no disk I/O, no process round trip).
        sync = wait and not self.now(lambda c: c.get_function(name, **where).async_run)
        ev = self.now(lambda c: c.invoke(name, **b, wait=False))
        while sync and not await self.host.wait([ev.request_id], MAX_WAIT_S):  # answered when it has ended
            pass
        self.answer({"request_id": ev.request_id, "function_name": ev.function_name, "status": ev.status})


class EventsHandler(ScfHandler):
    @endpoint
    async def get(self) -> None:
        p = self.filters("order", "orderby", "offset", "limit", "total")
        total = self.flag(p, "total", True)
        filters = {k: v for k, v in p.items() if k in FILTERS}
        function = filters.pop("function", None)

        def page(c: ClientProtocol) -> dict[str, Any]:
            frame = c.list_events(function, **filters, **{k: v for k, v in p.items() if k not in FILTERS})
            out: dict[str, Any] = {"events": wire.frame_json(frame)}
            if total:
                out["total"] = c.count_events(function, **filters)
            return out
        self.answer(await self.run(page))


class CountHandler(ScfHandler):
    @endpoint
    async def get(self) -> None:
        p = self.filters()
        function = p.pop("function", None)
        self.answer({"total": await self.run(lambda c: c.count_events(function, **p))})


class EventHandler(ScfHandler):
    @endpoint
    async def get(self, request_id: str) -> None:
        p = self.params("traced_only")
        traced_only = self.flag(p, "traced_only", False)

        def info(c: ClientProtocol) -> dict[str, Any]:
            if traced_only:
                c.get_event(request_id)  # the tracking view: an untraced event is not found
            return c.event_info(request_id)
        self.answer({"info": wire.info_json(await self.run(info))})


class StatusHandler(ScfHandler):
    @endpoint
    async def get(self, request_id: str) -> None:
        p = self.params("traced_only")
        if self.flag(p, "traced_only", False):
            status = await self.run(lambda c: c.get_event_status(request_id))
        else:
            status = await self.run(lambda c: c.event_status(request_id))
        self.answer({"status": status})


class WaitHandler(ScfHandler):
    """``wait_event``: answered when the event has ended, or after ``timeout`` (at most 30 s)."""

    @endpoint
    async def get(self, request_id: str) -> None:
        p = self.params("timeout")
        await self.host.wait([request_id], self.seconds(p, "timeout", 0.0) or 0.0)
        self.answer({"status": await self.run(lambda c: c.event_status(request_id))})


class WaitManyHandler(ScfHandler):
    """``wait``: which of the events have ended, answered when all have, or after ``timeout`` (at most 30 s)."""

    @endpoint
    async def post(self) -> None:
        b = self.body("request_ids", "timeout", required=("request_ids",))
        ids = b["request_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ScfError("InvalidParameter", "request_ids must be a list of RequestIds")
        ended = await self.host.wait(ids, self.seconds(b, "timeout", 0.0) or 0.0)
        self.answer({"done": [i for i in ids if i in ended], "not_done": [i for i in ids if i not in ended]})


class ResultHandler(ScfHandler):
    """The stored result of an ended event (``stored_result``: its JSON text and base64 pickle), FAILED and
    ABORTED as 409 errors; ``timeout`` waits for the end first (408 if it has not ended by then)."""

    @endpoint
    async def get(self, request_id: str) -> None:
        p = self.params("timeout")
        await self.host.wait([request_id], self.seconds(p, "timeout", 0.0) or 0.0)
        text, blob = await self.run(lambda c: c.stored_result(request_id, 0))
        self.answer({"status": Status.FINISHED.value, "result": wire.result_json(text, blob)})


class LogsHandler(ScfHandler):
    """An event's lines, paged by seq; ``follow=1`` (or ``Accept: text/event-stream``): a live follow by
    Server-Sent Events (``lines`` events carrying a logs frame, ``id`` the last seq, then ``end``)."""

    @endpoint
    async def get(self, request_id: str) -> None:
        p = self.params("since_seq", "stream", "limit", "follow", "timeout")
        follow = self.flag(p, "follow", "text/event-stream" in self.request.headers.get("Accept", ""))
        if follow:
            await self._follow(request_id, p)
            return
        p.pop("timeout", None)
        frame = await self.run(lambda c: c.logs(request_id, **p))
        self.answer({"logs": wire.frame_json(frame)})

    async def _follow(self, rid: str, p: dict[str, Any]) -> None:
        last_id = self.request.headers.get("Last-Event-ID")  # an EventSource reconnecting: from where it was
        since = int(last_id) if last_id and last_id.isdigit() else p.get("since_seq")
        after, timeout = follow_arguments(since, p.get("timeout"))
        stream = p.get("stream")
        stale = Pending()
        self.wake = lambda: stale.add(Changes(overflow=True))

        def notice(changes: Changes) -> None:
            if changes.overflow or rid in changes.logs or rid in changes.ended:
                stale.add(Changes(overflow=True))
        stop = await self.host.broker.listen(notice)
        try:
            status = await self.run(lambda c: c.event_status(rid))  # it exists: else a 404 before the stream
            self.start_stream()
            await self.send({"status": status}, event="ready")
            await self._follow_lines(rid, after, stream, timeout, stale, status in TERMINAL)
        except StreamClosedError:
            pass
        finally:
            stop()

    async def _follow_lines(self, rid: str, after: int, stream: str | None, timeout: float | None,
                            stale: Pending, final: bool) -> None:
        loop_time = time.monotonic()
        deadline = None if timeout is None else loop_time + timeout
        stale.add(Changes(overflow=True))  # read what is stored first
        while not self.gone:
            left = KEEPALIVE_S if deadline is None else min(KEEPALIVE_S, deadline - time.monotonic())
            if left <= 0:
                break
            if await stale.take(left) is None:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                await self.send(comment="keep-alive")
                continue
            while True:
                ended = final or await self.run(lambda c: c.event_status(rid)) in TERMINAL
                frame = await self.run(_page(rid, after, stream))
                if len(frame):
                    after = int(frame["seq"].iloc[-1])
                    await self.send(wire.frame_json(frame), event="lines", event_id=after)
                if len(frame) < PAGE:
                    break
            if ended:
                break
        if not self.gone:
            await self.send({"status": await self.run(lambda c: c.event_status(rid))}, event="end")


class SearchHandler(ScfHandler):
    @endpoint
    async def get(self) -> None:
        p = self.params("text", "function", "namespace", "limit")
        if "text" not in p:
            raise ScfError("InvalidParameter", "missing query argument: text")
        text = p.pop("text")
        frame = await self.run(lambda c: c.search_logs(str(text) if not isinstance(text, str) else text, **p))
        self.answer({"logs": wire.frame_json(frame)})


class TerminateHandler(ScfHandler):
    @endpoint
    async def post(self) -> None:
        b = self.body("request_id", "grace", "wait", "traced_only", required=("request_id",))
        rid = b["request_id"]
        grace, wait = self.flag(b, "grace", False), self.flag(b, "wait", True)
        if self.flag(b, "traced_only", True):
            status = await self.run(lambda c: c.terminate(rid, grace=grace, wait=wait), slow=True)
        else:
            status = await self.run(lambda c: c.terminate_event(rid, grace=grace, wait=wait), slow=True)
        self.answer({"status": status})


class OverviewHandler(ScfHandler):
    @endpoint
    async def get(self) -> None:
        p = self.params("function", "namespace", "since")
        function = p.pop("function", None)
        frame = await self.run(lambda c: c.overview(function, **p))
        self.answer({"overview": wire.frame_json(frame)})


class ExportHandler(ScfHandler):
    """Parquet files into a folder of the server's machine (a relative path: under the server's root_dir)."""

    @endpoint
    async def post(self) -> None:
        b = self.body("path", required=("path",))
        if not isinstance(b["path"], str) or not b["path"]:
            raise ScfError("InvalidParameterValue.Path", f"path must be a folder's path, got {b['path']!r}")
        folder = Path(self.serverapp.root_dir).expanduser() / b["path"]
        self.answer({"counts": await self.run(lambda c: c.export(folder), slow=True)})


class PurgeHandler(ScfHandler):
    @endpoint
    async def post(self) -> None:
        self.body()
        self.answer({"deleted": await self.run(lambda c: c.purge(), slow=True)})


class ChangesHandler(ScfHandler):
    """The change feed as Server-Sent Events: ``ready`` once listening, then one message per commit (merged while
    the reader was slow): ``{"events", "logs", "ended", "overflow"}``; a comment every 15 s keeps it alive."""

    @endpoint
    async def get(self) -> None:
        self.params()
        pending = Pending()
        self.wake = pending.wake.set
        stop = await self.host.broker.listen(pending.add)
        try:
            self.start_stream()
            await self.send({}, event="ready")
            while not self.gone:
                changes = await pending.take(KEEPALIVE_S)
                if changes is None:
                    await self.send(comment="keep-alive")
                else:
                    await self.send(changes)
        except StreamClosedError:
            pass
        finally:
            stop()


class EngineHandler(ScfHandler):
    @endpoint
    async def get(self) -> None:
        self.params()
        from .. import api

        self.host.engine()  # the engine runs (else its error)
        self.answer({"engine": api.engine_info()})


def _page(rid: str, after: int, stream: str | None) -> Callable[[ClientProtocol], pd.DataFrame]:
    return lambda c: c.logs(rid, since_seq=after, stream=stream, limit=PAGE)


NAME = r"([^/]*)"
ROUTES: list[tuple[str, type[ScfHandler]]] = [
    (r"/scf/api/functions", FunctionsHandler),
    (rf"/scf/api/functions/{NAME}", FunctionHandler),
    (rf"/scf/api/functions/{NAME}/publish", PublishHandler),
    (r"/scf/api/invoke", InvokeHandler),
    (r"/scf/api/events", EventsHandler),
    (r"/scf/api/events/count", CountHandler),
    (rf"/scf/api/events/{NAME}", EventHandler),
    (rf"/scf/api/events/{NAME}/status", StatusHandler),
    (rf"/scf/api/events/{NAME}/wait", WaitHandler),
    (rf"/scf/api/events/{NAME}/result", ResultHandler),
    (rf"/scf/api/events/{NAME}/logs", LogsHandler),
    (r"/scf/api/wait", WaitManyHandler),
    (r"/scf/api/logs", SearchHandler),
    (r"/scf/api/terminate", TerminateHandler),
    (r"/scf/api/overview", OverviewHandler),
    (r"/scf/api/export", ExportHandler),
    (r"/scf/api/purge", PurgeHandler),
    (r"/scf/api/changes", ChangesHandler),
    (r"/scf/api/engine", EngineHandler),
]
