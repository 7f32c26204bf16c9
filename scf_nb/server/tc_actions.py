"""The TencentCloud SCF actions, each one call (or a few) on the client protocol: read the request's fields
(``tc_params``), call, shape the answer as the official SDK's ``models.py`` reads it. Each runs in a worker
thread of the API's pool, never on the server's event loop, and returns the ``Response`` fields (the server adds
``RequestId``); an ``ScfError`` becomes the error answer with its code.

TencentCloud has no QUEUED status: a QUEUED event reads RUNNING in every answer, and a ``Status`` filter of
RUNNING finds QUEUED events too.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pandas as pd

from ..clients.protocol import ClientProtocol
from ..core.errors import EventAborted, FunctionError, ScfError, invalid
from ..core.functions import LATEST, Function, check_name
from ..core.results import JsonView
from .tc_params import TIME_FORMAT, Params, code_from_zip, environment

TC_STATUSES = ("RUNNING", "FINISHED", "FAILED", "ABORTED")
MAX_PAGE = 100  # ListAsyncEvents' Limit
MAX_LOG_CHARS = 1024 * 1024  # a sync Invoke's Log keeps the last this many characters
RUNTIME = f"Python{sys.version_info.major}.{sys.version_info.minor}"
# GetAsyncEventStatus' StatusCode, after SCF's function status codes where one fits (200 success, 430 the
# user's code raised, 433 timeout, 434 memory limit, 439 the process exited); 202 and 499 are ours.
STATUS_CODES = {"RUNNING": 202, "FINISHED": 200, "ABORTED": 499}


class Context:
    """What the actions share across requests: the client, and the module part of each Handler created here
    (the engine keeps only the function's name; ``GetFunction`` shows ``index.`` for one it did not see)."""

    def __init__(self, client: ClientProtocol) -> None:
        self.client = client
        self._modules: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def remember(self, namespace: str, name: str, module: str | None) -> None:
        with self._lock:
            if module is None:
                self._modules.pop((namespace, name), None)
            else:
                self._modules[(namespace, name)] = module

    def handler(self, fn: Function) -> str:
        with self._lock:
            return f"{self._modules.get((fn.namespace, fn.name), 'index')}.{fn.handler}"


Action = Callable[[Context, Params], dict[str, Any]]


# -- events ----------------------------------------------------------------------------------------------------
def invoke(ctx: Context, p: Params) -> dict[str, Any]:
    name = _function_name(p)
    kind = p.choice("InvocationType", ("Event", "RequestResponse"), "RequestResponse")
    event = _client_context(p.text("ClientContext"))
    qualifier = p.text("Qualifier", LATEST) or LATEST
    with_log = p.choice("LogType", ("None", "Tail"), "Tail") == "Tail"  # "None": no Log (spares a store read)
    handle = ctx.client.invoke(name, event, qualifier=qualifier, namespace=_namespace(p),
                               wait=kind == "RequestResponse")
    rid = handle.request_id
    # An async function answers at once, however it was invoked (SCF: "the function will respond to the event
    # asynchronously"), and so does any function invoked as Event: with its id only. A sync one invoked as
    # RequestResponse has run by now (the client waited).
    if kind == "Event" or ctx.client.event_info(rid).get("invoke_type") == "Event":
        return {"Result": {"FunctionRequestId": rid}}
    return {"Result": _sync_result(ctx.client, rid, with_log)}


def _sync_result(client: ClientProtocol, rid: str, with_log: bool) -> dict[str, Any]:
    ret_msg, err_msg, ok = "", "", True
    try:
        ret_msg = JsonView().dumps(client.event_result(rid))
    except FunctionError as e:
        ok = False
        err_msg = json.dumps({"errorCode": -1, "errorMessage": e.error_message, "errorType": e.error_type,
                              "stackTrace": e.traceback})
    except EventAborted as e:
        ok = False
        err_msg = json.dumps({"errorCode": -1, "errorMessage": e.message, "errorType": "Aborted", "stackTrace": ""})
    info = client.event_info(rid)
    log = "\n".join(str(line) for line in client.logs(rid)["line"].tolist()) if with_log else ""
    if len(log) > MAX_LOG_CHARS:
        log = "(earlier lines cut: read them all with the logs API)\n" + log[-MAX_LOG_CHARS:]
    return {"Log": log, "RetMsg": ret_msg, "ErrMsg": err_msg, "MemUsage": int(_number(info.get("mem_usage_bytes"))),
            "Duration": _number(info.get("duration_ms")), "BillDuration": int(_number(info.get("billed_duration_ms"))),
            "FunctionRequestId": rid, "InvokeResult": 0 if ok else -1}


def _number(value: Any) -> float:
    """A figure of the event's, 0 where it has none (None or NaN: JSON has no NaN)."""
    return 0.0 if value is None or value != value else float(value)


def _client_context(text: str | None) -> Any:
    if text is None:
        return {}
    try:
        return json.loads(text)
    except ValueError as e:
        raise invalid("ClientContext", f"ClientContext must be the event as JSON text: {e}") from None


def list_async_events(ctx: Context, p: Params) -> dict[str, Any]:
    filters: dict[str, Any] = {
        "namespace": _namespace(p), "qualifier": p.text("Qualifier"), "invoke_type": p.texts("InvokeType"),
        "status": _status_filter(p.texts("Status")), "request_id": p.text("InvokeRequestId"),
        "start_time": p.interval("StartTimeInterval"), "end_time": p.interval("EndTimeInterval")}
    name = _function_name(p)
    order = p.choice("Order", ("ASC", "DESC"), "DESC") or "DESC"
    orderby = p.choice("Orderby", ("StartTime", "EndTime"), "StartTime") or "StartTime"
    offset = p.integer("Offset", 0) or 0
    limit = p.integer("Limit", 20, low=1, high=MAX_PAGE)
    frame = ctx.client.list_events(name, order=order, orderby=orderby, offset=offset, limit=limit, **filters)
    total = ctx.client.count_events(name, **filters)
    events = [{"InvokeRequestId": row.request_id, "InvokeType": row.invoke_type, "Qualifier": row.qualifier,
               "Status": tc_status(str(row.status)), "StartTime": _event_time(row.start_time),
               "EndTime": _event_time(row.end_time)} for row in frame.itertuples(index=False)]
    return {"TotalCount": total, "EventList": events}


def _status_filter(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    bad = [v for v in values if v not in TC_STATUSES]
    if bad or not values:
        raise invalid("Status", f"Status must list some of {', '.join(TC_STATUSES)}, got {values!r}")
    return values + ["QUEUED"] if "RUNNING" in values else values


def get_async_event_status(ctx: Context, p: Params) -> dict[str, Any]:
    rid = p.needed("InvokeRequestId")
    status = tc_status(ctx.client.get_event_status(rid))
    code = STATUS_CODES.get(status) or _failure_code(ctx.client.event_info(rid))
    return {"Result": {"Status": status, "StatusCode": code, "InvokeRequestId": rid}}


def _failure_code(info: dict[str, Any]) -> int:
    if info.get("exit_reason") == "timeout":
        return 433
    return {"MemoryLimitExceeded": 434, "InstanceDied": 439, "EngineStopped": 439}.get(info.get("error_type") or "",
                                                                                      430)


def terminate_async_event(ctx: Context, p: Params) -> dict[str, Any]:
    name = _function_name(p)
    rid = p.needed("InvokeRequestId")
    namespace = _namespace(p)
    grace = p.boolean("GraceShutdown", False)
    ctx.client.get_event_status(rid)  # traced: an untraced event is not found, as on SCF
    info = ctx.client.event_info(rid)
    if (info.get("function_name"), info.get("namespace")) != (name, namespace):
        raise ScfError("ResourceNotFound.AsyncEvent", f"function {namespace}/{name} has no event {rid!r}")
    ctx.client.terminate(rid, grace=grace, wait=True)
    return {}


# -- functions -------------------------------------------------------------------------------------------------
def create_function(ctx: Context, p: Params) -> dict[str, Any]:
    name = _function_name(p)
    namespace = _namespace(p)
    handler = p.text("Handler", "index.main_handler") or "index.main_handler"
    runtime = p.text("Runtime")
    if runtime is not None and not runtime.lower().startswith("python3"):
        raise invalid("Runtime", f"only Python 3 functions run here (this server runs {RUNTIME}), got {runtime!r}")
    async_run = p.choice("AsyncRunEnable", ("TRUE", "FALSE"), "FALSE") == "TRUE"
    trace = p.choice("TraceEnable", ("TRUE", "FALSE"), "TRUE") != "FALSE"
    code = p.mapping("Code")
    zip_b64 = code.text("ZipFile") if code is not None else None
    if zip_b64 is None:
        raise ScfError("MissingParameter.Code", "CreateFunction needs Code.ZipFile (a base64 zip holding the module "
                                                "Handler names); COS, Git and image code sources are not served here")
    source, function = code_from_zip(zip_b64, handler)
    try:
        ctx.client.get_function(name, namespace=namespace)
    except ScfError as e:
        if not e.code.startswith("ResourceNotFound"):
            raise
    else:
        raise ScfError("ResourceInUse.Function", f"function {namespace}/{name} already exists")
    ctx.client.create_function(
        name, source, handler=function, namespace=namespace, async_run=async_run, trace=trace,
        timeout=p.integer("Timeout", low=1), memory_mb=p.integer("MemorySize", low=1), env=environment(p),
        description=p.text("Description", "") or "")
    ctx.remember(namespace, name, handler.rpartition(".")[0])
    return {}


def publish_version(ctx: Context, p: Params) -> dict[str, Any]:
    name, namespace = _function_name(p), _namespace(p)
    version = ctx.client.publish_version(name, namespace=namespace, description=p.text("Description", "") or "")
    fn = ctx.client.get_function(name, namespace=namespace, qualifier=version)
    return {"FunctionVersion": version, "CodeSize": len(fn.code.encode()), "MemorySize": fn.memory_mb,
            "Description": fn.description, "Handler": ctx.handler(fn), "Timeout": _timeout(fn), "Runtime": RUNTIME,
            "Namespace": fn.namespace}


def get_function(ctx: Context, p: Params) -> dict[str, Any]:
    name, namespace = _function_name(p), _namespace(p)
    fn = ctx.client.get_function(name, namespace=namespace, qualifier=p.text("Qualifier", LATEST) or LATEST)
    show_code = p.choice("ShowCode", ("TRUE", "FALSE"), "FALSE") == "TRUE"
    return {
        "FunctionName": fn.name, "Namespace": fn.namespace, "FunctionVersion": fn.version, "Qualifier": fn.version,
        "Handler": ctx.handler(fn), "Description": fn.description, "Timeout": _timeout(fn),
        "MemorySize": fn.memory_mb, "Runtime": RUNTIME, "CodeSize": len(fn.code.encode()),
        "CodeInfo": fn.code if show_code else "", "CodeResult": "success", "CodeError": "", "ErrNo": 0,
        "Environment": {"Variables": [{"Key": k, "Value": v} for k, v in fn.env.items()]},
        "Status": "Active", "StatusDesc": "", "AvailableStatus": "Available", "Type": "Event",
        "AsyncRunEnable": _flag(fn.async_run), "TraceEnable": _flag(fn.trace),
        "AddTime": _function_time(fn.created_at), "ModTime": _function_time(fn.updated_at),
        "FunctionId": f"{fn.namespace}/{fn.name}", "Triggers": [], "Tags": [], "Layers": []}


def list_functions(ctx: Context, p: Params) -> dict[str, Any]:
    orderby = p.choice("Orderby", ("AddTime", "ModTime", "FunctionName"), "AddTime")
    order = p.choice("Order", ("ASC", "DESC"), "DESC")
    offset, limit = p.integer("Offset", 0) or 0, p.integer("Limit", 20, low=1) or 20
    frame = ctx.client.list_functions(namespace=_namespace(p))
    frame = frame[frame["version"] == LATEST]
    for column, text in (("name", p.text("SearchKey")), ("description", p.text("Description"))):
        if text:
            frame = frame[frame[column].str.contains(text, case=False, regex=False)]
    frame = _filtered(frame, p.body.get("Filters"))
    column = {"AddTime": "created_at", "ModTime": "updated_at", "FunctionName": "name"}[orderby or "AddTime"]
    frame = frame.sort_values([column, "name"], ascending=order == "ASC", kind="stable")
    rows = frame.iloc[offset:offset + limit]
    functions: list[dict[str, Any]] = [{"FunctionName": r.name, "Namespace": r.namespace, "Description": r.description,
                  "AddTime": _local(r.created_at).strftime(TIME_FORMAT),
                  "ModTime": _local(r.updated_at).strftime(TIME_FORMAT), "Runtime": RUNTIME,
                  "FunctionId": f"{r.namespace}/{r.name}", "Status": "Active", "StatusDesc": "", "Type": "Event",
                  "Tags": [], "StatusReasons": [], "AsyncRunEnable": _flag(bool(r.async_run)),
                  "TraceEnable": _flag(bool(r.trace))} for r in rows.itertuples(index=False)]
    return {"Functions": functions, "TotalCount": len(frame)}


_FILTER_COLUMNS = {"AsyncRunEnable": "async_run", "TraceEnable": "trace"}
_CONSTANT_FILTERS = {"Status": "Active", "Type": "Event", "Runtime": RUNTIME}


def _filtered(frame: pd.DataFrame, filters: Any) -> pd.DataFrame:
    """ListFunctions' ``Filters`` ([{Name, Values}]): AsyncRunEnable and TraceEnable (TRUE/FALSE), and Status,
    Type and Runtime (every function here is Active, Event, this server's Python)."""
    if filters is None:
        return frame
    if not isinstance(filters, list):
        raise invalid("Filters", f"Filters must be a list of {{Name, Values}}, got {filters!r}")
    for item in filters:
        f = Params(item if isinstance(item, dict) else {})
        name, values = f.text("Name"), f.texts("Values")
        if name is None or values is None or name not in (*_FILTER_COLUMNS, *_CONSTANT_FILTERS):
            raise invalid("Filters", f"each filter is {{Name, Values}}, Name one of "
                                     f"{', '.join([*_FILTER_COLUMNS, *_CONSTANT_FILTERS])}; got {item!r}")
        if name in _FILTER_COLUMNS:
            frame = frame[frame[_FILTER_COLUMNS[name]].map(_flag).isin(values)]
        elif _CONSTANT_FILTERS[name] not in values:
            frame = frame.iloc[0:0]
    return frame


def delete_function(ctx: Context, p: Params) -> dict[str, Any]:
    name, namespace = _function_name(p), _namespace(p)
    qualifier = p.text("Qualifier")
    if qualifier not in (None, LATEST):
        raise ScfError("UnsupportedOperation", f"deleting one version ({qualifier}) is not supported here: "
                                               "DeleteFunction without Qualifier deletes the function and its versions")
    ctx.client.delete_function(name, namespace=namespace)
    ctx.remember(namespace, name, None)
    return {}


ACTIONS: dict[str, Action] = {
    "Invoke": invoke, "ListAsyncEvents": list_async_events, "GetAsyncEventStatus": get_async_event_status,
    "TerminateAsyncEvent": terminate_async_event, "CreateFunction": create_function,
    "PublishVersion": publish_version, "GetFunction": get_function, "ListFunctions": list_functions,
    "DeleteFunction": delete_function,
}


# -- shapes ----------------------------------------------------------------------------------------------------
def tc_status(status: str) -> str:
    """The status TencentCloud names: QUEUED (ours) reads RUNNING."""
    return "RUNNING" if status == "QUEUED" else status


def _function_name(p: Params) -> str:
    return check_name("function", p.needed("FunctionName"))


def _namespace(p: Params) -> str:
    return check_name("namespace", p.text("Namespace", "default") or "default")


def _flag(value: bool) -> str:
    return "TRUE" if value else "FALSE"


def _timeout(fn: Function) -> int:
    return max(1, round(fn.effective_timeout))


def _local(value: Any) -> datetime:
    return datetime.fromtimestamp(pd.Timestamp(value).timestamp())  # local time, to the microsecond


def _event_time(value: Any) -> str | None:
    """AsyncEvent's StartTime/EndTime: local ``YYYY-MM-DD HH:MM:SS.ffffff``; None (null) while there is none."""
    return None if value is None or pd.isna(value) else _local(value).strftime(TIME_FORMAT + ".%f")


def _function_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime(TIME_FORMAT)
