"""The byte path's transports on real loopback TCP connections.

send_now: straight to the kernel when it can, Twisted's queue when it cannot.
close_now: closed at once when nothing is queued, Twisted's way otherwise.
ClientTransport: big reads, Twisted's pause threshold.
"""

import array
import fcntl
import os
import socket
import termios

from twisted.internet import reactor, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from serialproxy.transports import CLIENT_READ_SIZE, ClientTransport, close_now, held_bytes, send_now
from serialproxy.websocket import ConsoleFactory

from .helpers import IntegrationTestCase, wait_until, within


class _Collector(Protocol):
    def __init__(self):
        self.received = bytearray()
        self.reads = []
        self.lost = None

    def dataReceived(self, data):
        self.received += data
        self.reads.append(len(data))

    def connectionLost(self, reason):
        self.lost = reason


def _unread(sock) -> int:
    """Bytes waiting in a socket's receive queue."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


class _Producer:
    def __init__(self):
        self.paused = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class SendNowTests(IntegrationTestCase):
    async def connect(self, server_transport=tcp.Server):
        """A client transport and the server protocol that reads from it."""
        accepted = []
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: accepted.append(_Collector()) or accepted[-1]))
        port.transport = server_transport  # as the daemon's listener does (tap)
        self.addCleanup(port.stopListening)
        client = await within(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(_Collector)), "the connection")
        self.addCleanup(client.transport.abortConnection)
        self.client = client
        await wait_until(lambda: accepted and accepted[0].transport is not None, "the accept")
        self.addCleanup(accepted[0].transport.abortConnection)
        return client.transport, accepted[0]

    async def test_nothing_queued_goes_straight_out(self):
        """With nothing queued the chunks are in the kernel when send_now returns: nothing left in Twisted's buffers."""
        transport, peer = await self.connect()
        send_now(transport, (b"head", b"-", b"payload"))
        self.assertEqual((transport._tempDataBuffer, transport.dataBuffer[transport.offset:]), ([], b""))
        await wait_until(lambda: bytes(peer.received) == b"head-payload", "the bytes")

    async def test_queued_bytes_keep_their_order(self):
        """Behind bytes Twisted has queued, send_now queues too: order is kept."""
        transport, peer = await self.connect()
        transport.write(b"first,")
        send_now(transport, (b"second",))
        self.assertEqual(transport._tempDataBuffer, [b"first,", b"second"])
        await wait_until(lambda: bytes(peer.received) == b"first,second", "the bytes in order")

    async def test_what_the_kernel_refuses_is_queued_and_pauses_the_producer(self):
        """A peer that does not read: the kernel takes part, the rest is queued (the producer paused), all arrives in order."""
        transport, peer = await self.connect()
        producer = _Producer()
        transport.registerProducer(producer, True)
        peer.transport.pauseProducing()
        data = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than loopback's socket buffers hold
        send_now(transport, (data[:10], data[10:]))
        queued = len(b"".join(transport._tempDataBuffer)) + len(transport.dataBuffer) - transport.offset
        self.assertTrue(0 < queued < len(data), queued)
        self.assertEqual(held_bytes(transport), queued)
        self.assertEqual(producer.paused, 1)
        peer.transport.resumeProducing()
        await wait_until(lambda: len(peer.received) >= len(data), "8 MiB through", 30)
        self.assertEqual(bytes(peer.received), data)

    async def test_closing_and_other_transports_take_the_usual_way(self):
        """A transport that is closing, or is not plain TCP, gets writeSequence."""
        transport, peer = await self.connect()
        transport.loseConnection()
        send_now(transport, (b"late",))
        self.assertEqual(transport._tempDataBuffer, [b"late"])
        memory = StringTransport()
        send_now(memory, (b"a", b"b"))
        self.assertEqual(memory.value(), b"ab")
        self.assertIsNone(held_bytes(memory))

    async def test_close_now_with_nothing_queued_closes_before_returning(self):
        """Nothing queued: the connection is closed, the protocol told, when close_now returns; the peer sees a clean end."""
        transport, peer = await self.connect()
        send_now(transport, (b"last words",))
        close_now(transport)
        self.assertTrue(self.client.lost.check(ConnectionDone), self.client.lost)
        self.assertFalse(transport.connected)
        await wait_until(lambda: peer.lost is not None, "the peer to see the end")
        self.assertTrue(peer.lost.check(ConnectionDone), peer.lost)
        self.assertEqual(bytes(peer.received), b"last words")

    async def test_close_now_behind_queued_bytes_takes_twisteds_way(self):
        """Bytes queued: Twisted closes once they are written; all of them arrive, then the end."""
        transport, peer = await self.connect()
        transport.write(b"queued")
        close_now(transport)
        self.assertIsNone(self.client.lost)
        self.assertTrue(transport.disconnecting)
        await wait_until(lambda: peer.lost is not None, "the peer to see the end")
        self.assertEqual(bytes(peer.received), b"queued")
        self.assertTrue(self.client.lost.check(ConnectionDone), self.client.lost)

    async def test_close_now_with_a_paused_producer_takes_twisteds_way(self):
        """A paused streaming producer: Twisted would resume it rather than close, so close_now leaves it to Twisted."""
        transport, peer = await self.connect()
        transport.registerProducer(_Producer(), True)
        transport.producerPaused = True  # as Twisted leaves it while its buffer is full
        close_now(transport)
        self.assertIsNone(self.client.lost)
        self.assertTrue(transport.disconnecting)

    async def test_close_now_on_other_transports_is_lose_connection(self):
        """A transport that is not plain TCP (TLS, a test's) gets loseConnection."""
        memory = StringTransport()
        close_now(memory)
        self.assertTrue(memory.disconnecting)

    async def test_autobahn_frames_go_straight_out(self):
        """ConsoleProtocol.sendData (the handshake answer, close, ping, pong) uses send_now; queued sends stay autobahn's."""
        transport, peer = await self.connect()
        protocol = ConsoleFactory(sessions=None).buildProtocol(None)
        transport.protocol = protocol  # as web._FirstRequest hands a connection over
        protocol.makeConnection(transport)
        protocol.sendData(b"HTTP/1.1 101 ")
        self.assertEqual((transport._tempDataBuffer, transport.dataBuffer[transport.offset:]), ([], b""))
        self.assertEqual(protocol.trafficStats.preopenOutgoingOctetsWireLevel, 13)
        protocol.sendData(b"chopped", chopsize=3)  # autobahn's send queue, drained over reactor turns
        await wait_until(lambda: bytes(peer.received) == b"HTTP/1.1 101 chopped", "both, in order")
        transport.abortConnection()
        await wait_until(lambda: protocol.state == protocol.STATE_CLOSED, "autobahn to see the connection go")


class ClientTransportTests(SendNowTests):
    """The daemon's listener's transport: everything above holds for it too, and it reads big."""

    def connect(self):
        return super().connect(server_transport=ClientTransport)

    async def test_reads_big_and_pauses_as_twisted_does(self):
        """What the kernel holds is read at once, up to 512 KiB; the write pause threshold stays Twisted's 64 KiB."""
        transport, peer = await self.connect()
        self.assertIs(type(peer.transport), ClientTransport)
        peer.transport.pauseProducing()
        peer.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        data = os.urandom(CLIENT_READ_SIZE + 100 * 1024)
        transport.write(data)
        await wait_until(lambda: _unread(peer.transport.socket) == len(data), "the bytes waiting to be read", 30)
        peer.transport.resumeProducing()
        await wait_until(lambda: len(peer.received) == len(data), "the bytes read")
        self.assertEqual(peer.reads[0], CLIENT_READ_SIZE)
        self.assertEqual(bytes(peer.received), data)
        self.assertEqual(peer.transport.bufferSize, 65536)
