"""Servers booted through libvirt, on the fakes: boot, failure, console ports, delete, reconcile, adopt."""

import itertools
import xml.etree.ElementTree as ET

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.domain import DomainSpec, build_domain_xml, owner, serial_ports
from serialproxy.errors import BadRequest, Conflict
from serialproxy.interfaces import Hypervisor, Image, SerialPort, Server
from serialproxy.libvirt_driver import HypervisorError
from serialproxy.ports import PortAllocator, PortsExhausted
from serialproxy.servers import Servers
from serialproxy.testing import FakeHypervisorDriver, FakeProbe, MemoryStore
from serialproxy.validate import image_serial_ports

URI = "test:///default"
HV = Hypervisor("h1", "hv1", URI, "192.0.2.5", (10000, 10003), 0.0)
IMAGE = Image("i1", "tiny", "/boot/vmlinuz", "/boot/initrd", "console=ttyS0", "", {"serial_ports": "2"}, 0.0)


def entropy():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


class ServersTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()
        self.driver = FakeHypervisorDriver()
        self.probe = FakeProbe()
        self.servers = Servers(self.store, self.driver, PortAllocator(self.store, self.probe), Clock(), entropy())
        self.successResultOf(self.store.create_hypervisor(HV))

    def run_(self, coroutine):
        return Deferred.fromCoroutine(coroutine)

    def boot(self, name="vm"):
        return self.successResultOf(self.run_(self.servers.boot(name, "acme", IMAGE, HV, 128)))

    def test_boot(self):
        """Booting allocates one port per serial_ports and writes them, with our metadata, into the domain."""
        server = self.boot()
        self.assertEqual(server.status, "active")
        self.assertEqual(server.serial_ports, (SerialPort(0, "192.0.2.5", 10000), SerialPort(1, "192.0.2.5", 10001)))
        xml = self.successResultOf(self.driver.domain_xml(URI, server.domain))
        self.assertEqual(serial_ports(xml), server.serial_ports)
        self.assertEqual((owner(xml).server_id, owner(xml).tenant_id), (server.id, "acme"))
        root = ET.fromstring(xml)
        self.assertEqual([s.find("protocol").get("type") for s in root.findall("./devices/serial")], ["raw", "raw"])
        self.assertEqual([s.find("source").get("mode") for s in root.findall("./devices/serial")], ["bind", "bind"])
        self.assertEqual(root.findtext("./os/kernel"), "/boot/vmlinuz")
        self.assertEqual(self.successResultOf(self.store.get_server(server.id)).status, "active")

    def test_failed_boot_releases_ports(self):
        """A boot libvirt refuses leaves no server and no allocated port."""
        self.driver.fail_boot = "Cannot access storage file '/boot/vmlinuz'"
        failure = self.failureResultOf(self.run_(self.servers.boot("vm", "acme", IMAGE, HV, 128)), HypervisorError)
        self.assertIn("/boot/vmlinuz", str(failure.value))
        self.assertEqual(self.successResultOf(self.store.allocations("h1")), {})
        self.assertEqual(self.successResultOf(self.store.list_servers()), [])
        self.assertEqual(self.boot().serial_ports[0].port, 10000)

    def test_exhausted(self):
        """When the range runs out, nothing is booted and the error names hypervisor and range."""
        self.boot("one")
        self.boot("two")
        failure = self.failureResultOf(self.run_(self.servers.boot("three", "acme", IMAGE, HV, 128)), PortsExhausted)
        self.assertIn("10000:10003", str(failure.value))
        self.assertEqual(len(self.successResultOf(self.driver.domains(URI))), 2)

    def test_console_port_reads_live_xml(self):
        """The console port comes from the live domain, and the stored ports follow it."""
        server = self.boot()
        domain = self.driver.hypervisors[URI][server.domain]
        domain[0] = domain[0].replace("service=\"10001\"", "service=\"10003\"")
        port = self.successResultOf(self.run_(self.servers.console_port(server, 1)))
        self.assertEqual((port.host, port.port), ("192.0.2.5", 10003))
        self.assertEqual(self.successResultOf(self.store.get_server(server.id)).serial_ports[1].port, 10003)
        self.failureResultOf(self.run_(self.servers.console_port(server, 2)), BadRequest)

    def test_domain_gone(self):
        """A domain that vanished: the console is refused and the server is in error."""
        server = self.boot()
        self.successResultOf(self.driver.destroy(URI, server.domain))
        self.failureResultOf(self.run_(self.servers.console_port(server, 0)), Conflict)
        self.assertEqual(self.successResultOf(self.run_(self.servers.refresh(server))).status, "error")

    def test_status_follows_domain(self):
        """Refresh reports the domain's state."""
        server = self.boot()
        self.driver.hypervisors[URI][server.domain][1] = "shutoff"
        self.assertEqual(self.successResultOf(self.run_(self.servers.refresh(server))).status, "shutoff")
        self.assertEqual(self.successResultOf(self.store.get_server(server.id)).status, "shutoff")

    def test_delete(self):
        """Deleting destroys and undefines the domain and frees its ports."""
        server = self.boot()
        self.successResultOf(self.run_(self.servers.delete(server)))
        self.assertIsNone(self.successResultOf(self.driver.state(URI, server.domain)))
        self.assertEqual(self.successResultOf(self.store.allocations("h1")), {})
        self.assertIsNone(self.successResultOf(self.store.get_server(server.id)))

    def test_reconcile_rebuilds_lost_allocations(self):
        """After the database lost a running domain's rows, reconcile rebuilds its allocations and server."""
        server = self.boot()
        self.store.ports.clear()
        self.store.servers.clear()
        found = self.successResultOf(self.run_(self.servers.reconcile(HV)))
        self.assertEqual((found["domains"], found["rebuilt"]), (1, 1))
        self.assertEqual(self.successResultOf(self.store.allocations("h1")), {10000: server.id, 10001: server.id})
        self.assertEqual(self.successResultOf(self.store.get_server(server.id)).serial_ports, server.serial_ports)
        self.assertEqual(self.boot("next").serial_ports[0].port, 10002)

    def test_reconcile_releases_ports_of_gone_domains(self):
        """Allocations whose domain is gone are released and the server marked error."""
        server = self.boot()
        self.driver.hypervisors[URI].clear()
        found = self.successResultOf(self.run_(self.servers.reconcile(HV)))
        self.assertEqual(found["released"], 2)
        self.assertEqual(self.successResultOf(self.store.allocations("h1")), {})
        self.assertEqual(self.successResultOf(self.store.get_server(server.id)).status, "error")

    def test_reconcile_protects_other_domains_ports(self):
        """Ports that a domain not ours listens on are never handed out, even if tested free before."""
        self.boot("one")
        self.successResultOf(self.run_(self.servers.delete(self.boot("two"))))  # 10002, 10003 tested free
        foreign = build_domain_xml(DomainSpec("theirs", "", "", 64, (SerialPort(0, "192.0.2.5", 10002),)))
        root = ET.fromstring(foreign)
        root.remove(root.find("metadata"))
        self.successResultOf(self.driver.boot(URI, ET.tostring(root, encoding="unicode")))
        self.successResultOf(self.run_(self.servers.reconcile(HV)))
        self.assertEqual(self.successResultOf(self.run_(PortAllocator(self.store, self.probe).allocate(HV, "s9", 1))), [10003])

    def test_adopt(self):
        """An existing domain with TCP serial devices is adopted into a tenant, with our metadata written."""
        xml = build_domain_xml(DomainSpec("legacy", "", "", 64, (SerialPort(0, "0.0.0.0", 10002),)))
        root = ET.fromstring(xml)
        root.remove(root.find("metadata"))
        self.successResultOf(self.driver.boot(URI, ET.tostring(root, encoding="unicode")))
        server = self.successResultOf(self.run_(self.servers.adopt(HV, "legacy", "acme", "old-vm")))
        self.assertEqual((server.name, server.tenant_id, server.status), ("old-vm", "acme", "active"))
        self.assertEqual(server.serial_ports, (SerialPort(0, "192.0.2.5", 10002),))
        self.assertEqual(self.successResultOf(self.store.allocations("h1")), {10002: server.id})
        self.assertEqual(owner(self.successResultOf(self.driver.domain_xml(URI, "legacy"))).server_id, server.id)
        self.failureResultOf(self.run_(self.servers.adopt(HV, "legacy", "acme")), Conflict)


    def test_registered_ports_are_never_allocated(self):
        """A server registered with its ports keeps the allocator off them, even if tested free before."""
        self.successResultOf(self.run_(self.servers.delete(self.boot())))  # 10000, 10001 tested free
        registered = Server("r1", "legacy", "acme", "active", 0.0, (SerialPort(0, "192.0.2.5", 10000),))
        self.successResultOf(self.run_(self.servers.register(registered)))
        self.assertEqual([p.port for p in self.boot("next").serial_ports], [10001, 10002])


class SerialPortsPropertyTests(SynchronousTestCase):
    def test_values(self):
        """serial_ports defaults to 1 and takes 1-4; anything else is refused naming the value and range."""
        self.assertEqual(image_serial_ports({}), 1)
        self.assertEqual(image_serial_ports({"serial_ports": "4"}), 4)
        for bad in ("0", "5", "two", "-1", "1.5", True, "²"):
            error = self.assertRaises(BadRequest, image_serial_ports, {"serial_ports": bad})
            self.assertIn(repr(bad), str(error))
            self.assertIn("from 1 to 4", str(error))
