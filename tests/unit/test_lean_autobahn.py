"""LeanServerProtocol on its own (not as a console): what a websocket peer sees is what autobahn's own protocol gives."""

import base64
import os

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.lean_autobahn import LeanServerFactory, LeanServerProtocol
from serialproxy.testing import TCPStringTransport

KEY = base64.b64encode(bytes(range(16))).decode()


def _head(origin: str = None) -> bytes:
    lines = ["GET /?a=1 HTTP/1.1", "Host: 127.0.0.1:6083", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _echo(base):
    class Echo(base):
        def onConnect(self, request):
            self.seen = (request.path, request.params, request.host)

        def onMessage(self, payload, isBinary):
            self.sendMessage(payload, isBinary)

    return Echo


def _session(factory_class, protocol_class, origin=None):
    """A handshake, a binary message and a close from the client: (bytes written back, connections counted, state, request seen, lost)."""
    factory = factory_class(None, server=None)
    factory.protocol = _echo(protocol_class)
    factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0)
    protocol = factory.buildProtocol(None)
    transport = TCPStringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
    protocol.makeConnection(transport)
    counted = factory.countConnections
    protocol.dataReceived(_head(origin))
    protocol.dataReceived(_masked(0x2, b"hello"))
    protocol.dataReceived(_masked(0x8, b"\x03\xe8"))
    if transport.disconnecting:  # the close reply went: the client ends the connection
        protocol.connectionLost(Failure(ConnectionDone()))
    return transport.value(), counted, protocol.state, getattr(protocol, "seen", None), factory.countConnections


class LeanServerTests(SynchronousTestCase):
    def test_a_session_as_autobahn_gives_it(self):
        """The 101, the echo, the close reply and the connection count are autobahn's, byte for byte."""
        lean = _session(LeanServerFactory, LeanServerProtocol)
        theirs = _session(WebSocketServerFactory, WebSocketServerProtocol)
        self.assertEqual(lean, theirs)
        written, counted, _, seen, left = lean
        self.assertIn(b"101 Switching Protocols", written)
        self.assertIn(b"\x82\x05hello", written)  # the echo
        self.assertTrue(written.endswith(b"\x88\x02\x03\xe8"))  # the close reply
        self.assertEqual((counted, seen, left), (1, ("/", {"a": ["1"]}, "127.0.0.1"), 0))

    def test_plain_reading_and_refused_origin(self):
        """A plain request is read without autobahn's processHandshake; an Origin ``origin_plain`` refuses takes it."""
        calls = []

        class Refusing(LeanServerProtocol):
            def origin_plain(self, origin, host):
                return origin != "https://refused.example"

        original = WebSocketServerProtocol.processHandshake
        WebSocketServerProtocol.processHandshake = lambda self: calls.append(self) or original(self)
        self.addCleanup(setattr, WebSocketServerProtocol, "processHandshake", original)
        for origin, expected in ((None, 0), ("https://ok.example", 0), ("https://refused.example", 1)):
            del calls[:]
            written = _session(LeanServerFactory, Refusing, origin)[0]
            self.assertEqual(len(calls), expected, origin)
            self.assertIn(b"101 Switching Protocols", written)
        del calls[:]
        written = _session(LeanServerFactory, Refusing, "null")[0]  # autobahn refuses it, with its own answer
        self.assertEqual(len(calls), 1)
        self.assertEqual(written, _session(WebSocketServerFactory, WebSocketServerProtocol, "null")[0])
        self.assertNotIn(b"101", written)
