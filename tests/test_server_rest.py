"""The REST API against its OpenAPI document and under attack, on a real ``jupyter server`` subprocess: every
routed path is documented and every documented operation answers with a documented status; without
credentials (or with a wrong token) every endpoint answers 403 and nothing runs; a browser's write with the
login cookie but no XSRF token is refused; SQL-injection and path-traversal strings in filters and ids get
400/404 with TencentCloud codes and leave the records as they were."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_support import Server, jupyter_server

pytest.importorskip("jupyter_server")
from scf_nb.server.handlers import ROUTES  # noqa: E402

OPENAPI = json.loads((Path(__file__).resolve().parents[1] / "scf_nb" / "server" / "openapi.json").read_text())
METHODS = ("get", "post", "delete", "put", "patch")
CODE = "def main_handler(event, context):\n    print('hello', event)\n    return event\n"
INJECTIONS = ["' OR 1=1 --", "x'; DROP TABLE events; --", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd",
              "%00", "\" OR \"\"=\"", "$(rm -rf /)", "<script>alert(1)</script>", "🙂" * 3]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with jupyter_server(tmp_path_factory.mktemp("rest")) as srv:
        assert srv.request("POST", "/scf/api/functions", {"name": "probe", "code": CODE, "async_run": True})[0] == 200
        status, answer, _ = srv.request("POST", "/scf/api/invoke", {"function": "probe", "event": {"a": 1}})
        assert status == 200, answer
        srv.rid = answer["request_id"]  # type: ignore[attr-defined]
        assert srv.request("GET", f"/scf/api/events/{srv.rid}/wait?timeout=30")[1]["status"] == "FINISHED"  # type: ignore[attr-defined]
        yield srv


def documented() -> list[tuple[str, str]]:
    return [(path, method) for path, ops in OPENAPI["paths"].items() for method in ops if method in METHODS]


def route_of(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "([^/]*)", path)


def test_every_routed_path_is_documented_with_its_methods() -> None:
    routed = {pattern: cls for pattern, cls in ROUTES}
    doc = {route_of(path): path for path in OPENAPI["paths"]}
    assert set(routed) == set(doc)
    for pattern, cls in routed.items():
        served = {m for m in METHODS if m in vars(cls)}
        assert served == set(OPENAPI["paths"][doc[pattern]]) & set(METHODS), pattern


def sample(server: Server, path: str, method: str) -> tuple[str, Any]:
    """A request of each documented operation that should succeed: (path with its query, body)."""
    rid = server.rid  # type: ignore[attr-defined]
    concrete = path.replace("{request_id}", rid).replace("{name}", "probe")
    bodies: dict[tuple[str, str], Any] = {
        ("/scf/api/functions", "post"): {"name": "probe", "code": CODE, "async_run": True},
        ("/scf/api/functions/{name}/publish", "post"): {},
        ("/scf/api/invoke", "post"): {"function": "probe", "event": {"b": 2}},
        ("/scf/api/wait", "post"): {"request_ids": [rid], "timeout": 1},
        ("/scf/api/terminate", "post"): None,  # answered below: an ended event is a documented 409
        ("/scf/api/export", "post"): {"path": "export"},
        ("/scf/api/purge", "post"): {},
    }
    queries = {"/scf/api/logs": "?text=hello", "/scf/api/events/{request_id}/wait": "?timeout=1"}
    if (path, method) == ("/scf/api/functions/{name}", "delete"):
        server.request("POST", "/scf/api/functions", {"name": "gone", "code": CODE, "async_run": True})
        concrete = "/scf/api/functions/gone"
    return concrete + queries.get(path, ""), bodies.get((path, method))


def stream_status(server: Server, path: str, token: str | None = None) -> int:
    """The status of an event-stream request; reads until the stream's ``ready`` event, then hangs up."""
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        headers = {"Accept": "text/event-stream"}
        if (server.token if token is None else token):
            headers["Authorization"] = f"token {server.token if token is None else token}"
        conn.request("GET", path, headers=headers)
        answer = conn.getresponse()
        if answer.status == 200:
            while b"event: ready" not in answer.readline():
                pass
        return answer.status
    finally:
        conn.close()


STREAMS = {"/scf/api/changes", "/scf/api/events/{request_id}/logs"}


def test_every_documented_operation_answers_with_a_documented_status(server: Server) -> None:
    for path, method in documented():
        responses = OPENAPI["paths"][path][method]["responses"]
        target, body = sample(server, path, method)
        if path in STREAMS:
            status = stream_status(server, target + ("?follow=true" if "logs" in path else ""))
            assert status == 200
        if path == "/scf/api/changes":
            pass  # a stream only
        elif path == "/scf/api/terminate":
            status, answer, _ = server.request("POST", path, {"request_id": server.rid})  # type: ignore[attr-defined]
            assert status == 409 and answer["error"]["code"] == "FailedOperation.AsyncEventStatus"
        else:
            status, answer, _ = server.request(method.upper(), target, body)
            assert status == 200, (path, method, answer)
        assert str(status) in responses, (path, method, status)
        # documented errors: an unknown query argument (or body field), no credentials, an unknown id
        bad = server.request(method.upper(), target + ("&" if "?" in target else "?") + "bogus=1",
                             body if body is not None else {} if method == "post" else None)
        assert bad[0] == 400 and bad[1]["error"]["code"] == "InvalidParameter" and "400" in responses, (path, bad)
        assert server.request(method.upper(), target, body, token="")[0] == 403 and "403" in responses
        if "{request_id}" in path and path not in STREAMS:
            missing = server.request(method.upper(), target.replace(server.rid, "nope"), body)  # type: ignore[attr-defined]
            assert missing[0] == 404 and missing[1]["error"]["code"] == "ResourceNotFound.AsyncEvent"
            assert "404" in responses


def counts(server: Server) -> tuple[int, int]:
    events = server.request("GET", "/scf/api/events/count")[1]["total"]
    functions = len(server.request("GET", "/scf/api/functions")[1]["functions"]["data"])
    return events, functions


def test_without_credentials_every_endpoint_refuses_and_nothing_runs(server: Server) -> None:
    before = counts(server)
    for path, method in documented():
        target, body = sample(server, path, method) if method == "get" else (
            path.replace("{request_id}", server.rid).replace("{name}", "probe"),  # type: ignore[attr-defined]
            {"function": "probe", "name": "intruder", "code": CODE, "request_id": server.rid, "path": "x"})  # type: ignore[attr-defined]
        for token in ("", "wrong-token"):
            if path != "/scf/api/changes":
                status, answer, _ = server.request(method.upper(), target, body, token=token)
                assert status in (401, 403), (path, method, token, status)
                assert answer["error"]["code"] == "AuthFailure"
            if path in STREAMS:
                assert stream_status(server, target + ("?follow=1" if "logs" in path else ""), token) in (401, 403)
    assert counts(server) == before
    assert not (server.root / "x").exists()


def test_the_token_authenticates_as_jupyter_decides_it(server: Server) -> None:
    """The header's token in any of Jupyter's spellings, or the ``?token=`` argument; a token-authenticated
    write needs no XSRF. A wrong one anywhere (the argument wins over the header, as in Jupyter) is refused."""
    before = counts(server)
    right = server.token
    for header in (f"token {right}", f"Token {right}", f"bearer {right}", f"Bearer  {right}"):
        status, answer, _ = server.request("POST", "/scf/api/invoke", {"function": "probe"}, token="",
                                           headers={"Authorization": header})
        assert status == 200, (header, answer)
    assert server.request("POST", f"/scf/api/invoke?token={right}", {"function": "probe"}, token="")[0] == 200
    for header, query in ((f"token {right}x", ""), (f"token {right[:-1]}", ""), (f"token {right}", "?token=no"),
                          (f"basic {right}", ""), (right, "")):
        status, answer, _ = server.request("POST", "/scf/api/invoke" + query, {"function": "probe"}, token="",
                                           headers={"Authorization": header})
        assert status == 403 and answer["error"]["code"] == "AuthFailure", (header, query, status)
    assert counts(server)[0] == before[0] + 5


def test_a_browser_write_needs_the_xsrf_token(server: Server) -> None:
    """The login cookie alone reads, but writes only with XSRF (token-authenticated clients are exempt)."""
    _, _, headers = server.request("GET", f"/scf/api/engine?token={server.token}", token="")  # as a browser logs in
    cookie = headers["Set-Cookie"].split(";")[0]
    status, _, _ = server.request("GET", "/scf/api/overview", token="", headers={"Cookie": cookie})
    assert status == 200
    before = counts(server)
    status, answer, _ = server.request("POST", "/scf/api/invoke", {"function": "probe"}, token="",
                                       headers={"Cookie": cookie})
    assert status == 403 and "_xsrf" in answer["error"]["message"]
    xsrf = "2|deadbeef|0123456789abcdef0123456789abcdef|1700000000"
    status, answer, _ = server.request("POST", "/scf/api/invoke", {"function": "probe"}, token="",
                                       headers={"Cookie": f"{cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf})
    assert status == 200, answer  # the same write with a matching XSRF cookie and header
    assert counts(server)[0] == before[0] + 1


def test_injection_and_traversal_strings_get_tencentcloud_errors_and_change_nothing(server: Server) -> None:
    before = counts(server)
    listing = server.request("GET", "/scf/api/events?limit=null")[1]["events"]
    for text in INJECTIONS:
        quoted = urllib.parse.quote(text, safe="")
        for path in (f"/scf/api/events/{quoted}", f"/scf/api/events/{quoted}/status", f"/scf/api/events/{quoted}/logs",
                     f"/scf/api/events/{quoted}/result"):
            status, answer, _ = server.request("GET", path)
            assert status == 404 and answer["error"]["code"] == "ResourceNotFound.AsyncEvent", (path, answer)
        status, answer, _ = server.request("GET", f"/scf/api/functions/{quoted}")
        assert status == 404 and answer["error"]["code"] == "ResourceNotFound.Function", (text, answer)
        status, answer, _ = server.request("POST", "/scf/api/terminate", {"request_id": text})
        assert status == 404 and answer["error"]["code"] == "ResourceNotFound.AsyncEvent"
        for arg in ("function", "namespace", "qualifier", "request_id"):
            status, answer, _ = server.request("GET", f"/scf/api/events?{arg}={quoted}")
            assert status == 200 and answer["events"]["data"] == [] and answer["total"] == 0, (arg, text)
        for arg in ("status", "order", "orderby", "invoke_type", "offset", "limit"):
            status, answer, _ = server.request("GET", f"/scf/api/events?{arg}={quoted}")
            assert status == 400 and answer["error"]["code"].startswith("InvalidParameterValue."), (arg, text)
        status, answer, _ = server.request("GET", f"/scf/api/logs?text={quoted}")
        assert status == 200 and answer["logs"]["data"] == []
        status, answer, _ = server.request("POST", "/scf/api/functions", {"name": text, "code": CODE})
        assert status == 400 and answer["error"]["code"] == "InvalidParameterValue.FunctionName"
        status, answer, _ = server.request("POST", "/scf/api/invoke", {"function": text})
        assert status == 404 and answer["error"]["code"] == "ResourceNotFound.Function"
    for raw in (b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"):
        status, answer, _ = server.request("POST", "/scf/api/invoke", raw=raw)
        assert status == 400 and answer["error"]["code"] == "InvalidParameter", raw
    for body in ({"function": "probe", "qualifier": ["x"]}, {"function": 7}, {"function": "probe", "namespace": {}}):
        status, answer, _ = server.request("POST", "/scf/api/invoke", body)
        assert 400 <= status < 500, (body, status, answer)
    assert counts(server) == before
    assert server.request("GET", "/scf/api/events?limit=null")[1]["events"] == listing
