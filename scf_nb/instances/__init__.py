"""Instances: the processes (or actors) that run events, behind one interface (``backend.py``).

The engine starts, feeds and kills instances only through :class:`scf_nb.instances.backend.Backend`; the
loky implementation is ``instances/loky/``, the Ray one ``instances/ray/``. This package is imported at every
instance's cold start (the worker is under it): it stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.config import Config
    from ..engine.loop import Loop
    from .backend import Backend


def open_backend(config: Config, loop: Loop, close_at_exit: Callable[[], None]) -> Backend:
    """The instance backend for ``config``, on the engine's ``loop``; ``close_at_exit`` (the engine's close)
    runs at interpreter exit before anything the backend depends on is torn down."""
    if config.backend == "ray":
        from .ray.backend import RayBackend  # Ray is imported only when chosen

        return RayBackend(config, loop, close_at_exit)
    from .loky.backend import LokyBackend

    return LokyBackend(config, loop, close_at_exit)
