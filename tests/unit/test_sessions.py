"""Sessions and consoles in memory: writer lock, spectators, scrollback, kicks, leases, timeouts."""

import itertools
import sqlite3

from attrs import define, evolve, field
from hypothesis import given, strategies as st

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectBindError, ConnectionDone, ConnectionRefusedError, getConnectError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from serialproxy.bridge import READ_ONLY_NOTICE, IConsoleClient, NodeFull, VMUnreachable
from serialproxy.errors import BadRequest, CloseCode, ConsoleBusy, NotFound, TokenInvalid
from serialproxy.interfaces import SerialPort, Server
from serialproxy.sessions import SessionManager
from serialproxy.testing import MemoryStore
from serialproxy.tokens import UNKNOWN_TOKEN, TokenService


@implementer(IConsoleClient)
class FakeClient:
    """A client end that records what the console does to it."""

    def __init__(self):
        self.transport = StringTransport()
        self.received = []
        self.eager = []  # the eager flag of each send
        self.closed = None

    def send(self, data, eager=False):
        self.received.append(data)
        self.eager.append(eager)

    def close(self, code, reason):
        self.closed = (code, reason)

    @property
    def text(self) -> bytes:
        return b"".join(self.received)


def entropy():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


@define
class SlowStore(MemoryStore):
    """A MemoryStore that logs the session writes it is asked for, and can hold them in flight or fail them."""

    writes: list = field(factory=list)  # ("open" or "close", the ids of the closed sessions it carries)
    held: list = field(factory=list)  # a Deferred per held transaction: firing it commits the transaction
    hold: bool = False
    failing: bool = False

    def open_session(self, session, lock, now, closed=()):
        self.writes.append(("open", list(closed)))
        return self._transaction(lambda: MemoryStore.open_session(self, session, lock, now, closed))

    def close_sessions(self, session_ids):
        self.writes.append(("close", list(session_ids)))
        return self._transaction(lambda: MemoryStore.close_sessions(self, session_ids))

    def _transaction(self, commit):
        if self.failing:
            return fail(sqlite3.OperationalError("database is locked"))
        if not self.hold:
            return commit()
        d = Deferred()
        d.addCallback(lambda _: commit())
        self.held.append(d)
        return d


class SessionTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.store = self.make_store()
        self.server = Server("s1", "vm", "acme", "active", 0.0, (SerialPort(0, "127.0.0.1", 7000),))
        self.successResultOf(self.store.create_server(self.server))
        self.tokens = TokenService(self.store, self.reactor, 600, entropy())
        self.manager = self.make_manager("node-1")
        self.secret = self.successResultOf(Deferred.fromCoroutine(self.tokens.mint(self.server, self.server.serial_ports[0], "acme")))

    def make_store(self):
        return MemoryStore()

    def make_manager(self, node, **options):
        options.setdefault("scrollback_bytes", 16)
        return SessionManager(self.store, self.tokens, self.reactor, node, lease=30.0, entropy=entropy(), **options)

    def attach(self, client=None, manager=None, peer="127.0.0.1:5000", mode="write"):
        return Deferred.fromCoroutine((manager or self.manager).attach(client or FakeClient(), self.secret, peer, mode))

    def connect_vm(self, index=-1, port=7000):
        """Complete the VM connection the manager asked the reactor for."""
        host, asked, factory, timeout, bind = self.reactor.tcpClients[index]
        self.assertEqual((host, asked), ("127.0.0.1", port))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def attached(self, peer="127.0.0.1:5000", mode="write", manager=None):
        """A session whose console had to connect to the VM: (client, session, vm, vm_transport)."""
        client = FakeClient()
        d = self.attach(client, manager, peer, mode)
        vm, vm_transport = self.connect_vm()
        return client, self.successResultOf(d), vm, vm_transport

    def joined(self, peer="127.0.0.1:6000", mode="read"):
        """A session on a console that is already connected: (client, session)."""
        client = FakeClient()
        return client, self.successResultOf(self.attach(client, peer=peer, mode=mode))

    def detach(self, session, manager=None):
        (manager or self.manager).detach(session)

    def written(self):
        """Let the closes queued by now be written (close_delay passes)."""
        self.reactor.advance(self.manager.rows.close_delay)


class WriterTests(SessionTestCase):
    def test_attach_bridges_both_ways(self):
        """Once attached, the writer's bytes reach the VM and the VM's bytes reach the writer."""
        client, session, vm, vm_transport = self.attached()
        self.manager.from_client(session, b"ls\r")
        vm.dataReceived(b"bin etc\r\n")
        self.assertEqual(vm_transport.value(), b"ls\r")
        self.assertEqual(client.received, [b"bin etc\r\n"])
        self.assertEqual((session.attachment.bytes_in, session.attachment.bytes_out), (3, 9))

    def test_flow_control(self):
        """A full writer buffer pauses the VM side and a full VM buffer pauses the writer, both ways."""
        client, session, vm, vm_transport = self.attached()
        self.assertEqual(client.transport.producerState, "producing")
        client.transport.producer.pauseProducing()
        self.assertEqual(vm_transport.producerState, "paused")
        client.transport.producer.resumeProducing()
        self.assertEqual(vm_transport.producerState, "producing")
        vm_transport.producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        vm_transport.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")

    def test_lost_side_does_not_drop_the_other(self):
        """A transport stopping its producer (its own connection lost) leaves the peer for the console to close."""
        client, session, vm, vm_transport = self.attached()
        client.transport.producer.stopProducing()
        self.assertNotEqual(vm_transport.producerState, "stopped")

    def test_second_writer_refused(self):
        """A second writer fails with ConsoleBusy naming the holder and since when."""
        self.attached(peer="10.1.2.3:4444")
        failure = self.failureResultOf(self.attach(peer="127.0.0.1:6000"), ConsoleBusy)
        self.assertIn("10.1.2.3:4444", str(failure.value))
        self.assertIn("since 1970-01-01T00:16:40Z", str(failure.value))
        self.assertEqual(failure.value.close_code, CloseCode.CONSOLE_BUSY)

    def test_unknown_mode(self):
        """A mode other than write or read is refused."""
        self.failureResultOf(self.attach(mode="admin"), BadRequest)

    def test_detach_releases_lock_and_vm(self):
        """After the last session leaves, the VM side is closed and the lock is free."""
        client, session, vm, vm_transport = self.attached()
        self.detach(session)
        self.assertTrue(vm_transport.disconnecting)
        self.written()
        self.assertEqual(self.store.locks, {})
        self.assertEqual(self.store.sessions, {})
        self.attached()

    def test_vm_closing_closes_everyone(self):
        """When the VM side closes, every session is closed with VM_CLOSED."""
        client, session, vm, vm_transport = self.attached()
        spectator, _ = self.joined()
        vm.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(client.closed[0], CloseCode.VM_CLOSED)
        self.assertEqual(spectator.closed[0], CloseCode.VM_CLOSED)

    def test_unreachable_vm_releases_lock(self):
        """A VM port that refuses fails with VMUnreachable and leaves no lock or session row."""
        d = self.attach()
        self.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertIn("127.0.0.1:7000", str(self.failureResultOf(d, VMUnreachable).value))
        self.written()
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))

    def test_unreachable_vm_reason_reads_as_words(self):
        """The errno Twisted reports becomes its text: 'Connection refused', not '111'."""
        d = self.attach()
        self.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(getConnectError((111, "Connection refused"))))
        self.assertEqual(str(self.failureResultOf(d, VMUnreachable).value),
                         "cannot reach the VM serial port at 127.0.0.1:7000: Connection refused")

    def test_out_of_files_is_try_again_later(self):
        """No file descriptor left for the VM connection: 1013 try again later, not the VM's fault; nothing kept."""
        d = self.attach()
        self.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectBindError(24, "Too many open files")))
        refusal = self.failureResultOf(d, NodeFull).value
        self.assertEqual(refusal.close_code, CloseCode.TRY_AGAIN_LATER)
        self.assertIn("open-file limit", str(refusal))
        self.written()
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))
        client, session, vm, vm_transport = self.attached()  # files back: the next one gets its VM connection

    def test_close_server(self):
        """Closing a server's sessions tells each client why."""
        client, session, vm, vm_transport = self.attached()
        self.assertEqual(self.manager.close_server("s1", CloseCode.SERVER_GONE, "deleted"), 1)
        self.assertEqual(client.closed, (CloseCode.SERVER_GONE, "deleted"))


class SpectatorTests(SessionTestCase):
    def test_eager_only_when_alone(self):
        """VM output may go straight to the kernel only for the only session on a console (IConsoleClient.send)."""
        writer, session, vm, vm_transport = self.attached()
        vm.dataReceived(b"alone")
        spectator, _ = self.joined()
        vm.dataReceived(b"together")
        self.assertEqual(writer.eager, [True, False])
        self.assertEqual(spectator.eager[-1], False)

    def test_spectators_see_output_and_cannot_type(self):
        """Spectators get the VM's output live; their input is dropped, and they are told once."""
        writer, session, vm, vm_transport = self.attached()
        watchers = [self.joined(peer=f"127.0.0.1:{6000 + i}") for i in range(3)]
        self.assertEqual(len(self.reactor.tcpClients), 1)  # one VM connection for all
        vm.dataReceived(b"login: ")
        for client, _ in watchers:
            self.assertEqual(client.text, b"login: ")
        self.manager.from_client(watchers[0][1], b"rm -rf /\r")
        self.manager.from_client(watchers[0][1], b"again\r")
        self.assertEqual(vm_transport.value(), b"")
        self.assertEqual(watchers[0][0].text.count(READ_ONLY_NOTICE), 1)
        self.written()  # the rows of sessions let in before their open was written (a sole node's)
        self.assertEqual(self.store.locks[("s1", 0)].session_id, session.id)

    def test_attaches_while_connecting_share_one_connection(self):
        """Sessions that attach while the VM connection is still being made wait for it; one connection."""
        first, second = FakeClient(), FakeClient()
        d1 = self.attach(first, mode="read", peer="127.0.0.1:1")
        d2 = self.attach(second, mode="write", peer="127.0.0.1:2")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        vm, vm_transport = self.connect_vm()
        one, two = self.successResultOf(d1), self.successResultOf(d2)
        self.assertIs(one.console, two.console)
        vm.dataReceived(b"hi")
        self.assertEqual((first.text, second.text), (b"hi", b"hi"))

    def test_failed_connection_fails_every_waiter(self):
        """When the VM cannot be reached, every session waiting for the connection is refused and freed."""
        d1 = self.attach(mode="read", peer="127.0.0.1:1")
        d2 = self.attach(mode="write", peer="127.0.0.1:2")
        self.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(d1, VMUnreachable)
        self.failureResultOf(d2, VMUnreachable)
        self.written()
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))

    def test_spectator_alone(self):
        """A spectator may watch a console nobody writes to; then a writer can still attach."""
        spectator, session, vm, vm_transport = self.attached(mode="read")
        self.assertEqual(self.store.locks, {})
        writer, session = self.joined(mode="write")
        self.manager.from_client(session, b"x")
        self.assertEqual(vm_transport.value(), b"x")

    def test_slow_spectator_is_closed_alone(self):
        """A spectator that falls behind by more than its allowance is closed; the writer and others go on."""
        writer, session, vm, vm_transport = self.attached()
        manager = self.manager
        manager.lag_bytes = 100
        slow, slow_session = self.joined(peer="127.0.0.1:6001")
        fast, _ = self.joined(peer="127.0.0.1:6002")
        slow.transport.producer.pauseProducing()  # its send buffer is full
        vm.dataReceived(b"x" * 60)
        slow.transport.producer.pauseProducing()  # Twisted says so again on every write while full
        self.assertIsNone(slow.closed)
        vm.dataReceived(b"y" * 60)
        self.assertEqual(slow.closed[0], CloseCode.TOO_SLOW)
        self.assertEqual(vm_transport.producerState, "producing")
        self.assertEqual(fast.text, b"x" * 60 + b"y" * 60)
        self.assertIsNone(writer.closed)

    def test_spectator_catching_up_is_kept(self):
        """A spectator whose buffer drains again starts over with its full allowance."""
        writer, session, vm, vm_transport = self.attached()
        self.manager.lag_bytes = 100
        slow, _ = self.joined()
        slow.transport.producer.pauseProducing()
        vm.dataReceived(b"x" * 90)
        slow.transport.producer.resumeProducing()
        slow.transport.producer.pauseProducing()
        vm.dataReceived(b"y" * 90)
        self.assertIsNone(slow.closed)


class ScrollbackTests(SessionTestCase):
    def test_newcomer_gets_recent_output(self):
        """A session attaching later first gets the console's last scrollback_bytes of output."""
        writer, session, vm, vm_transport = self.attached()
        vm.dataReceived(b"0123456789")
        vm.dataReceived(b"abcdefghij")
        late, _ = self.joined()
        self.assertEqual(late.received[0], b"456789abcdefghij")  # 16 bytes kept
        vm.dataReceived(b"!")
        self.assertEqual(late.text, b"456789abcdefghij!")

    def test_forgotten_when_nobody_is_attached(self):
        """The scrollback lives only while someone is attached."""
        writer, session, vm, vm_transport = self.attached()
        vm.dataReceived(b"secret")
        self.detach(session)
        client, session, vm, vm_transport = self.attached()
        self.assertEqual(client.received, [])


class EventTests(SessionTestCase):
    def test_attach_and_detach_are_logged(self):
        """Attach and detach are structured events (docs/sessions.md) whose text names the session."""
        with capturedLogs() as events:
            client, session, vm, vm_transport = self.attached(peer="10.0.0.9:4242")
            self.manager.from_client(session, b"ls\r")
            self.detach(session)
        mine = [e for e in events if e.get("event") in ("attach", "detach")]
        self.assertEqual([e["event"] for e in mine], ["attach", "detach"])
        attach, detach = mine
        self.assertEqual({k: attach[k] for k in ("peer", "console", "mode", "session", "tenant")},
                         {"peer": "10.0.0.9:4242", "console": "s1/0", "mode": "write", "session": session.id, "tenant": "acme"})
        self.assertEqual(formatEvent(attach), f"attach: 10.0.0.9:4242 on console s1/0 as write (session {session.id}, tenant acme)")
        self.assertEqual((detach["bytes_in"], detach["bytes_out"]), (3, 0))
        self.assertEqual(formatEvent(detach), f"detach: 10.0.0.9:4242 from console s1/0 (session {session.id}, 3 bytes in, 0 out)")


class LingerTests(SessionTestCase):
    """A console stays connected ``linger`` seconds after its last session leaves (config console_linger)."""

    def setUp(self):
        super().setUp()
        self.manager = self.make_manager("node-1", linger=5.0)

    def console(self, index):
        """A secret for another server's console, on VM port 7000 + index."""
        server = Server(f"server-{index}", "vm", "acme", "active", 0.0, (SerialPort(0, "127.0.0.1", 7000 + index),))
        self.successResultOf(self.store.create_server(server))
        return self.successResultOf(Deferred.fromCoroutine(self.tokens.mint(server, server.serial_ports[0], "acme")))

    def attach_to(self, secret, port):
        client = FakeClient()
        d = Deferred.fromCoroutine(self.manager.attach(client, secret, "127.0.0.1:5000", "write"))
        vm, vm_transport = self.connect_vm(port=port)
        return client, self.successResultOf(d), vm, vm_transport

    def test_reconnect_reuses_the_connection_and_sees_what_was_printed(self):
        """Within the linger time a new session gets the same VM connection and the scrollback, output meanwhile included."""
        writer, session, vm, vm_transport = self.attached()
        vm.dataReceived(b"login: ")
        self.detach(session)
        vm.dataReceived(b"bye")  # printed while nobody is attached
        self.reactor.advance(4.9)
        self.assertFalse(vm_transport.disconnecting)
        again, session = self.joined(mode="write")
        self.assertEqual(len(self.reactor.tcpClients), 1, "no new VM connection")
        self.assertEqual(again.text, b"login: bye")
        self.manager.from_client(session, b"root\r")
        self.assertEqual(vm_transport.value(), b"root\r", "the new writer drives the VM")
        self.reactor.advance(10)
        self.assertFalse(vm_transport.disconnecting, "the linger timer was cancelled by the reconnect")

    def test_closed_when_the_time_is_up(self):
        """Nobody came back: the VM connection closes after linger seconds, and the next session dials anew."""
        writer, session, vm, vm_transport = self.attached()
        vm.dataReceived(b"secret")
        self.detach(session)
        self.reactor.advance(5)
        self.assertTrue(vm_transport.disconnecting)
        client, session, vm, vm_transport = self.attached()
        self.assertEqual((len(self.reactor.tcpClients), client.received), (2, []))

    def test_vm_lost_while_lingering(self):
        """A VM that closes while its console lingers is dialled again by the next session."""
        writer, session, vm, vm_transport = self.attached()
        self.detach(session)
        vm.connectionLost(Failure(ConnectionDone()))
        client, session, vm, vm_transport = self.attached()
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.reactor.advance(10)
        self.assertFalse(vm_transport.disconnecting, "the old console's linger timer is gone with it")

    def test_oldest_closes_first_past_max_lingering(self):
        """At most max_lingering consoles linger: another one closes the oldest."""
        self.manager.consoles.max_lingering = 1
        first = self.attach_to(self.console(1), 7001)
        second = self.attach_to(self.console(2), 7002)
        self.detach(first[1])
        self.detach(second[1])
        self.assertTrue(first[3].disconnecting)
        self.assertFalse(second[3].disconnecting)

    def test_none_when_files_run_short(self):
        """No console lingers past nine tenths of the file budget, and lingering ones make room for new connections."""
        self.manager.consoles.file_budget = 3  # room for 2 sockets before consoles stop lingering
        a = self.attach_to(self.console(1), 7001)
        self.detach(a[1])
        self.assertFalse(a[3].disconnecting, "room to spare: it lingers")
        b = self.attach_to(self.console(2), 7002)
        self.assertFalse(a[3].disconnecting)
        self.attach_to(self.console(3), 7003)
        self.assertTrue(a[3].disconnecting, "closed to make room for a new VM connection")
        self.detach(b[1])
        self.assertTrue(b[3].disconnecting, "no room to linger")

    def test_server_closed_or_node_stopping_ends_lingering(self):
        """Deleting the server, or stopping the node, closes its lingering consoles at once."""
        writer, session, vm, vm_transport = self.attached()
        self.detach(session)
        self.assertEqual(self.manager.close_server("s1", CloseCode.SERVER_GONE, "deleted"), 0)
        self.assertTrue(vm_transport.disconnecting)
        other = self.attach_to(self.console(1), 7001)
        self.detach(other[1])
        self.successResultOf(Deferred.fromCoroutine(self.manager.close_all()))
        self.assertTrue(other[3].disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class KickTests(SessionTestCase):
    def test_kick_local(self):
        """A kick closes the session with 4010 and the kicker's reason, and frees the lock at once."""
        writer, session, vm, vm_transport = self.attached()
        self.successResultOf(Deferred.fromCoroutine(self.manager.kick("s1", session.id, "hung session", "ops-key")))
        self.assertEqual(writer.closed[0], CloseCode.KICKED)
        self.assertIn("hung session", writer.closed[1])
        self.assertIn("ops-key", writer.closed[1])
        self.assertEqual(self.store.locks, {})
        self.joined(mode="write")

    def test_kick_from_another_node(self):
        """A kick on another node frees the lock at once; the holding node closes the session on its next renewal."""
        writer, session, vm, vm_transport = self.attached()
        other = self.make_manager("node-2", sole_node=False)
        self.written()  # the rows of sessions let in before their open was written (a sole node's)
        self.successResultOf(Deferred.fromCoroutine(other.kick("s1", session.id, "stuck", "admin")))
        self.assertIsNone(writer.closed)
        self.assertEqual(self.store.locks, {})
        self.successResultOf(Deferred.fromCoroutine(self.manager.renew()))
        self.assertEqual(writer.closed, (CloseCode.KICKED, "kicked by admin: stuck"))

    def test_kick_unknown(self):
        """Kicking a session that is not there (or of another server) is NotFound."""
        writer, session, vm, vm_transport = self.attached()
        self.failureResultOf(Deferred.fromCoroutine(self.manager.kick("s1", "nope", "", "me")), NotFound)
        self.failureResultOf(Deferred.fromCoroutine(self.manager.kick("s2", session.id, "", "me")), NotFound)

    def test_list(self):
        """Listing shows every node's live sessions with mode, peer and byte counts."""
        writer, session, vm, vm_transport = self.attached(peer="10.0.0.1:1")
        self.joined(peer="10.0.0.2:2")
        vm.dataReceived(b"hello")
        records = self.successResultOf(Deferred.fromCoroutine(self.manager.list("s1")))
        self.assertEqual([(r.mode, r.peer, r.bytes_out) for r in records], [("write", "10.0.0.1:1", 5), ("read", "10.0.0.2:2", 5)])
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(self.manager.list("other"))), [])


class LeaseTests(SessionTestCase):
    def test_lease_renewed_while_alive(self):
        """The lease service keeps this node's lock (and session rows) alive past the lease length."""
        service = self.manager.service()
        service.startService()
        self.addCleanup(service.stopService)
        self.attached()
        for _ in range(10):
            self.reactor.advance(10)
        self.failureResultOf(self.attach(manager=self.make_manager("node-2", sole_node=False)), ConsoleBusy)
        self.assertEqual(len(self.successResultOf(Deferred.fromCoroutine(self.manager.list()))), 1)

    def test_renewal_writes_the_byte_counts_that_changed(self):
        """Each renewal extends every lease and stores the byte counts of the sessions whose counts moved since."""
        writer, session, vm, vm_transport = self.attached()
        quiet = self.successResultOf(self.attach(peer="127.0.0.1:5001", mode="read"))
        self.written()
        for _ in range(2):
            self.manager.from_client(session, b"ls\r")
            self.successResultOf(Deferred.fromCoroutine(self.manager.renew()))
            # A count in the rows that renewals must leave alone while the session's own does not move:
            self.store.sessions[quiet.id] = evolve(self.store.sessions[quiet.id], bytes_in=99)
        self.reactor.advance(5)
        self.successResultOf(Deferred.fromCoroutine(self.manager.renew()))
        rows = {r.id: (r.bytes_in, r.expires) for r in self.store.sessions.values()}
        self.assertEqual(rows, {session.id: (6, self.reactor.seconds() + 30.0), quiet.id: (99, self.reactor.seconds() + 30.0)})

    def test_dead_node_lock_expires(self):
        """A lock whose node stopped renewing is taken over after the lease."""
        self.attached()
        self.reactor.advance(31)
        self.attached(manager=self.make_manager("node-2"))

    def test_stop_closes_sessions(self):
        """Stopping the lease service closes every session (going away) and releases the locks."""
        service = self.manager.service()
        service.startService()
        client, session, vm, vm_transport = self.attached()
        self.successResultOf(service.stopService())
        self.assertEqual(client.closed[0], CloseCode.GOING_AWAY)
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))


class TimeoutTests(SessionTestCase):
    def test_idle_writer_warned_then_closed(self):
        """An idle writer gets a warning in its terminal, then is closed with 4008; typing resets it."""
        self.manager = self.make_manager("node-1", idle_timeout=120)
        writer, session, vm, vm_transport = self.attached()
        self.reactor.advance(80)
        self.manager.from_client(session, b"x")
        self.reactor.advance(80)
        self.assertEqual(writer.received, [])
        self.reactor.advance(10)
        self.assertIn(b"closes in 30 s", writer.text)
        self.assertIsNone(writer.closed)
        self.reactor.advance(30)
        self.assertEqual(writer.closed[0], CloseCode.IDLE_TIMEOUT)

    def test_typing_after_the_warning_spares_the_session_and_input_moves_no_timer(self):
        """Input after the warning starts the count again; input only notes its time (no timer per keystroke)."""
        self.manager = self.make_manager("node-1", idle_timeout=120)
        writer, session, vm, vm_transport = self.attached()
        scheduled = []
        call_later = self.reactor.callLater
        self.patch(self.reactor, "callLater", lambda *a, **kw: scheduled.append(a) or call_later(*a, **kw))
        for _ in range(100):
            self.manager.from_client(session, b"x")
        self.assertEqual(scheduled, [])
        self.reactor.advance(90)
        self.assertEqual(writer.text.count(b"closes in 30 s"), 1)
        self.reactor.advance(10)
        self.manager.from_client(session, b"y")  # at 100, after the warning
        self.reactor.advance(20)  # 120: the warning's 30 s are up, but it typed
        self.assertIsNone(writer.closed)
        self.reactor.advance(69)  # 189: 89 s after its input
        self.assertEqual(writer.text.count(b"closes in 30 s"), 1)
        self.reactor.advance(1)  # 190: 90 s after its input, warned again
        self.assertEqual(writer.text.count(b"closes in 30 s"), 2)
        self.reactor.advance(30)
        self.assertEqual(writer.closed[0], CloseCode.IDLE_TIMEOUT)

    def test_idle_timeout_spares_spectators(self):
        """Spectators are not closed for idling."""
        self.manager = self.make_manager("node-1", idle_timeout=60)
        spectator, session, vm, vm_transport = self.attached(mode="read")
        self.reactor.advance(600)
        self.assertIsNone(spectator.closed)

    def test_token_expiry_keeps_live_sessions(self):
        """By default a session outlives its token."""
        writer, session, vm, vm_transport = self.attached()
        self.reactor.advance(700)
        self.assertIsNone(writer.closed)

    def test_token_expiry_closes_when_configured(self):
        """With close_on_token_expiry, a session closes with 4002 when its token expires."""
        self.manager = self.make_manager("node-1", close_on_token_expiry=True)
        writer, session, vm, vm_transport = self.attached()
        self.reactor.advance(599)
        self.assertIsNone(writer.closed)
        self.reactor.advance(1)
        self.assertEqual(writer.closed[0], CloseCode.TOKEN_EXPIRED)

    def test_timers_cancelled_on_detach(self):
        """Detaching cancels the session's timers."""
        self.manager = self.make_manager("node-1", idle_timeout=60, close_on_token_expiry=True)
        writer, session, vm, vm_transport = self.attached()
        self.detach(session)
        self.written()
        self.assertEqual([c for c in self.reactor.getDelayedCalls() if c.active()], [])


class RecordingTests(SessionTestCase):
    def test_sessions_are_recorded(self):
        """With a recorder, a writer's output (scrollback included) and input land in its asciicast file."""
        import json
        import os

        from serialproxy.recording import Recorder
        from serialproxy.testing import InlineReactor, InlineThreadPool

        directory = os.path.abspath(self.mktemp())
        recorder = Recorder(directory, 1 << 20, 10, self.reactor, InlineThreadPool(), InlineReactor())
        recorder.startService()
        self.manager = self.make_manager("node-1", recorder=recorder)
        first, first_session, vm, vm_transport = self.attached(mode="read")
        vm.dataReceived("boot ok \N{SNOWMAN}\r\n".encode())
        writer, session = self.joined(mode="write")
        self.manager.from_client(session, b"uptime\r")
        vm.dataReceived(b"up 3 min\r\n")
        self.detach(session)
        self.detach(first_session)
        self.successResultOf(recorder.stopService())
        files = sorted(f for f in os.listdir(directory) if session.id in f)
        self.assertEqual(len(files), 1)
        with open(os.path.join(directory, files[0]), encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(lines[0]["version"], 2)
        output = "".join(e[2] for e in lines[1:] if e[1] == "o")
        self.assertEqual(output.encode(), writer.text)
        self.assertEqual("".join(e[2] for e in lines[1:] if e[1] == "i"), "uptime\r")


class WriteBehindTests(SessionTestCase):
    def make_store(self):
        return SlowStore()

    def closes(self):
        return [ids for kind, ids in self.store.writes if kind == "close"]

    def test_written_after_close_delay(self):
        """Closed sessions keep their rows until close_delay after the first close, then go in one write."""
        writer, session, vm, vm_transport = self.attached()
        spectator, watching = self.joined()
        self.detach(session)
        self.reactor.advance(self.manager.rows.close_delay / 2)
        self.detach(watching)
        self.assertEqual(len(self.store.sessions), 2)
        self.assertIn(("s1", 0), self.store.locks)
        self.reactor.advance(self.manager.rows.close_delay / 2)
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))
        self.assertEqual(self.closes(), [[session.id, watching.id]])

    def test_merged_into_the_next_open(self):
        """A writer reconnecting at once gets in: its previous session's close rides in the open's transaction."""
        writer, session, vm, vm_transport = self.attached()
        self.detach(session)
        again, successor, vm, vm_transport = self.attached()
        self.assertEqual(self.store.writes, [("open", []), ("open", [session.id])])
        self.assertEqual(self.store.locks[("s1", 0)].session_id, successor.id)
        self.reactor.advance(1)
        self.assertEqual(self.closes(), [])

    def test_written_before_reading_rows(self):
        """Listing, kicking, renewing and purging first write the closes queued on this node."""
        operations = [lambda closed: self.manager.list(), lambda closed: self.manager.renew(),
                      lambda closed: self.manager.purge(), lambda closed: self.manager.kick("s1", closed.id, "", "admin")]
        results = []
        for operation in operations:
            writer, session, vm, vm_transport = self.attached()
            self.detach(session)
            self.assertEqual(len(self.store.sessions), 1)
            results.append(Deferred.fromCoroutine(operation(session)))
            self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))
            self.assertEqual(self.closes()[-1], [session.id])
        self.assertEqual(self.successResultOf(results[0]), [])
        self.assertEqual(self.successResultOf(results[1]), 0)
        self.assertEqual(self.successResultOf(results[2]), 0)
        self.failureResultOf(results[3], NotFound)  # the kicked session had closed already

    def test_open_waits_for_a_write_in_flight(self):
        """An open waits for a write of earlier closes in flight, so its own previous lock never refuses it."""
        writer, session, vm, vm_transport = self.attached()
        self.detach(session)
        self.store.hold = True
        self.written()
        self.store.hold = False
        d = self.attach()
        self.assertEqual(self.store.writes[-1], ("close", [session.id]))  # the open has not started
        self.store.held.pop().callback(None)
        self.assertEqual(self.store.writes[-1], ("open", []))
        self.connect_vm()
        self.assertEqual(self.store.locks[("s1", 0)].session_id, self.successResultOf(d).id)

    def test_open_waits_only_for_earlier_closes(self):
        """An open does not wait for closes queued after it began, which another open carries."""
        writer, session, vm, vm_transport = self.attached()
        spectator, watching = self.joined()
        self.detach(session)
        self.store.hold = True
        self.written()
        first, second = self.attach(mode="read"), self.attach(mode="read")  # both wait for that write
        self.detach(watching)
        self.store.held.pop(0).callback(None)
        self.assertEqual(self.store.writes[-2:], [("open", [watching.id]), ("open", [])])
        for held in self.store.held:
            held.callback(None)
        self.connect_vm()
        self.assertEqual({self.successResultOf(first).id, self.successResultOf(second).id}, set(self.store.sessions))

    def test_close_all_waits_for_the_write(self):
        """Stopping the lease service waits until the closes of every session are written."""
        service = self.manager.service()
        service.startService()
        writer, session, vm, vm_transport = self.attached()
        self.store.hold = True
        stopped = service.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(self.closes(), [[session.id]])
        self.store.held.pop().callback(None)
        self.successResultOf(stopped)
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_failed_write_retried(self):
        """A failed write is logged and its closes stay queued: the next write carries them."""
        writer, session, vm, vm_transport = self.attached()
        spectator, watching = self.joined()
        self.detach(session)
        self.store.failing = True
        self.written()
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(len(self.store.sessions), 2)
        self.store.failing = False
        self.detach(watching)
        self.written()
        self.assertEqual(self.closes(), [[session.id], [session.id, watching.id]])
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))

    def test_failed_open_keeps_its_closes(self):
        """An open whose transaction fails leaves the closes it carried queued for the next write."""
        writer, session, vm, vm_transport = self.attached()
        self.detach(session)
        self.store.failing = True
        self.failureResultOf(self.attach(), sqlite3.OperationalError)
        self.store.failing = False
        self.successResultOf(Deferred.fromCoroutine(self.manager.renew()))
        self.assertEqual(self.store.writes[-2:], [("open", [session.id]), ("close", [session.id])])
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))

    def test_queue_is_bounded(self):
        """Past max_queued_closes, closes are dropped (logged) rather than kept without bound."""
        self.manager.rows.max_queued_closes = 2
        writer, session, vm, vm_transport = self.attached()
        sessions = [session] + [self.joined(peer=f"127.0.0.1:{6000 + i}")[1] for i in range(2)]
        for each in sessions:
            self.detach(each)
        self.written()
        self.assertEqual(self.closes(), [[sessions[0].id, sessions[1].id]])

    def test_dropped_closes_lose_their_leases(self):
        """A session whose close was dropped is renewed no more: its row and lock run out and the purge removes them."""
        self.manager.rows.max_queued_closes = 1
        writer, session, vm, vm_transport = self.attached()
        staying = self.joined(peer="127.0.0.1:6000")[1]
        leaving = self.joined(peer="127.0.0.1:6001")[1]
        self.detach(leaving)  # queued
        self.detach(session)  # dropped: its row and the writer lock stay in the database
        self.written()
        self.assertEqual(self.closes(), [[leaving.id]])
        self.assertIn(session.id, self.store.sessions)
        self.reactor.advance(10)
        self.successResultOf(Deferred.fromCoroutine(self.manager.renew()))
        now = self.reactor.seconds()
        self.assertEqual(self.store.sessions[staying.id].expires, now + self.manager.lease)
        self.assertLess(self.store.sessions[session.id].expires, now + self.manager.lease - 5)
        self.assertEqual([lock.session_id for lock in self.store.locks.values()], [session.id])
        self.reactor.advance(self.manager.lease)
        self.successResultOf(Deferred.fromCoroutine(self.manager.purge()))
        self.assertEqual((list(self.store.sessions), self.store.locks), ([staying.id], {}))
        self.successResultOf(self.attach(peer="127.0.0.1:5001"))  # the console has a writer again
        self.reactor.advance(self.manager.lease)  # a lease after the last drop, every lease of the node is renewed again
        self.successResultOf(Deferred.fromCoroutine(self.manager.renew()))
        self.assertEqual({r.expires for r in self.store.sessions.values()}, {self.reactor.seconds() + self.manager.lease})


class RevocationTests(SessionTestCase):
    def test_server_deleted_elsewhere(self):
        """A cached token of a server another node deleted is refused by the open, as unknown, and forgotten."""
        self.successResultOf(self.store.delete_server("s1"))  # another node: this one's cache still has the token
        failure = self.failureResultOf(self.attach(), TokenInvalid)
        self.assertEqual(str(failure.value), UNKNOWN_TOKEN)
        self.assertEqual(self.reactor.tcpClients, [])
        self.failureResultOf(Deferred.fromCoroutine(self.tokens.check(self.secret)), TokenInvalid)

    def test_refused_open_keeps_its_closes(self):
        """The closes carried by an open refused for a deleted server are written close_delay later."""
        other = Server("s2", "vm2", "acme", "active", 0.0, (SerialPort(0, "127.0.0.1", 7001),))
        self.successResultOf(self.store.create_server(other))
        secret = self.successResultOf(Deferred.fromCoroutine(self.tokens.mint(other, other.serial_ports[0], "acme")))
        d = Deferred.fromCoroutine(self.manager.attach(FakeClient(), secret, "127.0.0.1:5000"))
        self.connect_vm(port=7001)
        self.detach(self.successResultOf(d))
        self.successResultOf(self.store.delete_server("s1"))
        self.failureResultOf(self.attach(), TokenInvalid)
        self.assertEqual(len(self.store.sessions), 1)
        self.written()
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))


class ScrollbackRingTests(SynchronousTestCase):
    @given(st.lists(st.binary(max_size=40), max_size=30), st.integers(0, 64))
    def test_keeps_the_last_bytes(self, chunks, size):
        """Whatever the chunks, the ring holds exactly the last ``size`` bytes written."""
        from serialproxy.bridge import Scrollback

        ring = Scrollback(size)
        for chunk in chunks:
            ring.append(chunk)
        everything = b"".join(chunks)
        self.assertEqual(ring.contents(), everything[-size:] if size else b"")


class SendNowRestTests(SynchronousTestCase):
    @given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=5), st.data())
    def test_rest_after_a_partial_send(self, chunks, data):
        """What send_now queues after a partial sendmsg is exactly the bytes not sent; uncut chunks are not copied."""
        from serialproxy.transports import _after

        total = b"".join(chunks)
        sent = data.draw(st.integers(0, len(total)))
        rest = _after(tuple(chunks), sent)
        self.assertEqual(b"".join(rest), total[sent:])
        self.assertTrue(all(any(piece is chunk for chunk in chunks) for piece in rest[1:]))
