"""What the REST API and the HTTP client send each other, as JSON: DataFrames with their dtypes, functions,
an event's info, errors and the typed values of a query string. Pure (pandas and the stdlib), so the server, the
HTTP client and any script read it alike.

A frame is ``{"columns": [...], "dtypes": [...], "data": [[row], ...]}`` (pandas' "split" layout plus one
descriptor per column): ``{"kind": "int64"}`` for a numpy dtype; ``{"kind": "string", "storage": ...,
"na": "nan" | "NA"}``; ``{"kind": "datetime", "unit": "us", "tz": <tz>}`` (values ISO 8601 text) where ``tz``
is a zone name or ``{"offset": seconds, "name": ...}``; ``{"kind": "object"}`` (JSON values; there a float
NaN/infinity is ``{"$float": "nan"}``, ``pd.NA`` ``{"$na": true}``, ``NaT`` ``{"$nat": true}``, a datetime
``{"$datetime": "<ISO 8601>"}``). Missing values are ``null``. ``frame_from`` gives back the same frame,
dtypes included (``pd.testing.assert_frame_equal`` holds).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ..core.errors import EventAborted, FunctionError, ScfError
from ..core.functions import Function

TIME_FIELDS = ("start_time", "run_time", "end_time")  # the datetimes of an event's info


# -- frames ------------------------------------------------------------------------------------------------------
def frame_json(frame: pd.DataFrame) -> dict[str, Any]:
    """``frame`` as JSON data (see the module's docstring). Its index must be the default one (0..n-1)."""
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.start != 0 or frame.index.step != 1:
        frame = frame.reset_index(drop=True)
    columns: list[list[Any]] = []
    dtypes: list[dict[str, Any]] = []
    for name in frame.columns:
        desc, values = _column(frame[name])
        dtypes.append(desc)
        columns.append(values)
    return {"columns": [str(c) for c in frame.columns], "dtypes": dtypes,
            "data": [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in frame.index]}


def frame_from(data: Mapping[str, Any]) -> pd.DataFrame:
    """The frame ``frame_json`` made ``data`` from."""
    names, dtypes, rows = data["columns"], data["dtypes"], data["data"]
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    built = {name: _series(desc, list(values)) for name, desc, values in zip(names, dtypes, cols, strict=True)}
    return pd.DataFrame(built, columns=names, index=pd.RangeIndex(len(rows)))


def _column(s: pd.Series[Any]) -> tuple[dict[str, Any], list[Any]]:
    dtype = s.dtype
    unit: str | None = None
    if isinstance(dtype, pd.DatetimeTZDtype):
        unit, tz = str(dtype.unit), _tz_spec(dtype.tz)
    elif isinstance(dtype, np.dtype) and dtype.kind == "M":
        unit, tz = str(np.datetime_data(dtype)[0]), None  # type: ignore[arg-type]  # a datetime64 dtype
    if unit is not None:
        return ({"kind": "datetime", "unit": unit, "tz": tz},
                [None if pd.isna(v) else pd.Timestamp(v).isoformat() for v in s.tolist()])
    if isinstance(dtype, pd.StringDtype):
        na = "nan" if isinstance(dtype.na_value, float) else "NA"
        return ({"kind": "string", "storage": dtype.storage, "na": na},
                [None if not isinstance(v, str) else v for v in s.tolist()])
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        return {"kind": "object"}, [_plain(v) for v in s.tolist()]
    return {"kind": str(dtype)}, [_number(v) for v in s.tolist()]


def _series(desc: Mapping[str, Any], values: list[Any]) -> pd.Series[Any]:
    kind = desc["kind"]
    if kind == "datetime":
        parsed = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601", utc=desc["tz"] is not None)
        if desc["tz"] is None:
            return parsed.astype(np.dtype(f"datetime64[{desc['unit']}]"))
        tz = _tz_from(desc["tz"])
        return parsed.dt.tz_convert(tz).astype(pd.DatetimeTZDtype(desc["unit"], tz))
    if kind == "string":
        na = np.nan if desc["na"] == "nan" else pd.NA
        return pd.Series(values, dtype=pd.StringDtype(desc["storage"], na_value=na))
    if kind == "object":
        return pd.Series([_unplain(v) for v in values], dtype=object)
    data = [np.nan if v is None else float(v) for v in values] if kind.startswith("float") else values
    return pd.Series(data, dtype=pd.api.types.pandas_dtype(kind))


def _tz_spec(tz: Any) -> Any:
    key = getattr(tz, "key", None) or getattr(tz, "zone", None)  # zoneinfo, pytz
    if isinstance(key, str):
        return key
    if tz is dt.timezone.utc:
        return "UTC"
    if isinstance(tz, dt.timezone):  # a fixed offset, named or not (pandas tells the two apart)
        args = tz.__getinitargs__()  # type: ignore[attr-defined]
        return {"offset": args[0].total_seconds(), "name": args[1] if len(args) > 1 else None}
    return str(tz)


def _tz_from(spec: Any) -> Any:
    if isinstance(spec, dict):
        offset = dt.timedelta(seconds=spec["offset"])
        return dt.timezone(offset) if spec.get("name") is None else dt.timezone(offset, spec["name"])
    return dt.timezone.utc if spec == "UTC" else ZoneInfo(spec)


def _number(v: Any) -> Any:
    if v is pd.NA:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v.item() if isinstance(v, np.generic) else v


def _plain(v: Any) -> Any:
    if v is pd.NA:
        return {"$na": True}
    if v is pd.NaT:
        return {"$nat": True}
    if isinstance(v, float) and not math.isfinite(v):
        return {"$float": repr(v)}
    if isinstance(v, np.generic):
        return _plain(v.item())
    if isinstance(v, dt.datetime):
        return {"$datetime": pd.Timestamp(v).isoformat()}
    return v


def _unplain(v: Any) -> Any:
    if isinstance(v, dict) and len(v) == 1:
        if "$float" in v:
            return float(v["$float"])
        if "$na" in v:
            return pd.NA
        if "$nat" in v:
            return pd.NaT
        if "$datetime" in v:
            return pd.Timestamp(v["$datetime"])
    return v


# -- functions, event info, results ------------------------------------------------------------------------------
def function_json(fn: Function) -> dict[str, Any]:
    return fn.as_dict()


def function_from(data: Mapping[str, Any]) -> Function:
    return Function(**data)


def info_json(info: Mapping[str, Any]) -> dict[str, Any]:
    """An event's info (``event_info``) as JSON data: its times as ISO 8601 text."""
    out = dict(info)
    for name in TIME_FIELDS:
        if isinstance(out.get(name), dt.datetime):
            out[name] = out[name].isoformat()
    return out


def info_from(data: Mapping[str, Any]) -> dict[str, Any]:
    """``event_info``'s dict from ``info_json``'s: its times as aware datetimes in local time, as the embedded
    client gives them."""
    out = dict(data)
    for name in TIME_FIELDS:
        if isinstance(out.get(name), str):
            out[name] = dt.datetime.fromisoformat(out[name]).astimezone()
    return out


def result_json(text: str | None, blob: bytes | None) -> dict[str, Any]:
    """A stored result (its JSON text and pickle) as JSON data: the pickle in base64."""
    return {"text": text, "pickle": None if blob is None else base64.b64encode(blob).decode("ascii")}


def result_from(data: Mapping[str, Any]) -> tuple[str | None, bytes | None]:
    blob = data.get("pickle")
    return data.get("text"), None if blob is None else base64.b64decode(blob)


# -- errors ----------------------------------------------------------------------------------------------------------
def error_json(e: BaseException) -> dict[str, Any]:
    """The body of an error answer: ``{"error": {"code", "message", "kind", ...}}``, with what the client needs
    to raise the same exception (``FunctionError``'s remote type and traceback, ``EventAborted``'s reason)."""
    if isinstance(e, FunctionError):
        extra: dict[str, Any] = {"kind": "FunctionError", "request_id": e.request_id, "error_type": e.error_type,
                                 "error_message": e.error_message, "traceback": e.traceback}
        return {"error": {"code": e.code, "message": e.message, **extra}}
    if isinstance(e, EventAborted):
        return {"error": {"code": e.code, "message": e.message, "kind": "EventAborted",
                          "request_id": e.request_id, "reason": e.reason}}
    if isinstance(e, ScfError):
        return {"error": {"code": e.code, "message": e.message, "kind": "ScfError"}}
    if isinstance(e, TimeoutError):
        return {"error": {"code": "TimeoutError", "message": str(e), "kind": "TimeoutError"}}
    raise TypeError(f"not an error of the API: {e!r}")


def error_from(body: Mapping[str, Any]) -> Exception:
    """The exception an error answer's body (``error_json``) stands for."""
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping):
        return ScfError("InternalError", f"the server answered an error without a body: {body!r}"[:500])
    kind = err.get("kind")
    if kind == "FunctionError":
        return FunctionError(err["request_id"], err["error_type"], err["error_message"], err.get("traceback", ""))
    if kind == "EventAborted":
        return EventAborted(err["request_id"], err["reason"])
    if kind == "TimeoutError":
        return TimeoutError(err["message"])
    return ScfError(str(err.get("code", "InternalError")), str(err.get("message", "")))


# -- query strings -----------------------------------------------------------------------------------------------------
def query_value(raw: str) -> Any:
    """One query-string value as the REST API reads it: JSON where it parses as JSON (``20``, ``null``,
    ``["RUNNING", "FAILED"]``, ``"text"``), else the text itself (``RUNNING``, ``2024-01-01 00:00:00``)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except ValueError:
        return raw


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: text, not numbers


def query_text(value: Any) -> str:
    """A value as the HTTP client puts it in a query string, so that ``query_value`` gives it back: JSON, with
    datetimes (and pandas Timestamps) as ISO 8601 text, tuples and other iterables as lists."""
    return json.dumps(_jsonable(value), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [_jsonable(v) for v in value]
    return str(value)
