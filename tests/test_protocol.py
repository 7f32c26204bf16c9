"""The client protocol: ``Client`` implements it whole, ``Event`` needs nothing else (a second client made of
the protocol alone drives Events end to end on a real engine), and the module-level functions are real
functions with the protocol's signatures, each calling the one client ``scf_nb.api.client()`` chooses."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, wait_until

import scf_nb
from scf_nb import api
from scf_nb.clients.embedded import Client
from scf_nb.clients.events import Event
from scf_nb.clients.protocol import ClientProtocol, WaitResult, members

MEMBERS = members()
# the protocol's methods that are not module-level functions: the handle's own, and the client's life
NOT_MODULE_LEVEL = {"closed", "close", "event_status", "event_info", "wait_event", "event_result", "terminate_event",
                    "add_done_callback",  # the handle's own (Event.add_done_callback)
                    "stored_result"}  # for clients that decode a result in their own process (the HTTP client)

WORK = GATE + '''
def main_handler(event, context):
    print("starting", event["n"], flush=True)
    if event.get("gate"):
        wait_file(event["gate"])
    if event.get("fail"):
        raise ValueError("asked to fail")
    print("done", event["n"], flush=True)
    return {"n": event["n"], "pair": (1, 2)}
'''


class Relay:
    """A second client: each protocol method passes to a real client, and the Events it hands out are its
    own, so whatever they do comes back through it. It has no other attribute: an Event that reached for
    something outside the protocol would fail here."""

    def __init__(self, inner: ClientProtocol) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name not in MEMBERS:
            raise AttributeError(f"{name!r} is not part of the client protocol")
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return self._own(value(*args, **kwargs))
        return call

    def _own(self, value: Any) -> Any:
        if isinstance(value, Event):
            return Event(self, value.request_id, value.function_name)  # type: ignore[arg-type]
        if isinstance(value, WaitResult):
            return WaitResult([self._own(e) for e in value.done], [self._own(e) for e in value.not_done])
        return value

    def through(self, action: Callable[[], Any]) -> tuple[Any, list[str]]:
        """What ``action`` returns and the protocol methods it called on this client."""
        before = len(self.calls)
        value = action()
        return value, self.calls[before:]


def _params(fn: Callable[..., Any], drop_self: bool) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn, eval_str=True).parameters.values())
    return params[1:] if drop_self else params


def test_client_implements_the_whole_protocol_and_nothing_public_beside_it(scf: Any) -> None:
    client = scf.client()
    assert isinstance(client, Client) and isinstance(client, ClientProtocol)
    public = {name for name, value in vars(Client).items()
              if not name.startswith("_") and (callable(value) or isinstance(value, property))}
    assert public == set(MEMBERS)
    for name in MEMBERS:
        if name == "closed":
            assert isinstance(vars(Client)[name], property)
            continue
        mine, theirs = getattr(Client, name), getattr(ClientProtocol, name)
        assert _params(mine, True) == _params(theirs, True), name
        assert (inspect.signature(mine, eval_str=True).return_annotation
                == inspect.signature(theirs, eval_str=True).return_annotation), name
        assert mine.__doc__ and mine.__doc__ == theirs.__doc__, name  # the contract, written once
    assert not isinstance(object(), ClientProtocol)


def test_event_calls_only_the_protocol() -> None:
    """Read from the source: every ``self._client.X`` in events.py is a protocol member."""
    tree = ast.parse(Path(inspect.getfile(Event)).read_text())
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "_client"}
    assert used and used <= set(MEMBERS), used - set(MEMBERS)


def test_a_second_client_of_the_protocol_alone_drives_events_end_to_end(scf: Any, tmp_path: Path) -> None:
    relay = Relay(scf.client())
    assert isinstance(relay, ClientProtocol)
    relay.create_function("work", WORK, async_run=True)
    relay.create_function("quiet", WORK, async_run=True, trace=False)

    ev = relay.invoke("work", {"n": 1})
    assert ev.wait(timeout=60) == "FINISHED"
    value, calls = relay.through(ev.result)
    assert value == {"n": 1, "pair": (1, 2)} and calls == ["event_result"]
    status, calls = relay.through(lambda: ev.status)
    assert status == "FINISHED" and calls == ["event_status"]
    frame, calls = relay.through(lambda: ev.logs(since_seq=1))
    assert frame["line"].tolist() == ["done 1"] and calls == ["logs"]
    info, calls = relay.through(ev.info)
    assert info["status"] == "FINISHED" and info["error"] is None and calls == ["event_info"]
    assert repr(ev).endswith("work FINISHED>")
    lines, calls = relay.through(lambda: [line.line for line in ev.follow()])
    assert lines == ev.logs()["line"].tolist() and calls == ["follow"]
    seen: list[Any] = []
    _, calls = relay.through(lambda: ev.add_done_callback(seen.append))
    assert seen == [ev] and calls[0] == "add_done_callback"

    gate = str(tmp_path / "gate")
    held = relay.invoke("work", {"n": 2, "gate": gate})
    wait_until(lambda: held.status == "RUNNING", what="the gated event to run")
    status, calls = relay.through(held.terminate)
    assert status == "ABORTED" and calls == ["terminate_event"]
    with pytest.raises(scf.EventAborted):
        held.result(timeout=10)

    failed = relay.invoke("work", {"n": 3, "fail": True})
    with pytest.raises(scf.FunctionError, match="asked to fail"):
        failed.result(timeout=60)
    assert failed.info()["error"]["type"] == "ValueError"

    done, not_done = relay.wait([ev, failed.request_id], timeout=30)
    assert (done, not_done) == ([ev, failed], []) and all(isinstance(e, Event) for e in done)
    assert relay.through(lambda: relay.get_event(ev.request_id).status)[1] == ["get_event", "event_status"]

    # an untraced event's handle works through the protocol too, while the tracking views do not see it
    untraced = relay.invoke("quiet", {"n": 4, "gate": gate + "2"})
    wait_until(lambda: untraced.logs()["line"].tolist() == ["starting 4"], what="the untraced event's line")
    assert untraced.status == "RUNNING"
    (Path(gate + "2")).touch()
    assert untraced.result(timeout=60) == {"n": 4, "pair": (1, 2)}
    assert untraced.info()["traced"] is False
    with pytest.raises(scf.ScfError) as e:
        relay.get_event_status(untraced.request_id)
    assert e.value.code == "ResourceNotFound.AsyncEvent"


def test_module_functions_are_real_functions_with_the_protocol_signatures() -> None:
    module_level = sorted(scf_nb._API - {"configure", "client", "shutdown", "engine_info"})
    assert set(module_level) == set(MEMBERS) - NOT_MODULE_LEVEL
    for name in module_level:
        fn = getattr(scf_nb, name)
        assert inspect.isfunction(fn) and fn.__module__ == "scf_nb.api" and not hasattr(fn, "__wrapped__"), name
        code = fn.__code__  # what mypy reads: the function's own parameters, not a __signature__ laid over them
        own = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        assert list(own) == [p.name for p in _params(getattr(ClientProtocol, name), True)], name
        assert _params(fn, False) == _params(getattr(ClientProtocol, name), True), name
        assert (inspect.signature(fn, eval_str=True).return_annotation
                == inspect.signature(getattr(ClientProtocol, name), eval_str=True).return_annotation), name
        assert fn.__doc__ and fn.__doc__ == getattr(ClientProtocol, name).__doc__, name


def test_every_module_function_calls_the_client_that_client_chooses(scf: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    relay = Relay(scf.client())
    monkeypatch.setattr(api, "client", lambda: relay)
    scf.create_function("work", WORK, async_run=True)
    scf.publish_version("work")
    scf.get_function("work")
    scf.list_functions()
    ev = scf.invoke("work", {"n": 1})
    scf.wait([ev], timeout=60)
    scf.get_event(ev.request_id)
    scf.get_event_status(ev.request_id)
    scf.list_events(status="FINISHED")
    scf.count_events(status="FINISHED")
    scf.overview()
    scf.logs(ev.request_id)
    assert [line.line for line in scf.follow(ev.request_id)] == scf.logs(ev.request_id)["line"].tolist()
    scf.subscribe(lambda changes: None).close()
    scf.search_logs("done")
    scf.export(tmp_path / "export")
    scf.purge()
    held = scf.invoke("work", {"n": 2, "gate": str(tmp_path / "gate")})
    scf.terminate(held.request_id)
    scf.create_function("gone", WORK, async_run=True)
    scf.delete_function("gone")
    module_level = scf_nb._API - {"configure", "client", "shutdown", "engine_info"}
    assert module_level <= set(relay.calls), module_level - set(relay.calls)


def test_type_checkers_see_every_public_name_of_the_package() -> None:
    """``scf_nb`` loads its API lazily (``__getattr__``, typed ``Any``); its ``TYPE_CHECKING`` imports give
    mypy the real functions and types instead, and must name every one of them."""
    tree = ast.parse(Path(inspect.getfile(scf_nb)).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {alias.asname or alias.name for node in block.body if isinstance(node, ast.ImportFrom)
            for alias in node.names}
    assert seen == scf_nb._API | set(scf_nb._TYPES)
