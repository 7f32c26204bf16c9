"""Protocol conformance: the HTTP client gives what the embedded client gives. A Jupyter server runs in this
process (on a thread of its own) with the scf_nb extension, hosting the engine; each call goes to the hosted
engine's embedded client directly and to an ``HttpClient`` over the server's REST API, on the same store at the
same moment, and the answers must be equal: values, DataFrames (``assert_frame_equal``, dtypes included) and
errors (type, code, message)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import GATE, wait_until
from server_support import free_port

import scf_nb
from scf_nb.clients.embedded import Client
from scf_nb.clients.events import Event
from scf_nb.clients.http import HttpClient
from scf_nb.clients.protocol import ClientProtocol, members

serverapp = pytest.importorskip("jupyter_server.serverapp")

WORK = GATE + '''
def main_handler(event, context):
    print("starting", event["n"], flush=True)
    if event.get("gate"):
        wait_file(event["gate"])
    if event.get("fail"):
        raise ValueError("asked to fail")
    import sys
    print("to stderr", event["n"], file=sys.stderr, flush=True)
    print("done", event["n"], flush=True)
    return {"n": event["n"], "pair": (1, 2), "set": {3}}
'''


class ThreadServer(serverapp.ServerApp):  # type: ignore[misc,name-defined]
    """A ServerApp that runs on a thread: no signal handlers (only the main thread may set them)."""

    def init_signal(self) -> None:
        pass


class Served:
    def __init__(self, app: Any, url: str, token: str, thread: threading.Thread) -> None:
        self.app, self.url, self.token, self.thread = app, url, token, thread

    def stop(self) -> None:
        if self.thread.is_alive():
            self.app.io_loop.add_callback(self.app._stop)
            self.thread.join(60)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A Jupyter server in this process hosting the engine of ``tmp_path/root/.scf_nb``."""
    for name in ("SCF_NB_SERVER", "SCF_NB_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    scf_nb.shutdown()
    root = tmp_path / "root"
    root.mkdir()
    port, token = free_port(), uuid.uuid4().hex
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            app = ThreadServer(jpserver_extensions={"scf_nb.server": True})
            app.initialize(argv=["--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
                                 "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                                 f"--ServerApp.root_dir={root}"])
            box["app"] = app
            app.io_loop.add_callback(ready.set)
            app.start()
        except BaseException as e:  # pragma: no cover - shown by the fixture
            box["error"] = e
            ready.set()

    thread = threading.Thread(target=run, name="test-jupyter-server", daemon=True)
    thread.start()
    assert ready.wait(60) and "error" not in box, box.get("error")
    server = Served(box["app"], f"http://127.0.0.1:{port}/", token, thread)
    wait_until(lambda: (root / ".scf_nb" / "server.json").exists(), 30, "the discovery file")
    try:
        yield server
    finally:
        server.stop()
        scf_nb.shutdown()


@pytest.fixture
def pair(served: Served) -> Iterator[tuple[Client, HttpClient]]:
    embedded = scf_nb.client()
    assert isinstance(embedded, Client)  # this process hosts the engine: its default client is embedded
    http = HttpClient(served.url, served.token)
    try:
        yield embedded, http
    finally:
        http.close()


def outcome(call: Callable[[ClientProtocol], Any], client: ClientProtocol) -> tuple[str, Any]:
    try:
        return "value", call(client)
    except Exception as e:
        return "error", (type(e), getattr(e, "code", None), str(e))


def same(pair: tuple[Client, HttpClient], call: Callable[[ClientProtocol], Any]) -> Any:
    """``call`` on both clients: the same value (frames: equal with their dtypes) or the same error."""
    mine, theirs = outcome(call, pair[0]), outcome(call, pair[1])
    assert mine[0] == theirs[0], (mine, theirs)
    if mine[0] == "value" and isinstance(mine[1], pd.DataFrame):
        pd.testing.assert_frame_equal(theirs[1], mine[1])
    elif mine[0] == "value" and isinstance(mine[1], Event):
        assert (theirs[1].request_id, theirs[1].function_name) == (mine[1].request_id, mine[1].function_name)
    else:
        assert theirs[1] == mine[1]
    return theirs[1]


def test_http_client_implements_the_whole_protocol() -> None:
    """Every member, with the protocol's signature and (but ``close``: it only disconnects) its docstring."""
    assert isinstance(HttpClient("http://127.0.0.1:1/"), ClientProtocol)
    for name in members():
        if name == "closed":
            assert isinstance(vars(HttpClient)[name], property)
            continue
        mine, theirs = getattr(HttpClient, name), getattr(ClientProtocol, name)
        assert inspect.signature(mine, eval_str=True) == inspect.signature(theirs, eval_str=True), name
        assert name == "close" or mine.__doc__ == theirs.__doc__, name


def test_every_protocol_method_answers_as_the_embedded_client(pair: tuple[Client, HttpClient],
                                                              tmp_path: Path) -> None:
    emb, http = pair
    fn = http.create_function("work", WORK, async_run=True, timeout=60, env={"A": "1"}, description="d")
    assert fn == emb.get_function("work")
    http.create_function("quiet", WORK, async_run=True, trace=False)
    http.create_function("sync", WORK)
    assert http.publish_version("work", description="first") == "1"
    same(pair, lambda c: c.get_function("work", qualifier="1"))
    same(pair, lambda c: c.list_functions())
    same(pair, lambda c: c.list_functions(namespace="nowhere"))

    ev = http.invoke("work", {"n": 1})
    assert http.wait_event(ev.request_id, 60) == "FINISHED"
    assert same(pair, lambda c: c.event_result(ev.request_id)) == {"n": 1, "pair": (1, 2), "set": {3}}
    same(pair, lambda c: c.stored_result(ev.request_id))
    same(pair, lambda c: c.event_info(ev.request_id))
    same(pair, lambda c: c.get_event_status(ev.request_id))
    same(pair, lambda c: c.get_event(ev.request_id))
    for kwargs in ({}, {"since_seq": 1}, {"stream": "stderr"}, {"limit": 1}, {"since_seq": 99}):
        same(pair, lambda c, k=kwargs: c.logs(ev.request_id, **k))
    same(pair, lambda c: list(c.follow(ev.request_id)))
    same(pair, lambda c: list(c.follow(ev.request_id, since_seq=2)))

    sync = http.invoke("sync", {"n": 2})
    assert http.event_status(sync.request_id) == "FINISHED"  # a sync invoke answers when it has ended
    for c, n in ((emb, 5), (http, 6)):  # wait=False: at once, while the sync event waits on its gate
        opened = tmp_path / f"gate{n}"
        unwaited = c.invoke("sync", {"n": n, "gate": str(opened)}, wait=False)
        assert c.event_status(unwaited.request_id) in ("QUEUED", "RUNNING")
        opened.touch()
        assert c.event_result(unwaited.request_id, timeout=60)["n"] == n
    failed = http.invoke("work", {"n": 3, "fail": True})
    same(pair, lambda c: c.wait([ev, failed.request_id, sync.request_id], timeout=60)[1])
    error = same(pair, lambda c: c.event_result(failed.request_id))
    assert error[0] is scf_nb.FunctionError
    with pytest.raises(scf_nb.FunctionError) as raised:
        http.event_result(failed.request_id)
    assert raised.value.error_type == "ValueError" and "asked to fail" in raised.value.traceback

    gate = str(tmp_path / "gate")
    held = http.invoke("work", {"n": 4, "gate": gate})
    follower = http.follow(held.request_id)
    assert next(follower).line == "starting 4"  # pushed while the event runs
    same(pair, lambda c: type(c.event_result(held.request_id, timeout=0.2)))  # TimeoutError, same message
    same(pair, lambda c: c.wait([held], timeout=0.1)[1])
    assert http.terminate(held.request_id) == "ABORTED"
    assert [line.line for line in follower] == []  # it ended without more lines
    assert same(pair, lambda c: c.event_result(held.request_id))[0] is scf_nb.EventAborted

    for kwargs in ({}, {"status": "FINISHED"}, {"status": ["FAILED", "ABORTED"]}, {"function": "sync"},
                   {"invoke_type": "RequestResponse"}, {"request_id": ev.request_id}, {"order": "ASC"},
                   {"orderby": "EndTime", "offset": 1, "limit": 2}, {"limit": None},
                   {"start_time": (time.time() - 3600, None)}, {"end_time": ("2000-01-01 00:00:00", time.time() + 60)},
                   {"start_time": (pd.Timestamp.now(tz="UTC") - pd.Timedelta("1h"), None)}):
        same(pair, lambda c, k=kwargs: c.list_events(**k))
        filters = {k: v for k, v in kwargs.items() if k not in ("order", "orderby", "offset", "limit")}
        same(pair, lambda c, f=filters: c.count_events(**f))
    same(pair, lambda c: c.overview())
    same(pair, lambda c: c.overview("work", since=time.time() - 3600))
    same(pair, lambda c: c.search_logs("DONE"))
    same(pair, lambda c: c.search_logs("starting", function="work", limit=2))

    quiet = http.invoke("quiet", {"n": 5})
    http.wait_event(quiet.request_id, 60)
    same(pair, lambda c: c.event_status(quiet.request_id))
    same(pair, lambda c: c.get_event_status(quiet.request_id))  # ResourceNotFound: untraced
    same(pair, lambda c: c.logs(quiet.request_id))

    assert http.export(tmp_path / "http-export") == emb.export(tmp_path / "embedded-export")
    same(pair, lambda c: c.purge())
    same(pair, lambda c: c.closed)


BAD_CALLS: list[Callable[[ClientProtocol], Any]] = [
    lambda c: c.list_events(status="BOGUS"),
    lambda c: c.list_events(status=["RUNNING", 3]),
    lambda c: c.list_events(order="SIDEWAYS"),
    lambda c: c.list_events(orderby="Name"),
    lambda c: c.list_events(offset=-1),
    lambda c: c.list_events(offset="-1"),
    lambda c: c.list_events(limit=0),
    lambda c: c.list_events(limit=2.5),
    lambda c: c.list_events(invoke_type="Later"),
    lambda c: c.list_events(start_time=("not a time", None)),
    lambda c: c.list_events(start_time=(1, 2, 3)),
    lambda c: c.count_events(status="nope"),
    lambda c: c.get_event("nope"),
    lambda c: c.get_event("00000000-0001-4000-8000-000000000000"),
    lambda c: c.get_event_status("' OR 1=1 --"),
    lambda c: c.event_info("../../etc/passwd"),
    lambda c: c.logs("nope"),
    lambda c: c.logs("nope", since_seq=-1),
    lambda c: c.follow("nope"),
    lambda c: c.terminate("nope"),
    lambda c: c.terminate_event("nope"),
    lambda c: c.wait_event("nope", 0),
    lambda c: c.wait(["nope"], timeout=0),
    lambda c: c.event_result("nope", 0),
    lambda c: c.add_done_callback("nope", print),
    lambda c: c.add_done_callback("nope", "not callable"),  # type: ignore[arg-type]
    lambda c: c.subscribe("not callable"),  # type: ignore[arg-type]
    lambda c: c.get_function("missing"),
    lambda c: c.get_function("../etc"),
    lambda c: c.get_function("work", qualifier="9"),
    lambda c: c.delete_function("missing"),
    lambda c: c.publish_version("missing"),
    lambda c: c.invoke("missing", {}),
    lambda c: c.invoke("work", {"big": "x" * (200 * 1024)}),
    lambda c: c.invoke("work", {"bad": {1, 2}}),
    lambda c: c.create_function("bad name!", "def main_handler(e, c): pass"),
    lambda c: c.create_function("broken", "def main_handler(e, c) pass"),
    lambda c: c.create_function("nohandler", "x = 1"),
    lambda c: c.create_function("work", "def main_handler(e, c): pass"),  # async at creation: cannot switch
    lambda c: c.create_function("neg", "def main_handler(e, c): pass", timeout=-1),
    lambda c: c.search_logs(""),
    lambda c: c.overview(since="never"),
    lambda c: c.follow("nope", timeout=-1),
]


def test_bad_input_gives_the_same_errors(pair: tuple[Client, HttpClient], tmp_path: Path) -> None:
    emb, http = pair
    http.create_function("work", WORK, async_run=True)
    ev = http.invoke("work", {"n": 1})
    http.wait_event(ev.request_id, 60)
    for i, call in enumerate(BAD_CALLS):
        kind, detail = outcome(call, emb)
        assert kind == "error", (i, detail)
        same(pair, call)
    error = same(pair, lambda c: c.terminate(ev.request_id))  # already ended
    assert error[1] == "FailedOperation.AsyncEventStatus"
    held = http.invoke("work", {"n": 2, "gate": str(tmp_path / "gate")})
    wait_until(lambda: http.event_status(held.request_id) == "RUNNING", what="the held event to run")
    error = same(pair, lambda c: c.delete_function("work"))  # its event runs
    assert error[1] == "FailedOperation.FunctionStatusError"
    http.terminate(held.request_id)
    assert emb.count_events() == 2  # nothing the bad calls sent was recorded


def test_live_updates_are_pushed_to_the_http_client(pair: tuple[Client, HttpClient], tmp_path: Path) -> None:
    _, http = pair
    http.create_function("work", WORK, async_run=True)
    seen: list[Any] = []
    done: list[Event] = []
    with http.subscribe(seen.append):
        gate = tmp_path / "gate"
        ev = http.invoke("work", {"n": 1, "gate": str(gate)})
        ev.add_done_callback(done.append)
        wait_until(lambda: any(ev.request_id in c.logs for c in seen), what="a change notice of its lines")
        assert done == []
        gate.touch()
        wait_until(lambda: done == [ev], what="the done callback")
        wait_until(lambda: any(ev.request_id in c.ended for c in seen), what="a change notice of its end")
    later: list[Event] = []
    ev.add_done_callback(later.append)  # ended already: at once, in this thread
    assert later == [ev]
    # the module-level API of a process that finds the server through its environment: over HTTP
    assert isinstance(http, HttpClient) and not http.closed
    http.close()
    assert http.closed
    with pytest.raises(scf_nb.ScfError, match="closed"):
        http.list_events()
