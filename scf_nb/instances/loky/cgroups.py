"""``memory_mb`` enforced by the kernel: one memory cgroup per instance of a function that has a limit.

::

    <the engine's own cgroup (v1), or its parent (v2)>/
        scf_nb-<engine pid>-<k>/  made when engine k of that process starts, removed when it closes (or by
                                  the next engine to start, once that process is gone)
            i<n>/                 instance n: made by the engine when the instance learns its function; the
                                  instance moves itself in before the function's code runs (a cgroup move
                                  can take the kernel ~12 ms: not on the engine thread), so what it starts is
                                  born inside. memory.max (v2) / memory.limit_in_bytes (v1): the kernel
                                  stops an allocation over it at once (its OOM killer kills in this cgroup)

:class:`MemoryCgroups` finds out when the engine starts what this machine allows: cgroup v2 first, then v1's
memory controller. A mode counts only if a real process could be moved into a limited child cgroup (a probe
process, killed at once). Where nothing works (no cgroup file system, not writable, no memory controller
delegated) the mode is ``watchdog``: the engine samples the memory of busy limited instances instead
(engine/memory.py) and compares each event's peak with the limit when it ends.

Why v2 uses the parent of the engine's cgroup (unless the engine is in the root): a v2 cgroup that holds
processes, as the engine's does, cannot give its children the memory controller. Under a systemd user
manager that parent is a slice inside the user's delegated subtree, where the user may make folders. Not
tried on a machine with a v2 memory controller yet (the one this was written on has v1's only).

The memory an instance had before the move stays charged where it was, so each cgroup's limit is
``memory_mb`` less the instance's resident memory when its cgroup is made (an idle interpreter, ~20 MB):
the limit then bounds the whole instance.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import sys
import threading

CGROUP2, CGROUP1, WATCHDOG = "cgroup2", "cgroup1", "watchdog"
_PAGE = os.sysconf("SC_PAGE_SIZE")
_MIN_LIMIT = 1 << 20
_PROBE_LIMIT = 64 << 20
_engines = itertools.count(1)
# The files of each version: limit, peak, usage now, the file with the "oom_kill N" line.
_FILES = {
    CGROUP2: ("memory.max", "memory.peak", "memory.current", "memory.events"),
    CGROUP1: ("memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.usage_in_bytes", "memory.oom_control"),
}


class Cgroup:
    """The memory cgroup of one instance."""

    def __init__(self, path: str, version: str, outside: int) -> None:
        self.path = path
        self.version = version
        self.outside = outside  # resident memory at the move, charged elsewhere
        self.events_file = os.path.join(path, _FILES[version][3])
        self.procs = os.path.join(path, "cgroup.procs")
        self.entered = False  # the engine has seen the instance inside

    def holds(self, pid: int) -> bool:
        """Whether ``pid`` is in this cgroup."""
        return str(pid) in _read_quiet(self.procs).split()

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup."""
        return oom_kills(self.events_file)

    def peak(self) -> int:
        """The instance's peak memory in bytes: its cgroup's peak plus what was charged before the move."""
        _, peak, current, _ = _FILES[self.version]
        for name in (peak, current):  # memory.peak is there from Linux 5.19
            try:
                return self.outside + int(_read(os.path.join(self.path, name)))
            except (OSError, ValueError):
                continue
        return self.outside


def oom_kills(events_file: str) -> int:
    """The ``oom_kill`` count of a cgroup's ``memory.events`` (v2) or ``memory.oom_control`` (v1)."""
    try:
        for line in _read(events_file).splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class MemoryCgroups:
    """The engine's memory cgroups, or the reason it has none. What works is found out on a thread of its
    own (moving the probe process can take the kernel ~10 ms), so the engine's start does not wait for it.

    Args:
        enabled: False (config ``memory_cgroups``): use the watchdog without looking.
        engine_pid: names the engine's folder, so a later engine can tell a dead engine's folders.
    """

    def __init__(self, enabled: bool, engine_pid: int) -> None:
        self._mode = WATCHDOG
        self._reason = "turned off (memory_cgroups=False)"
        self._top: str | None = None
        self._leftover: list[str] = []  # folders that were still busy when removed: tried again later
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._detect, args=(engine_pid,), name="scf_nb-cgroups",
                                            daemon=True)
            self._thread.start()

    @property
    def mode(self) -> str:
        """``cgroup2``, ``cgroup1`` or ``watchdog``."""
        self._ready()
        return self._mode

    @property
    def reason(self) -> str:
        """Why it is the watchdog ("" when it is not)."""
        self._ready()
        return self._reason

    @property
    def folder(self) -> str | None:
        """The engine's cgroup folder (None with the watchdog)."""
        self._ready()
        return self._top

    def prepare(self, name: str, pid: int, limit: int) -> Cgroup | None:
        """A new cgroup ``name`` for process ``pid`` limited to ``limit`` bytes, less what ``pid`` has resident
        now (that stays charged where it was). The process moves itself in (``Cgroup.procs``) before its
        code loads. None if it could not be made: watch the process instead."""
        self._ready()
        if self._top is None:
            return None
        path = os.path.join(self._top, name)
        try:
            outside = _resident(pid)
            _make_limited(path, self._mode, max(limit - outside, _MIN_LIMIT))
        except OSError:
            return None
        return Cgroup(path, self._mode, outside)

    def remove(self, cgroup: Cgroup) -> None:
        """Remove an instance's cgroup (once its processes are gone; if some linger, later)."""
        if not _rmdir(cgroup.path):
            self._leftover.append(cgroup.path)

    def sweep(self) -> None:
        """Try again to remove the cgroups that were still busy."""
        if self._leftover:
            self._leftover = [p for p in self._leftover if not _rmdir(p)]

    def close(self) -> None:
        """Remove every folder of this engine that can be removed now; the next engine removes the rest."""
        self._ready()
        self.sweep()
        if self._top is not None:
            for entry in _subdirs(self._top):
                _rmdir(entry)
            _rmdir(self._top)
            self._top = None

    def _ready(self) -> None:
        thread = self._thread  # any thread may ask; joining a finished thread is cheap
        if thread is not None:
            thread.join()

    def _detect(self, engine_pid: int) -> None:
        tried = []
        try:
            for version, parent in _candidates():
                remove_stale(parent)
                try:
                    self._top = _make_top(parent, version, engine_pid)
                except OSError as e:
                    tried.append(f"{version} in {parent}: {e.strerror or e}")
                    continue
                self._mode, self._reason = version, ""
                return
        except Exception as e:  # whatever this machine's /proc says, the engine runs (with the watchdog)
            tried.append(repr(e))
        self._reason = "; ".join(tried) or "no cgroup file system with a memory controller"


def _candidates() -> list[tuple[str, str]]:
    """(mode, folder to make ours in), best first: v2 (where the memory controller reaches the engine's
    cgroup), then v1's memory controller."""
    own = _own_cgroups()
    out = []
    v2 = own.get(CGROUP2)
    if v2 is not None:
        for parent in (v2, os.path.dirname(v2)):
            if "memory" in _read_quiet(os.path.join(parent, "cgroup.subtree_control")).split():
                out.append((CGROUP2, parent))
                break
    if own.get(CGROUP1) is not None:
        out.append((CGROUP1, own[CGROUP1]))
    return out


def _own_cgroups() -> dict[str, str]:
    """The folders of this process's v2 cgroup and v1 memory cgroup, where their file systems are mounted."""
    member: dict[str, str] = {}
    for line in _read_quiet("/proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            member[CGROUP2] = parts[2]
        elif "memory" in parts[1].split(","):
            member[CGROUP1] = parts[2]
    found: dict[str, str] = {}
    for line in _read_quiet("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype, _source, options = line.split(" - ", 1)[1].split()[:3]
        version = CGROUP2 if fstype == "cgroup2" else CGROUP1 if (
            fstype == "cgroup" and "memory" in options.split(",")) else None
        if version is None or version not in member or version in found:
            continue
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        path = member[version]
        if root != "/" and (path + "/").startswith(root + "/"):
            path = path[len(root):]
        elif root != "/":
            continue  # our cgroup is not inside this mount
        folder = os.path.normpath(mountpoint + "/" + path.lstrip("/"))
        if os.path.isdir(folder):
            found[version] = folder
    return found


def _make_top(parent: str, version: str, engine_pid: int) -> str:
    """Make the engine's folder and prove that a process can be moved into a limited child of it."""
    top = os.path.join(parent, f"scf_nb-{engine_pid}-{next(_engines)}")  # a process may run several engines
    while True:
        try:
            os.mkdir(top)
            break
        except FileExistsError:  # a dead engine's, whose pid was ours
            top = os.path.join(parent, f"scf_nb-{engine_pid}-{next(_engines)}")
    try:
        if version == CGROUP2:
            _write(os.path.join(top, "cgroup.subtree_control"), "+memory")
        _probe(os.path.join(top, "probe"), version)
    except OSError:
        _rmdir(top)
        raise
    return top


def _probe(path: str, version: str) -> None:
    """Move a short-lived process into a limited cgroup (the engine's permissions may allow the folders and
    the limit but not the move); raises OSError if anything is refused."""
    _make_limited(path, version, _PROBE_LIMIT)
    try:
        pid = _spawn_probe()
        try:
            _write(os.path.join(path, "cgroup.procs"), str(pid))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    finally:
        _rmdir(path)


def _spawn_probe() -> int:
    try:
        return os.posix_spawnp("sleep", ["sleep", "60"], {"PATH": os.environ.get("PATH", os.defpath)})
    except OSError:
        return os.posix_spawn(sys.executable, [sys.executable, "-S", "-c", "import time; time.sleep(60)"], {})


def _make_limited(path: str, version: str, limit: int) -> None:
    os.mkdir(path)
    try:
        _write(os.path.join(path, _FILES[version][0]), str(limit))
        if version == CGROUP2:  # no way around the limit through swap; the kernel kills the whole instance
            _write_quiet(os.path.join(path, "memory.swap.max"), "0")
            _write_quiet(os.path.join(path, "memory.oom.group"), "1")
        else:
            _write_quiet(os.path.join(path, "memory.memsw.limit_in_bytes"), str(limit))
    except OSError:
        _rmdir(path)
        raise


def remove_stale(parent: str) -> None:
    """Remove the folders of engines that are no longer running (their processes are gone too; a folder
    that still holds one stays)."""
    for entry in _subdirs(parent):
        parts = os.path.basename(entry).split("-")
        if len(parts) != 3 or parts[0] != "scf_nb" or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        for child in _subdirs(entry):
            _rmdir(child)
        _rmdir(entry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass
    return True


def _subdirs(path: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _rmdir(path: str) -> bool:
    """Remove a cgroup folder; True if it is gone."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as e:
        return e.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.EAGAIN) and not os.path.isdir(path)
    return True


def _resident(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_quiet(path: str) -> str:
    try:
        return _read(path)
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _write_quiet(path: str, text: str) -> None:
    try:
        _write(path, text)
    except OSError:
        pass


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
