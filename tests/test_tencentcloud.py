"""The TencentCloud-compatible API, driven by TencentCloud's official SDK (``tencentcloud-sdk-python-scf``) over
real HTTP, on a real embedded engine: functions created from zips, events invoked, polled, listed, terminated.

The API runs on an event loop in a thread of its own (``start_in_thread``), over the test's own engine and
store (conftest's ``scf``); handlers are held by gate files, never by a sleep in the test.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import socket
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, wait_until
from tencentcloud.common.credential import Credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.scf.v20180416 import models, scf_client
from test_layering import PACKAGE, own_imports

from scf_nb.server import tc3
from scf_nb.server.tencentcloud import TcServer, keys_from_environment, serve_forever, start, start_in_thread

SECRET_ID, SECRET_KEY = "AKIDscfnbtest", "test-secret-key"

HANDLERS = GATE + r'''
import signal

def main_handler(event, context):
    mode = event.get("mode")
    print("started", mode, flush=True)
    if mode == "gate":
        wait_file(event["gate"])
    elif mode == "fail":
        raise ValueError("bad input " + str(event.get("n")))
    elif mode == "env":
        return os.environ.get("GREETING")
    elif mode == "sigterm":
        def on_term(signum, frame):
            touch(event["saved"], "saved")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        touch(event["ready"])
        time.sleep(120)
    elif mode == "sleep":
        touch(event["ready"])
        try:
            time.sleep(120)
        finally:
            touch(event["saved"], "saved")  # a kill without grace never gets here
    elif mode == "pair":
        return (event.get("n"), "done")
    print("ending", mode, flush=True)
    return {"n": event.get("n"), "mode": mode}
'''


def zipped(files: dict[str, str]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def api(scf: Any) -> Iterator[TcServer]:
    server = start_in_thread(scf.client(), 0, SECRET_ID, SECRET_KEY)
    try:
        yield server
    finally:
        server.stop()


def sdk_for(server: TcServer, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY) -> scf_client.ScfClient:
    profile = ClientProfile(httpProfile=HttpProfile(endpoint=f"127.0.0.1:{server.port}", protocol="http"))
    return scf_client.ScfClient(Credential(secret_id, secret_key), "ap-guangzhou", profile)


@pytest.fixture
def sdk(api: TcServer) -> scf_client.ScfClient:
    return sdk_for(api)


def call(sdk: scf_client.ScfClient, action: str, **fields: Any) -> dict[str, Any]:
    """``sdk.<action>(<action>Request(fields))``, its answer as the SDK parsed it (a dict)."""
    req = getattr(models, f"{action}Request")()
    req.from_json_string(json.dumps(fields))
    return json.loads(getattr(sdk, action)(req).to_json_string())  # type: ignore[no-any-return]


def code_of(sdk: scf_client.ScfClient, action: str, **fields: Any) -> str:
    """The error code the SDK raises for this call (fails the test when it raises none)."""
    with pytest.raises(TencentCloudSDKException) as err:
        call(sdk, action, **fields)
    return str(err.value.get_code())


def create(sdk: scf_client.ScfClient, name: str, *, async_run: bool = True, **fields: Any) -> None:
    fields.setdefault("Handler", "index.main_handler")
    fields.setdefault("Code", {"ZipFile": zipped({"index.py": HANDLERS})})
    call(sdk, "CreateFunction", FunctionName=name, AsyncRunEnable="TRUE" if async_run else "FALSE", **fields)


def invoke(sdk: scf_client.ScfClient, name: str, event: Any, kind: str = "Event") -> dict[str, Any]:
    return call(sdk, "Invoke", FunctionName=name, InvocationType=kind, ClientContext=json.dumps(event))["Result"]


def status_of(sdk: scf_client.ScfClient, rid: str) -> str:
    return str(call(sdk, "GetAsyncEventStatus", InvokeRequestId=rid)["Result"]["Status"])


def wait_status(sdk: scf_client.ScfClient, rid: str, status: str) -> None:
    wait_until(lambda: status_of(sdk, rid) == status, 30, f"{rid} to read {status} over the API")


def listed(sdk: scf_client.ScfClient, name: str, **filters: Any) -> tuple[int, list[dict[str, Any]]]:
    answer = call(sdk, "ListAsyncEvents", FunctionName=name, **filters)
    return answer["TotalCount"], answer["EventList"]


# -- functions and async events --------------------------------------------------------------------------------
def test_create_from_a_zip_invoke_async_and_poll_to_finished(scf: Any, sdk: scf_client.ScfClient) -> None:
    create(sdk, "job", Handler="src.index.main_handler", Code={"ZipFile": zipped({"src/index.py": HANDLERS})},
           Environment={"Variables": [{"Key": "GREETING", "Value": "hello"}]}, Timeout=60)
    result = invoke(sdk, "job", {"mode": "plain", "n": 1})
    rid = result["FunctionRequestId"]
    assert {k for k, v in result.items() if v is not None} == {"FunctionRequestId"}
    wait_status(sdk, rid, "FINISHED")
    answer = call(sdk, "GetAsyncEventStatus", InvokeRequestId=rid)["Result"]
    assert answer == {"Status": "FINISHED", "StatusCode": 200, "InvokeRequestId": rid}
    assert scf.get_event(rid).result() == {"n": 1, "mode": "plain"}
    assert "started plain" in scf.get_event(rid).logs()["line"].tolist()
    env = invoke(sdk, "job", {"mode": "env"})["FunctionRequestId"]
    assert scf.get_event(env).result(timeout=30) == "hello"
    fn = call(sdk, "GetFunction", FunctionName="job")
    assert (fn["Handler"], fn["AsyncRunEnable"], fn["TraceEnable"], fn["Timeout"]) == (
        "src.index.main_handler", "TRUE", "TRUE", 60)
    assert fn["Environment"] == {"Variables": [{"Key": "GREETING", "Value": "hello"}]}


def test_create_function_refuses_bad_code_with_clear_codes(sdk: scf_client.ScfClient) -> None:
    def code(zip_b64: str, handler: str = "index.main_handler", **more: Any) -> str:
        return code_of(sdk, "CreateFunction", FunctionName="bad", Handler=handler, Code={"ZipFile": zip_b64}, **more)

    assert code("not base64!") == "InvalidParameterValue.ZipFileBase64BinasciiError"
    assert code(base64.b64encode(b"plain bytes, no zip").decode()) == "InvalidParameterValue.ZipFile"
    assert code(zipped({"main.py": HANDLERS})) == "InvalidParameterValue.Code"  # index.py is missing
    assert code(zipped({"index.py": "def main_handler(:\n"})) == "InvalidParameterValue.Code"
    assert code(zipped({"index.py": HANDLERS}), "index.other") == "InvalidParameterValue.Handler"
    assert code(zipped({"index.py": HANDLERS}), "nodot") == "InvalidParameterValue.Handler"
    assert code(zipped({"index.py": HANDLERS}), AsyncRunEnable="yes") == "InvalidParameterValue.AsyncRunEnable"
    assert code(zipped({"index.py": HANDLERS}), Runtime="Nodejs18.15") == "InvalidParameterValue.Runtime"
    assert code_of(sdk, "CreateFunction", FunctionName="bad", Handler="index.main_handler") == "MissingParameter.Code"
    assert code_of(sdk, "GetFunction", FunctionName="bad") == "ResourceNotFound.Function"  # none was made
    create(sdk, "twice")
    assert code_of(sdk, "CreateFunction", FunctionName="twice", Handler="index.main_handler",
                   Code={"ZipFile": zipped({"index.py": HANDLERS})}) == "ResourceInUse.Function"


def test_list_async_events_filters_pages_orders_and_counts(scf: Any, sdk: scf_client.ScfClient, clock: Any) -> None:
    create(sdk, "batch")
    base = clock.now
    rids = []
    for n in range(5):
        clock.now = base + 10 * n
        rids.append(invoke(sdk, "batch", {"mode": "fail" if n == 3 else "plain", "n": n})["FunctionRequestId"])
        scf.get_event(rids[-1]).wait(30)
    total, page = listed(sdk, "batch")
    assert total == 5 and [e["InvokeRequestId"] for e in page] == rids[::-1]  # DESC by StartTime by default
    assert set(page[0]) == {"InvokeRequestId", "InvokeType", "Qualifier", "Status", "StartTime", "EndTime"}
    assert page[0]["StartTime"] == time.strftime("%Y-%m-%d %H:%M:%S.000000", time.localtime(base + 40))
    assert (page[0]["InvokeType"], page[0]["Qualifier"]) == ("Event", "$LATEST")
    total, page = listed(sdk, "batch", Order="ASC", Offset=1, Limit=2)
    assert total == 5 and [e["InvokeRequestId"] for e in page] == rids[1:3]
    total, page = listed(sdk, "batch", Orderby="EndTime", Order="ASC", Offset=4)
    assert total == 5 and [e["InvokeRequestId"] for e in page] == rids[4:]
    total, page = listed(sdk, "batch", Status=["FAILED"])
    assert total == 1 and page[0]["InvokeRequestId"] == rids[3] and page[0]["Status"] == "FAILED"
    assert listed(sdk, "batch", Status=["FINISHED", "FAILED"])[0] == 5
    assert listed(sdk, "batch", InvokeType=["RequestResponse"])[0] == 0
    assert listed(sdk, "batch", InvokeRequestId=rids[2])[1][0]["InvokeRequestId"] == rids[2]

    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    # left-closed, right-open: [event 1's start, event 3's start) holds events 1 and 2
    total, page = listed(sdk, "batch", StartTimeInterval={"Start": stamp(base + 10), "End": stamp(base + 30)})
    assert total == 2 and {e["InvokeRequestId"] for e in page} == set(rids[1:3])
    total, page = listed(sdk, "batch", EndTimeInterval={"Start": stamp(base + 40)})
    assert total == 1 and page[0]["InvokeRequestId"] == rids[4]
    assert code_of(sdk, "ListAsyncEvents", FunctionName="batch", Limit=101) == "InvalidParameterValue.Limit"
    assert code_of(sdk, "ListAsyncEvents", FunctionName="batch", Limit=0) == "InvalidParameterValue.Limit"
    assert code_of(sdk, "ListAsyncEvents", FunctionName="batch", Offset=-1) == "InvalidParameterValue.Offset"
    assert code_of(sdk, "ListAsyncEvents", FunctionName="batch", Order="UP") == "InvalidParameterValue.Order"
    assert code_of(sdk, "ListAsyncEvents", FunctionName="batch", Status=["QUEUED"]) == "InvalidParameterValue.Status"
    assert code_of(sdk, "ListAsyncEvents", FunctionName="batch",
                   StartTimeInterval={"Start": "yesterday"}) == "InvalidParameterValue.TimeInterval"
    assert code_of(sdk, "ListAsyncEvents") == "MissingParameter"


def test_sync_invoke_answers_the_return_value_as_json_with_its_log(scf: Any, sdk: scf_client.ScfClient) -> None:
    create(sdk, "now", async_run=False)
    result = invoke(sdk, "now", {"mode": "pair", "n": 7}, kind="RequestResponse")
    assert json.loads(result["RetMsg"]) == [7, "done"]  # a tuple's JSON form
    assert result["Log"].splitlines() == ["started pair"]
    assert result["InvokeResult"] == 0 and result["ErrMsg"] == ""
    assert result["Duration"] > 0 and isinstance(result["BillDuration"], int) and result["MemUsage"] > 0
    assert scf.get_event(result["FunctionRequestId"]).status == "FINISHED"
    default = call(sdk, "Invoke", FunctionName="now", ClientContext=json.dumps({"mode": "plain"}))["Result"]
    assert json.loads(default["RetMsg"]) == {"n": None, "mode": "plain"}  # sync is the default
    assert default["Log"].splitlines() == ["started plain", "ending plain"]
    quiet = call(sdk, "Invoke", FunctionName="now", ClientContext="{}", LogType="None")["Result"]
    assert quiet["Log"] == "" and json.loads(quiet["RetMsg"])["mode"] is None
    failed = invoke(sdk, "now", {"mode": "fail", "n": 2}, kind="RequestResponse")
    assert failed["InvokeResult"] != 0 and failed["RetMsg"] == ""
    error = json.loads(failed["ErrMsg"])
    assert (error["errorType"], error["errorMessage"]) == ("ValueError", "bad input 2")
    assert "Traceback" in error["stackTrace"]


def test_a_sync_function_invoked_as_event_answers_at_once(scf: Any, sdk: scf_client.ScfClient,
                                                          tmp_path: Path) -> None:
    """InvocationType=Event: the id at once, while the event runs on (SCF's asynchronous invocation)."""
    create(sdk, "later", async_run=False)
    gate = tmp_path / "gate"
    answer = invoke(sdk, "later", {"mode": "gate", "gate": str(gate)}, kind="Event")
    assert answer["RetMsg"] is None and answer["Log"] is None  # the id only
    rid = answer["FunctionRequestId"]
    ev = scf.get_event(rid)
    assert ev.status in ("QUEUED", "RUNNING")  # it waits on the gate: the answer did not wait for it
    gate.touch()
    assert ev.wait(timeout=60) == "FINISHED"
    assert ev.result() == {"n": None, "mode": "gate"}


def test_a_failed_async_event_reads_failed_with_its_status_code(sdk: scf_client.ScfClient) -> None:
    create(sdk, "breaks")
    rid = invoke(sdk, "breaks", {"mode": "fail", "n": 1})["FunctionRequestId"]
    wait_status(sdk, rid, "FAILED")
    assert call(sdk, "GetAsyncEventStatus", InvokeRequestId=rid)["Result"]["StatusCode"] == 430
    assert listed(sdk, "breaks", Status=["FAILED"])[0] == 1


def test_terminate_with_and_without_grace_leaves_other_events_alone(scf: Any, sdk: scf_client.ScfClient,
                                                                    tmp_path: Path) -> None:
    scf.create_function("long", HANDLERS, async_run=True, concurrency=3)  # (CreateFunction takes none: 1 per CPU)
    files = {k: str(tmp_path / k) for k in ("gate", "ready1", "saved1", "ready2", "saved2")}
    sibling = invoke(sdk, "long", {"mode": "gate", "gate": files["gate"], "n": 0})["FunctionRequestId"]
    graceful = invoke(sdk, "long", {"mode": "sigterm", "ready": files["ready1"], "saved": files["saved1"]})
    hard = invoke(sdk, "long", {"mode": "sleep", "ready": files["ready2"], "saved": files["saved2"]})
    for ready in ("ready1", "ready2"):
        wait_until(lambda r=ready: Path(files[r]).exists(), 30, f"{ready} to exist")  # type: ignore[misc]
    call(sdk, "TerminateAsyncEvent", FunctionName="long", InvokeRequestId=graceful["FunctionRequestId"],
         GraceShutdown=True)
    assert status_of(sdk, graceful["FunctionRequestId"]) == "ABORTED"
    assert Path(files["saved1"]).read_text() == "saved"  # its SIGTERM handler ran
    call(sdk, "TerminateAsyncEvent", FunctionName="long", InvokeRequestId=hard["FunctionRequestId"],
         GraceShutdown=False)
    assert status_of(sdk, hard["FunctionRequestId"]) == "ABORTED"
    assert not Path(files["saved2"]).exists()  # killed at once: its finally never ran
    assert status_of(sdk, sibling) == "RUNNING"
    Path(files["gate"]).touch()
    wait_status(sdk, sibling, "FINISHED")
    assert scf.get_event(sibling).result() == {"n": 0, "mode": "gate"}
    ended = code_of(sdk, "TerminateAsyncEvent", FunctionName="long", InvokeRequestId=sibling)
    assert ended == "FailedOperation.AsyncEventStatus"
    unknown = "00000000-9999-4000-8000-000000000000"
    assert code_of(sdk, "TerminateAsyncEvent", FunctionName="long", InvokeRequestId=unknown) == (
        "ResourceNotFound.AsyncEvent")
    assert code_of(sdk, "GetAsyncEventStatus", InvokeRequestId=unknown) == "ResourceNotFound.AsyncEvent"
    create(sdk, "other")
    assert code_of(sdk, "TerminateAsyncEvent", FunctionName="other", InvokeRequestId=sibling) == (
        "ResourceNotFound.AsyncEvent")  # not that function's event


def test_a_queued_event_reads_running_in_answers_and_filters(scf: Any, sdk: scf_client.ScfClient,
                                                             tmp_path: Path) -> None:
    scf.create_function("single", HANDLERS, async_run=True, concurrency=1)
    gate = str(tmp_path / "gate")
    first, second = (invoke(sdk, "single", {"mode": "gate", "gate": gate, "n": n})["FunctionRequestId"]
                     for n in (1, 2))
    wait_until(lambda: scf.get_event_status(first) == "RUNNING", 30, "the first event to run")
    assert scf.get_event_status(second) == "QUEUED"  # behind it: concurrency 1
    assert status_of(sdk, second) == "RUNNING"
    assert call(sdk, "GetAsyncEventStatus", InvokeRequestId=second)["Result"]["StatusCode"] == 202
    total, page = listed(sdk, "single", Status=["RUNNING"])
    assert total == 2 and {e["Status"] for e in page} == {"RUNNING"}
    assert listed(sdk, "single", Status=["FINISHED"])[0] == 0
    Path(gate).touch()
    for rid in (first, second):
        wait_status(sdk, rid, "FINISHED")


def test_publish_get_list_and_delete_functions(scf: Any, sdk: scf_client.ScfClient) -> None:
    create(sdk, "alpha", Description="first one")
    create(sdk, "beta", async_run=False, TraceEnable="FALSE")
    published = call(sdk, "PublishVersion", FunctionName="alpha", Description="v1")
    assert (published["FunctionVersion"], published["Description"], published["Handler"]) == (
        "1", "v1", "index.main_handler")
    v1 = call(sdk, "GetFunction", FunctionName="alpha", Qualifier="1", ShowCode="TRUE")
    assert v1["FunctionVersion"] == "1" and v1["CodeInfo"] == HANDLERS
    assert code_of(sdk, "GetFunction", FunctionName="alpha", Qualifier="7") == "ResourceNotFound.Version"
    answer = call(sdk, "ListFunctions", Order="ASC", Orderby="FunctionName")
    assert answer["TotalCount"] == 2  # functions, not versions
    assert [(f["FunctionName"], f["AsyncRunEnable"], f["TraceEnable"]) for f in answer["Functions"]] == [
        ("alpha", "TRUE", "TRUE"), ("beta", "FALSE", "FALSE")]
    assert [f["FunctionName"] for f in call(sdk, "ListFunctions", SearchKey="alp")["Functions"]] == ["alpha"]
    only_sync = call(sdk, "ListFunctions", Filters=[{"Name": "AsyncRunEnable", "Values": ["FALSE"]}])
    assert [f["FunctionName"] for f in only_sync["Functions"]] == ["beta"]
    assert call(sdk, "ListFunctions", Limit=1, Offset=1, Orderby="FunctionName")["Functions"][0][
        "FunctionName"] == "alpha"
    assert code_of(sdk, "DeleteFunction", FunctionName="alpha", Qualifier="1") == "UnsupportedOperation"
    call(sdk, "DeleteFunction", FunctionName="alpha")
    assert code_of(sdk, "GetFunction", FunctionName="alpha") == "ResourceNotFound.Function"
    assert code_of(sdk, "Invoke", FunctionName="alpha", InvocationType="Event") == "ResourceNotFound.Function"
    assert call(sdk, "ListFunctions")["TotalCount"] == 1


# -- signatures and bad input ----------------------------------------------------------------------------------
def test_a_wrong_key_is_refused_and_runs_nothing(scf: Any, api: TcServer, sdk: scf_client.ScfClient) -> None:
    create(sdk, "guarded")
    wrong_key = sdk_for(api, secret_key="not-the-key")
    assert code_of(wrong_key, "Invoke", FunctionName="guarded", InvocationType="Event") == (
        "AuthFailure.SignatureFailure")
    assert code_of(wrong_key, "CreateFunction", FunctionName="sneaky", Handler="index.main_handler",
                   Code={"ZipFile": zipped({"index.py": HANDLERS})}) == "AuthFailure.SignatureFailure"
    with pytest.raises(TencentCloudSDKException) as err:
        wrong_key.call_json("Nope", {})
    assert err.value.get_code() == "AuthFailure.SignatureFailure"  # checked before the action is looked up
    wrong_id = sdk_for(api, secret_id="AKIDsomeoneelse")
    assert code_of(wrong_id, "ListFunctions") == "AuthFailure.SecretIdNotFound"
    assert scf.count_events("guarded") == 0
    assert scf.list_functions()["name"].tolist() == ["guarded"]


def raw_post(server: TcServer, body: bytes, *, action: str = "ListFunctions", key: str = SECRET_KEY,
             timestamp: int | None = None, host: str | None = None, sign_body: bytes | None = None,
             method: str = "POST", auth: bool = True) -> tuple[int, str, dict[str, Any]]:
    """One request signed as the SDK signs it (or changed after signing); status, Content-Type, Response."""
    host = host or f"127.0.0.1:{server.port}"
    ts = int(time.time()) if timestamp is None else timestamp
    date = time.strftime("%Y-%m-%d", time.gmtime(ts))
    headers = {"Content-Type": "application/json", "Host": host, "X-TC-Action": action,
               "X-TC-Timestamp": str(ts), "X-TC-Version": "2018-04-16"}
    signed = tc3.Request("POST", "/", "", {"content-type": "application/json", "host": f"127.0.0.1:{server.port}"},
                         body if sign_body is None else sign_body)
    signature = tc3.sign(key, date, tc3.string_to_sign(signed, ["content-type", "host"], str(ts), date))
    if auth:
        headers["Authorization"] = (f"TC3-HMAC-SHA256 Credential={SECRET_ID}/{date}/scf/tc3_request, "
                                    f"SignedHeaders=content-type;host, Signature={signature}")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, "/", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", json.loads(resp.read())["Response"]
    finally:
        conn.close()


def test_signature_checks_on_the_wire(api: TcServer) -> None:
    status, content_type, answer = raw_post(api, b"{}")
    assert (status, content_type, answer["TotalCount"]) == (200, "application/json", 0) and answer["RequestId"]

    def code(body: bytes = b"{}", **how: Any) -> str:
        status, content_type, answer = raw_post(api, body, **how)
        assert (status, content_type) == (200, "application/json") and answer["RequestId"]
        return str(answer["Error"]["Code"])

    assert code(auth=False) == "AuthFailure.SignatureFailure"
    assert code(sign_body=b'{"Limit": 1}') == "AuthFailure.SignatureFailure"  # body changed after signing
    assert code(host="localhost:1") == "AuthFailure.SignatureFailure"  # the Host header is signed
    assert code(key="other") == "AuthFailure.SignatureFailure"
    assert code(timestamp=int(time.time()) - 600) == "AuthFailure.SignatureExpire"
    assert code(method="GET") == "UnsupportedProtocol"
    assert code(action="Nope") == "InvalidAction"
    assert code(action="") == "MissingParameter"
    assert code(b"[1, 2]") == "InvalidParameter"
    assert code(b"{not json") == "InvalidParameter"


def test_answers_hold_only_fields_the_sdk_models_know(scf: Any, api: TcServer, sdk: scf_client.ScfClient) -> None:
    """The SDK warns ("... fileds are useless") about a field its model lacks, and then silences that warning
    itself: so each answer is read into its model here with every warning recorded."""
    create(sdk, "shapes")
    create(sdk, "sync_shapes", async_run=False)
    rid = invoke(sdk, "shapes", {"mode": "plain"})["FunctionRequestId"]
    wait_status(sdk, rid, "FINISHED")
    asks = [("ListAsyncEvents", {"FunctionName": "shapes"}), ("GetAsyncEventStatus", {"InvokeRequestId": rid}),
            ("GetFunction", {"FunctionName": "shapes"}), ("ListFunctions", {}),
            ("PublishVersion", {"FunctionName": "shapes"}),
            ("Invoke", {"FunctionName": "shapes", "InvocationType": "Event"}),
            ("Invoke", {"FunctionName": "sync_shapes", "ClientContext": json.dumps({"mode": "fail"})})]
    for action, fields in asks:
        answer = raw_post(api, json.dumps(fields).encode(), action=action)[2]
        assert "Error" not in answer, (action, answer)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            getattr(models, f"{action}Response")()._deserialize(answer)
        assert [str(w.message) for w in seen] == [], action


def test_start_refuses_without_keys(scf: Any) -> None:
    for secret_id, secret_key in (("", SECRET_KEY), (SECRET_ID, ""), ("", "")):
        with pytest.raises(scf.ScfError) as err:
            start_in_thread(scf.client(), 0, secret_id, secret_key)
        assert err.value.code == "MissingParameter.SecretKey"
    with pytest.raises(scf.ScfError) as err:
        start_in_thread(scf.client(), 70000, SECRET_ID, SECRET_KEY)
    assert err.value.code == "InvalidParameterValue.Port"
    assert keys_from_environment({"SCF_NB_SECRET_ID": "id"}) == ("id", "")  # what the CLI and extension pass on


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_closes_the_port(scf: Any) -> None:
    server = start_in_thread(scf.client(), 0, SECRET_ID, SECRET_KEY)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}" and not refused(server.port)
        assert call(sdk_for(server), "ListFunctions")["TotalCount"] == 0
    finally:
        server.stop()
    assert refused(server.port)


def test_start_on_a_running_loop_as_the_extension_does(scf: Any) -> None:
    """``start`` on the loop of the calling thread (a Jupyter server's, in its extension), ``aclose`` there."""

    async def serve() -> tuple[int, dict[str, Any]]:
        server = start(scf.client(), 0, SECRET_ID, SECRET_KEY)
        try:
            loop = asyncio.get_running_loop()
            return server.port, await loop.run_in_executor(None, lambda: call(sdk_for(server), "ListFunctions"))
        finally:
            await server.aclose()

    port, answer = asyncio.run(serve())
    assert answer["TotalCount"] == 0 and refused(port)
    with pytest.raises(RuntimeError):
        start(scf.client(), 0, SECRET_ID, SECRET_KEY)  # no loop runs in this thread


def test_serve_forever_serves_until_stopped(scf: Any) -> None:
    started: list[TcServer] = []
    thread = threading.Thread(target=serve_forever, args=(scf.client(), 0, SECRET_ID, SECRET_KEY),
                              kwargs={"ready": started.append})
    thread.start()
    try:
        wait_until(lambda: started, 30, "serve_forever to listen")
        assert call(sdk_for(started[0]), "ListFunctions")["TotalCount"] == 0
    finally:
        wait_until(lambda: started or not thread.is_alive(), 30, "serve_forever to start or end")
        if started:
            started[0].stop()
        thread.join(30)
    assert not thread.is_alive() and refused(started[0].port)


def test_bad_client_context_and_missing_fields(scf: Any, sdk: scf_client.ScfClient) -> None:
    create(sdk, "strict")
    assert code_of(sdk, "Invoke", FunctionName="strict", InvocationType="Event", ClientContext="{bad") == (
        "InvalidParameterValue.ClientContext")
    assert code_of(sdk, "Invoke", FunctionName="strict", InvocationType="Later") == (
        "InvalidParameterValue.InvocationType")
    too_big = json.dumps({"blob": "x" * (128 * 1024)})  # async events: at most 128 KB
    assert code_of(sdk, "Invoke", FunctionName="strict", InvocationType="Event", ClientContext=too_big) == (
        "InvalidParameterValue.ClientContext")
    assert code_of(sdk, "Invoke", InvocationType="Event") == "MissingParameter"
    assert code_of(sdk, "GetAsyncEventStatus") == "MissingParameter"
    assert code_of(sdk, "TerminateAsyncEvent", FunctionName="strict") == "MissingParameter"
    with pytest.raises(TencentCloudSDKException) as err:
        sdk.call_json("Invoke", {"FunctionName": 12})
    assert err.value.get_code() == "InvalidParameterValue.FunctionName"
    assert scf.count_events("strict") == 0


INJECTIONS = ["x' OR '1'='1", "f'; DROP TABLE events; --", "../../etc/passwd", "\u0000"]


def test_injection_strings_get_proper_errors_and_leave_records_intact(scf: Any, sdk: scf_client.ScfClient) -> None:
    create(sdk, "kept")
    rid = invoke(sdk, "kept", {"mode": "plain"})["FunctionRequestId"]
    wait_status(sdk, rid, "FINISHED")
    for text in INJECTIONS:
        assert code_of(sdk, "GetAsyncEventStatus", InvokeRequestId=text) == "ResourceNotFound.AsyncEvent"
        assert listed(sdk, "kept", InvokeRequestId=text) == (0, [])
        for action in ("ListAsyncEvents", "Invoke", "GetFunction", "DeleteFunction", "PublishVersion"):
            assert code_of(sdk, action, FunctionName=text) == "InvalidParameterValue.FunctionName", action
        assert code_of(sdk, "TerminateAsyncEvent", FunctionName=text, InvokeRequestId=rid) == (
            "InvalidParameterValue.FunctionName")
        assert code_of(sdk, "ListAsyncEvents", FunctionName="kept", Qualifier=text, Namespace=text) == (
            "InvalidParameterValue.Namespace")
    assert listed(sdk, "kept") == (1, listed(sdk, "kept")[1]) and status_of(sdk, rid) == "FINISHED"
    assert scf.list_functions()["name"].tolist() == ["kept"]


def test_a_waiting_sync_invoke_does_not_hold_up_other_requests(scf: Any, sdk: scf_client.ScfClient,
                                                               api: TcServer, tmp_path: Path) -> None:
    """Client calls run in the API's thread pool: the loop answers others while one sync Invoke waits."""
    create(sdk, "blocking", async_run=False)
    gate = str(tmp_path / "gate")
    answers: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: answers.append(invoke(sdk_for(api), "blocking", {
        "mode": "gate", "gate": gate}, kind="RequestResponse")))
    worker.start()
    try:
        wait_until(lambda: scf.count_events("blocking", status="RUNNING") == 1, 30, "the sync event to run")
        assert call(sdk, "ListFunctions")["TotalCount"] == 1  # answered while the invoke waits
    finally:
        Path(gate).touch()
        worker.join(60)
    assert json.loads(answers[0]["RetMsg"]) == {"n": None, "mode": "gate"}


# -- layering --------------------------------------------------------------------------------------------------
TC_MODULES = ("tencentcloud.py", "tc_actions.py", "tc_params.py", "tc3.py")
TC_MAY_USE = ("clients.protocol", "core.errors", "core.functions", "core.results")


def test_the_tencentcloud_api_uses_only_the_client_protocol() -> None:
    """An adapter: of scf_nb's own packages it imports the client protocol and the domain's errors, function
    names and result encoding, never the engine, the store, the instances or the embedded client."""
    bad = {}
    for name in TC_MODULES:
        found = own_imports((PACKAGE / "server" / name).read_text(), "scf_nb.server")
        wrong = [(line, m) for line, m in found if not any(m == u or m.startswith(u + ".") for u in TC_MAY_USE)]
        if wrong:
            bad[name] = wrong
    assert bad == {}

