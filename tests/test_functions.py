"""Function registration: code checks, the async lock and versions (no processes needed)."""

from __future__ import annotations

import pytest

from scf_nb.core.errors import ScfError
from scf_nb.core.functions import LATEST, Registry, make_function

OK = "def main_handler(event, context):\n    return event\n"


def fn(code: str = OK, **kw: object) -> object:
    args = dict(async_run=True, trace=True, timeout=None, concurrency=None, qps_limit=None,
                handler="main_handler", namespace="default", env=None, memory_mb=None, description="")
    args.update(kw)
    return make_function("f", code, **args)  # type: ignore[arg-type]


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(ScfError) as e:
        fn("import os\n\ndef main_handler(event, context)\n    return 1\n")
    assert e.value.code == "InvalidParameterValue.Code"
    assert "line 3" in e.value.message and "def main_handler(event, context)" in e.value.message


def test_missing_handler_lists_what_is_defined() -> None:
    with pytest.raises(ScfError) as e:
        fn("def handler(event, context):\n    return 1\n")
    assert e.value.code == "InvalidParameterValue.Handler"
    assert "'main_handler'" in e.value.message and "handler" in e.value.message


@pytest.mark.parametrize("code", [
    "from mymod import main_handler\n",
    "main_handler = lambda e, c: e\n",
    "try:\n    import x\nexcept ImportError:\n    def main_handler(e, c): return 1\n",
    "async def main_handler(e, c):\n    return 1\n",
])
def test_handler_may_be_defined_in_other_ways(code: str) -> None:
    assert fn(code).handler == "main_handler"  # type: ignore[attr-defined]


@pytest.mark.parametrize("kw, code", [
    ({"timeout": 0}, "InvalidParameterValue.Timeout"),
    ({"timeout": "10"}, "InvalidParameterValue.Timeout"),
    ({"concurrency": 1.5}, "InvalidParameterValue.Concurrency"),
    ({"memory_mb": -1}, "InvalidParameterValue.Memory_mb"),
    ({"env": {"": "x"}}, "InvalidParameterValue.Environment"),
    ({"namespace": "bad ns"}, "InvalidParameterValue.Namespace"),
    ({"handler": "not a name"}, "InvalidParameterValue.Handler"),
])
def test_bad_settings_are_refused(kw: dict[str, object], code: str) -> None:
    with pytest.raises(ScfError) as e:
        fn(**kw)
    assert e.value.code == code


def test_bad_function_name() -> None:
    with pytest.raises(ScfError) as e:
        make_function("1abc", OK, async_run=True, trace=True, timeout=None, concurrency=None, qps_limit=None,
                      handler="main_handler", namespace="default", env=None, memory_mb=None, description="")
    assert e.value.code == "InvalidParameterValue.FunctionName"


def test_async_is_locked_at_creation_and_versions_are_snapshots() -> None:
    reg = Registry()
    first = reg.put_latest(fn(), now=1.0)
    with pytest.raises(ScfError) as e:
        reg.put_latest(fn(async_run=False), now=2.0)
    assert e.value.code == "InvalidParameterValue.AsyncRunEnable"
    v1 = reg.publish("default", "f", "first", now=3.0)
    assert v1.version == "1" and v1.revision == first.revision
    second = reg.put_latest(fn("def main_handler(e, c):\n    return 2\n"), now=4.0)
    assert second.revision != first.revision and second.created_at == 1.0
    assert reg.get("default", "f", "1").code == OK
    assert reg.get("default", "f", LATEST).code != OK
    assert reg.publish("default", "f", "", now=5.0).version == "2"
    with pytest.raises(ScfError) as e:
        reg.get("default", "f", "9")
    assert e.value.code == "ResourceNotFound.Version"
    with pytest.raises(ScfError) as e:
        reg.get("default", "nope")
    assert e.value.code == "ResourceNotFound.Function"
