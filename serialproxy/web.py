"""The URL tree of the one HTTP listener: console websocket, console page, REST API.

``/?token=T`` with ``Upgrade: websocket`` is a console session; the same URL
in a browser gets the console page. ``/v2/...`` and ``/v3/...`` are the REST
API; anything else is a static file of the ``web`` directory.
"""

import os

from autobahn.twisted.resource import WebSocketResource
from twisted.web import resource, server, static

__all__ = ["Root", "make_site"]


def _is_websocket(request) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return upgrade.strip().lower() == b"websocket"


class Root(resource.Resource):
    """Sends each request to the websocket, the API or the static files."""

    def __init__(self, api, websocket, web_dir: str):
        super().__init__()
        self._api = api
        self._websocket = websocket
        self._static = static.File(web_dir)
        self._page = static.File(os.path.join(web_dir, "index.html"))

    def getChild(self, name: bytes, request):
        if name in (b"v2", b"v3"):
            # The API's routes are whole paths: give it back the segment we took.
            request.postpath.insert(0, request.prepath.pop())
            return self._api
        if name == b"":
            return self._websocket if _is_websocket(request) else self._page
        return self._static.getChild(name, request)


def make_site(api, console_factory, web_dir: str) -> server.Site:
    """The Site for the HTTP listener."""
    site = server.Site(Root(api.app.resource(), WebSocketResource(console_factory), web_dir))
    site.displayTracebacks = False
    return site
