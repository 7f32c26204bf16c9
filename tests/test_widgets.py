"""The notebook views (``scf_nb.widgets``), in this process: what each widget shows after real engine changes
(loky instances, a DuckDB store), with no browser (ipywidgets' comms go nowhere, the widgets' state is all
here). Every view runs on a ``Relay``, a client made of the protocol alone that counts its calls: a view
reaching past the protocol would fail, and the counts show one subscription for all views."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, wait_until
from test_protocol import Relay

pytest.importorskip("ipywidgets")
from scf_nb.widgets import event_table, event_view, log_pane, overview_view  # noqa: E402
from scf_nb.widgets import logpane as logpane_module  # noqa: E402

WORK = GATE + '''
import signal
def main_handler(event, context):
    if event.get("sigterm"):
        signal.signal(signal.SIGTERM, lambda *a: (print("caught SIGTERM", flush=True), sys.exit(1)))
    for i in range(event.get("lines", 0)):
        print("out", i)
        if i % 3 == 0:
            print("err", i, file=sys.stderr)
    sys.stdout.flush()
    if event.get("gate"):
        wait_file(event["gate"])
    for i in range(event.get("after", 0)):
        print("after", i)
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"n": event.get("n", 0)}
'''


@pytest.fixture
def relay(scf: Any) -> Relay:
    r = Relay(scf.client())
    r.create_function("work", WORK, async_run=True, concurrency=2)
    return r


def badge(html: str) -> str | None:
    found = re.search(r'class="scf-badge" data-status="(\w+)"', html)
    return found.group(1) if found else None


def pane_lines(pane: Any) -> list[str]:
    return re.findall(r'<span class="scf-line scf-(\w+)">', pane.html.value)


def test_event_view_follows_an_event_to_its_end(relay: Relay, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ev = relay.invoke("work", {"lines": 6, "gate": str(gate), "n": 7})
    view = event_view(ev, client=relay)
    assert ev.request_id in view.header and "work" in view.header
    wait_until(lambda: badge(view.header) == "RUNNING", what="the badge to turn RUNNING by itself")
    wait_until(lambda: len(pane_lines(view.pane)) == 8, what="the log pane to show the lines printed so far")
    assert pane_lines(view.pane).count("stderr") == 2  # stdout and stderr told apart
    assert "err 3" in view.pane.html.value and "running" in view.header
    first = re.search(r'scf-elapsed">running ([^<]+)<', view.header).group(1)
    wait_until(lambda: re.search(r'scf-elapsed">running ([^<]+)<', view.header).group(1) != first,
               what="the elapsed time to move on")
    assert not view.finished and view.terminate_button.layout.display != "none"
    gate.write_text("")
    wait_until(lambda: view.finished, what="the finished notice")
    assert badge(view.header) == "FINISHED" and "finished:" in view.notice.value
    assert "{&#x27;n&#x27;: 7}" in view.outcome.value  # the result
    assert view._controls.layout.display == "none"  # no Terminate once it has ended
    wait_until(lambda: view.pane.ended, what="the pane to draw the last lines")
    assert ev.request_id not in {v.request_id for v in view._hub._listeners if hasattr(v, "request_id")}


def test_event_view_of_a_failed_event_shows_the_traceback(relay: Relay) -> None:
    ev = relay.invoke("work", {"fail": True, "lines": 1})
    view = event_view(ev.request_id, client=relay)
    wait_until(lambda: view.finished, what="the end of the failed event")
    assert badge(view.header) == "FAILED"
    assert "ValueError: asked to fail" in view.outcome.value
    assert "Traceback (most recent call last)" in view.outcome.value


def test_terminate_shows_its_pending_state_at_once_and_is_sent_once(relay: Relay, tmp_path: Path) -> None:
    ev = relay.invoke("work", {"gate": str(tmp_path / "never"), "sigterm": True, "lines": 1})
    view = event_view(ev, client=relay)
    wait_until(lambda: "out 0" in view.pane.html.value, what="the handler to run")
    view.graceful.value = True
    before = relay.calls.count("terminate_event")
    view.terminate_button.click()
    assert view.terminate_button.disabled and view.terminate_button.description == "terminating..."
    view.terminate_button.click()  # a second click, as one sent before the browser showed the first
    wait_until(lambda: view.finished, what="the aborted event's end")
    assert relay.calls.count("terminate_event") - before == 1
    assert badge(view.header) == "ABORTED"
    wait_until(lambda: "caught SIGTERM" in view.pane.html.value, what="the graceful SIGTERM's line")


def test_log_pane_is_bounded_sends_batches_and_reads_earlier_lines_back(relay: Relay, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ev = relay.invoke("work", {"lines": 2000, "gate": str(gate), "after": 300})
    wait_until(lambda: len(ev.logs()) >= 2667, what="the lines before the gate")  # 2000 out + 667 err
    pane = log_pane(ev.request_id, client=relay, max_lines=1000)
    values: list[str] = []
    pane.html.observe(lambda change: values.append(change["new"]), names="value")  # one message each
    wait_until(lambda: pane.window.last_seq == 2667, what="the stored lines")
    assert len(pane_lines(pane)) == 1000 and pane.window.first_shown == 1668
    assert "lines 1,668-2,667 of 2,667" in pane.html.value
    assert 1 <= len(values) <= 10, len(values)  # in batches, not one message per line

    pane.show_earlier()
    assert pane.window.first_shown == 668 and len(pane_lines(pane)) == 1000
    pane.show_earlier()
    assert pane.window.first_shown == 1 and len(pane_lines(pane)) == 667
    assert pane.earlier_button.disabled and not pane.latest_button.disabled
    gate.write_text("")  # new lines arrive while earlier ones are shown: the window stays
    assert ev.wait(60) == "FINISHED"
    wait_until(lambda: pane.ended and pane.window.last_seq == 2967, what="the lines after the gate")
    assert pane.window.first_shown == 1 and "2,967 received" in pane.html.value
    pane.show_latest()
    assert pane.window.first_shown == 1968 and "after 299" in pane.html.value
    assert len(pane_lines(pane)) == 1000


def test_views_show_the_whole_history_after_the_engine_restarted(scf: Any, home: Path, tmp_path: Path) -> None:
    relay = Relay(scf.client())
    relay.create_function("work", WORK, async_run=True)
    done = relay.invoke("work", {"lines": 30, "n": 1})
    assert done.wait(60) == "FINISHED"
    running = relay.invoke("work", {"lines": 3, "gate": str(tmp_path / "never")})
    wait_until(lambda: len(running.logs()) == 4, what="the running event's lines")
    scf.shutdown()  # the running event is stopped with its engine (FAILED EngineStopped)
    scf.configure(home=home)  # a new engine on the same store
    relay = Relay(scf.client())
    views = {}
    for rid, status, lines in ((done.request_id, "FINISHED", 40), (running.request_id, "FAILED", 4)):
        view = views[status] = event_view(rid, client=relay)
        wait_until(lambda v=view: v.finished and v.pane.ended, what="the view of an earlier engine's event")
        assert badge(view.header) == status and len(pane_lines(view.pane)) == lines
    assert "EngineStopped" in views["FAILED"].outcome.value


def rows_by_id(table: Any) -> dict[str, Any]:
    return {line.request_id: line for line in table.lines}


def buttons(table: Any) -> dict[str, Any]:
    """The Terminate buttons on the page, by RequestId."""
    return {line.request_id: line.terminate for line in table.lines if line.terminate is not None}


def test_event_table_pages_filters_terminates_and_opens_a_log(relay: Relay, tmp_path: Path) -> None:
    quick = [relay.invoke("work", {"n": i, "lines": 1}) for i in range(12)]
    relay.wait(quick, timeout=60)
    held = [relay.invoke("work", {"gate": str(tmp_path / f"g{i}"), "lines": 2}) for i in range(3)]
    wait_until(lambda: [e.status for e in held] == ["RUNNING", "RUNNING", "QUEUED"], what="two running, one queued")
    table = event_table(client=relay, page_size=10)
    assert len(table.page_frame) == 10 and not table.older.disabled and table.newer.disabled
    counts = dict(re.findall(r'data-status="(\w+)">([\d,]+)<', table.counts.value))
    assert counts == {"QUEUED": "1", "RUNNING": "2", "FINISHED": "12", "FAILED": "0", "ABORTED": "0"}
    rows = rows_by_id(table)
    assert set(buttons(table)) == {e.request_id for e in held}  # Terminate on the live rows only
    assert all(rows[rid].box.children[-1] is button for rid, button in buttons(table).items())
    assert held[2].request_id in rows[held[2].request_id].cells.value  # the whole RequestId

    table.older.click()
    assert len(table.page_frame) == 5 and table.older.disabled and "events 11-15" in table.page_label.value
    table.newer.click()
    table.status["RUNNING"].value = True
    table.status["QUEUED"].value = True
    assert set(table.page_frame.request_id) == {e.request_id for e in held}
    table.status["RUNNING"].value = False
    assert list(table.page_frame.request_id) == [held[2].request_id]
    table.status["QUEUED"].value = False
    table.request_id.value = quick[3].request_id
    assert list(table.page_frame.request_id) == [quick[3].request_id]
    table.request_id.value = ""
    table.since.value = "2999-01-01 00:00:00"
    assert table.page_frame.empty
    table.since.value = "not a time"
    assert "InvalidParameterValue.TimeInterval" in table.error.value
    table.since.value = ""
    assert table.error.value == "" and len(table.page_frame) == 10

    button = buttons(table)[held[2].request_id]
    button.click()
    assert button.disabled and button.description == "terminating..."
    button.click()
    assert relay.calls.count("terminate_event") == 1
    (tmp_path / "g0").write_text("")  # a sibling finishes meanwhile
    wait_until(lambda: "ABORTED" == rows_by_id(table)[held[2].request_id].status, what="the row to turn ABORTED")
    wait_until(lambda: "FINISHED" == rows_by_id(table)[held[0].request_id].status, what="the sibling to finish")
    assert held[2].request_id not in buttons(table) and len(rows_by_id(table)[held[2].request_id].box.children) == 2

    running = rows_by_id(table)[held[1].request_id]
    running.toggle.value = True  # select the row: its log pane opens below
    wait_until(lambda: table.pane is not None and len(pane_lines(table.pane)) == 3, what="the selected row's log")
    assert table.pane.request_id == held[1].request_id and "scf-selected" in running.cells.value
    (tmp_path / "g1").write_text("")
    wait_until(lambda: table.pane.ended, what="the selected event's end")
    table.close()


def test_one_subscription_for_every_view_and_idle_views_cost_nothing(relay: Relay, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ev = relay.invoke("work", {"gate": str(gate), "lines": 1})
    tables = [event_table(client=relay) for _ in range(3)]
    views = [event_view(ev, client=relay) for _ in range(2)]
    assert relay.calls.count("subscribe") == 1 and tables[0]._hub.subscribed
    gate.write_text("")
    assert ev.wait(60) == "FINISHED"
    wait_until(lambda: all(v.finished for v in views) and all(ev.request_id in t.page_frame.request_id.values
                                                              and t.page_frame.status.iloc[0] == "FINISHED"
                                                              for t in tables), what="every view to show the end")
    burst = [relay.invoke("work", {"n": i}) for i in range(40)]
    t0 = time.monotonic()
    relay.wait(burst, timeout=60)
    wait_until(lambda: all((t.page_frame.status == "FINISHED").all() for t in tables), what="the tables to catch up")
    elapsed = time.monotonic() - t0
    for t in tables:  # at most one refresh a second (plus the first, and the one the end brought)
        assert t.refreshes <= elapsed / 1.0 + 4, (t.refreshes, elapsed)
    hub = tables[0]._hub

    def settled() -> bool:  # a change committed during the last refresh brings one more, a second later
        turns = hub.turns
        time.sleep(1.2)
        return hub.turns == turns and hub.due() == 0
    wait_until(settled, what="the last refresh to be done")
    turns, refreshes = hub.turns, [t.refreshes for t in tables]
    time.sleep(2.0)  # an observation window: nothing changes, so nothing may run
    assert hub.turns == turns and [t.refreshes for t in tables] == refreshes
    for t in tables:
        t.close()
    assert not hub.subscribed  # the last view gone: the store's feed has no listener left


def test_a_table_no_browser_shows_waits_and_refreshes_when_shown_again(relay: Relay) -> None:
    table = event_table(client=relay)
    table.set_state({"_view_count": 1})  # what the front end sends when it draws the table
    table.set_state({"_view_count": 0})  # ... and when its output was cleared
    first = relay.invoke("work", {"n": 1})
    assert first.wait(60) == "FINISHED"
    wait_until(lambda: table._stale, what="the change to reach the hidden table")
    assert first.request_id not in table.page_frame.request_id.values
    table.set_state({"_view_count": 1})
    wait_until(lambda: first.request_id in table.page_frame.request_id.values, what="the refresh once shown")
    table.close()


def test_overview_view_draws_counts_and_pictures(relay: Relay) -> None:
    relay.wait([relay.invoke("work", {"n": i}) for i in range(5)] + [relay.invoke("work", {"fail": True})],
               timeout=60)
    box = overview_view(client=relay)
    counts, picture = box.children
    assert 'data-status="FINISHED"' in counts.value and "<td>5</td>" in counts.value
    assert picture.value[:8] == b"\x89PNG\r\n\x1a\n" and len(picture.value) > 10_000


def test_bad_arguments_are_scf_errors(relay: Relay) -> None:
    from scf_nb import ScfError

    with pytest.raises(ScfError, match="ResourceNotFound.AsyncEvent"):
        event_view("00000000-0000-4000-8000-000000000000", client=relay)
    with pytest.raises(ScfError, match="ResourceNotFound.AsyncEvent"):
        log_pane("nope", client=relay)
    with pytest.raises(ScfError, match="InvalidParameterValue.Limit"):
        event_table(client=relay, page_size=0)
    with pytest.raises(ScfError, match="InvalidParameterValue.Status"):
        event_table(client=relay, status=["BOGUS"])


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"status": "NOPE"}, "Status"), ({"order": "sideways"}, "Order"), ({"since": "x"}, "TimeInterval"),
    ({"until": "x"}, "TimeInterval"), ({"function": 123}, "Function"), ({"max_lines": -5}, "MaxLines"),
    ({"max_lines": 0}, "MaxLines")])
def test_a_bad_view_argument_raises_the_error_list_events_gives(scf: Any, kwargs: dict[str, Any],
                                                                 code: str) -> None:
    from scf_nb import ScfError

    relay = Recording(scf.client())
    if "max_lines" in kwargs:
        for make in (log_pane, event_view):
            with pytest.raises(ScfError, match=f"InvalidParameterValue.{code}"):
                make("00000000-0000-4000-8000-000000000000", client=relay, **kwargs)
        return
    with pytest.raises(ScfError) as raised:
        event_table(client=relay, **kwargs)
    if code == "Function":
        assert raised.value.code == "InvalidParameterValue.Function" and "got 123" in str(raised.value)
        return
    list_args = {"start_time": (kwargs.pop("since", None), kwargs.pop("until", None))} if (
        "since" in kwargs or "until" in kwargs) else kwargs
    with pytest.raises(ScfError) as expected:
        relay.list_events(**list_args)
    assert raised.value.code == expected.value.code == f"InvalidParameterValue.{code}"
    assert "subscribe" not in relay.calls  # no view was built


def test_a_table_takes_epoch_seconds_and_datetimes_as_times(relay: Relay) -> None:
    from datetime import datetime, timedelta

    ev = relay.invoke("work", {})
    assert ev.wait(60) == "FINISHED"
    started = relay.list_events(request_id=ev.request_id).start_time.iloc[0].to_pydatetime()
    for since, found in ((started.timestamp(), True), (started + timedelta(seconds=1), False),
                         (datetime.fromtimestamp(started.timestamp() - 60), True)):
        table = event_table(client=relay, since=since)
        assert (ev.request_id in table.page_frame.request_id.values) is found, (since, table.error.value)
        table._on_filter(None)  # the filters read back from the text boxes: the same time
        assert not table.error.value and (ev.request_id in table.page_frame.request_id.values) is found
        table.close()


def test_flush_interval_bounds_the_messages_of_a_fast_log(relay: Relay, tmp_path: Path) -> None:
    """A handler printing as fast as it can for ~1 s: the pane's value changes at most 1/FLUSH_S a second."""
    relay.create_function("fast", "import time\ndef main_handler(event, context):\n"
                                  "    end = time.time() + 1.0\n    i = 0\n    while time.time() < end:\n"
                                  "        print('line', i); i += 1\n    return i\n", async_run=True)
    ev = relay.invoke("fast")
    pane = log_pane(ev.request_id, client=relay)
    values: list[float] = []
    pane.html.observe(lambda change: values.append(time.monotonic()), names="value")
    n = ev.result(timeout=60)
    wait_until(lambda: pane.ended, what="the pane to reach the end")
    assert pane.window.last_seq == n
    gaps = [b - a for a, b in itertools.pairwise(values)]
    assert len(values) <= 2 / logpane_module.FLUSH_S + 3, len(values)
    assert all(g >= logpane_module.FLUSH_S * 0.9 for g in gaps[:-1]), gaps  # the last one: the end's


def test_ipywidgets_is_imported_only_by_the_widgets_package() -> None:
    from test_layering import PACKAGE, loaded_after

    importers = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                       if re.search(r"^\s*(import|from)\s+ipywidgets\b", p.read_text(), re.MULTILINE))
    assert importers and all(name.startswith("widgets/") for name in importers), importers
    assert loaded_after("import scf_nb, scf_nb.api, scf_nb.magics", ["ipywidgets", "matplotlib"]) == []


def test_a_terminate_button_stops_the_event_it_was_drawn_for_when_the_rows_moved(relay: Relay, tmp_path: Path) -> None:
    older = relay.invoke("work", {"gate": str(tmp_path / "never1")})
    wait_until(lambda: older.status == "RUNNING", what="the first event to run")
    table = event_table(client=relay)
    button = buttons(table)[older.request_id]
    assert rows_by_id(table)[older.request_id] is table.lines[0]
    newer = relay.invoke("work", {"gate": str(tmp_path / "never2")})  # it takes the first line
    wait_until(lambda: table.lines[0].request_id == newer.request_id, what="the rows to move")
    assert table.lines[1].box.children[-1] is button and buttons(table)[newer.request_id] is not button
    button.click()  # the click of a user who aimed at the older event before the rows moved
    assert older.wait(30) == "ABORTED" and newer.status == "RUNNING"
    newer.terminate()
    table.close()


def test_the_views_thread_ends_once_no_view_is_left(relay: Relay, monkeypatch: Any) -> None:
    import threading

    from scf_nb.widgets import hub as hub_module

    monkeypatch.setattr(hub_module, "IDLE_EXIT_S", 0.2)
    ev = relay.invoke("work", {"lines": 2})
    view = event_view(ev, client=relay)
    table = event_table(client=relay)
    wait_until(lambda: view.finished and view.pane.ended, what="the view to show the end")
    hub = table._hub
    assert hub._thread is not None and hub._thread.is_alive()
    thread = hub._thread
    table.close()
    view.close()
    wait_until(lambda: not thread.is_alive(), what="the views' thread to end")
    assert not hub.subscribed and thread not in threading.enumerate()
    table = event_table(client=relay)  # a new view: its turns come from a new thread
    assert relay.invoke("work").wait(60) == "FINISHED"
    wait_until(lambda: table.refreshes >= 2, what="the new table's refresh")
    assert hub._thread is not None and hub._thread is not thread
    table.close()


class LateSubscriber(Relay):
    """A client whose ``subscribe`` lets something happen first (as a round trip to a server would): the
    view's first read is then older than the moment it starts listening."""

    def __init__(self, inner: Any, meanwhile: Any) -> None:
        super().__init__(inner)
        self._meanwhile = meanwhile

    def subscribe(self, fn: Any) -> Any:
        self._meanwhile()
        return self.__getattr__("subscribe")(fn)


def test_a_change_committed_before_a_view_listens_is_not_missed(scf: Any, tmp_path: Path) -> None:
    relay = Relay(scf.client())
    relay.create_function("one", WORK, async_run=True, concurrency=1)
    first = relay.invoke("one", {"gate": str(tmp_path / "first")})
    wait_until(lambda: first.status == "RUNNING", what="the first event to run")
    second = relay.invoke("one", {"gate": str(tmp_path / "second")})  # QUEUED behind it

    def second_starts_and_is_committed() -> None:
        (tmp_path / "first").write_text("")
        wait_until(lambda: list(relay.list_events(request_id=second.request_id).status) == ["RUNNING"],
                   what="the second event to run")

    view = event_view(second.request_id, client=LateSubscriber(scf.client(), second_starts_and_is_committed))
    wait_until(lambda: badge(view.header) == "RUNNING", what="the view to see the change made before it listened")
    (tmp_path / "second").write_text("")
    wait_until(lambda: view.finished, what="the end")

    blocker = relay.invoke("one", {"gate": str(tmp_path / "blocker")})
    wait_until(lambda: blocker.status == "RUNNING", what="the blocker to run")
    third = relay.invoke("one", {"gate": str(tmp_path / "third")})

    def third_starts_and_is_committed() -> None:
        (tmp_path / "blocker").write_text("")
        wait_until(lambda: list(relay.list_events(request_id=third.request_id).status) == ["RUNNING"],
                   what="the third event to run")

    table = event_table(client=LateSubscriber(scf.client(), third_starts_and_is_committed))
    wait_until(lambda: table.page_frame.status.iloc[0] == "RUNNING", what="the table to see the change")
    (tmp_path / "third").write_text("")
    assert third.wait(60) == "FINISHED"
    table.close()


class Recording(Relay):
    """A Relay that also keeps the keyword arguments of each ``follow`` and ``logs`` call."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.kwargs: list[tuple[str, dict[str, Any]]] = []

    def follow(self, request_id: str, **kwargs: Any) -> Any:
        self.kwargs.append(("follow", kwargs))
        return self.__getattr__("follow")(request_id, **kwargs)

    def logs(self, request_id: str, **kwargs: Any) -> Any:
        self.kwargs.append(("logs", kwargs))
        return self.__getattr__("logs")(request_id, **kwargs)


def test_event_info_gives_the_last_log_seq_live_and_ended(relay: Relay, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ev = relay.invoke("work", {"lines": 9, "gate": str(gate), "after": 5})
    wait_until(lambda: len(ev.logs()) == 12, what="the lines before the gate")  # 9 out + 3 err
    assert ev.info()["log_seq"] == 12  # live: from the engine's memory
    gate.write_text("")
    assert ev.wait(60) == "FINISHED"
    assert ev.info()["log_seq"] == 17  # ended: from the store
    silent = relay.invoke("work", {})
    assert silent.wait(60) == "FINISHED" and silent.info()["log_seq"] == 0


def test_a_pane_on_a_long_log_starts_near_its_end(scf: Any) -> None:
    relay = Recording(scf.client())
    relay.create_function("work", WORK, async_run=True)
    ev = relay.invoke("work", {"lines": 3000})  # 3000 out + 1000 err
    assert ev.wait(60) == "FINISHED"
    pane = log_pane(ev.request_id, client=relay, max_lines=100)
    wait_until(lambda: pane.ended, what="the pane to reach the end")
    assert relay.kwargs == [("follow", {"since_seq": 3900})]  # not every stored line, only the window's
    assert pane.window.first_shown == 3901 and pane.window.last_seq == 4000 and len(pane_lines(pane)) == 100
    pane.show_earlier()
    assert pane.window.first_shown == 3801 and len(pane_lines(pane)) == 100
    assert relay.kwargs[-1] == ("logs", {"since_seq": 3800, "stream": None, "limit": 100})  # the window only
    frame = relay.logs(ev.request_id, since_seq=10, limit=5)
    assert frame.seq.tolist() == [11, 12, 13, 14, 15]
    assert relay.logs(ev.request_id, stream="stderr", limit=2).line.tolist() == ["err 0", "err 3"]
    pane.close()


def test_a_hidden_pane_collects_lines_without_drawing_and_draws_them_when_shown(relay: Relay, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ev = relay.invoke("work", {"lines": 3, "gate": str(gate), "after": 50})
    pane = log_pane(ev.request_id, client=relay, max_lines=20)
    wait_until(lambda: pane.window.last_seq == 4, what="the first lines")
    wait_until(lambda: len(pane_lines(pane)) == 4, what="the first lines drawn")
    pane.set_state({"_view_count": 1})  # what the front end sends when it draws the pane
    pane.set_state({"_view_count": 0})  # ... and when its output was cleared
    messages = pane.messages
    gate.write_text("")
    assert ev.wait(60) == "FINISHED"
    wait_until(lambda: pane.window.last_seq == 54, what="the lines to reach the hidden pane")
    assert pane.messages == messages and len(pane_lines(pane)) == 4 and not pane.ended  # nothing drawn
    assert len(pane.window.tail) == 20  # bounded while hidden
    pane.set_state({"_view_count": 1})
    wait_until(lambda: pane.ended, what="the pane to draw once shown")
    assert len(pane_lines(pane)) == 20 and "after 49" in pane.html.value and pane.messages == messages + 1
    pane.close()


class FailingTerminate(Relay):
    """A client whose terminate request fails once, as a request to a server that went away does."""

    failures = 1

    def terminate_event(self, request_id: str, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the server went away")
        return self.__getattr__("terminate_event")(request_id, **kwargs)


def test_a_failed_terminate_request_can_be_sent_again(scf: Any, tmp_path: Path) -> None:
    relay = FailingTerminate(scf.client())
    relay.create_function("work", WORK, async_run=True, concurrency=2)
    one, two = (relay.invoke("work", {"gate": str(tmp_path / "never"), "lines": 1}) for _ in range(2))
    view = event_view(one, client=relay)
    wait_until(lambda: "out 0" in view.pane.html.value, what="the handler to run")
    view.terminate_button.click()
    assert "ConnectionError: the server went away" in view.notice.value
    assert not view.terminate_button.disabled and view.terminate_button.description == "Terminate"
    view.terminate_button.click()
    wait_until(lambda: view.finished, what="the second request to stop it")
    assert badge(view.header) == "ABORTED"

    relay.failures = 1
    table = event_table(client=relay)
    wait_until(lambda: two.request_id in buttons(table), what="the live row's button")
    button = buttons(table)[two.request_id]
    button.click()
    assert "ConnectionError" in table.error.value and not button.disabled and button.description == "Terminate"
    button.click()
    assert two.wait(60) == "ABORTED"
    table.close()
    view.close()


def test_a_log_toggle_opens_the_event_it_was_drawn_for_when_the_rows_moved(relay: Relay) -> None:
    """What a browser does, message for message: it applies a redraw of a line (its jsdlink then sends the
    line's cells as the toggle's ``drawn``), and a click sends the toggle's value. A click sent before the
    browser applied a move of the rows comes with the ``drawn`` of the rows before it."""
    older = relay.invoke("work", {"lines": 1})
    assert older.wait(60) == "FINISHED"
    table = event_table(client=relay)
    line = table.lines[0]
    assert line.request_id == older.request_id
    line.toggle.set_state({"drawn": line.cells.value})  # the browser drew the older event on the first line
    newer = relay.invoke("work", {"lines": 2})
    assert newer.wait(60) == "FINISHED"
    # (the line itself: the page's frame is read before its lines are drawn, on the hub's thread)
    wait_until(lambda: line.request_id == newer.request_id and newer.request_id in line.cells.value,
               what="the rows to move")
    line.toggle.set_state({"value": True})  # the click, sent before the browser applied the move
    assert table.pane is not None and table.pane.request_id == older.request_id
    assert rows_by_id(table)[older.request_id].toggle.value is True
    assert rows_by_id(table)[newer.request_id].toggle.value is False

    moved = rows_by_id(table)[newer.request_id]  # (the first line, now showing the newer event)
    moved.toggle.set_state({"drawn": moved.cells.value})  # the browser applied the move: its copy came first
    moved.toggle.set_state({"value": True})
    assert table.pane.request_id == newer.request_id
    assert rows_by_id(table)[newer.request_id].toggle.value is True
    assert rows_by_id(table)[older.request_id].toggle.value is False
    moved.toggle.set_state({"value": False})  # clicked again: unselected, the pane closes
    assert table.pane is None and not any(line.toggle.value for line in table.lines)
    table.close()


def test_a_pane_of_one_stream_shows_only_its_lines_and_reads_earlier_ones_of_it(relay: Relay) -> None:
    from scf_nb import ScfError

    ev = relay.invoke("work", {"lines": 300})  # 300 out, 100 err
    assert ev.wait(60) == "FINISHED"
    stored = ev.logs()
    pane = log_pane(ev.request_id, client=relay, max_lines=30, stream="stderr")
    wait_until(lambda: pane.ended, what="the pane to reach the end")
    expected = stored[(stored.seq > 370) & (stored.stream == "stderr")].seq.tolist()  # of the last 30 lines
    assert [line.seq for line in pane.window.shown] == expected and pane.window.last_seq == 400
    assert set(pane_lines(pane)) <= {"stderr"}
    for _ in range(20):
        pane.show_earlier()
    assert set(pane_lines(pane)) == {"stderr"} and "</span> err 0</span>" in pane.html.value
    first = stored[stored.stream == "stderr"].seq.iloc[0]
    assert pane.window.first_shown == first
    with pytest.raises(ScfError, match="InvalidParameterValue.Stream"):
        log_pane(ev.request_id, client=relay, stream="both")
    pane.close()
