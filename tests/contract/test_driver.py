"""One contract for every IHypervisorDriver: the in-memory fake and libvirt's test:///default."""

import uuid
import xml.etree.ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from serialproxy.domain import DomainSpec, build_domain_xml, owner, serial_ports
from serialproxy.interfaces import IHypervisorDriver, SerialPort
from serialproxy.libvirt_driver import HypervisorError, LibvirtDriver
from serialproxy.testing import FakeHypervisorDriver, InlineReactor, InlineThreadPool

URI = "test:///default"


class DriverContract:
    """Behaviour every driver must have; each TestCase provides ``make_driver()``."""

    def setUp(self):
        self.driver = self.make_driver()
        self.name = f"sp-contract-{uuid.uuid4().hex[:8]}"
        self.addCleanup(lambda: self.driver.destroy(URI, self.name))

    def get(self, d):
        return self.successResultOf(d)

    def xml(self, ports=((0, 10000), (1, 10001))):
        return build_domain_xml(DomainSpec(self.name, "server-1", "acme", 64,
                                           tuple(SerialPort(i, "127.0.0.1", p) for i, p in ports),
                                           kernel="/boot/vmlinuz", initrd="/boot/initrd", cmdline="console=ttyS0"))

    def test_interface(self):
        """The driver provides IHypervisorDriver."""
        self.assertTrue(verifyObject(IHypervisorDriver, self.driver))

    def test_boot_and_read_back(self):
        """A booted domain is active, and its live XML has our serial ports and metadata."""
        self.assertEqual(self.get(self.driver.boot(URI, self.xml())), self.name)
        self.assertEqual(self.get(self.driver.state(URI, self.name)), "active")
        live = self.get(self.driver.domain_xml(URI, self.name))
        self.assertEqual(serial_ports(live), (SerialPort(0, "127.0.0.1", 10000), SerialPort(1, "127.0.0.1", 10001)))
        self.assertEqual(owner(live).server_id, "server-1")
        self.assertIn(self.name, [name for name, _ in self.get(self.driver.domains(URI))])

    def test_destroy(self):
        """Destroying undefines the domain; a second destroy finds nothing."""
        self.get(self.driver.boot(URI, self.xml()))
        self.assertTrue(self.get(self.driver.destroy(URI, self.name)))
        self.assertIsNone(self.get(self.driver.state(URI, self.name)))
        self.assertIsNone(self.get(self.driver.domain_xml(URI, self.name)))
        self.assertFalse(self.get(self.driver.destroy(URI, self.name)))

    def test_duplicate_name(self):
        """Booting a second domain with a taken name fails with HypervisorError."""
        self.get(self.driver.boot(URI, self.xml()))
        self.failureResultOf(self.driver.boot(URI, self.xml()), HypervisorError)

    def test_set_owner(self):
        """Adoption writes our metadata into a domain that had none."""
        root = ET.fromstring(self.xml())
        root.remove(root.find("metadata"))
        self.get(self.driver.boot(URI, ET.tostring(root, encoding="unicode")))
        self.assertIsNone(owner(self.get(self.driver.domain_xml(URI, self.name))))
        self.get(self.driver.set_owner(URI, self.name, "server-9", "tenant-9"))
        found = owner(self.get(self.driver.domain_xml(URI, self.name)))
        self.assertEqual((found.server_id, found.tenant_id), ("server-9", "tenant-9"))


class FakeDriverTests(DriverContract, SynchronousTestCase):
    def make_driver(self):
        return FakeHypervisorDriver()

    def test_fail_boot(self):
        """The fake can fail a boot, as a broken image would, and then boots again."""
        self.driver.fail_boot = "kernel not found"
        failure = self.failureResultOf(self.driver.boot(URI, self.xml()), HypervisorError)
        self.assertIn("kernel not found", str(failure.value))
        self.get(self.driver.boot(URI, self.xml()))


class LibvirtTestDriverTests(DriverContract, SynchronousTestCase):
    def make_driver(self):
        driver = LibvirtDriver(InlineReactor(), threadpool=InlineThreadPool())
        driver.startService()
        self.addCleanup(driver.stopService)
        return driver

    def test_unknown_uri(self):
        """A URI libvirt cannot open is a HypervisorError naming it."""
        failure = self.failureResultOf(self.driver.state("nosuch:///x", "d"), HypervisorError)
        self.assertIn("nosuch:///x", str(failure.value))
