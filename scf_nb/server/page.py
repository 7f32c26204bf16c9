"""The Event Management page at ``<base_url>scf/events``: one HTML file, an ES module and a stylesheet from
``static/`` (no build step), behind Jupyter's authentication like every other scf_nb path. The page reads
and writes only through the REST API (``handlers.py``); this module serves the files and nothing else.

::

    browser                               this module                     handlers.py (REST)
    -------                               -----------                     ------------------
    GET scf/events?token=...   --->       EventsPage: events.html,
                                          login cookie + _xsrf cookie
    GET scf/events/static/*.js --->       PageFile (authenticated too)
    fetch scf/api/overview, events, ...                            --->   JSON (cookie; X-XSRFToken on writes)
    EventSource scf/api/changes, .../logs?follow=1                 --->   Server-Sent Events

The HTML carries the server's base URL in a ``<meta>`` tag, never in a script, so the page's Content Security
Policy allows scripts and styles from the server only (no inline code at all): a log line that reads
``<script>`` could not run even if a bug put it into the DOM as markup."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.utils import url_path_join
from tornado import web

STATIC = Path(__file__).resolve().parent / "static"
PAGE_PATH = "scf/events"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")


class PageHandler(JupyterHandler):
    """What the page's handlers share: Jupyter's authorization on the ``scf_nb`` resource and the CSP."""

    auth_resource = "scf_nb"

    @property
    def content_security_policy(self) -> str:
        return CSP


class EventsPage(ExtensionHandlerMixin, PageHandler):
    """The page itself: without a login (token or cookie) a browser is sent to Jupyter's login page."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        self.xsrf_token  # noqa: B018  # sets the _xsrf cookie the page sends back as X-XSRFToken on writes
        text = (STATIC / "events.html").read_text(encoding="utf-8")
        text = text.replace("{{base_url}}", html.escape(self.base_url, quote=True))
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(text)


class PageFile(PageHandler, web.StaticFileHandler):
    """The page's script and stylesheet, for logged-in users only (revalidated on each load: ETag)."""

    @web.authenticated
    @authorized
    def get(self, path: str, include_body: bool = True) -> Any:  # type: ignore[override]  # the decorators' type
        return web.StaticFileHandler.get(self, path, include_body)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


def page_url(server_url: str) -> str:
    """The page's address on a server answering at ``server_url`` (with its base URL)."""
    return url_path_join(server_url, PAGE_PATH)


PAGE_ROUTES: list[tuple[str, type[web.RequestHandler], dict[str, Any]] | tuple[str, type[web.RequestHandler]]] = [
    (rf"/{PAGE_PATH}", EventsPage),
    (rf"/{PAGE_PATH}/static/(.*)", PageFile, {"path": str(STATIC)}),
]
