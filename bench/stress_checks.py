"""The checks of ``stress.py``, all from what the public API and the handler's own start records say.

Violations (each makes the run fail):
- not ended: an event still QUEUED or RUNNING after every gate was released and everything waited for;
- lost: an invoked event that ``info()`` or ``list_events`` does not know, or whose status differs there;
- status: a status (and error type) its kind cannot end with: ABORTED only if it was terminated; FAILED
  TimeoutError only for the timeout kind, MemoryLimitExceeded only for the memory kind; FAILED InstanceDied
  only if its process was SIGKILLed from outside;
- ran twice / ran after abort: an event that started twice, or started although ABORTED while queued;
- result: a FINISHED event whose result names another RequestId or another process than ``instance_pid``;
- kill: one SIGKILL from outside that failed more than one event, or an event that had not started (or had
  ended: a later one started on that process), or a failure that does not name the signal;
- logs: a line of another event (or not ours) in an event's log, on the wrong stream, out of order or with a
  gap; an event that ran to its end without all its lines, or that never ran with some;
- order (run_time): per function, an event whose ``run_time`` is before an older event's;
- order (instance): per function, the handler's own start (``time.time()``) of an older event after a newer
  one's on the same process (any), or on another process by more than ``GROSS_S``; but when the older one's
  run_time (the moment its instance claimed it) is in order and the time from it to the handler's start
  covers the whole gap, the lag is the instance's own after its claim (a cold start, or a process the
  machine did not run for some ms): that is info, "lag after the claim";
- timeout: an event that timed out without its handler ever starting;
- run_time: an event whose ``run_time`` is after its handler started (by more than ``CLOCK_SLACK_S``);
- free capacity: an event waited more than ``FREE_WAIT_S`` while an instance of its function was idle (one
  whose last event FINISHED, before its next start).
Informational: small cross-process start inversions, run_time -> handler start lags, shorter waits with room.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import scf_nb
from scf_nb.core.errors import ScfError

GROSS_S = 0.005  # an older event starting this much after a newer one on another process is a violation
NOISE_S = 0.001  # below this, start inversions across processes are scheduling noise (not even reported)
EQUAL_S = 2e-6  # timestamps go through datetime/TIMESTAMPTZ: microseconds
CLOCK_SLACK_S = 0.002
FREE_WAIT_S = 0.25  # an event waiting this long while an instance of its function is idle is a violation
FREE_INFO_S = 0.1
NATURAL = {"noop": ("FINISHED", None), "sleep": ("FINISHED", None), "chatty": ("FINISHED", None),
           "long": ("FINISHED", None), "raise": ("FAILED", "ValueError"), "timeout": ("FAILED", "TimeoutError"),
           "memory": ("FAILED", "MemoryLimitExceeded")}
SHOW = 25  # violations printed per class (all are in the JSON)


@dataclass
class Report:
    summary: dict[str, Any] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)
    info: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # what is known of each event a violation names

    def bad(self, cls: str, text: str) -> None:
        self.violations.append((cls, text))

    def note(self, cls: str, text: str) -> None:
        self.info.append((cls, text))

    def as_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "violations": self.violations, "info": self.info,
                "details": self.details}

    def print(self) -> None:
        s = self.summary
        print(f"stress: seed {s.get('seed')}, {s.get('events_invoked')} events invoked "
              f"({'all' if s.get('invoked_all') else 'TIME LIMIT before all'} of {s.get('events_asked')}), "
              f"{s.get('run_s')} s, scf_nb from {s.get('scf_nb')}")
        print("functions:", ", ".join(f"{n} (concurrency {f['concurrency']}, timeout {f['timeout']:g} s)"
                                      for n, f in s.get("functions", {}).items()))
        for key in ("statuses", "counts", "checked", "lags"):
            if key in s:
                print(f"{key}: " + ", ".join(f"{k} {v}" for k, v in s[key].items()))
        by_cls: dict[str, list[str]] = defaultdict(list)
        for cls, text in self.info:
            by_cls[cls].append(text)
        for cls, texts in by_cls.items():
            print(f"info [{cls}] x{len(texts)}: " + "; ".join(texts[:3]) + (" ..." if len(texts) > 3 else ""))
        by_cls = defaultdict(list)
        for cls, text in self.violations:
            by_cls[cls].append(text)
        print(f"VIOLATIONS: {len(self.violations)}" + "".join(f", {c} {len(t)}" for c, t in by_cls.items()))
        for cls, texts in by_cls.items():
            for text in texts[:SHOW]:
                print(f"  [{cls}] {text}")
            if len(texts) > SHOW:
                print(f"  [{cls}] ... {len(texts) - SHOW} more")


@dataclass
class Seen:
    """What the API and the start records say of one event after the run."""

    status: str
    error_type: str | None
    error_message: str
    exit_reason: str
    run_time: float | None
    end_time: float | None
    pid: int | None  # instance_pid
    starts: list[tuple[float, int]]  # (handler's time.time(), pid) of each start
    result: Any = None
    lines: dict[str, list[str]] = field(default_factory=dict)

    @property
    def t0(self) -> float | None:
        return self.starts[0][0] if self.starts else None

    @property
    def start_pid(self) -> int | None:
        return self.starts[0][1] if self.starts else None

    @property
    def outcome(self) -> tuple[str, str | None]:
        return (self.status, self.error_type if self.status == "FAILED" else None)


def _details(driver: Any, seen: dict[str, Seen], rep: Report) -> dict[str, Any]:
    rids = {m for _, text in rep.violations for m in re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f-]{22}", text)}
    out = {}
    for rid in sorted(rids):
        s, sn = driver.by_rid.get(rid), seen.get(rid)
        if s is None or sn is None:
            continue
        out[rid] = {"index": s.index, "fn": s.fn, "kind": s.kind, "payload": s.payload, "invoked_at": s.invoked_at,
                    "terminated": s.terminated, "kill_pids": s.kill_pids, "status": sn.status,
                    "error_type": sn.error_type, "error_message": sn.error_message, "exit_reason": sn.exit_reason,
                    "run_time": sn.run_time, "end_time": sn.end_time, "instance_pid": sn.pid, "starts": sn.starts,
                    "lines": {k: (len(v), v[-3:]) for k, v in sn.lines.items()}}
    out["kills"] = [vars(k) for k in driver.kills]
    out["alive_at_end"] = sorted(driver.alive_at_end)
    out["events"] = [(s.rid, s.fn, s.index, s.kind, s.invoked_at, seen[s.rid].status, seen[s.rid].error_type,
                      seen[s.rid].run_time, seen[s.rid].end_time, seen[s.rid].pid, seen[s.rid].starts,
                      bool(s.terminated)) for s in driver.sent]
    return out


def _ts(value: Any) -> float | None:
    return None if value is None else value.timestamp()


def collect(driver: Any) -> dict[str, Seen]:
    starts: dict[str, list[tuple[float, int]]] = defaultdict(list)
    try:
        with open(f"{driver.workdir}/starts.log") as f:
            for line in f:
                rid, t0, pid = line.split()
                starts[rid].append((float(t0), int(pid)))
    except FileNotFoundError:
        pass
    seen = {}
    for s in driver.sent:
        info = s.handle.info()
        err = info.get("error") or {}
        sn = Seen(info["status"], err.get("type"), err.get("message") or "", info.get("exit_reason") or "",
                  _ts(info.get("run_time")), _ts(info.get("end_time")), info.get("instance_pid"), starts.get(s.rid, []))
        if sn.status == "FINISHED":
            sn.result = s.handle.result(timeout=0)
        frame = s.handle.logs()
        for stream in ("stdout", "stderr"):
            sn.lines[stream] = frame.loc[frame["stream"] == stream, "line"].tolist()
        seen[s.rid] = sn
    return seen


def check(driver: Any, stuck: list[Any]) -> Report:
    rep = Report()
    for s in stuck:
        rep.bad("not ended", f"{s.rid} ({s.fn}, {s.kind}) is still {s.handle.status}")
    seen = collect(driver)
    statuses: dict[str, int] = defaultdict(int)
    for sn in seen.values():
        statuses[sn.status if sn.status != "FAILED" else f"FAILED {sn.error_type}"] += 1
    rep.summary["statuses"] = dict(sorted(statuses.items()))
    _check_listed(driver, seen, rep)
    killed = _check_kills(driver, seen, rep)
    for s in driver.sent:
        _check_event(s, seen[s.rid], killed, rep)
    rep.summary["lags"] = {}
    rep.summary["lags"].update(_check_order(driver, seen, rep))
    _check_free(driver, seen, rep)
    rep.details = _details(driver, seen, rep)
    rep.summary["checked"] = {"events": len(seen), "log lines": sum(len(v) for sn in seen.values()
                                                                     for v in sn.lines.values()),
                              "started": sum(1 for sn in seen.values() if sn.starts),
                              "sigkills": len(driver.kills)}
    return rep


def _check_listed(driver: Any, seen: dict[str, Seen], rep: Report) -> None:
    frame = scf_nb.list_events(limit=None)
    listed = dict(zip(frame["request_id"], frame["status"], strict=True))
    for s in driver.sent:
        if s.rid not in listed:
            rep.bad("lost", f"{s.rid} ({s.fn}, {s.kind}) is not in list_events")
        elif listed[s.rid] != seen[s.rid].status:
            rep.bad("lost", f"{s.rid}: list_events says {listed[s.rid]}, info() {seen[s.rid].status}")
    extra = set(listed) - set(driver.by_rid)
    if extra:
        rep.bad("lost", f"list_events has {len(extra)} events never invoked, e.g. {sorted(extra)[0]}")
    for name in driver.functions:
        ov = scf_nb.overview(name)
        counts = dict(zip(ov["status"], ov["count"], strict=True))
        mine: dict[str, int] = defaultdict(int)
        for s in driver.sent:
            if s.fn == name:
                mine[seen[s.rid].status] += 1
        for status, n in counts.items():
            if int(n) != mine.get(status, 0):
                rep.bad("lost", f"overview({name}) counts {n} {status}, the events say {mine.get(status, 0)}")


def _check_kills(driver: Any, seen: dict[str, Seen], rep: Report) -> set[int]:
    """Each SIGKILL from outside takes at most the one event running on that process, and never one that had
    not reached it (its run was sent after the kill, or its process had not even connected)."""
    killed_at = {k.pid: k.at for k in driver.kills}
    victims: dict[int | None, list[str]] = defaultdict(list)
    last_start: dict[int, tuple[float, str]] = {}
    for rid, sn in seen.items():
        for t0, pid in sn.starts:
            if pid not in last_start or t0 > last_start[pid][0]:
                last_start[pid] = (t0, rid)
        if sn.outcome == ("FAILED", "InstanceDied"):
            hit = {p for p in (sn.pid, sn.start_pid) if p is not None} & set(killed_at)
            victims[min(hit) if hit else None].append(rid)
    for pid, rids in victims.items():
        for rid in rids:
            sn, s = seen[rid], driver.by_rid[rid]
            desc = f"{rid} ({s.fn}, {s.kind}, #{s.index}) FAILED {sn.error_message!r}"
            if pid is None:
                if sn.starts or sn.pid is not None:
                    rep.bad("kill", f"{desc}: ran on pid {sn.start_pid or sn.pid}, which we never SIGKILLed")
                elif "as it started" in sn.error_message:
                    rep.bad("kill", f"{desc}: it never started (no start record, no instance_pid): a kill took an "
                                    f"event claimed by its instance but not yet running")
                else:
                    rep.bad("kill", f"{desc}: it never started (no start record, no instance_pid): a kill took "
                                    f"an event of an instance that had not connected yet")
                continue
            if "SIGKILL" not in sn.error_message:
                rep.bad("kill", f"{desc}: killed from outside (pid {pid}) but the error does not name SIGKILL")
            if sn.starts:
                if last_start[pid][1] != rid:
                    rep.bad("kill", f"{desc}: failed by the kill of pid {pid}, but {last_start[pid][1]} started on "
                                    f"it after it")
            elif sn.run_time is not None and sn.run_time > killed_at[pid] + 0.001:
                rep.bad("kill", f"{desc}: given to pid {pid} {(sn.run_time - killed_at[pid]) * 1000:.1f} ms after we "
                                f"SIGKILLed it (it never started)")
            else:
                rep.note("killed before its first line", f"{desc}: pid {pid} killed "
                         f"{(killed_at[pid] - (sn.run_time or 0)) * 1000:.1f} ms after its run_time")
        if pid is not None and len(rids) > 1:
            rep.bad("kill", f"one SIGKILL of pid {pid} failed {len(rids)} events: {', '.join(rids)}")
    return set(killed_at)


def _check_event(s: Any, sn: Seen, killed: set[int], rep: Report) -> None:
    desc = f"{s.rid} ({s.fn}, {s.kind})"
    allowed = {NATURAL[s.kind]}
    if s.terminated:
        allowed.add(("ABORTED", None))
    if {sn.pid, sn.start_pid} & killed or (not sn.starts and sn.pid is None):
        allowed.add(("FAILED", "InstanceDied"))  # checked in detail by _check_kills
    if sn.status in ("QUEUED", "RUNNING"):
        pass  # reported as not ended
    elif sn.outcome not in allowed:
        rep.bad("status", f"{desc} ended {sn.outcome} ({sn.error_message!r}, {sn.exit_reason!r}); allowed "
                          f"{sorted(allowed, key=str)}; terminated {s.terminated}")
    if sn.outcome == ("FAILED", "TimeoutError") and not sn.starts:
        rep.bad("timeout", f"{desc} timed out ({sn.error_message!r}) but its handler never started "
                           f"(instance_pid {sn.pid}, run_time {sn.run_time}, end_time {sn.end_time})")
    if len(sn.starts) > 1:
        rep.bad("ran twice", f"{desc} started {len(sn.starts)} times: {sn.starts}")
    if sn.starts and sn.exit_reason == "terminated while queued":
        rep.bad("ran after abort", f"{desc} ABORTED while queued, but its handler started at {sn.t0} on pid "
                                   f"{sn.start_pid}")
    if sn.status == "FINISHED":
        r = sn.result
        if not isinstance(r, dict) or r.get("rid") != s.rid:
            rep.bad("result", f"{desc} FINISHED with the result of another event: {r!r}")
        elif r.get("pid") != sn.pid or r.get("pid") != sn.start_pid:
            rep.bad("result", f"{desc} ran on pid {r.get('pid')}, instance_pid says {sn.pid}")
    _check_logs(s, sn, desc, rep)


def _check_logs(s: Any, sn: Seen, desc: str, rep: Report) -> None:
    complete = sn.status in ("FINISHED",) or sn.outcome == NATURAL[s.kind]
    for stream, tag, n in (("stdout", "o", s.payload.get("out", 0)), ("stderr", "e", s.payload.get("err", 0))):
        numbers = []
        lines = sn.lines[stream]
        if not complete and lines and _cut(lines[-1], s.rid, tag, len(lines) - 1):
            lines = lines[:-1]  # its last line, cut by the kill (the rest was never written)
            rep.note("line cut by a kill", f"{desc} {stream}: {sn.lines[stream][-1]!r}")
        for line in lines:
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != s.rid or parts[1] != tag or not parts[2].isdigit():
                rep.bad("logs", f"{desc} {stream} has a line that is not its own: {line[:120]!r}")
                continue
            numbers.append(int(parts[2]))
        if numbers != list(range(len(numbers))):
            first = next(i for i, v in enumerate(numbers) if v != i)
            rep.bad("logs", f"{desc} {stream}: lines out of order or missing at #{first}: "
                            f"{numbers[max(0, first - 2):first + 3]}")
        elif complete and len(numbers) != n:
            rep.bad("logs", f"{desc} ended {sn.outcome} with {len(numbers)} of its {n} {stream} lines")
        elif not sn.starts and numbers and sn.pid is None:
            rep.bad("logs", f"{desc} never started but has {len(numbers)} {stream} lines")


def _cut(line: str, rid: str, tag: str, n: int) -> bool:
    """Whether ``line`` is the start of line ``n`` (what a kill in the middle of a print leaves)."""
    whole = f"{rid} {tag} {n}"
    return line != whole and whole.startswith(line)


def _check_order(driver: Any, seen: dict[str, Seen], rep: Report) -> dict[str, Any]:
    lags: list[float] = []
    small = 0
    for name in driver.functions:
        evs = [s for s in driver.sent if s.fn == name]  # invoke order
        best: tuple[float, str] | None = None
        for s in evs:  # engine side: run_time
            rt = seen[s.rid].run_time
            if rt is None:
                continue
            if best is not None and rt < best[0] - EQUAL_S:
                rep.bad("order (run_time)", f"{name}: {s.rid} (#{s.index}, {s.kind}) has run_time "
                                            f"{(best[0] - rt) * 1000:.2f} ms before older {best[1]}'s")
            if best is None or rt > best[0]:
                best = (rt, s.rid)
        per_pid: dict[int, tuple[float, str]] = {}
        top: tuple[float, str, int] | None = None
        late: dict[str, list[tuple[float, str]]] = defaultdict(list)  # older rid -> (gap, newer rid) started before it
        for s in evs:  # instance side: the handler's own time.time()
            sn = seen[s.rid]
            if not sn.starts:
                continue
            t0, pid = sn.starts[0]
            if sn.run_time is not None:
                lag = t0 - sn.run_time
                lags.append(lag)
                if lag < -CLOCK_SLACK_S:
                    rep.bad("run_time", f"{s.rid}: run_time {-lag * 1000:.2f} ms after its handler started")
            prev = per_pid.get(pid)
            if prev is not None and t0 < prev[0]:
                rep.bad("order (instance)", f"{name}: pid {pid} started {s.rid} (#{s.index}) "
                                            f"{(prev[0] - t0) * 1000:.2f} ms before older {prev[1]}")
            if top is not None and t0 < top[0] and top[2] != pid:
                late[top[1]].append((top[0] - t0, s.rid))
            per_pid[pid] = max(per_pid.get(pid, (t0, s.rid)), (t0, s.rid))
            if top is None or t0 > top[0]:
                top = (t0, s.rid, pid)
        _report_late(name, late, driver, seen, rep)
        small += sum(1 for v in late.values() for gap, _ in v if gap <= NOISE_S)
    lags.sort()
    out: dict[str, Any] = {"inversions under 1 ms": small}
    if lags:
        out.update({f"run_time->handler p{q}": f"{lags[min(len(lags) - 1, int(len(lags) * q / 100))] * 1000:.2f} ms"
                    for q in (50, 99)})
        out["max"] = f"{lags[-1] * 1000:.1f} ms"
    return out


def _report_late(name: str, late: dict[str, list[tuple[float, str]]], driver: Any, seen: dict[str, Seen],
                 rep: Report) -> None:
    """One line per older event whose handler started after newer ones' (on other processes)."""
    firsts: dict[int, tuple[float, str]] = {}
    for rid, sn in seen.items():
        for t0, pid in sn.starts:
            firsts[pid] = min(firsts.get(pid, (t0, rid)), (t0, rid))
    for rid, newer in late.items():
        gap, example = max(newer)
        if gap <= NOISE_S:
            continue
        sn, ex = seen[rid], seen[example]
        cold = firsts.get(sn.start_pid, (0, ""))[1] == rid
        detail = (f"{name}: older {rid} (#{driver.by_rid[rid].index}, {driver.by_rid[rid].kind}) started up to "
                  f"{gap * 1000:.2f} ms after {sum(1 for g, _ in newer if g > NOISE_S)} newer ones (e.g. "
                  f"#{driver.by_rid[example].index}); run_times {_ms(sn.run_time, ex.run_time)}; its run_time -> "
                  f"start {_lag(sn)} ms{' (the first event of a new process)' if cold else ''}")
        if gap <= GROSS_S:
            rep.note("small start inversion", detail)
        elif sn.run_time is not None and ex.run_time is not None and sn.run_time <= ex.run_time + EQUAL_S \
                and sn.t0 is not None and sn.t0 - sn.run_time >= gap:
            # claimed first (run_time in order), its handler started late: the instance's own lag after its claim
            rep.note("lag after the claim", detail)
            worst = rep.summary.setdefault("lags", {}).get("lag after the claim, worst", "0 ms")
            rep.summary["lags"]["lag after the claim, worst"] = f"{max(gap * 1000, float(worst[:-3])):.1f} ms"
        else:
            rep.bad("order (instance)", detail)


def _ms(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    return "in order" if a <= b + EQUAL_S else f"INVERTED by {(a - b) * 1000:.2f} ms"


def _lag(sn: Seen) -> str:
    return "n/a" if sn.run_time is None or sn.t0 is None else f"{(sn.t0 - sn.run_time) * 1000:.2f}"


def _check_free(driver: Any, seen: dict[str, Seen], rep: Report) -> None:
    """Events that waited while an instance of their function was idle: from the end of a FINISHED event on
    a process to the next start there (or, for the last one, to our kill of it, or to the end of the run if
    it was still alive then). Each event's wait is [invoke, its handler's start]."""
    run_end = max((sn.end_time or 0.0) for sn in seen.values())
    killed_at = {k.pid: k.at for k in driver.kills}
    for name in driver.functions:
        evs = [(s, seen[s.rid]) for s in driver.sent if s.fn == name]
        by_pid: dict[int, list[Seen]] = defaultdict(list)
        for _, sn in evs:
            if sn.starts:
                by_pid[sn.start_pid].append(sn)  # type: ignore[index]
        idle: list[tuple[float, float, int]] = []
        for pid, runs in by_pid.items():
            runs.sort(key=lambda sn: sn.t0)  # type: ignore[arg-type, return-value]
            for k, sn in enumerate(runs):
                if sn.status != "FINISHED" or sn.end_time is None:
                    continue
                if k + 1 < len(runs):
                    nxt = runs[k + 1].t0
                elif pid in killed_at:
                    nxt = killed_at[pid]
                elif pid in driver.alive_at_end:
                    nxt = run_end
                else:
                    continue  # the engine stopped it at some point (room for another function): unknown
                if nxt is not None and nxt > sn.end_time:
                    idle.append((sn.end_time, nxt, pid))
        idle.sort()
        for s, sn in evs:
            start = sn.t0 if sn.t0 is not None else sn.run_time
            until = start if start is not None else sn.end_time
            if until is None:
                continue
            overlap, who = 0.0, 0  # the longest stretch of its wait during which one instance sat idle
            for a, b, pid in idle:  # few idle spans per function: a scan is fast enough
                if a >= until:
                    break
                span = min(b, until) - max(a, s.invoked_at)
                if span > overlap and pid != sn.start_pid:
                    overlap, who = span, pid
            if overlap > FREE_INFO_S:
                text = (f"{name}: {s.rid} (#{s.index}, {s.kind}) waited {(until - s.invoked_at) * 1000:.0f} ms, "
                        f"{overlap * 1000:.0f} ms of it while pid {who} was idle (its run_time "
                        f"{_ago(sn.run_time, s.invoked_at)}, instance_pid {sn.pid}, started on pid {sn.start_pid})")
                (rep.bad if overlap > FREE_WAIT_S else rep.note)("free capacity" if overlap > FREE_WAIT_S
                                                                 else "wait with an idle instance", text)


def _ago(t: float | None, since: float) -> str:
    return "none" if t is None else f"+{(t - since) * 1000:.0f} ms"


__all__ = ["Report", "check", "ScfError"]
