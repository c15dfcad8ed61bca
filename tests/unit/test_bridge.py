"""bridge.vm_endpoint: which endpoint dials a VM serial port's address."""

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.bridge import vm_endpoint
from serialproxy.names import NameCache, NamedVMEndpoint
from serialproxy.transports import VMEndpoint


class VMEndpointTests(SynchronousTestCase):
    def dialled(self, host: str):
        """The endpoint for ``host`` and the (host, port, timeout) it connected to, if it is a plain TCP one.

        A test's reactor gets Twisted's own TCP endpoint from VMEndpoint (its
        connector refines the POSIX reactors' TCP transport): the connection
        shows in the reactor's ``tcpClients``.
        """
        reactor = MemoryReactorClock()
        endpoint = vm_endpoint(reactor, host, 4555, 7.0, NameCache(reactor))
        endpoint.connect(Factory.forProtocol(Protocol))
        connected = [(h, port, timeout) for h, port, _, timeout, _ in reactor.tcpClients]
        return endpoint, connected

    def test_ipv4_literal(self):
        """An IPv4 address is dialled as it is, with no name resolution, with the connect timeout."""
        endpoint, connected = self.dialled("192.0.2.7")
        self.assertIsInstance(endpoint, VMEndpoint)
        self.assertEqual(connected, [("192.0.2.7", 4555, 7.0)])

    def test_ipv6_literal(self):
        """An IPv6 address, bracketed or not (a scope too), is dialled over IPv6 with no name resolution."""
        for host, expected in (("[2001:db8::5]", "2001:db8::5"), ("::1", "::1"), ("fe80::1%lo", "fe80::1%lo")):
            endpoint, connected = self.dialled(host)
            self.assertIsInstance(endpoint, VMEndpoint, host)
            self.assertEqual(connected, [(expected, 4555, 7.0)], host)

    def test_host_name(self):
        """Anything else is a host name, its addresses from the node's NameCache; a dotted name that is not an address too."""
        reactor = MemoryReactorClock()
        names = NameCache(reactor)
        for host in ("hypervisor-3.example", "1.2.3", "1.2.3.400"):
            endpoint = vm_endpoint(reactor, host, 4555, 7.0, names)
            self.assertEqual(endpoint, NamedVMEndpoint(names, reactor, host, 4555, 7.0), host)
