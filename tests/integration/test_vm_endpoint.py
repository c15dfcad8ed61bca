"""transports.VMEndpoint and names.NamedVMEndpoint on real loopback sockets: made at once, or Twisted's wait; failures, timeout, cancel."""

import os
import socket

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectBindError, ConnectingCancelledError, ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from serialproxy.names import NameCache, NamedVMEndpoint
from serialproxy.transports import VMEndpoint, _plain_tcp, _VMClient, _VMTransport, quick_ack

from .helpers import IntegrationTestCase, closed_port, wait_until, within


class _Peer(Protocol):
    def __init__(self):
        self.received = bytearray()
        self.made_when_connected = None

    def connectionMade(self):
        self.made_when_connected = self.transport.connected

    def dataReceived(self, data):
        self.received += data


def connect_timeouts() -> list:
    """The reactor's pending connect timeouts (Twisted's connector times a connection out with failIfNotConnected)."""
    return [call for call in reactor.getDelayedCalls() if getattr(call.func, "__name__", "") == "failIfNotConnected"]


class _CountingFactory(Factory):
    """A factory that notes its starts and stops."""

    protocol = _Peer

    def __init__(self):
        self.starts = self.stops = 0

    def doStart(self):
        self.starts += 1

    def doStop(self):
        self.stops += 1


def open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def open_sockets() -> set:
    """This process's open sockets, by inode (the reactor's own pipes come and go as trial runs it)."""
    sockets = set()
    for fd in open_fds():
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the directory's own descriptor, closed by now
            continue
        if target.startswith("socket:"):
            sockets.add(target)
    return sockets


class _LoopbackTestCase(IntegrationTestCase):
    """Listeners on loopback for endpoints to dial."""

    async def listen(self):
        accepted = []
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: accepted.append(_Peer()) or accepted[-1]))
        self.addCleanup(port.stopListening)
        return port.getHost().port, accepted

    def full_listener(self) -> int:
        """A listening port whose accept queue is full: a new connection's SYN is dropped, so it stays in progress."""
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname(), timeout=5)  # the one place the queue has
        self.addCleanup(filler.close)
        self.listener = listener
        return listener.getsockname()[1]


class VMEndpointTests(_LoopbackTestCase):

    async def waiting(self):
        """Until a VM connection is in progress, its socket watched for writing (Twisted's wait)."""
        await wait_until(lambda: any(isinstance(w, _VMClient) for w in reactor.getWriters()),
                         "the connection to wait for its socket")

    async def test_a_local_connection_is_the_callers_protocol_connected(self):
        """On loopback the kernel has made the connection: the caller's own protocol has it, connected, both ways."""
        port, accepted = await self.listen()
        d = VMEndpoint(reactor, "127.0.0.1", port, 5).connect(Factory.forProtocol(_Peer))
        self.assertTrue(d.called, "made within connect, with no reactor turn")
        self.assertEqual(connect_timeouts(), [], "no connect timeout made (to be cancelled at once)")
        writers = []
        reactor.callLater(0, lambda: writers.extend(w for w in reactor.getWriters() if isinstance(w, _VMClient)))
        protocol = await within(d, "connect")
        self.addCleanup(protocol.transport.abortConnection)
        self.assertEqual(writers, [], "made without waiting for the socket to be writable")
        self.assertIs(type(protocol), _Peer)
        self.assertIs(protocol.transport.protocol, protocol, "not wrapped in a forwarding protocol")
        self.assertTrue(protocol.made_when_connected)
        await wait_until(lambda: accepted, "the accept")
        protocol.transport.write(b"to the VM")
        accepted[0].transport.write(b"from the VM")
        await wait_until(lambda: bytes(accepted[0].received) == b"to the VM", "the bytes to the VM")
        await wait_until(lambda: bytes(protocol.received) == b"from the VM", "the bytes from the VM")

    async def test_a_connection_made_at_once_is_a_plain_tcp_transport(self):
        """Made at once: the plain transport of a connected socket (send_now's), its peer the VM, its factory started then stopped."""
        port, accepted = await self.listen()
        factory = _CountingFactory()
        protocol = await within(VMEndpoint(reactor, "127.0.0.1", port, 5).connect(factory), "connect")
        transport = protocol.transport
        self.assertIs(type(transport), _VMTransport)
        self.assertTrue(_plain_tcp(transport), "send_now and close_now write and close it directly")
        self.assertEqual((transport.getPeer().host, transport.getPeer().port), ("127.0.0.1", port))
        self.assertEqual(transport.getHost().host, "127.0.0.1")
        self.assertEqual(repr(transport), f"<_Peer to the VM at 127.0.0.1:{port}>")
        self.assertEqual((factory.starts, factory.stops), (1, 0))
        await wait_until(lambda: accepted, "the accept")
        accepted[0].transport.loseConnection()  # the VM ends it
        await wait_until(lambda: not transport.connected, "the connection to end")
        self.assertEqual((factory.starts, factory.stops), (1, 1))

    async def test_a_factory_that_raises_leaves_no_socket(self):
        """A connection made at once whose factory raises is closed, and the factory stopped."""
        port, accepted = await self.listen()

        class Broken(_CountingFactory):
            def buildProtocol(self, addr):
                raise ValueError("no protocol for you")

        factory = Broken()
        before = open_sockets()
        d = VMEndpoint(reactor, "127.0.0.1", port, 5).connect(factory)
        self.assertEqual(open_sockets(), before, "its socket closed")
        with self.assertRaises(ValueError):
            await within(d, "the failure")
        self.assertEqual((factory.starts, factory.stops), (1, 1))

    async def test_a_connection_that_waits_keeps_its_first_socket(self):
        """Still in progress: Twisted's client waits on the socket the attempt began on (the VM sees one attempt)."""
        port = self.full_listener()
        before = open_sockets()
        d = VMEndpoint(reactor, "127.0.0.1", port, 30).connect(Factory.forProtocol(_Peer))
        await self.waiting()
        self.assertEqual(len(open_sockets() - before), 1, "one socket for the attempt")
        d.cancel()
        with self.assertRaises(ConnectingCancelledError):
            await d
        await wait_until(lambda: open_sockets() == before, "the attempt's socket to be closed")

    async def test_no_file_left_for_the_socket(self):
        """No file descriptor for the socket (EMFILE): ConnectBindError with its errno, as Twisted's client reports it."""
        import errno

        def out_of_files(*args, **kwargs):
            raise OSError(errno.EMFILE, "Too many open files")

        self.patch(socket, "socket", out_of_files)
        d = VMEndpoint(reactor, "127.0.0.1", 9, 5).connect(Factory.forProtocol(_Peer))
        with self.assertRaises(ConnectBindError) as caught:
            await within(d, "the failure")
        self.assertEqual(caught.exception.osError, errno.EMFILE)

    async def test_ipv6_loopback(self):
        """An IPv6 literal connects over IPv6."""
        accepted = []
        port = await TCP4ServerEndpoint(reactor, 0, interface="::1").listen(
            Factory.forProtocol(lambda: accepted.append(_Peer()) or accepted[-1]))
        self.addCleanup(port.stopListening)
        protocol = await within(VMEndpoint(reactor, "::1", port.getHost().port, 5).connect(Factory.forProtocol(_Peer)),
                                "connect")
        self.addCleanup(protocol.transport.abortConnection)
        self.assertEqual(protocol.transport.getPeer().host, "::1")
        self.assertEqual(repr(protocol.transport), f"<_Peer to the VM at [::1]:{port.getHost().port}>")

    async def test_a_connection_still_in_progress_waits_as_twisted_does(self):
        """The SYN dropped (the listener's queue full): the connection waits, and is made once the queue has room."""
        port = self.full_listener()
        d = VMEndpoint(reactor, "127.0.0.1", port, 30).connect(Factory.forProtocol(_Peer))
        await self.waiting()
        self.assertFalse(d.called)
        self.assertEqual(len(connect_timeouts()), 1, "a connection that waits is timed")
        self.listener.accept()[0].close()  # room: the SYN the kernel sends again (after a second) gets in
        protocol = await within(d, "the connection, once the SYN is sent again", 15)
        self.addCleanup(protocol.transport.abortConnection)
        self.assertTrue(protocol.made_when_connected)
        self.assertEqual(protocol.transport.getPeer().port, port)

    async def test_quick_ack(self):
        """quick_ack puts an open connection in quick-ACK mode, and does nothing to a closed one or a test's transport."""
        class Answering(_Peer):
            def dataReceived(self, data):  # a keystroke right after the VM's output: the kernel delays this end's ACKs now
                super().dataReceived(data)
                self.transport.write(b"k")

        port, accepted = await self.listen()
        protocol = await within(VMEndpoint(reactor, "127.0.0.1", port, 5).connect(Factory.forProtocol(Answering)), "connect")
        await wait_until(lambda: accepted, "the accept")
        for n in (1, 2, 3):
            accepted[0].transport.write(b"o")
            await wait_until(lambda: len(accepted[0].received) == n, "the answer")
        skt = protocol.transport.socket
        self.assertEqual(skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK), 0)
        quick_ack(protocol.transport)
        self.assertEqual(skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK), 1)
        protocol.transport.abortConnection()
        await wait_until(lambda: not protocol.transport.connected, "the close")
        quick_ack(protocol.transport)  # closed: no socket left
        quick_ack(StringTransport())

    async def test_refused(self):
        """Nothing listening: ConnectionRefusedError, as from Twisted's endpoint."""
        port = await closed_port(self)
        d = VMEndpoint(reactor, "127.0.0.1", port, 5).connect(Factory.forProtocol(_Peer))
        self.assertTrue(d.called, "refused within connect: loopback answers at once")
        with self.assertRaises(ConnectionRefusedError):
            await within(d, "refusal")
        self.assertEqual(connect_timeouts(), [], "no connect timeout left behind")

    async def test_timeout(self):
        """A connection not made within the timeout fails with TimeoutError."""
        port = self.full_listener()
        with self.assertRaises(TimeoutError):
            await within(VMEndpoint(reactor, "127.0.0.1", port, 0.3).connect(Factory.forProtocol(_Peer)), "timeout")

    async def test_cancel(self):
        """Cancelling a connection in progress fails it with ConnectingCancelledError, as Twisted's endpoints do."""
        port = self.full_listener()
        d = VMEndpoint(reactor, "127.0.0.1", port, 30).connect(Factory.forProtocol(_Peer))
        await self.waiting()
        d.cancel()
        with self.assertRaises(ConnectingCancelledError):
            await d

    async def test_a_factory_that_raises(self):
        """A protocol factory that raises fails the connection attempt with its error."""
        port, accepted = await self.listen()

        class Broken(Factory):
            def buildProtocol(self, addr):
                raise ValueError("no protocol for you")

        with self.assertRaises(ValueError):
            await within(VMEndpoint(reactor, "127.0.0.1", port, 5).connect(Broken()), "the failure")


class _CountingResolver:
    """The reactor's own resolver (getaddrinfo in a thread), counted; or fixed ``answers`` (addresses as text)."""

    def __init__(self, answers=None):
        self.asked = []
        self._answers = answers

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        self.asked.append(hostName)
        if self._answers is None:
            return reactor.nameResolver.resolveHostName(receiver, hostName, portNumber, addressTypes, transportSemantics)
        receiver.resolutionBegan(None)
        for host in self._answers:
            receiver.addressResolved(IPv4Address("TCP", host, portNumber))
        receiver.resolutionComplete()
        return None


class NamedVMEndpointTests(_LoopbackTestCase):
    """names.NamedVMEndpoint: a VM at a host name, its addresses kept (NameCache) and dialled in turn."""

    async def test_a_name_is_resolved_once_and_dialled_at_once(self):
        """localhost, through the reactor's resolver: asked once for two connections, each made within connect."""
        port, accepted = await self.listen()
        resolver = _CountingResolver()
        names = NameCache(reactor, resolver=resolver)
        for n in (1, 2):
            d = NamedVMEndpoint(names, reactor, "localhost", port, 5).connect(Factory.forProtocol(_Peer))
            protocol = await within(d, "connect")
            self.addCleanup(protocol.transport.abortConnection)
            self.assertIs(type(protocol.transport), _VMTransport)
            self.assertEqual(protocol.transport.getPeer().host, "127.0.0.1")
            await wait_until(lambda: len(accepted) == n, "the accept")
        self.assertEqual(resolver.asked, ["localhost"])
        d = NamedVMEndpoint(names, reactor, "localhost", port, 5).connect(Factory.forProtocol(_Peer))
        self.assertTrue(d.called, "a name known already: made within connect, with no reactor turn")
        self.addCleanup((await d).transport.abortConnection)

    async def test_the_next_address_after_a_refusal(self):
        """An address that refuses is followed by the next at once."""
        port, accepted = await self.listen()  # 127.0.0.1 only: 127.0.0.2 refuses
        names = NameCache(reactor, resolver=_CountingResolver(["127.0.0.2", "127.0.0.1"]))
        protocol = await within(NamedVMEndpoint(names, reactor, "hv.example", port, 5).connect(Factory.forProtocol(_Peer)),
                                "connect")
        self.addCleanup(protocol.transport.abortConnection)
        self.assertEqual(protocol.transport.getPeer().host, "127.0.0.1")

    async def test_none_answers(self):
        """No address answers: the last error, and the name is asked again next time (it may have moved)."""
        port = await closed_port(self)
        resolver = _CountingResolver(["127.0.0.2", "127.0.0.1"])
        names = NameCache(reactor, resolver=resolver)
        for _ in range(2):
            with self.assertRaises(ConnectionRefusedError):
                await within(NamedVMEndpoint(names, reactor, "hv.example", port, 5).connect(Factory.forProtocol(_Peer)),
                             "refusal")
        self.assertEqual(resolver.asked, ["hv.example"] * 2)

    async def test_the_timeout_is_shared(self):
        """An address that does not answer has its share of the timeout, and the next one its chance."""
        port = self.full_listener()  # 127.0.0.1: its SYNs are dropped
        second = socket.socket()
        self.addCleanup(second.close)
        second.bind(("127.0.0.2", port))
        second.listen(8)
        names = NameCache(reactor, resolver=_CountingResolver(["127.0.0.1", "127.0.0.2"]))
        started = reactor.seconds()
        protocol = await within(NamedVMEndpoint(names, reactor, "hv.example", port, 1).connect(Factory.forProtocol(_Peer)),
                                "connect")
        self.addCleanup(protocol.transport.abortConnection)
        self.assertEqual(protocol.transport.getPeer().host, "127.0.0.2")
        self.assertLess(reactor.seconds() - started, 1)

    async def test_no_address(self):
        """A name without addresses fails with DNSLookupError, which the console reports as an unreachable VM."""
        names = NameCache(reactor, resolver=_CountingResolver([]))
        with self.assertRaises(DNSLookupError):
            await within(NamedVMEndpoint(names, reactor, "nowhere.invalid", 4555, 5).connect(Factory.forProtocol(_Peer)),
                         "the failure")
