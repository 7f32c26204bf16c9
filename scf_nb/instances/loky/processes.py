"""The loky backend's view of processes in ``/proc``: an instance's descendants (a kill reaches them all), the
resident memory of a tree, and the processes a dead engine left running (recovery, by this engine's mark)."""

from __future__ import annotations

import os
import resource
import secrets
from collections.abc import Iterator

from .worker import INSTANCE_MARK, proc_stats

_PAGE = resource.getpagesize()


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid``: walks /proc/PID/task/*/children (only the subtree) where the
    kernel has those files, else scans all of /proc."""
    if not _HAS_CHILDREN_FILES:
        return _descendants_by_scan(pid)
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out.extend(kids)
                todo.extend(kids)
        except OSError:  # it exited while we looked
            continue
    return out


def new_mark() -> str:
    """This engine's mark: its pid and a random token, so no other engine's (nor a process that got the same
    pid later, or after a reboot) can ever be taken for it."""
    return f"{os.getpid()}:{secrets.token_hex(8)}"


def environments() -> Iterator[tuple[int, list[bytes], bytes]]:
    """``(pid, /proc stat fields, /proc environ)`` of every process but this one whose environment it may read
    (one that is gone, or not ours to read, is not ours to kill either)."""
    me = os.getpid()
    for pid, fields in proc_stats():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        yield pid, fields, environ


def leftovers(groups: dict[int, int], marks: set[str]) -> list[int]:
    """The processes a dead engine left running, found by what proves they are its own:

    - its mark in their environment (``SCF_NB_ENGINE_PID=<pid>:<token>``, see ``new_mark``): an instance
      starts with it and everything under it inherits it, whatever its process group or session (a child that
      called ``setsid``, a daemon that double-forked);
    - for a store written before marks had a token: a recorded process group (``groups``: group -> the dead
      engine's pid) and that engine's old mark, or no mark at all and a loky command line (an instance).

    A process with any other engine's mark is never one. After a reboot the recorded groups and pids may
    belong to anything; the tokens do not."""
    if not groups and not marks:
        return []
    wanted = {m.encode() for m in marks}
    legacy = {group: str(pid).encode() for group, pid in groups.items()}
    found = []
    for pid, fields, environ in environments():
        mark = _mark_of(environ)
        if mark is not None and mark in wanted:
            found.append(pid)
        elif len(fields) > 2 and int(fields[2]) in legacy and (
                mark == legacy[int(fields[2])] or (mark is None and _is_loky(pid))):
            found.append(pid)
    return found


_MARK = f"{INSTANCE_MARK}=".encode()


def _mark_of(environ: bytes) -> bytes | None:
    """The value of the first ``SCF_NB_ENGINE_PID`` in a /proc/PID/environ (NUL-separated), if any."""
    if environ.startswith(_MARK):
        start = len(_MARK)
    else:
        i = environ.find(b"\0" + _MARK)
        if i < 0:
            return None
        start = i + 1 + len(_MARK)
    end = environ.find(b"\0", start)
    return environ[start:] if end < 0 else environ[start:end]


def _is_loky(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"loky" in f.read()
    except OSError:
        return False


_HAS_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _descendants_by_scan(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, fields in proc_stats():
        children.setdefault(int(fields[1]), []).append(child)
    out, todo = [], list(children.get(pid, ()))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def rss(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in bytes."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total
