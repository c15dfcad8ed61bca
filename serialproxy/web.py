"""The URL tree of the one HTTP listener: console websocket, console page, REST API.

``/?token=T`` with ``Upgrade: websocket`` is a console session; the same URL
in a browser gets the console page. ``/v2/...`` and ``/v3/...`` are the REST
API; anything else is a static file of the ``web`` directory.
"""

import json
import os

from autobahn.twisted.resource import WebSocketResource
from twisted.web import resource, server, static

from .api import MAX_BODY

__all__ = ["Root", "make_site", "BoundedRequest", "CONTENT_SECURITY_POLICY"]

# An idle HTTP connection is dropped after this many seconds. A websocket is
# no longer HTTP once upgraded: its liveness is checked by websocket pings.
HTTP_TIMEOUT = 60

# The console page and its files: scripts and styles of our own origin only
# (xterm.js writes inline styles), the websocket and console-info on this
# origin, no framing. The page's URL carries the token: no Referer, no cache.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_PAGE_HEADERS = {
    b"content-security-policy": CONTENT_SECURITY_POLICY.encode("ascii"),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}


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
        if name == b"" and _is_websocket(request):
            return self._websocket
        for header, value in _PAGE_HEADERS.items():
            request.setHeader(header, value)
        if name == b"":
            request.setHeader(b"cache-control", b"no-store")
            return self._page
        return self._static.getChild(name, request)


class BoundedRequest(server.Request):
    """A request whose body may not exceed MAX_BODY: bigger ones get 413 and a closed connection.

    Twisted would otherwise spool any body to a temporary file before the
    API sees it; here no client can make the proxy hold more than MAX_BODY.
    """

    _body_bytes = 0
    _refused = False

    def gotLength(self, length):
        super().gotLength(0)  # in memory: at most MAX_BODY bytes ever go there
        if length is not None and length > MAX_BODY:
            self._refuse()

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY:
            self._refuse()
        else:
            super().handleContentChunk(data)

    def _refuse(self):
        self._refused = True
        body = json.dumps({"error": {"code": 413, "message": f"request body larger than {MAX_BODY} bytes"}}).encode()
        self.channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.channel.loseConnection()


def make_site(api, console_factory, web_dir: str, reactor=None) -> server.Site:
    """The Site for the HTTP listener; its idle timeouts run on ``reactor``."""
    root = Root(api.app.resource(), WebSocketResource(console_factory), web_dir)
    site = server.Site(root, timeout=HTTP_TIMEOUT, reactor=reactor)
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    return site
