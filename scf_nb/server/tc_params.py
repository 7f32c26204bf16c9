"""Reading a TencentCloud API request's fields: each has a type, a missing required one is ``MissingParameter``
and a wrong type ``InvalidParameterValue.<Field>``, so no malformed value reaches the client API; and the code
of ``CreateFunction`` as SCF takes it, a base64 zip holding the module that ``Handler`` names."""

from __future__ import annotations

import base64
import binascii
import io
import zipfile
import zlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..core.errors import ScfError, invalid

MAX_SOURCE_BYTES = 10 * 1024 * 1024  # the handler's module, unpacked: a zip bomb stops here
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class Params:
    """The fields of one request body (a JSON object), read with their types checked."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body

    def _get(self, name: str, required: bool) -> Any:
        value = self.body.get(name)
        if value is None and required:
            raise ScfError("MissingParameter", f"the request needs {name}")
        return value

    def _typed(self, name: str, kind: type, what: str, default: Any, required: bool = False) -> Any:
        value = self._get(name, required)
        if value is None:
            return default
        if not isinstance(value, kind):
            raise invalid(name, f"{name} must be {what}, got {value!r}")
        return value

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        return self._typed(name, str, "a string", default, required)  # type: ignore[no-any-return]

    def needed(self, name: str) -> str:
        """A required string field."""
        value = self.text(name, required=True)
        assert value is not None
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.text(name, default)
        if value is not None and value not in choices:
            raise invalid(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        return self._typed(name, bool, "true or false", default)  # type: ignore[no-any-return]

    def integer(self, name: str, default: int | None = None, *, low: int = 0, high: int | None = None) -> int | None:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f"{low}-{high}" if high is not None else f">= {low}"
            raise invalid(name, f"{name} must be an integer {bounds}, got {value!r}")
        return value

    def texts(self, name: str) -> list[str] | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise invalid(name, f"{name} must be a list of strings, got {value!r}")
        return value

    def mapping(self, name: str) -> Params | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid(name, f"{name} must be an object, got {value!r}")
        return Params(value)

    def interval(self, name: str) -> tuple[float | None, float | None] | None:
        """A ``{Start, End}`` object of local ``YYYY-MM-DD HH:MM:SS`` times as epoch seconds (either may be
        missing); None when the field is absent."""
        window = self.mapping(name)
        if window is None:
            return None
        ends = []
        for side in ("Start", "End"):
            text = window.text(side)
            try:
                ends.append(None if text is None else datetime.strptime(text, TIME_FORMAT).timestamp())
            except ValueError:
                raise invalid("TimeInterval", f"{name}.{side} must read 'YYYY-MM-DD HH:MM:SS', got {text!r}") from None
        return ends[0], ends[1]


def environment(params: Params) -> dict[str, str] | None:
    """``Environment.Variables`` (``[{Key, Value}]``) as a dict; None when no Environment was sent."""
    env = params.mapping("Environment")
    if env is None:
        return None
    items = env.body.get("Variables") or []
    if not isinstance(items, list):
        raise invalid("Environment", f"Environment.Variables must be a list of {{Key, Value}}, got {items!r}")
    variables: dict[str, str] = {}
    for item in items:
        key, value = (item.get("Key"), item.get("Value")) if isinstance(item, dict) else (None, None)
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise invalid("Environment", f"each of Environment.Variables must be {{Key, Value}} with string "
                                         f"values, got {item!r}")
        variables[key] = value
    return variables


def split_handler(handler: str) -> tuple[str, str]:
    """``index.main_handler`` -> (``index``, ``main_handler``): the module (dots for folders) and the function."""
    module, _, function = handler.rpartition(".")
    parts = module.split(".")
    if not module or not function.isidentifier() or not all(p.isidentifier() for p in parts):
        raise invalid("Handler", f"Handler must read 'file.function' (e.g. index.main_handler), got {handler!r}")
    return module, function


def code_from_zip(zip_b64: str, handler: str) -> tuple[str, str]:
    """The source of the module ``handler`` names, from a base64 zip (``index.main_handler``: the file
    ``index.py`` at the zip's top; ``pkg.index.main_handler``: ``pkg/index.py``), and the function's name.

    Raises:
        ScfError: ``InvalidParameterValue.Handler``, ``.ZipFileBase64BinasciiError`` (not base64),
            ``.ZipFile`` (not a zip), ``.Code`` (no such file in it, too large, not UTF-8 text).
    """
    module, function = split_handler(handler)
    try:
        data = base64.b64decode(zip_b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid("ZipFileBase64BinasciiError", f"Code.ZipFile is not base64: {e}") from None
    path = module.replace(".", "/") + ".py"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            try:
                info = archive.getinfo(path)
            except KeyError:
                found = sorted(n for n in archive.namelist() if n.endswith(".py"))[:10]
                listed = f"; its Python files: {', '.join(found)}" if found else "; it holds no .py file"
                raise invalid("Code", f"Handler {handler!r} names {path}, which is not in Code.ZipFile{listed}"
                              ) from None
            if info.file_size > MAX_SOURCE_BYTES:
                raise invalid("Code", f"{path} is {info.file_size} bytes unpacked; at most {MAX_SOURCE_BYTES}")
            raw = archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, NotImplementedError) as e:
        raise invalid("ZipFile", f"Code.ZipFile is not a readable zip file: {e}") from None
    try:
        return raw.decode("utf-8"), function
    except UnicodeDecodeError as e:
        raise invalid("Code", f"{path} is not UTF-8 text: {e}") from None
