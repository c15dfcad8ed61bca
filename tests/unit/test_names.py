"""names.NameCache: a VM host name's addresses, asked once, kept NAME_TTL seconds, bounded."""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import DNSLookupError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.names import NAME_TTL, NameCache, NamedVMEndpoint


class _Resolver:
    """A resolver that answers when told (Twisted's IHostnameResolver, as the reactor's is used)."""

    def __init__(self):
        self.asked = []  # (receiver, name, port, transportSemantics)

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        self.asked.append((receiver, hostName, portNumber, transportSemantics))
        receiver.resolutionBegan(None)
        return None

    def answer(self, *addresses, which: int = -1):
        receiver = self.asked[which][0]
        for address in addresses:
            receiver.addressResolved(address)
        receiver.resolutionComplete()


def v4(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 0)


class NameCacheTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.resolver = _Resolver()
        self.names = NameCache(self.clock, resolver=self.resolver)

    def test_asked_once_then_kept(self):
        """A name is asked of the resolver (TCP) once; later callers get its addresses at once, until NAME_TTL has passed."""
        first = self.names.addresses("hv-1.example")
        self.assertNoResult(first)
        self.resolver.answer(v4("192.0.2.1"), v4("192.0.2.2"))
        self.assertEqual(self.successResultOf(first), ["192.0.2.1", "192.0.2.2"])
        self.assertEqual([(name, sem) for _, name, _, sem in self.resolver.asked], [("hv-1.example", "TCP")])
        self.clock.advance(NAME_TTL - 1)
        self.assertEqual(self.successResultOf(self.names.addresses("hv-1.example")), ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(len(self.resolver.asked), 1)
        self.clock.advance(1)
        self.assertNoResult(self.names.addresses("hv-1.example"))
        self.assertEqual(len(self.resolver.asked), 2)

    def test_callers_meanwhile_share_one_question(self):
        """Callers while a name is being asked wait for the same answer; one cancelling leaves the others theirs."""
        waiting = [self.names.addresses("hv-1.example") for _ in range(3)]
        waiting[1].cancel()
        self.failureResultOf(waiting[1], CancelledError)
        self.resolver.answer(v4("192.0.2.1"))
        self.assertEqual(len(self.resolver.asked), 1)
        self.assertEqual([self.successResultOf(d) for d in (waiting[0], waiting[2])], [["192.0.2.1"]] * 2)

    def test_no_address(self):
        """A name without addresses fails every caller with DNSLookupError naming it, and is asked again next time."""
        waiting = [self.names.addresses("nowhere.example") for _ in range(2)]
        self.resolver.answer()
        for d in waiting:
            self.assertIn("nowhere.example", str(self.failureResultOf(d, DNSLookupError).value))
        self.assertNoResult(self.names.addresses("nowhere.example"))
        self.assertEqual(len(self.resolver.asked), 2)

    def test_forget(self):
        """A forgotten name is asked again."""
        self.names.addresses("hv-1.example")
        self.resolver.answer(v4("192.0.2.1"))
        self.names.forget("hv-1.example")
        self.names.forget("never-asked.example")
        self.assertNoResult(self.names.addresses("hv-1.example"))
        self.assertEqual(len(self.resolver.asked), 2)

    def test_bounded(self):
        """At most ``size`` names are kept; the least recently used goes first."""
        names = NameCache(self.clock, size=2, resolver=self.resolver)
        for name in ("a.example", "b.example"):
            names.addresses(name)
            self.resolver.answer(v4("192.0.2.1"))
        names.addresses("a.example")  # used: b is now the oldest
        names.addresses("c.example")
        self.resolver.answer(v4("192.0.2.3"))
        self.assertEqual(list(names._known), ["a.example", "c.example"])
        self.successResultOf(names.addresses("a.example"))
        self.assertNoResult(names.addresses("b.example"))

    def test_addresses_as_dialled(self):
        """IPv6 addresses keep a link-local scope; an address given twice is dialled once."""
        d = self.names.addresses("hv-1.example")
        self.resolver.answer(IPv6Address("TCP", "fe80::1", 0, 0, 2), IPv6Address("TCP", "2001:db8::1", 0),
                             v4("192.0.2.1"), v4("192.0.2.1"))
        self.assertEqual(self.successResultOf(d), ["fe80::1%2", "2001:db8::1", "192.0.2.1"])

    def test_a_resolver_that_raises(self):
        """A resolver that fails at once fails every caller with its error; the name is asked again next time."""
        class Broken(_Resolver):
            def resolveHostName(self, *args, **kwargs):
                super().resolveHostName(*args, **kwargs)
                raise RuntimeError("resolver broken")

        self.resolver = Broken()
        names = NameCache(self.clock, resolver=self.resolver)
        self.assertIn("resolver broken", str(self.failureResultOf(names.addresses("hv-1.example"), RuntimeError).value))
        self.failureResultOf(names.addresses("hv-1.example"), RuntimeError)
        self.assertEqual(len(self.resolver.asked), 2)


class NamedVMEndpointTimeoutTests(SynchronousTestCase):
    def test_a_resolver_that_never_answers(self):
        """The resolver's answer counts against the connect timeout: DNSLookupError when it runs out, naming the host."""
        reactor = MemoryReactorClock()
        names = NameCache(reactor, resolver=_Resolver())
        d = NamedVMEndpoint(names, reactor, "slow.example", 4555, 7.0).connect(Factory.forProtocol(Protocol))
        reactor.advance(6.9)
        self.assertNoResult(d)
        reactor.advance(0.1)
        self.assertIn("slow.example within 7 s", str(self.failureResultOf(d, DNSLookupError).value))

    def test_a_known_name_sets_no_timer(self):
        """A name known already is dialled at once, with no timer for the answer made and cancelled."""
        reactor = MemoryReactorClock()
        resolver = _Resolver()
        names = NameCache(reactor, resolver=resolver)
        names.addresses("hv-1.example")
        resolver.answer(v4("192.0.2.1"))
        timers = []
        self.patch(reactor, "callLater", lambda *args, **kwargs: timers.append(args))
        NamedVMEndpoint(names, reactor, "hv-1.example", 4555, 7.0).connect(Factory.forProtocol(Protocol))
        self.assertEqual(timers, [])
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients], [("192.0.2.1", 4555)])
