"""What a handler returned, kept two ways: a JSON text for every view of the event (the store's ``result``
column, ``export``, later the REST and TencentCloud-style APIs), and, when JSON alone would not give the value
back (a tuple, a set, numpy and pandas values, non-string keys, ...), a pickle of the value itself, so that
``result()`` in Python returns what the handler returned.

``encode`` runs in the instance, ``decode`` in the caller of ``result()``. This module is imported at every
cold start, so it imports nothing heavy: numpy and pandas values are recognised by their type's module and
converted through their own methods, never by importing those packages here.
"""

from __future__ import annotations

import binascii
import enum
import json
import math
import os
import pickle
import sys
import warnings
from typing import Any

PROTOCOL = 5
# Stored instead of a pickle when the value is not plain JSON but none could be kept: this byte, then why (in
# UTF-8). A pickle never starts with it (protocol 2 and later start with PROTO, 0x80).
NOT_KEPT = b"\x00"
_SCALARS = frozenset({str, int, float, bool, type(None)})
_NESTS = _SCALARS | {list, dict}
_FALLBACK_NOTE = "scf_nb: the return value is kept as JSON only: {why}. result() gives its JSON form{lossy}"
_LOSSY_NOTE = ("scf_nb: the return value's JSON form (the store's result column, export) has repr() text for: "
               "{names}; a pickle of the value is kept beside it for result()")


class ResultWarning(UserWarning):
    """``result()`` could not give back the handler's value itself and returned its JSON form instead."""


def is_plain(value: Any) -> bool:
    """Whether ``value`` is made of exactly JSON's types (dicts with string keys, lists, str, int, float, bool,
    None), so that its JSON text gives it back unchanged. Costs a type check per element, in C for flat data."""
    t = type(value)
    if t is dict:
        if value and set(map(type, value)) != {str}:
            return False
        items: Any = value.values()
    elif t is list:
        items = value
    else:
        return t in _SCALARS
    types = set(map(type, items))
    if types <= _SCALARS:
        return True
    if not types <= _NESTS:
        return False
    return all(is_plain(v) for v in items if type(v) is dict or type(v) is list)


def encode(value: Any, local_module: str | None = None) -> tuple[str, bytes | None, list[str]]:
    """The JSON text of ``value``; its pickle when JSON would not give it back (None when it would, or
    ``NOT_KEPT`` and the reason when it cannot be); the lines to log about what either form could not keep.

    Args:
        local_module: the module the function's code runs as; a pickle that refers to it (a class defined in
            that code) can only be loaded in the instance, so none is kept.
    """
    try:
        if is_plain(value):
            return json_text(value), None, []
    except (RecursionError, ValueError):  # nested too deep, circular, or a float NaN/infinity: the slow path
        pass
    view = JsonView()
    text = view.dumps(value)
    blob, why = _pickle(value, local_module)
    lossy = ", ".join(sorted(view.lossy))
    if blob is not None:
        return text, blob, [_LOSSY_NOTE.format(names=lossy)] if lossy else []
    note = _FALLBACK_NOTE.format(why=why, lossy=f", which has repr() text for: {lossy}" if lossy else "")
    return text, NOT_KEPT + why.encode("utf-8", "backslashreplace"), [note]


def json_text(data: Any) -> str:
    """The JSON text (RFC 8259: no NaN or Infinity) of data made of JSON's types, valid as UTF-8: a lone
    surrogate, which UTF-8 cannot hold (DuckDB refuses it), is written as its ``\\u`` escape.

    Raises:
        ValueError: a float in it is NaN or infinite.
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(data, allow_nan=False)
    return text


def decode(text: str | None, blob: bytes | None, request_id: str) -> Any:
    """The value ``encode`` made ``text`` and ``blob`` from: the value itself where it can be unpickled here,
    else its JSON form, with a ``ResultWarning`` that says why."""
    if blob is None:
        return None if text is None else json.loads(text)
    if blob[:1] == NOT_KEPT:
        why = blob[1:].decode("utf-8", "replace")
    else:
        try:
            return pickle.loads(blob)
        except Exception as e:  # a module missing here (numpy not installed, a class of the function's code)
            why = f"unpickling it here failed: {type(e).__name__}: {e}"
            if isinstance(e, ImportError) and (e.name or "").startswith("scf_function_"):
                why += " (a class defined in the function's code is known only to its instance)"
    warnings.warn(f"scf_nb: event {request_id}: the return value cannot be given back as a Python object "
                  f"({why}); this is its JSON form", ResultWarning, stacklevel=4)
    return None if text is None else json.loads(text)


def _pickle(value: Any, local_module: str | None) -> tuple[bytes | None, str]:
    try:
        blob = pickle.dumps(value, PROTOCOL)
    except Exception as e:  # whatever pickling raises (TypeError, PicklingError, RecursionError, ...)
        return None, f"it cannot be pickled: {type(e).__name__}: {e}"
    local = _globals_of(blob, local_module) if local_module and local_module.encode() in blob else []
    if local:
        return None, (f"it holds {', '.join(local)}, defined in the function's code, which only its instance can "
                      f"load")
    return blob, ""


def _globals_of(blob: bytes, module: str) -> list[str]:
    """The names of the globals of ``module`` that the pickle loads (classes, functions); none when it merely
    holds the module's name as data."""
    import pickletools  # only when the module's name is in the bytes at all

    names: set[str] = set()
    after_module = False
    for op, arg, _pos in pickletools.genops(blob):
        if op.name in ("GLOBAL", "INST") and str(arg).split(" ")[0] == module:
            names.add(str(arg).split(" ", 1)[-1])
        elif "UNICODE" in op.name:  # STACK_GLOBAL's module string, then its name string
            if after_module:
                names.add(str(arg))
            after_module = arg == module
    return sorted(names)


def _finite(data: Any) -> Any:
    """JSON data with null for each float that is NaN or infinite."""
    t = type(data)
    if t is float:
        return data if math.isfinite(data) else None
    if t is list:
        return [_finite(v) for v in data]
    if t is dict:
        return {k: _finite(v) for k, v in data.items()}
    return data


class JsonView:
    """Turns any value into JSON data without dropping any part of it: numpy scalars -> numbers, arrays ->
    nested lists, DataFrame/Series -> ``{"index", "columns", "data"}`` / ``{"name", "index", "data"}``,
    tuples and sets -> lists (sets sorted when they can be), datetimes -> ISO text, timedeltas -> seconds,
    Decimal -> text, bytes -> base64 text, enums -> their value, dataclasses -> their fields, non-string keys
    -> their JSON text (a dict whose keys would then collide -> a list of ``[key, value]`` pairs), NaN and
    infinities -> null (JSON has no such numbers); anything else -> its ``repr()``, its type named in
    ``lossy``."""

    def __init__(self) -> None:
        self.lossy: set[str] = set()
        self._path: set[int] = set()  # containers being converted: a value inside itself is a cycle

    def dumps(self, value: Any) -> str:
        try:
            data = self.convert(value)
        except RecursionError:
            self.lossy.add("a value nested too deep")
            data = self._repr(value)
        except Exception:  # a container changed while it was read (another thread): never fail the event here
            data = self._repr(value)
        try:
            return json_text(data)
        except ValueError:  # NaN or infinity, which JSON has no number for: null, as pandas' to_json writes
            return json_text(_finite(data))

    def convert(self, x: Any) -> Any:
        t = type(x)
        if t in _SCALARS:
            return x
        if isinstance(x, (dict, list, tuple, set, frozenset)):
            if id(x) in self._path:
                self.lossy.add("a circular reference")
                return "<circular reference>"
            self._path.add(id(x))
            try:
                return self._dict(x) if isinstance(x, dict) else self._sequence(x)
            finally:
                self._path.discard(id(x))
        module = t.__module__ or ""
        if module == "numpy" or module.startswith("numpy."):
            return self._numpy(x)
        if module == "pandas" or module.startswith("pandas."):
            return self._pandas(x)
        return self._other(x, t, module)

    def _dict(self, d: dict[Any, Any]) -> Any:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = k if type(k) is str else self._key(k)
            if key in out:  # two keys with one JSON text: keep both, as pairs
                return [[self.convert(k), self.convert(v)] for k, v in d.items()]
            out[key] = v if type(v) in _SCALARS else self.convert(v)
        return out

    def _key(self, k: Any) -> str:
        v = self.convert(k)
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

    def _sequence(self, seq: Any) -> list[Any]:
        if isinstance(seq, (set, frozenset)):
            try:
                seq = sorted(seq)
            except TypeError:  # mixed types: their own order
                pass
        if type(seq) is list and set(map(type, seq)) <= _SCALARS:
            return seq
        return [v if type(v) in _SCALARS else self.convert(v) for v in seq]

    def _numpy(self, x: Any) -> Any:
        kind = getattr(getattr(x, "dtype", None), "kind", "")
        try:
            if kind == "M":  # datetime64: tolist() would give integers of nanoseconds
                return self.convert(x.astype(str).tolist())
            if kind == "m":
                np = sys.modules["numpy"]
                return self.convert((x / np.timedelta64(1, "s")).tolist())
            if hasattr(x, "tolist"):  # scalars -> Python numbers, arrays -> nested lists
                return self.convert(x.tolist())
        except Exception:
            pass
        return self._repr(x)

    def _pandas(self, x: Any) -> Any:
        name = type(x).__name__
        try:
            if name in ("NaTType", "NAType"):
                return None
            if name == "DataFrame":
                return self.convert(x.to_dict(orient="split"))
            if name == "Series":
                return self.convert({"name": x.name, "index": x.index.tolist(), "data": x.tolist()})
            if hasattr(x, "isoformat"):  # Timestamp
                return x.isoformat()
            if hasattr(x, "total_seconds"):  # Timedelta
                return x.total_seconds()
            if hasattr(x, "tolist"):  # Index, Categorical, extension arrays
                return self.convert(x.tolist())
        except Exception:
            pass
        return self._repr(x)

    def _other(self, x: Any, t: type, module: str) -> Any:
        try:
            if isinstance(x, enum.Enum):
                return self.convert(x.value)
            for base in (bool, int, float, str):
                if isinstance(x, base):
                    return base(x)
            if isinstance(x, (bytes, bytearray, memoryview)):
                return binascii.b2a_base64(bytes(x), newline=False).decode("ascii")
            if module == "datetime":
                return x.total_seconds() if hasattr(x, "total_seconds") else x.isoformat()
            if module in ("decimal", "uuid", "fractions", "ipaddress"):
                return str(x)
            if isinstance(x, os.PathLike):
                return os.fspath(x)
            if hasattr(t, "__dataclass_fields__") and not isinstance(x, type):
                return {f: self.convert(getattr(x, f)) for f in t.__dataclass_fields__}
            if isinstance(x, range) or type(x).__name__ == "deque":
                return self._sequence(list(x))
        except Exception:
            pass
        return self._repr(x)

    def _repr(self, x: Any) -> str:
        self.lossy.add(type(x).__qualname__)
        try:
            return repr(x)
        except Exception as e:
            return f"<{type(x).__qualname__} object: repr() failed: {type(e).__name__}>"
