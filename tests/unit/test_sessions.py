"""Sessions and the bridge, in memory: lock, lease, refusal, flow control, clean-up."""

import itertools

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from serialproxy.bridge import IConsoleClient, VMUnreachable
from serialproxy.errors import CloseCode, ConsoleBusy
from serialproxy.interfaces import SerialPort, Server
from serialproxy.sessions import SessionManager
from serialproxy.testing import MemoryStore
from serialproxy.tokens import TokenService


@implementer(IConsoleClient)
class FakeClient:
    """A client end that records what the bridge does to it."""

    def __init__(self):
        self.transport = StringTransport()
        self.received = []
        self.closed = None

    def send(self, data):
        self.received.append(data)

    def close(self, code, reason):
        self.closed = (code, reason)


def entropy():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


class SessionTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.store = MemoryStore()
        self.server = Server("s1", "vm", "acme", "active", 0.0, (SerialPort(0, "127.0.0.1", 7000),))
        self.successResultOf(self.store.create_server(self.server))
        self.tokens = TokenService(self.store, self.reactor, 600, entropy())
        self.manager = self.make_manager("node-1")
        self.secret = self.successResultOf(Deferred.fromCoroutine(self.tokens.mint(self.server, self.server.serial_ports[0])))

    def make_manager(self, node):
        return SessionManager(self.store, self.tokens, self.reactor, node, lease=30.0, entropy=entropy())

    def attach(self, client, manager=None, peer="127.0.0.1:5000"):
        return Deferred.fromCoroutine((manager or self.manager).attach(client, self.secret, peer))

    def connect_vm(self, index=-1):
        """Complete the VM connection the manager asked the reactor for."""
        host, port, factory, timeout, bind = self.reactor.tcpClients[index]
        self.assertEqual((host, port), ("127.0.0.1", 7000))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def attached(self, client=None, peer="127.0.0.1:5000"):
        client = client or FakeClient()
        d = self.attach(client, peer=peer)
        vm, vm_transport = self.connect_vm()
        return client, self.successResultOf(d), vm, vm_transport

    def test_attach_bridges_both_ways(self):
        """Once attached, client bytes reach the VM and VM bytes reach the client."""
        client, session, vm, vm_transport = self.attached()
        session.bridge.from_client(b"ls\r")
        vm.dataReceived(b"bin etc\r\n")
        self.assertEqual(vm_transport.value(), b"ls\r")
        self.assertEqual(client.received, [b"bin etc\r\n"])

    def test_flow_control(self):
        """A full client buffer pauses the VM side and a full VM buffer pauses the client, both ways."""
        client, session, vm, vm_transport = self.attached()
        self.assertTrue(client.transport.streaming)
        self.assertEqual(client.transport.producerState, "producing")
        client.transport.producer.pauseProducing()  # the client's send buffer is full
        self.assertEqual(vm_transport.producerState, "paused")
        client.transport.producer.resumeProducing()
        self.assertEqual(vm_transport.producerState, "producing")
        vm_transport.producer.pauseProducing()  # the VM stopped reading
        self.assertEqual(client.transport.producerState, "paused")
        vm_transport.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")

    def test_lost_side_does_not_drop_the_other(self):
        """A transport stopping its producer (its own connection lost) leaves the peer for the bridge to close."""
        client, session, vm, vm_transport = self.attached()
        client.transport.producer.stopProducing()
        self.assertNotEqual(vm_transport.producerState, "stopped")

    def test_second_writer_refused(self):
        """A second attach to a held console fails with ConsoleBusy naming the holder and since when."""
        self.attached(peer="10.1.2.3:4444")
        failure = self.failureResultOf(self.attach(FakeClient(), peer="127.0.0.1:6000"), ConsoleBusy)
        self.assertIn("10.1.2.3:4444", str(failure.value))
        self.assertIn("since 1970-01-01T00:16:40Z", str(failure.value))
        self.assertEqual(failure.value.close_code, CloseCode.CONSOLE_BUSY)

    def test_detach_releases_lock(self):
        """After the writer detaches, the VM side is closed and another writer gets in."""
        client, session, vm, vm_transport = self.attached()
        self.successResultOf(Deferred.fromCoroutine(self.manager.detach(session)))
        self.assertTrue(vm_transport.disconnecting)
        self.assertEqual(self.store.locks, {})
        self.attached()

    def test_vm_closing_closes_client(self):
        """When the VM side closes, the client is closed with VM_CLOSED."""
        client, session, vm, vm_transport = self.attached()
        vm.connectionLost(ConnectionRefusedError())
        self.assertEqual(client.closed[0], CloseCode.VM_CLOSED)

    def test_unreachable_vm_releases_lock(self):
        """A VM port that refuses the connection fails with VMUnreachable and frees the lock."""
        d = self.attach(FakeClient())
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(d, VMUnreachable)
        self.assertIn("127.0.0.1:7000", str(failure.value))
        self.assertEqual(self.store.locks, {})

    def test_lease_renewed_while_alive(self):
        """The lease service keeps this node's lock alive past the lease length."""
        service = self.manager.service()
        service.startService()
        self.addCleanup(service.stopService)
        self.attached()
        for _ in range(10):
            self.reactor.advance(10)
        other = self.make_manager("node-2")
        self.failureResultOf(self.attach(FakeClient(), manager=other), ConsoleBusy)

    def test_dead_node_lock_expires(self):
        """A lock whose node stopped renewing is taken over after the lease."""
        self.attached()
        self.reactor.advance(31)
        other = self.make_manager("node-2")
        d = self.attach(FakeClient(), manager=other)
        self.connect_vm()
        self.successResultOf(d)

    def test_stop_closes_sessions(self):
        """Stopping the lease service closes every session (going away) and releases the locks."""
        service = self.manager.service()
        service.startService()
        client, session, vm, vm_transport = self.attached()
        self.successResultOf(service.stopService())
        self.assertEqual(client.closed[0], CloseCode.GOING_AWAY)
        self.assertEqual(self.store.locks, {})

    def test_close_server(self):
        """Closing a server's sessions tells each client why."""
        client, session, vm, vm_transport = self.attached()
        self.assertEqual(self.manager.close_server("s1", CloseCode.SERVER_GONE, "deleted"), 1)
        self.assertEqual(client.closed, (CloseCode.SERVER_GONE, "deleted"))
