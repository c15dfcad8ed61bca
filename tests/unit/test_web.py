"""The URL tree and the HTTP limits of the one listener, in memory."""

import os

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import resource
from twisted.web.test.requesthelper import DummyRequest

from serialproxy.api import MAX_BODY
from serialproxy.web import CONTENT_SECURITY_POLICY, HTTP_TIMEOUT, MAX_HEAD, is_console_upgrade, make_site

_UPGRADE = b"GET /?token=abc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


class _Leaf(resource.Resource):
    isLeaf = True

    def __init__(self, name):
        super().__init__()
        self.name = name

    def render(self, request):
        return f"{self.name} {request.method.decode()} {'/'.join(p.decode() for p in request.postpath)}".encode()


class _API:
    app = None

    def __init__(self):
        self.app = self

    def resource(self):
        return _Leaf("api")


class _Console(Protocol):
    """Stands in for autobahn's protocol: records what it is handed."""

    def __init__(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data


class _ConsoleFactory:
    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        self.built.append(_Console())
        return self.built[-1]


class WebTests(SynchronousTestCase):
    def setUp(self):
        web = self.mktemp()
        os.makedirs(web)
        with open(os.path.join(web, "index.html"), "w") as f:
            f.write("<p>console page</p>")
        self.clock = Clock()
        self.consoles = _ConsoleFactory()
        self.site = make_site(_API(), self.consoles, web, self.clock)
        self.site.resource._websocket = _Leaf("websocket")

    def connect(self):
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        transport.protocol = channel
        channel.makeConnection(transport)
        return transport

    def request(self, raw: bytes) -> bytes:
        transport = self.connect()
        transport.protocol.dataReceived(raw)
        return transport.value()

    def test_idle_connections_time_out_on_the_injected_clock(self):
        """A connection that sends nothing, or half a request, is dropped after HTTP_TIMEOUT seconds of the site's clock."""
        for data in (b"", b"GET / HTTP/1.1\r\nHost"):
            transport = self.connect()
            transport.protocol.dataReceived(data)
            self.clock.advance(HTTP_TIMEOUT - 1)
            self.assertFalse(transport.disconnecting)
            self.clock.advance(1)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_keep_alive_connections_time_out_too(self):
        """After a first plain request, twisted.web's own idle timeout runs on the site's clock."""
        transport = self.connect()
        transport.protocol.dataReceived(b"GET /v3/servers HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertIn(b"api GET", transport.value())
        self.clock.advance(HTTP_TIMEOUT)
        self.assertTrue(transport.disconnecting)

    def test_console_upgrade_goes_straight_to_the_console_factory(self):
        """A first request that is a console websocket is handed, bytes intact, to the console protocol, in pieces too."""
        transport = self.connect()
        for i in range(0, len(_UPGRADE), 7):
            transport.protocol.dataReceived(_UPGRADE[i:i + 7])
        self.assertEqual(len(self.consoles.built), 1)
        console = self.consoles.built[0]
        self.assertIs(transport.protocol, console)
        self.assertIs(console.transport, transport)
        self.assertEqual(console.received, _UPGRADE)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the first-request timeout is gone

    def test_upgrade_after_a_keep_alive_request_still_reaches_the_websocket(self):
        """A websocket upgrade later on a keep-alive connection goes through twisted.web to the websocket resource."""
        transport = self.connect()
        transport.protocol.dataReceived(b"GET /v3/servers HTTP/1.1\r\nHost: h\r\n\r\n" + _UPGRADE)
        self.assertIn(b"websocket GET", transport.value())
        self.assertEqual(self.consoles.built, [])

    def test_long_heads_go_to_twisted_web(self):
        """A head past MAX_HEAD without its blank line is twisted.web's to judge."""
        answer = self.request(b"GET /?token=abc HTTP/1.1\r\nUpgrade: websocket\r\nX: " + b"x" * MAX_HEAD)
        self.assertEqual(self.consoles.built, [])
        self.assertEqual(answer, b"")  # twisted.web waits for the rest of the line

    def test_is_console_upgrade(self):
        """Only GET / or /?... with Upgrade: websocket takes the short way."""
        self.assertTrue(is_console_upgrade(_UPGRADE.split(b"\r\n\r\n")[0]))
        self.assertTrue(is_console_upgrade(b"GET / HTTP/1.1\r\nupgrade :  WebSocket "))
        for head in (b"GET /v3/servers HTTP/1.1\r\nUpgrade: websocket", b"POST /?t HTTP/1.1\r\nUpgrade: websocket",
                     b"GET /?t HTTP/1.1\r\nUpgrade: h2c", b"GET /?t HTTP/1.1\r\nHost: h", b"GET /?t\r\nUpgrade: websocket",
                     b"GET //x HTTP/1.1\r\nUpgrade: websocket", b""):
            self.assertFalse(is_console_upgrade(head), head)

    def test_api_paths_keep_their_prefix(self):
        """/v3/... reaches the API with the whole path."""
        self.assertIn(b"api GET v3/servers/x", self.request(b"GET /v3/servers/x HTTP/1.1\r\nHost: h\r\n\r\n"))
        self.assertIn(b"api POST v2/t/servers", self.request(b"POST /v2/t/servers HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"))

    def test_root_serves_page_or_websocket(self):
        """/?token= is the console page for a browser and the websocket for an Upgrade."""
        browser = DummyRequest([b""])
        page = self.site.resource.getChild(b"", browser)
        self.assertEqual(os.path.basename(page.path), "index.html")
        upgrade = DummyRequest([b""])
        upgrade.requestHeaders.setRawHeaders(b"upgrade", [b"websocket"])
        self.assertIs(self.site.resource.getChild(b"", upgrade), self.site.resource._websocket)

    def test_page_security_headers(self):
        """The console page and its files carry the CSP, nosniff and no-referrer; the page is not cached."""
        for name, cached in ((b"", False), (b"console.js", True)):
            request = DummyRequest([name])
            self.site.resource.getChild(name, request)
            headers = request.responseHeaders
            self.assertEqual(headers.getRawHeaders(b"content-security-policy"), [CONTENT_SECURITY_POLICY.encode()])
            self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
            self.assertEqual(headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
            self.assertEqual(headers.getRawHeaders(b"cache-control"), None if cached else [b"no-store"])
        api = self.request(b"GET /v3/servers HTTP/1.1\r\nHost: h\r\n\r\n").lower()
        self.assertNotIn(b"content-security-policy", api)

    def test_no_server_header(self):
        """Answers do not name the server software or its version (Twisted's Server: TwistedWeb/x.y)."""
        answer = self.request(b"GET /v3/servers HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"\r\ndate: ", answer.lower())  # Twisted's other default header is still there
        self.assertNotIn(b"\r\nserver:", answer.lower())

    def test_body_too_large(self):
        """A declared body over the limit gets 413 and a closed connection, before it is sent."""
        answer = self.request(b"POST /v3/servers HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1))
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "))
        self.assertIn(b'"code": 413', answer)

    def test_chunked_body_too_large(self):
        """A chunked body that grows past the limit is cut off with 413."""
        chunk = b"x" * 4096
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // 4096 + 2))
        answer = self.request(b"POST /v3/servers HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "))
