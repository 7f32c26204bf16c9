"""Engine configuration: ``scf_nb.configure(...)`` or ``SCF_NB_*`` environment variables."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import invalid

ASYNC_MAX_EVENT_BYTES = 128 * 1024
SYNC_MAX_EVENT_BYTES = 6 * 1024 * 1024
ASYNC_DEFAULT_TIMEOUT_S = 24 * 3600
SYNC_DEFAULT_TIMEOUT_S = 15 * 60
BACKENDS = ("loky", "ray")  # where instances run (``scf_nb.instances.open_backend``)
# What a running engine takes at once (``Engine.reconfigure``); a change of any other setting needs a new engine.
LIVE_SETTINGS = frozenset({"max_workers", "retention_hours", "max_qps", "grace_seconds", "idle_instance_seconds",
                           "clock"})


@dataclass(frozen=True)
class Config:
    """Settings of one engine. Every field has an ``SCF_NB_<NAME>`` environment variable.

    Attributes:
        home: folder of the DuckDB store (``<home>/scf_nb.duckdb``), made absolute when the config is made
            (a later ``os.chdir`` does not move it). Default ``./.scf_nb``.
        max_workers: most instance processes alive at once, over all functions.
        retention_hours: events and logs older than this are deleted, rolling (SCF keeps 3 days).
        max_qps: invocations per second accepted over all functions; beyond it ``LimitExceeded``.
        grace_seconds: how long ``terminate(grace=True)`` waits after SIGTERM before killing.
        idle_instance_seconds: an idle instance is stopped after this long.
        flush_interval: seconds between the store writer's batches.
        store_memory_mb: DuckDB's memory limit: its cache of table blocks, what is only in its write-ahead log,
            and the working memory of queries (larger ones spill to a temporary file beside the store).
        warm_spare: keep one started instance process that no function owns yet, so a new instance
            (the first event, or the one after an instance was replaced) needs no process start.
        memory_cgroups: enforce ``memory_mb`` with a memory cgroup per instance where the machine allows
            one (``Engine.memory_limit_mode`` says what is used); False: always the watchdog.
        backend: where instances run: ``"loky"`` (processes on this machine, the default) or ``"ray"`` (Ray
            actors on a cluster; ``pip install 'scf_nb[ray]'``). A change needs a new engine.
        ray_address: the Ray cluster of the ``ray`` backend, as ``ray.init(address=...)`` takes it
            (``"auto"``: the cluster running on this machine, ``"host:port"``, ``"ray://..."``). None: a Ray
            already initialised in this process as it is, else Ray's own default (``RAY_ADDRESS``, else the
            cluster started on this machine, else a new local one). A change needs a new engine.
        clock: the wall clock (seconds since the epoch); injectable for retention tests.
    """

    home: Path = field(default_factory=lambda: Path(".scf_nb"))
    max_workers: int = field(default_factory=lambda: max(8, 2 * (os.cpu_count() or 1)))
    retention_hours: float = 72.0
    max_qps: float = 1000.0
    grace_seconds: float = 3.0
    idle_instance_seconds: float = 600.0
    flush_interval: float = 0.03
    store_memory_mb: int = 96
    warm_spare: bool = True
    memory_cgroups: bool = True
    backend: str = "loky"
    ray_address: str | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        try:
            home = Path(os.path.abspath(Path(self.home).expanduser()))
        except TypeError:
            raise invalid("Config", f"home must be a path, got {self.home!r}") from None
        object.__setattr__(self, "home", home)

    @property
    def db_path(self) -> Path:
        return Path(self.home) / "scf_nb.duckdb"

    def updated(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and checked; a clear error names an unknown or bad setting."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise invalid("Config", f"unknown setting {name!r}; known: {', '.join(sorted(known))}")
        cfg = replace(self, **changes)
        cfg._check()
        return cfg

    def differences(self, other: Config) -> list[str]:
        """The names of the settings whose values differ between this config and ``other`` (two spellings of
        one folder are the same ``home``)."""
        out = [f.name for f in fields(self) if f.name != "home" and getattr(self, f.name) != getattr(other, f.name)]
        if self.home != other.home and self.home.resolve() != other.home.resolve():
            out.insert(0, "home")
        return out

    def _check(self) -> None:
        positive = ("max_workers", "retention_hours", "max_qps", "flush_interval", "store_memory_mb",
                    "idle_instance_seconds")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise invalid("Config", f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.grace_seconds, (int, float)) or self.grace_seconds < 0:
            raise invalid("Config", f"grace_seconds must be >= 0, got {self.grace_seconds!r}")
        if self.backend not in BACKENDS:
            raise invalid("Config", f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {self.backend!r}")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise invalid("Config", f"ray_address must be an address string or None, got {self.ray_address!r}")
        if not isinstance(self.memory_cgroups, bool):
            raise invalid("Config", f"memory_cgroups must be True or False, got {self.memory_cgroups!r}")


def from_environment(environ: dict[str, str] | None = None) -> Config:
    """The default config with every ``SCF_NB_<NAME>`` variable applied."""
    environ = dict(os.environ if environ is None else environ)
    changes: dict[str, Any] = {}
    for f in fields(Config):
        raw = environ.get(f"SCF_NB_{f.name.upper()}")
        if raw is None or f.name == "clock":
            continue
        if f.name in ("home", "backend"):
            changes[f.name] = raw.strip() if f.name == "backend" else raw
            continue
        if f.name == "ray_address":
            changes[f.name] = raw.strip() or None  # empty: Ray's own default
            continue
        if f.name in ("warm_spare", "memory_cgroups"):
            changes[f.name] = raw.strip().lower() not in ("0", "false", "no", "off", "")
            continue
        try:
            changes[f.name] = int(raw) if f.name in ("max_workers", "store_memory_mb") else float(raw)
        except ValueError:
            raise invalid("Config", f"SCF_NB_{f.name.upper()}={raw!r} is not a number") from None
    return Config().updated(**changes)
