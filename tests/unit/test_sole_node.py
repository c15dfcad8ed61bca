"""A sole node (sqlite): sessions let in while their open is written, opens written together within close_delay."""

from twisted.internet.defer import Deferred

from serialproxy.interfaces import ConsoleLock
from tests.unit import test_sessions as base


class SoleNode:
    """Run a SessionTestCase's tests on a node that is its database's only user."""

    def make_manager(self, node, **options):
        options.setdefault("sole_node", True)
        return super().make_manager(node, **options)


class SoleWriterTests(SoleNode, base.WriterTests):
    pass


class SoleSpectatorTests(SoleNode, base.SpectatorTests):
    pass


class SoleScrollbackTests(SoleNode, base.ScrollbackTests):
    pass


class SoleLingerTests(SoleNode, base.LingerTests):
    pass


class SoleKickTests(SoleNode, base.KickTests):
    pass


class SoleLeaseTests(SoleNode, base.LeaseTests):
    pass


class SoleTimeoutTests(SoleNode, base.TimeoutTests):
    pass


class SoleEventTests(SoleNode, base.EventTests):
    pass


class EarlyTests(SoleNode, base.SessionTestCase):
    """Sessions are let in while their open waits to be written, and opens are written together."""

    def make_store(self):
        return base.SlowStore()

    def opens(self):
        return [ids for kind, ids in self.store.writes if kind == "open"]

    def test_let_in_before_the_open_is_written(self):
        """The VM is dialled and bytes flow at once; the lock and row are written close_delay later."""
        client, session, vm, vm_transport = self.attached()
        self.manager.from_client(session, b"ls\r")
        self.assertEqual(vm_transport.value(), b"ls\r")
        self.assertEqual((self.store.writes, self.store.locks, self.store.sessions), ([], {}, {}))
        self.written()
        self.assertEqual(self.opens(), [[]])
        self.assertEqual(self.store.locks[("s1", 0)].session_id, session.id)
        self.assertEqual(list(self.store.sessions), [session.id])

    def test_opens_share_transactions(self):
        """Opens within close_delay are written together: the first with the queued closes, then the rest at once."""
        writer, session, vm, vm_transport = self.attached()
        self.written()
        self.detach(session)
        sessions = [self.attached()[1]] + [self.joined(peer=f"127.0.0.1:{6000 + i}")[1] for i in range(4)]
        self.store.hold = True
        self.written()
        self.assertEqual(self.opens()[1:], [[session.id]])  # the others wait for it: they go together next
        self.store.held.pop().callback(None)
        self.assertEqual(self.opens()[2:], [[]] * 4)  # sent at once (the SQL store runs them in one transaction)
        while self.store.held:
            self.store.held.pop().callback(None)
        self.assertEqual(set(self.store.sessions), {s.id for s in sessions})
        self.assertEqual(self.store.locks[("s1", 0)].session_id, sessions[0].id)

    def test_reconnect_before_the_open_is_written(self):
        """A writer that leaves and comes back before its first open was written gets in; the first row is never written."""
        writer, first, vm, vm_transport = self.attached()
        self.detach(first)
        again, second, vm, vm_transport = self.attached()
        self.written()
        self.assertEqual(self.opens(), [[]])  # the second alone: the first closed before it was sent
        self.assertEqual(list(self.store.sessions), [second.id])
        self.assertEqual(self.store.locks[("s1", 0)].session_id, second.id)
        self.assertIsNone(again.closed)

    def test_close_while_the_open_is_in_flight(self):
        """A session closed while its open is in flight: its close is written after that open, never before."""
        writer, first, vm, vm_transport = self.attached()
        self.store.hold = True
        self.written()  # the first's open is in flight
        self.detach(first)
        again, second, vm, vm_transport = self.attached()
        self.written()
        self.assertEqual(self.opens(), [[]])  # the second waits for the first's open, to carry its close
        self.store.held.pop().callback(None)
        self.assertEqual(self.opens(), [[], [first.id]])
        self.store.held.pop().callback(None)
        self.assertEqual(list(self.store.sessions), [second.id])
        self.assertEqual(self.store.locks[("s1", 0)].session_id, second.id)
        self.assertIsNone(again.closed)

    def test_listing_writes_what_waits(self):
        """Listing (and kicking, renewing) writes the opens waiting for close_delay first, so it sees them."""
        writer, session, vm, vm_transport = self.attached()
        listed = self.successResultOf(Deferred.fromCoroutine(self.manager.list()))
        self.assertEqual([r.id for r in listed], [session.id])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_writer_here_waits_for_the_database(self):
        """With a writer on the console here, a second writer waits for the open (written now, after the first's)."""
        self.attached(peer="10.1.2.3:4444")
        failure = self.failureResultOf(self.attach(peer="127.0.0.1:6000"), base.ConsoleBusy)
        self.assertIn("10.1.2.3:4444", str(failure.value))
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_refused_by_the_database_after_it_was_let_in(self):
        """A lock the database has that memory did not know of (changed behind the node's back) closes the session with 4009."""
        stranger = ConsoleLock("s1", 0, "s-x", "node-x", "10.9.9.9:1", "acme", 900.0, 5000.0)
        self.successResultOf(self.store.acquire_lock(stranger, 900.0))
        client, session, vm, vm_transport = self.attached()
        self.assertIsNone(client.closed)
        self.written()
        self.assertEqual(client.closed[0], base.CloseCode.CONSOLE_BUSY)
        self.assertIn("10.9.9.9:1", client.closed[1])
        self.detach(session)
        self.written()
        self.assertEqual(self.store.writes, [("open", [])])  # no row to delete
        self.assertEqual(self.store.locks[("s1", 0)], stranger)

    def test_server_gone_from_the_database(self):
        """A server deleted behind the node's back: the session is closed as with an unknown token, which is forgotten."""
        client, session, vm, vm_transport = self.attached()
        self.successResultOf(self.store.delete_server("s1"))
        self.written()
        self.assertEqual(client.closed, (base.CloseCode.TOKEN_INVALID, base.UNKNOWN_TOKEN))
        self.failureResultOf(Deferred.fromCoroutine(self.tokens.check(self.secret)), base.TokenInvalid)

    def test_database_failure_after_it_was_let_in(self):
        """An open that fails in the database closes the session with 1011; it is logged once, and nothing is left to write."""
        client, session, vm, vm_transport = self.attached()
        self.store.failing = True
        self.written()
        self.assertEqual(client.closed[0], base.CloseCode.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(base.sqlite3.OperationalError)), 1)
        self.store.failing = False
        self.detach(session)
        self.written()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_server_deleted_here_while_dialling(self):
        """A server deleted on this node while its VM is being dialled: the session is refused and the VM connection closed."""
        d = self.attach()
        self.assertEqual(self.manager.close_server("s1", base.CloseCode.SERVER_GONE, "the server was deleted"), 0)
        vm, vm_transport = self.connect_vm()
        failure = self.failureResultOf(d, base.NotFound)
        self.assertEqual(failure.value.close_code, base.CloseCode.SERVER_GONE)
        self.assertTrue(vm_transport.disconnecting)
        self.assertEqual(self.manager.sessions(), [])
        self.written()
        self.assertEqual(self.store.sessions, {})

    def test_earlier_runs_forgotten_at_start(self):
        """At start a sole node forgets the sessions and locks an earlier run left, at once rather than a lease later."""
        earlier = self.make_manager("node-0", sole_node=False)
        self.attached(manager=earlier)
        self.assertEqual(len(self.store.sessions), 1)
        service = self.manager.service()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))


class DeletedWhileAttachingTests(base.SessionTestCase):
    """On any node: a server deleted here while a session of it waits for its open is refused, not let in."""

    def make_store(self):
        return base.SlowStore()

    def test_deleted_while_the_open_is_in_flight(self):
        self.store.hold = True
        d = self.attach()
        self.manager.close_server("s1", base.CloseCode.SERVER_GONE, "the server was deleted")
        self.store.held.pop().callback(None)
        self.store.hold = False
        self.assertEqual(self.failureResultOf(d, base.NotFound).value.close_code, base.CloseCode.SERVER_GONE)
        self.assertEqual(self.reactor.tcpClients, [])  # its VM port is not even dialled
        self.written()
        self.assertEqual((self.store.locks, self.store.sessions), ({}, {}))
