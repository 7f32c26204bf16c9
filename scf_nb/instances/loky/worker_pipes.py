"""The instance's side of its capture pipes: which pipes fds 1/2 point at, and moving them to new ones when an
event leaves a process behind (the engine's side is ``leftover_output.py``).

At an event's end the worker asks whether any process it started may still hold fds 1/2 (``left_behind``:
one syscall while it has no child at all). If so, ``move_stdio`` points fds 1/2 at new pipes and sends their
read ends to the engine; the old pipes stay with that event's leftovers, so all they write later is known to
be that event's. Imported at every cold start, like ``worker.py``: nothing heavy.
"""

from __future__ import annotations

import fcntl
import os
import socket

_F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
OWN_ENDS: list[int] = []  # the worker's own copies of the write ends of the current pipes (not inherited)
_KNOWN_CHILDREN: set[bytes] = set()  # "pid starttime" of the children there when fds 1/2 last moved
_MAX_TASKS_READ = 8  # each thread has its own list of children: past this many, new pipes cost less
_READ_BYTES = 4096


def new_pipe() -> tuple[int, int]:
    """A new capture pipe (big, so a burst rarely blocks)."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass
    return r, w


def left_behind() -> bool:
    """Whether a process that the event started may still hold fds 1/2: one syscall in the common case (no
    child at all). Orphans are our children too (we are their subreaper), so a daemon that double-forked
    counts. Children that have exited hold nothing, and children that were already there when fds 1/2 last
    moved hold only older pipes (a daemon of an earlier event must not cost every later one new pipes)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    children = _live_children()
    if children is not None and children <= _KNOWN_CHILDREN:
        _KNOWN_CHILDREN.intersection_update(children)
        return False
    _KNOWN_CHILDREN.clear()
    _KNOWN_CHILDREN.update(children or ())
    return True


def _live_children() -> set[bytes] | None:
    """Our children that have not exited, as "pid starttime" (a pid alone may be reused); None if that
    cannot be read, or would cost more than new pipes do."""
    found = set()
    try:
        tasks = os.listdir("/proc/self/task")
        if len(tasks) > _MAX_TASKS_READ:
            return None
        for task in tasks:
            pids = _read(f"/proc/self/task/{task}/children")
            if len(pids) >= _READ_BYTES:  # a list this long may be cut
                return None
            for pid in pids.split():
                fields = _read(b"/proc/%s/stat" % pid).rsplit(b")", 1)[1].split()
                if fields[0] != b"Z":
                    found.add(pid + b" " + fields[19])
    except (OSError, IndexError):
        return None
    return found


def _read(path: str | bytes) -> bytes:
    """A small /proc file (os-level: a third of the cost of ``open``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, _READ_BYTES)
    finally:
        os.close(fd)


def move_stdio(side: socket.socket) -> bool:
    """Leave the current pipes to the processes the event left behind: fds 1/2 move to new pipes, whose
    read ends go to the engine; our own copies of the old write ends are closed, so the old pipes reach
    EOF when the last of those processes exits. False if no new pipes could be made (out of fds): the
    event's leftovers then share the pipes with the next events, as END markers separate them."""
    pipes: list[tuple[int, int]] = []
    try:
        for _ in (1, 2):
            pipes.append(new_pipe())
    except OSError:
        for fd in (fd for pipe in pipes for fd in pipe):
            os.close(fd)
        _KNOWN_CHILDREN.clear()  # try again at the next event's end
        return False
    old = list(OWN_ENDS)
    OWN_ENDS[:] = [w for _r, w in pipes]
    for target, (_r, w) in zip((1, 2), pipes, strict=True):
        os.dup2(w, target)
    for fd in old:
        os.close(fd)
    read_ends = [r for r, _w in pipes]
    try:
        socket.send_fds(side, [b"p"], read_ends)  # before the "done" that says so: the engine reads it then
    finally:
        for fd in read_ends:
            os.close(fd)
    return True
