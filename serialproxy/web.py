"""The URL tree of the one HTTP listener: console websocket, console page, REST API.

``/?token=T`` with ``Upgrade: websocket`` is a console session; the same URL
in a browser gets the console page. ``/v2/...`` and ``/v3/...`` are the REST
API; anything else is a static file of the ``web`` directory.

A connection whose first request is a console websocket goes straight to
autobahn (:class:`ConsoleSite`), without a ``twisted.web`` request being
built, rendered and written back out for autobahn to parse again; any other
connection is plain ``twisted.web``, which still routes a websocket upgrade
arriving later on a keep-alive connection.
"""

import json
import os

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.web import resource, server, static

from .api import MAX_BODY

__all__ = ["Root", "make_site", "BoundedRequest", "ConsoleSite", "CONTENT_SECURITY_POLICY"]

# An idle HTTP connection is dropped after this many seconds. A websocket is
# no longer HTTP once upgraded: its liveness is checked by websocket pings.
HTTP_TIMEOUT = 60
# The most of a first request's head read to tell a console from other HTTP;
# longer heads go to twisted.web, which enforces its own limits.
MAX_HEAD = 8192

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

    def setHeader(self, name, value):
        # Twisted's process() names itself and its version in a Server header
        # on every answer (TwistedWeb/x.y): nothing a client needs, and a
        # version to look up for known holes. Left out, as from the 101.
        if name.lower() == b"server" and value == server.version:
            return
        super().setHeader(name, value)

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


def is_console_upgrade(head: bytes) -> bool:
    """Is this request head (up to its blank line) a websocket upgrade for ``/`` or ``/?...``?"""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or not (parts[1] == b"/" or parts[1].startswith(b"/?")):
        return False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"upgrade":
            return value.strip().lower() == b"websocket"
    return False


class _FirstRequest(Protocol):
    """Reads a connection's first request head, then hands the connection to autobahn or to twisted.web."""

    def __init__(self, site: "ConsoleSite", addr):
        self._site = site
        self._addr = addr
        self._head = b""
        self._timer = None

    def connectionMade(self):
        self._timer = self._site.reactor.callLater(HTTP_TIMEOUT, self.transport.abortConnection)

    def dataReceived(self, data: bytes):
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end >= 0 and is_console_upgrade(self._head[:end]):
            self._hand_over(self._site.console_factory.buildProtocol(self._addr))
        elif end >= 0 or len(self._head) > MAX_HEAD:
            self._hand_over(server.Site.buildProtocol(self._site, self._addr))

    def _hand_over(self, protocol):
        self._timer.cancel()
        transport = self.transport
        if isinstance(transport, ProtocolWrapper):  # TLS
            transport.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(self._head)

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class ConsoleSite(server.Site):
    """The HTTP listener's factory: console websockets go straight to autobahn (see the module's notes)."""

    def __init__(self, root, console_factory, **kwargs):
        super().__init__(root, **kwargs)
        self.console_factory = console_factory

    def buildProtocol(self, addr):
        return _FirstRequest(self, addr)


def make_site(api, console_factory, web_dir: str, reactor=None) -> server.Site:
    """The Site for the HTTP listener; its idle timeouts run on ``reactor``."""
    root = Root(api.app.resource(), WebSocketResource(console_factory), web_dir)
    site = ConsoleSite(root, console_factory, timeout=HTTP_TIMEOUT, reactor=reactor)
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    return site
