"""``ScfNbApp``: the extension as jupyter_server loads it. On load it starts the engine of its home in the
server's process (the default client of that process), adds the REST handlers, and once the server listens
publishes where it answers (``SCF_NB_SERVER`` for its kernels, ``<home>/server.json`` for everyone else); at
the server's stop it closes the engine cleanly (instances stopped, store flushed) and removes the file."""

from __future__ import annotations

import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Int, Unicode, default

from .. import api
from ..clients import discovery
from ..core.errors import ScfError
from .handlers import ROUTES
from .host import EngineHost
from .page import PAGE_ROUTES, page_url

WILDCARD = ("", "0.0.0.0", "::")


class ScfNbApp(ExtensionApp):
    """scf_nb inside a Jupyter server: the hosted engine and its REST API."""

    name = "scf_nb"

    home = Unicode("", config=True, help="The engine's home (its store is <home>/scf_nb.duckdb). Default: "
                                         "SCF_NB_HOME if set, else <root_dir>/.scf_nb.")
    tc_port = Int(0, config=True, help="Loopback port of the TencentCloud-style API (POST / with X-TC-Action); "
                                       "0: off. It also needs secret_id and secret_key.")
    secret_id = Unicode(config=True, help="SecretId the TencentCloud-style API checks signatures against "
                                          "(default: SCF_NB_SECRET_ID).")
    secret_key = Unicode(config=True, help="SecretKey of the TencentCloud-style API (default: SCF_NB_SECRET_KEY).")

    @default("secret_id")
    def _secret_id(self) -> str:
        return os.environ.get("SCF_NB_SECRET_ID", "")

    @default("secret_key")
    def _secret_key(self) -> str:
        return os.environ.get("SCF_NB_SECRET_KEY", "")

    def engine_home(self) -> Path:
        root = self.serverapp.root_dir if self.serverapp is not None else "."
        given = self.home or os.environ.get("SCF_NB_HOME") or str(Path(root) / ".scf_nb")
        return Path(os.path.abspath(Path(given).expanduser()))

    def initialize_settings(self) -> None:
        try:
            client = api.host(self.engine_home())
            self.host = EngineHost(client)
            self.log.info("scf_nb: hosting the engine of %s", self.engine_home())
        except ScfError as e:  # e.g. StoreLocked: the REST API answers this error, the server runs on
            self.log.error("scf_nb: the engine of %s did not start: %s", self.engine_home(), e)
            self.host = EngineHost(None, e)
        self.settings["scf_nb_host"] = self.host
        self.tc_server: Any = None

    def initialize_handlers(self) -> None:
        self.handlers.extend([*ROUTES, *PAGE_ROUTES])

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """The server listens now: its port is known."""
        if self.host.client is None:
            return
        url = connect_url(serverapp)
        info = discovery.ServerInfo(url=url, base_url=serverapp.base_url, token=serverapp.identity_provider.token,
                                    pid=os.getpid(), home=str(self.engine_home()), started=time.time())
        api.hosted_at(url)
        self.host.publish(info)
        self.log.info("scf_nb: engine at %s (REST under %s)", url, url_path_join(url, "scf/api/"))
        self.log.info("scf_nb: Event Management page at %s (log in as for Jupyter)", page_url(url))
        if self.tc_port:
            self.start_tencentcloud()

    def start_tencentcloud(self) -> None:
        """The TencentCloud-style API on its own loopback port, over the hosted engine's client. Without keys (or
        with the port taken) the error is logged and the port stays closed; the rest of the server runs on."""
        from .tencentcloud import start

        if self.host.client is None:
            return
        try:
            self.tc_server = start(self.host.client, self.tc_port, self.secret_id, self.secret_key)
        except (ScfError, OSError) as e:
            self.log.error("scf_nb: the TencentCloud-style API on port %s did not start: %s", self.tc_port, e)
            return
        self.log.info("scf_nb: TencentCloud-style API at %s (SDK: HttpProfile(endpoint=\"%s:%s\", protocol=\"http\"))",
                      self.tc_server.url, self.tc_server.host, self.tc_server.port)

    async def stop_extension(self) -> None:
        if self.tc_server is not None:
            await self.tc_server.aclose()
        await self.host.close(api.unhost)


def connect_url(serverapp: Any) -> str:
    """Where this process's kernels and scripts reach the server: its address (a loopback one for a server
    that listens on every interface), port and base URL."""
    ip = serverapp.ip
    host = "127.0.0.1" if ip in WILDCARD or ip == "localhost" else ip
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if serverapp.certfile else "http"
    return urllib.parse.urlunsplit((scheme, f"{host}:{serverapp.port}", str(serverapp.base_url), "", ""))
