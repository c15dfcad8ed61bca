"""A real guest: booted through a real libvirtd with QEMU, typed into through the proxy.

Runs the daemon as twistd does, with independent clients (urllib and the
`websockets` package). scripts/test starts libvirtd and builds the guest
(scripts/build-guest) and names it in $SERIALPROXY_TEST_GUEST; without it
these tests fail, they never skip.
"""

import json
import os
import sqlite3
import time
import uuid

import libvirt
from twisted.trial.unittest import SynchronousTestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ..daemon import DaemonMixin

GUEST_ENV = "SERIALPROXY_TEST_GUEST"
LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"
ANSWER_TIMEOUT = 120  # TCG boot is ~3 s; keys typed during boot may be lost, so we resend


def type_and_read(url: str, expect: str) -> str:
    """Send a command until the guest's answer (which the typed text does not contain) comes back."""
    seen = b""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    with connect(url, open_timeout=10, max_size=None) as console:
        while time.monotonic() < deadline:
            console.send(b'echo "$((40+2))-$(tty)"\r')
            resend = time.monotonic() + 2
            while time.monotonic() < resend:
                try:
                    seen += console.recv(timeout=0.5)
                except TimeoutError:
                    continue
                if expect.encode() in seen:
                    return seen.decode("utf-8", "replace")
    raise AssertionError(f"no {expect!r} from the guest in {ANSWER_TIMEOUT} s; it said: {seen[-500:]!r}")


def built_guest(testcase) -> str:
    """The guest.json of the built guest; fails ``testcase`` (never skips) without it or without libvirtd."""
    path = os.environ.get(GUEST_ENV)
    if not path or not os.path.exists(path):
        testcase.fail(f"${GUEST_ENV} does not name a built guest: run scripts/test (it runs scripts/build-guest)")
    if not os.path.exists(LIBVIRT_SOCKET):
        testcase.fail("libvirtd is not running: run scripts/test (it runs scripts/libvirt-services start)")
    return path


def destroy_domain(name: str) -> None:
    """Stop and forget a libvirt domain, if it is there."""
    connection = libvirt.open("qemu:///system")
    try:
        domain = connection.lookupByName(name)
        if domain.isActive():
            domain.destroy()
        domain.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        connection.close()


class RealGuestTests(DaemonMixin, SynchronousTestCase):
    def setUp(self):
        path = built_guest(self)
        with open(path) as f:
            self.guest = json.load(f)
        super().setUp()
        self.suffix = uuid.uuid4().hex[:8]

    def api(self, method, path, key, body=None, expect=None):
        code, answer = self.http(method, self.base.replace("ws://", "http://").rstrip("/") + path, key, body)
        if expect is not None:
            self.assertEqual(code, expect, answer)
        return answer

    def allocations(self):
        with sqlite3.connect(os.path.join(self.dir, "state", "serialproxy.sqlite")) as db:
            return sorted(db.execute("SELECT hypervisor_id, port, server_id FROM port_allocations WHERE state = 'allocated'"))

    def test_boot_type_restart_delete(self):
        """Boot a 2-port guest, type into each port via v2 and v3 URLs, restart the proxy, delete."""
        admin = self.manage("create-key", "--tenant", "ops", "--admin")
        member = self.manage("create-key", "--tenant", "acme")
        process, self.base = self.start("serialproxy", "--config", self.config)
        self.api("POST", "/v3/hypervisors", admin, {"hypervisor": {
            "name": f"local-{self.suffix}", "libvirt_uri": "qemu:///system",
            "proxyclient_address": "127.0.0.1", "port_range": "23000:23999"}}, expect=201)
        self.api("POST", "/v3/images", admin, {"image": {
            "name": f"tiny-{self.suffix}", "kernel": self.guest["kernel"], "initrd": self.guest["initrd"],
            "cmdline": self.guest["cmdline"], "metadata": {"serial_ports": "2"}}}, expect=201)
        server = self.api("POST", "/v2/acme/servers", member, {"server": {
            "name": "guest", "image": f"tiny-{self.suffix}", "hypervisor": f"local-{self.suffix}",
            "memory_mb": 128}}, expect=202)["server"]
        self.addCleanup(destroy_domain, f"serialproxy-{server['id']}")
        self.assertEqual((server["status"], len(server["serial_ports"])), ("active", 2))

        first = self.api("POST", f"/v2/acme/servers/{server['id']}/get-serial-console", member,
                         {"get_serial_console": {"type": "serial", "port": 0}}, expect=200)["serial_console"]
        second = self.api("POST", f"/v3/servers/{server['id']}/get-serial-console", member,
                          {"get_serial_console": {"type": "serial", "port": 1}}, expect=202)["serial_console"]
        self.assertIn("42-/dev/ttyS0", type_and_read(first["url"], "42-/dev/ttyS0"))
        self.assertIn("42-/dev/ttyS1", type_and_read(second["url"], "42-/dev/ttyS1"))

        before = self.allocations()
        ports = self.api("GET", f"/v3/servers/{server['id']}", admin, expect=200)["server"]["serial_ports"]
        self.assertEqual(len(before), 2)
        self.stop(process)
        process, self.base = self.start("serialproxy", "--config", self.config)
        self.assertEqual(self.allocations(), before)
        again = self.api("GET", f"/v3/servers/{server['id']}", admin, expect=200)["server"]
        self.assertEqual((again["status"], again["serial_ports"]), ("active", ports))
        url = self.api("POST", f"/v3/servers/{server['id']}/get-serial-console", member,
                       {"get_serial_console": {"port": 1}}, expect=202)["serial_console"]["url"]
        type_and_read(url, "42-/dev/ttyS1")

        self.api("DELETE", f"/v3/servers/{server['id']}", member, expect=204)
        self.assertEqual(self.allocations(), [])
        connection = libvirt.open("qemu:///system")
        self.addCleanup(connection.close)
        self.assertNotIn(f"serialproxy-{server['id']}", [d.name() for d in connection.listAllDomains()])
        with self.assertRaises(ConnectionClosed) as closed:
            with connect(url, open_timeout=10) as console:
                console.recv(timeout=10)
        self.assertIn(closed.exception.rcvd.code, (4001, 4004))
