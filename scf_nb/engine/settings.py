"""The engine's settings now, shared by its parts."""

from __future__ import annotations

from collections.abc import Callable

from ..core.config import Config


class Settings:
    """The current configuration and clock; ``Engine.reconfigure`` replaces them while the engine runs (only
    ``config.LIVE_SETTINGS`` may differ), and every part sees the new ones at once."""

    __slots__ = ("config", "clock")

    def __init__(self, config: Config) -> None:
        self.clock: Callable[[], float] = config.clock
        self.config = config

    def set(self, config: Config) -> None:
        self.clock = config.clock
        self.config = config
