"""The port allocator: lowest free port, probe once, remember, exhaustion, the 90 % warning."""

import socket

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.interfaces import Hypervisor
from serialproxy.ports import PortAllocator, PortProbe, PortsExhausted
from serialproxy.store import SQLStore
from serialproxy.testing import FakeProbe, MemoryStore, inline_database

from ..support import sqlite_url

HV = Hypervisor("h1", "hv1", "qemu:///system", "127.0.0.1", (10000, 10009), 0.0)


class AllocatorTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()
        self.successResultOf(self.store.create_hypervisor(HV))
        self.probe = FakeProbe(busy={10001})
        self.allocator = PortAllocator(self.store, self.probe)

    def allocate(self, server, count, hypervisor=HV):
        return Deferred.fromCoroutine(self.allocator.allocate(hypervisor, server, count))

    def test_lowest_free_ports(self):
        """Ports come lowest first; a port in use by something else is skipped."""
        self.assertEqual(self.successResultOf(self.allocate("s1", 2)), [10000, 10002])

    def test_tested_once(self):
        """A tested port (free or busy) is never probed again; released ports are reused first."""
        self.successResultOf(self.allocate("s1", 2))
        self.successResultOf(Deferred.fromCoroutine(self.allocator.release("s1")))
        self.assertEqual(self.successResultOf(self.allocate("s2", 3)), [10000, 10002, 10003])
        self.assertEqual(self.probe.probed, [10000, 10001, 10002, 10003])

    def test_exhausted(self):
        """When the range runs out the error names the hypervisor and range, and nothing stays allocated."""
        self.successResultOf(self.allocate("s1", 8))
        failure = self.failureResultOf(self.allocate("s2", 2), PortsExhausted)
        self.assertIn("'hv1'", str(failure.value))
        self.assertIn("10000:10009", str(failure.value))
        self.assertEqual(set(self.successResultOf(self.store.allocations("h1")).values()), {"s1"})
        self.assertEqual(self.successResultOf(self.allocate("s3", 1)), [10009])

    def test_warns_at_ninety_percent(self):
        """A warning is logged once when 90 % of the range is used."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.successResultOf(self.allocate("s1", 7))  # 8 of 10 used, with the busy one
        self.assertFalse([e for e in events if "widen the range" in e.get("log_format", "")])
        self.successResultOf(self.allocate("s2", 1))
        self.successResultOf(self.allocate("s3", 1))
        warnings = [e for e in events if "widen the range" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual((warnings[0]["used"], warnings[0]["size"]), (9, 10))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["alloc", "release"]), st.integers(0, 4), st.integers(1, 4)), max_size=25),
           st.sets(st.integers(10000, 10009), max_size=3))
    def test_never_twice_never_outside(self, operations, busy):
        """Under any sequence of allocate/release, no port is held twice or lies outside the range."""
        store = MemoryStore()
        allocator = PortAllocator(store, FakeProbe(busy))
        held = {}
        for op, server, count in operations:
            name = f"s{server}"
            if op == "release":
                self.successResultOf(Deferred.fromCoroutine(allocator.release(name)))
                held.pop(name, None)
                continue
            d = Deferred.fromCoroutine(allocator.allocate(HV, name, count))
            if d.called and isinstance(d.result, Failure):
                self.failureResultOf(d, PortsExhausted)
                held.pop(name, None)  # a failed allocation gives back what the server had
                continue
            held.setdefault(name, []).extend(self.successResultOf(d))
            everything = [p for ports in held.values() for p in ports]
            self.assertEqual(len(everything), len(set(everything)))
            self.assertTrue(all(10000 <= p <= 10009 and p not in busy for p in everything))
            self.assertEqual(self.successResultOf(store.allocations("h1")), {p: s for s, ps in held.items() for p in ps})


class SQLAllocatorTests(SynchronousTestCase):
    def test_on_sqlite(self):
        """The allocator on the real SQL store allocates, remembers and reuses the same way."""
        database = inline_database(sqlite_url(self))
        self.addCleanup(database.close)
        store = SQLStore(database)
        self.successResultOf(store.create_hypervisor(HV))
        probe = FakeProbe(busy={10000})
        allocator = PortAllocator(store, probe)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(allocator.allocate(HV, "s1", 2))), [10001, 10002])
        self.successResultOf(Deferred.fromCoroutine(allocator.release("s1")))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(allocator.allocate(HV, "s2", 1))), [10001])
        self.assertEqual(probe.probed, [10000, 10001, 10002])


class ProbeTests(SynchronousTestCase):
    def test_bind_probe(self):
        """On this host a port with a listener is in use and a closed one is free."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        probe = PortProbe(MemoryReactor())
        self.assertFalse(self.successResultOf(probe.is_free(HV, port)))
        listener.close()
        self.assertTrue(self.successResultOf(probe.is_free(HV, port)))

    def test_connect_probe(self):
        """On a remote hypervisor a refused connection means free, an accepted one in use."""
        remote = Hypervisor("h2", "far", "qemu+ssh://root@hv2.example.com/system", "192.0.2.7", (1, 2), 0.0)
        reactor = MemoryReactor()
        probe = PortProbe(reactor)
        refused = probe.is_free(remote, 10000)
        host, port, factory, timeout, bind = reactor.tcpClients[-1]
        self.assertEqual((host, port), ("192.0.2.7", 10000))
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertTrue(self.successResultOf(refused))
        answered = probe.is_free(remote, 10001)
        reactor.tcpClients[-1][2].clientConnectionLost(None, Failure(ConnectionRefusedError()))
        self.assertFalse(self.successResultOf(answered))
