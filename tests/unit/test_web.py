"""The URL tree and the HTTP limits of the one listener, in memory."""

import os

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import resource
from twisted.web.test.requesthelper import DummyRequest

from serialproxy.api import MAX_BODY
from serialproxy.web import CONTENT_SECURITY_POLICY, make_site


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


class WebTests(SynchronousTestCase):
    def setUp(self):
        web = self.mktemp()
        os.makedirs(web)
        with open(os.path.join(web, "index.html"), "w") as f:
            f.write("<p>console page</p>")
        self.clock = Clock()
        self.site = make_site(_API(), None, web, self.clock)
        self.site.resource._websocket = _Leaf("websocket")

    def request(self, raw: bytes) -> bytes:
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        return transport.value()

    def test_idle_connections_time_out_on_the_injected_clock(self):
        """An idle HTTP connection is dropped after HTTP_TIMEOUT seconds of the site's clock."""
        from serialproxy.web import HTTP_TIMEOUT
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        self.clock.advance(HTTP_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_api_paths_keep_their_prefix(self):
        """/v3/... reaches the API with the whole path."""
        self.assertIn(b"api GET v3/servers/x", self.request(b"GET /v3/servers/x HTTP/1.1\r\nHost: h\r\n\r\n"))
        self.assertIn(b"api POST v2/t/servers", self.request(b"POST /v2/t/servers HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"))

    def test_root_serves_page_or_websocket(self):
        """/?token= is the console page for a browser and the websocket for an Upgrade."""
        browser = DummyRequest([b""])
        page = self.site.resource.getChild(b"", browser)
        self.assertEqual(os.path.basename(page.path), "index.html")
        upgrade = self.request(b"GET /?token=abc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        self.assertIn(b"websocket GET", upgrade)

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
