"""ConsoleProtocol's reading of a plain upgrade request, against autobahn's processHandshake on the same bytes."""

import base64
import hashlib
from urllib.parse import parse_qs

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from hypothesis import event, given, settings, strategies as st
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.handshake import query_params
from serialproxy.testing import TCPStringTransport
from serialproxy.websocket import ConsoleFactory, ConsoleProtocol

KEY = base64.b64encode(bytes(range(16))).decode()
ALLOWED = ("https://console.example",)


def request(uri: str = "/?token=t0k&mode=read", headers: tuple = (), line: str = None) -> bytes:
    """A request head: the plain headers a client sends, replaced (names in any case) or added to by ``headers`` ((name, value or None to leave it out))."""
    plain = {name.lower(): (name, value) for name, value in (
        ("Host", "127.0.0.1:6083"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13"))}
    extra, replaced = [], set()
    for name, value in headers:
        if name.lower() in plain and name.lower() not in replaced:  # the first time: in its place
            plain[name.lower()] = (name, value)
            replaced.add(name.lower())
        else:
            extra.append((name, value))
    lines = [line if line is not None else f"GET {uri} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in list(plain.values()) + extra if value is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")


def handshake(head: bytes, autobahns: bool = False) -> tuple:
    """What a console protocol makes of ``head`` (through autobahn's processHandshake if ``autobahns``).

    Returns the bytes written back, the state, what onConnect was given, what
    autobahn keeps of the request, what is left unread, and whether onOpen ran.
    """
    factory = ConsoleFactory(sessions=None, allowed_origins=ALLOWED, ping_interval=0)
    protocol = factory.buildProtocol(None)
    requests, opened = [], []
    on_connect = protocol.onConnect
    protocol.onConnect = lambda r: requests.append(
        (r.peer, r.headers, r.host, r.path, r.params, r.version, r.origin, r.protocols, r.extensions)) or on_connect(r)
    protocol.onOpen = lambda: opened.append(True)
    if autobahns:
        protocol.processHandshake = lambda: WebSocketServerProtocol.processHandshake(protocol)
    transport = TCPStringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(head + b"\x88\x80")  # a frame after the head stays for the frame reader
    kept = None
    if requests:
        kept = (protocol.http_request_data, protocol.http_status_line, protocol.http_headers, protocol.http_request_uri,
                protocol.http_request_path, protocol.http_request_params, protocol.http_request_host,
                protocol.websocket_version, protocol.websocket_protocols, protocol.websocket_origin,
                protocol.websocket_extensions, protocol._wskey, getattr(protocol, "websocket_protocol_in_use", None))
    return transport.value(), protocol.state, requests, kept, protocol.data, opened, protocol._origin_ok


# The parts of a request, each with values that keep it plain (read by
# ConsoleProtocol itself) and odd ones (each of which leaves it to autobahn).
_PLAIN = {
    "line": [None],
    "uri": ["/", "/?", "/?token=t0k", "/?token=a%20b&mode=read", "/?token=x&token=y&mode=write",
            "/?token=&mode&=x&&mode=read=write", "/?token=a+b"],
    "host": ["127.0.0.1:6083", "127.0.0.1", "[::1]:6083", "[::1]", "console.example:443", "h:+80", ""],
    "upgrade": ["websocket", "WebSocket", "h2c, websocket"],
    "connection": ["Upgrade", "keep-alive, Upgrade", "upgrade"],
    "version": ["13", " 13"],
    "key": [KEY, base64.b64encode(b"\xff" * 16).decode()],
    "protocols": [None, "binary", "base64", "base64, binary", "chat"],
    "origin": [None, "https://console.example", "HTTPS://Console.Example"],
    "extensions": [None, "permessage-deflate; client_max_window_bits", "x-webkit-deflate-frame",
                   "permessage-deflate; no_such_parameter=1"],  # declined, or refused as malformed, as autobahn does
    "twice": [None],
}
_ODD = {
    "line": ["POST / HTTP/1.1", "GET / HTTP/1.0", "GET / HTTP/1.1 x", "get / HTTP/1.1", "GET"],
    "uri": ["/t?x", "/?t=1#frag", "/path?token=t", "http://127.0.0.1:6083/?token=t", "/;p?token=t"],
    "host": ["h:port", "h:\u00b2", None],
    "upgrade": ["foo", "", None],
    "connection": ["close", None],
    "version": ["8", "x", "", None],
    "key": [KEY[:-1], KEY[:-2] + "AA", "*" + KEY[1:], None],
    "protocols": ["binary, binary"],
    "origin": ["http://evil.example", "null", "file://", "junk", "https://console.example/"],
    "twice": ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "X-Other"],
}
_HEADERS = {"host": "Host", "upgrade": "Upgrade", "connection": "Connection", "key": "Sec-WebSocket-Key",
            "version": "Sec-WebSocket-Version", "protocols": "Sec-WebSocket-Protocol", "origin": "Origin",
            "extensions": "Sec-WebSocket-Extensions"}


class QueryParamsTests(SynchronousTestCase):
    @settings(max_examples=1000, deadline=None)
    @given(query=st.text(alphabet="ab=&%+;2Fé ", max_size=24))
    def test_the_same_as_parse_qs(self, query):
        """Any query, escaped or not: what parse_qs (autobahn's reading) makes of it."""
        self.assertEqual(query_params("/?" + query), parse_qs(query))
        self.assertEqual(query_params("/"), {})


class PlainUpgradeTests(SynchronousTestCase):
    def setUp(self):
        self.read_by_autobahn = []
        reading = WebSocketServerProtocol.processHandshake
        self.patch(WebSocketServerProtocol, "processHandshake",
                   lambda protocol: self.read_by_autobahn.append(protocol) or reading(protocol))

    @settings(max_examples=500, deadline=None)
    @given(data=st.data(), odd=st.sets(st.sampled_from(sorted(_ODD)), max_size=2),
           case=st.sampled_from([str, str.lower, str.upper]))
    def test_the_same_as_autobahns(self, data, odd, case):
        """Any request: the same answer, state and request for onConnect as autobahn's own reading, which reads it if and only if it is odd."""
        part = {name: data.draw(st.sampled_from(_ODD[name] if name in odd else values), label=name)
                for name, values in sorted(_PLAIN.items())}
        headers = [(case(_HEADERS[name]), part[name]) for name in _HEADERS]
        twice = part["twice"]
        if twice is not None:  # given twice, whatever else it is
            given = dict(headers).get(case(twice))
            headers += [(twice, given or "again")] * (1 if given is not None else 2)
        head = request(part["uri"], tuple(headers), part["line"])
        del self.read_by_autobahn[:]
        ours = handshake(head)
        self.assertEqual(bool(self.read_by_autobahn), bool(odd), "read by autobahn if and only if odd")
        event("plain" if not odd else "odd")
        self.assertEqual(ours, handshake(head, autobahns=True))

    def test_a_plain_request_is_read_without_autobahns_reading(self):
        """A browser's request (Origin, extension offers, a subprotocol): answered 101 without autobahn's processHandshake or its debug text."""
        called, built = [], []
        self.patch(WebSocketServerProtocol, "processHandshake", lambda protocol: called.append(protocol))
        self.patch(autobahn_protocol, "hltype", lambda obj: built.append(obj) or "")
        head = request(headers=(("Origin", "http://127.0.0.1:6083"), ("Sec-WebSocket-Protocol", "base64, binary"),
                                ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")))
        written, state, requests, kept, rest, opened, origin_ok = handshake(head)
        self.assertEqual((called, built), ([], []))
        self.assertTrue(written.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), written)
        self.assertIn(b"Sec-WebSocket-Accept: " + base64.b64encode(
            hashlib.sha1(KEY.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()) + b"\r\n", written)
        self.assertIn(b"Sec-WebSocket-Protocol: base64\r\n", written)
        self.assertNotIn(b"Sec-WebSocket-Extensions", written)  # no offer is taken
        self.assertNotIn(b"\r\nserver:", written.lower())  # no software name or version (autobahn's default)
        self.assertEqual(requests[0][4], {"token": ["t0k"], "mode": ["read"]})
        self.assertEqual((state, rest, opened, origin_ok), (WebSocketServerProtocol.STATE_OPEN, b"\x88\x80", [True], True))

    def test_anything_else_is_autobahns(self):
        """A header given twice, a refused Origin, another version: autobahn's processHandshake reads it."""
        for headers in ((("X-Other", "a"), ("x-other", "b")), (("Origin", "http://evil.example"),),
                        (("Sec-WebSocket-Version", "8"),), (("Origin", "null"),)):
            called = []
            self.patch(WebSocketServerProtocol, "processHandshake", lambda protocol: called.append(protocol))
            handshake(request(headers=headers))
            self.assertEqual(len(called), 1, headers)

    def test_a_port_other_than_the_factorys_is_autobahns_to_refuse(self):
        """With an external port set on the factory, a Host naming another port is refused as autobahn refuses it."""
        head = request(headers=(("Host", "127.0.0.1:7000"),))
        factory = ConsoleFactory(sessions=None, ping_interval=0)
        factory.setSessionParameters(externalPort=6083)
        protocol = factory.buildProtocol(None)
        transport = TCPStringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(head)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())

    def test_an_onconnect_that_fails_is_answered_as_autobahn_answers_it(self):
        """An error in onConnect: HTTP 500 with the error, logged, as autobahn does, and no session."""
        for autobahns in (False, True):
            self.patch(ConsoleProtocol, "onConnect", lambda protocol, request: 1 / 0)
            written, state, requests, kept, rest, opened, origin_ok = handshake(request(), autobahns)
            self.assertTrue(written.startswith(b"HTTP/1.1 500 Internal server error: division by zero"), written)
            self.assertEqual(opened, [])
            self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 0 if autobahns else 1)



class _Sessions:
    """What ConsoleProtocol asks of the session manager; ``attach`` waits for ``wait`` if given, then resumes the client as a console does."""

    def __init__(self, wait=None):
        self.wait = wait
        self.input = []

    async def attach(self, client, secret, peer, mode):
        if self.wait is not None:
            await self.wait
        client.transport.resumeProducing()  # Console.attach's last step
        return "session"

    def from_client(self, session, *data):
        self.input.extend(data)


class AttachTests(SynchronousTestCase):
    def open(self, sessions):
        protocol = ConsoleFactory(sessions=sessions, ping_interval=0).buildProtocol(None)
        transport = TCPStringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        states = []
        pause = transport.pauseProducing
        transport.pauseProducing = lambda: states.append("paused") or pause()
        protocol.makeConnection(transport)
        protocol.dataReceived(request())
        return protocol, transport, states

    def test_an_attach_that_waits_for_nothing_never_pauses_the_client(self):
        """A session attached within the handshake's call: the client is never paused, and its input goes to the session."""
        sessions = _Sessions()
        protocol, transport, states = self.open(sessions)
        self.assertEqual((states, transport.producerState, protocol._session), ([], "producing", "session"))
        protocol.dataReceived(b"\x82\x81\x00\x00\x00\x00a")
        self.assertEqual(sessions.input, [b"a"])

    def test_an_attach_that_waits_pauses_the_client_meanwhile(self):
        """A session whose attach waits (the database): the client is paused until its console resumes it."""
        from twisted.internet.defer import Deferred

        sessions = _Sessions(Deferred())
        protocol, transport, states = self.open(sessions)
        self.assertEqual((states, transport.producerState, protocol._session), (["paused"], "paused", None))
        sessions.wait.callback(None)
        self.assertEqual((transport.producerState, protocol._session), ("producing", "session"))
