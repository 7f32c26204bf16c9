"""The Jupyter server extension: the server process hosts one engine (its DuckDB store and instances), serves
the REST API under ``<base_url>scf/api/`` and tells the kernels it starts (and any process of the same home)
where it answers, so they use it over HTTP (``scf_nb.clients.http.HttpClient``), and, with ``tc_port`` and keys
set, serves the TencentCloud-compatible API on a loopback port of its own (``tencentcloud.py``). Enabled on
install (``jupyter_server_config.d/scf_nb.json``); see docs/server.md and docs/tencentcloud.md."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .extension import ScfNbApp

    return [{"module": "scf_nb.server", "app": ScfNbApp}]
