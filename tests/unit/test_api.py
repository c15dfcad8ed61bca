"""The REST API in memory (StubTreq): keys, tenancy, bodies, console URLs."""

import itertools
import json
from urllib.parse import parse_qs, urlsplit

from hypothesis import given, strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from serialproxy.api import API, LIST_SLICE, _json_list, console_url
from serialproxy.config import load_config
from serialproxy.errors import TokenInvalid
from serialproxy.sessions import SessionManager
from serialproxy.ports import PortAllocator
from serialproxy.servers import Servers
from serialproxy.testing import FakeHypervisorDriver, FakeProbe, MemoryStore
from serialproxy.tokens import KeyService, TokenService, hash_secret


def entropy():
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(4, "big").rjust(n, b"\x07")


def run_turns(clock: Clock, after=lambda: None) -> int:
    """Run ``clock``'s due calls turn by turn, as the reactor does (a call made in a turn waits for the next); turns run."""
    turns = 0
    while any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()):
        for call in [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]:
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)
        after()
        turns += 1
    return turns


class APITestCase(SynchronousTestCase):
    """An API on the in-memory store and fake driver, with an admin and two member keys."""

    def setUp(self, enabled="true"):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore()
        random = entropy()
        keys = KeyService(self.store, self.clock, random)
        self.tokens = tokens = TokenService(self.store, self.clock, 600, random)
        sessions = SessionManager(self.store, tokens, self.clock, "node", entropy=random)
        config = load_config(None, {"enabled": enabled})
        self.driver = FakeHypervisorDriver()
        servers = Servers(self.store, self.driver, PortAllocator(self.store, FakeProbe()), self.clock, random)
        self.api = API(config, self.store, keys, tokens, sessions, self.clock,
                       lambda: "ws://proxy.example.com:6083/", random, servers)
        self.treq = StubTreq(self.api.app.resource())
        self.admin = self.key(keys, "ops", True)
        self.acme = self.key(keys, "acme", False)
        self.other = self.key(keys, "other", False)

    def key(self, keys, tenant, admin):
        return self.successResultOf(Deferred.fromCoroutine(keys.create(tenant, admin)))[1]

    def call(self, method, path, key=None, body=None):
        headers = {"X-Auth-Token": key} if key else {}
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        response = self.successResultOf(self.treq.request(method, "http://proxy.example.com:6083" + path, headers=headers, data=data))
        text = self.successResultOf(response.content())
        return response.code, (json.loads(text) if text else None)

    def register(self, tenant="acme", ports=(("127.0.0.1", 7000),)):
        code, body = self.call("POST", "/v3/servers", self.admin, {"server": {
            "name": "vm1", "tenant_id": tenant, "serial_ports": [{"host": h, "port": p} for h, p in ports]}})
        self.assertEqual(code, 201, body)
        return body["server"]["id"]


class APITests(APITestCase):
    def test_register_server(self):
        """An admin registers a server; the answer has its id, status and serial ports."""
        code, body = self.call("POST", "/v3/servers", self.admin, {"server": {
            "name": "vm1", "tenant_id": "acme", "serial_ports": [{"host": "127.0.0.1", "port": 7000}]}})
        self.assertEqual(code, 201)
        self.assertEqual(body["server"]["status"], "active")
        self.assertEqual(body["server"]["serial_ports"], [{"index": 0, "host": "127.0.0.1", "port": 7000}])

    def test_member_cannot_register(self):
        """A member key may not register servers (403)."""
        code, body = self.call("POST", "/v3/servers", self.acme, {"server": {}})
        self.assertEqual(code, 403)
        self.assertIn("admin", body["error"]["message"])

    def test_bad_bodies(self):
        """Bad server bodies answer 400 naming the field and the value."""
        for body, expected in [
            (b"{not json", "not valid JSON"),
            ({"server": {"name": "x", "tenant_id": "acme", "serial_ports": [{"host": "127.0.0.1", "port": 70000}]}}, "server.serial_ports[0].port: 70000"),
            ({"server": {"name": "x", "tenant_id": "a b", "serial_ports": [{"host": "h", "port": 1}]}}, "server.tenant_id: 'a b'"),
            ({"server": {"name": "", "tenant_id": "acme", "serial_ports": [{"host": "h", "port": 1}]}}, "server.name"),
            ({"server": {"name": "x", "tenant_id": "acme", "serial_ports": []}}, "server.serial_ports"),
            ({"servers": {}}, "'server'"),
        ]:
            code, answer = self.call("POST", "/v3/servers", self.admin, body)
            self.assertEqual((code, answer["error"]["code"]), (400, 400), body)
            self.assertIn(expected, answer["error"]["message"])

    def test_duplicate_serial_port(self):
        """A host:port that another server has is a 409."""
        self.register()
        code, body = self.call("POST", "/v3/servers", self.admin, {"server": {
            "name": "vm2", "tenant_id": "acme", "serial_ports": [{"host": "127.0.0.1", "port": 7000}]}})
        self.assertEqual(code, 409)

    def test_keys_required(self):
        """No key and a wrong key are 401 with a JSON error."""
        self.assertEqual(self.call("GET", "/v3/servers")[0], 401)
        code, body = self.call("GET", "/v3/servers", "spk_nope")
        self.assertEqual((code, body["error"]["code"]), (401, 401))

    def test_list_and_show_by_tenant(self):
        """Members see their own servers only (without VM addresses); admins see all."""
        mine, theirs = self.register("acme", [("127.0.0.1", 1)]), self.register("other", [("127.0.0.1", 2)])
        self.assertEqual([s["id"] for s in self.call("GET", "/v3/servers", self.acme)[1]["servers"]], [mine])
        self.assertEqual(len(self.call("GET", "/v3/servers", self.admin)[1]["servers"]), 2)
        code, body = self.call("GET", f"/v3/servers/{mine}", self.acme)
        self.assertEqual((code, body["server"]["serial_ports"]), (200, [{"index": 0}]))
        self.assertEqual(self.call("GET", f"/v3/servers/{theirs}", self.acme)[0], 404)

    def test_long_list_a_slice_a_turn(self):
        """A list longer than a slice is made over several reactor turns, and comes whole and in order."""
        with_servers = [self.register("acme", [("127.0.0.1", 1000 + i)]) for i in range(2 * LIST_SLICE + 1)]
        answer = self.treq.request("GET", "http://proxy.example.com:6083/v3/servers", headers={"X-Auth-Token": self.acme})
        self.assertEqual(run_turns(self.clock, self.treq.flush), 2)  # three slices: two more turns
        response = self.successResultOf(answer)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual((response.code, [s["id"] for s in body["servers"]]), (200, with_servers))

    def test_other_tenant_is_not_found(self):
        """Another tenant's server answers exactly like a missing one."""
        theirs = self.register("other")
        missing = "00000000-0000-4000-8000-000000000000"
        for path in ("/v3/servers/{}/get-serial-console", "/v2/acme/servers/{}/get-serial-console"):
            hidden = self.call("POST", path.format(theirs), self.acme)
            absent = self.call("POST", path.format(missing), self.acme)
            self.assertEqual(hidden[0], 404)
            self.assertEqual(hidden[1]["error"]["message"].replace(theirs, "X"), absent[1]["error"]["message"].replace(missing, "X"))

    def test_v2_console(self):
        """v2 answers 200 with a console URL carrying a token bound to the port."""
        server = self.register(ports=[("127.0.0.1", 7000), ("127.0.0.1", 7001)])
        code, body = self.call("POST", f"/v2/acme/servers/{server}/get-serial-console", self.acme,
                               {"get_serial_console": {"type": "serial", "port": 1}})
        self.assertEqual(code, 200)
        console = body["serial_console"]
        self.assertEqual((console["type"], console["port"]), ("serial", 1))
        self.assertTrue(console["url"].startswith("ws://proxy.example.com:6083/?token="))
        secret = parse_qs(urlsplit(console["url"]).query)["token"][0]
        token = self.store.tokens[hash_secret(secret)]
        self.assertEqual((token.server_id, token.port_index, token.port, token.expires - token.created), (server, 1, 7001, 600))

    def test_v3_console(self):
        """v3 answers 202, takes the tenant from the key, and needs no body."""
        server = self.register()
        code, body = self.call("POST", f"/v3/servers/{server}/get-serial-console", self.acme)
        self.assertEqual((code, body["serial_console"]["port"]), (202, 0))

    def test_v2_other_tenant_in_path(self):
        """A member key cannot act for another tenant in the v2 path (403); an admin can."""
        server = self.register("other")
        self.assertEqual(self.call("POST", f"/v2/other/servers/{server}/get-serial-console", self.acme)[0], 403)
        self.assertEqual(self.call("POST", f"/v2/other/servers/{server}/get-serial-console", self.admin)[0], 200)

    def test_console_bad_requests(self):
        """Another console type, a port the server lacks, or a bad body: 400 saying why."""
        server = self.register()
        path = f"/v3/servers/{server}/get-serial-console"
        code, body = self.call("POST", path, self.acme, {"get_serial_console": {"type": "novnc"}})
        self.assertEqual(code, 400)
        self.assertIn("only 'serial'", body["error"]["message"])
        code, body = self.call("POST", path, self.acme, {"get_serial_console": {"type": "serial", "port": 4}})
        self.assertEqual(code, 400)
        self.assertIn("port 4", body["error"]["message"])
        self.assertEqual(self.call("POST", path, self.acme, {"get_serial_console": {"port": "one"}})[0], 400)
        self.assertEqual(self.call("POST", path, self.acme, {"os-getSerialConsole": {"type": "serial"}})[0], 202)

    def test_disabled(self):
        """With enabled = false, asking for a console is a 400 saying how to enable it."""
        self.setUp(enabled="false")
        server = self.register()
        code, body = self.call("POST", f"/v3/servers/{server}/get-serial-console", self.acme)
        self.assertEqual(code, 400)
        self.assertIn("enabled = true", body["error"]["message"])

    def test_delete(self):
        """Owners delete their servers (204); then the server is gone (404)."""
        server = self.register()
        self.assertEqual(self.call("DELETE", f"/v3/servers/{server}", self.other)[0], 404)
        self.assertEqual(self.call("DELETE", f"/v3/servers/{server}", self.acme)[0], 204)
        self.assertEqual(self.call("GET", f"/v3/servers/{server}", self.admin)[0], 404)

    def test_delete_forgets_console_tokens(self):
        """Deleting a server forgets its console tokens on this node at once, cached or not."""
        server = self.register()
        url = self.call("POST", f"/v3/servers/{server}/get-serial-console", self.acme)[1]["serial_console"]["url"]
        secret = parse_qs(urlsplit(url).query)["token"][0]
        self.successResultOf(Deferred.fromCoroutine(self.tokens.check(secret)))
        self.assertEqual(self.call("DELETE", f"/v3/servers/{server}", self.acme)[0], 204)
        self.failureResultOf(Deferred.fromCoroutine(self.tokens.check(secret)), TokenInvalid)

    def test_unknown_route_and_method(self):
        """Unknown paths are a JSON 404; wrong methods a JSON 405 listing the allowed ones."""
        self.assertEqual(self.call("GET", "/v3/nothing", self.admin)[0], 404)
        code, body = self.call("PUT", "/v3/servers", self.admin)
        self.assertEqual(code, 405)
        self.assertIn("GET", body["error"]["message"])


class BootAPITests(APITestCase):
    """Hypervisors, images and booting through the API (on the fake driver)."""

    def prepare(self, port_range="10000:10003", serial_ports="2"):
        code, body = self.call("POST", "/v3/hypervisors", self.admin, {"hypervisor": {
            "name": "hv1", "libvirt_uri": "test:///default", "proxyclient_address": "127.0.0.1", "port_range": port_range}})
        self.assertEqual(code, 201, body)
        code, body = self.call("POST", "/v3/images", self.admin, {"image": {
            "name": "tiny", "kernel": "/boot/vmlinuz", "initrd": "/boot/initrd", "cmdline": "console=ttyS0",
            "metadata": {"serial_ports": serial_ports}}})
        self.assertEqual(code, 201, body)

    def boot(self, key=None, path="/v2/acme/servers"):
        return self.call("POST", path, key or self.acme, {"server": {"name": "vm", "image": "tiny", "hypervisor": "hv1"}})

    def test_member_boots_in_own_tenant(self):
        """A member boots a server (202) whose console works on every port; another tenant's path is 403."""
        self.prepare()
        code, body = self.boot()
        self.assertEqual((code, body["server"]["status"], len(body["server"]["serial_ports"])), (202, "active", 2))
        server = body["server"]["id"]
        for port in (0, 1):
            code, console = self.call("POST", f"/v3/servers/{server}/get-serial-console", self.acme,
                                      {"get_serial_console": {"port": port}})
            self.assertEqual(code, 202)
        self.assertEqual(self.boot(path="/v2/other/servers")[0], 403)

    def test_admin_boots_for_a_tenant(self):
        """POST /v3/servers with image and hypervisor boots for the named tenant."""
        self.prepare()
        code, body = self.call("POST", "/v3/servers", self.admin, {"server": {
            "name": "vm", "tenant_id": "other", "image": "tiny", "hypervisor": "hv1", "memory_mb": 96}})
        self.assertEqual((code, body["server"]["tenant_id"], body["server"]["memory_mb"]), (202, "other", 96))

    def test_exhausted_and_released(self):
        """A full range answers 409 naming hypervisor and range; deleting frees the ports."""
        self.prepare(port_range="10000:10001")
        code, body = self.boot()
        self.assertEqual(code, 202)
        code, error = self.boot()
        self.assertEqual(code, 409)
        self.assertIn("10000:10001", error["error"]["message"])
        self.assertEqual(self.call("DELETE", f"/v3/servers/{body['server']['id']}", self.acme)[0], 204)
        self.assertEqual(self.boot()[0], 202)

    def test_failed_boot(self):
        """libvirt refusing the boot is a 502 with its reason; no port stays allocated."""
        self.prepare()
        self.driver.fail_boot = "internal error: qemu unexpectedly closed the monitor"
        code, body = self.boot()
        self.assertEqual(code, 502)
        self.assertIn("qemu unexpectedly closed", body["error"]["message"])
        self.assertEqual(self.store.ports and {s for s, _ in self.store.ports.values()}, {"free"})

    def test_bad_image_metadata(self):
        """serial_ports out of range is refused naming the value and the allowed range."""
        code, body = self.call("POST", "/v3/images", self.admin, {"image": {
            "name": "big", "disk": "/var/lib/img.qcow2", "metadata": {"serial_ports": "9"}}})
        self.assertEqual(code, 400)
        self.assertIn("'9'", body["error"]["message"])
        self.assertIn("1 to 4", body["error"]["message"])

    def test_unknown_image_or_hypervisor(self):
        """Booting from an image or on a hypervisor that does not exist is a 400 naming it."""
        self.prepare()
        code, body = self.call("POST", "/v2/acme/servers", self.acme, {"server": {"name": "vm", "image": "nope", "hypervisor": "hv1"}})
        self.assertEqual(code, 400)
        self.assertIn("'nope'", body["error"]["message"])

    def test_listing_needs_keys(self):
        """Hypervisors are listed to admins only; images to any key."""
        self.prepare()
        self.assertEqual(self.call("GET", "/v3/hypervisors", self.acme)[0], 403)
        self.assertEqual(len(self.call("GET", "/v3/hypervisors", self.admin)[1]["hypervisors"]), 1)
        self.assertEqual(len(self.call("GET", "/v3/images", self.acme)[1]["images"]), 1)


class ConsoleURLTests(SynchronousTestCase):
    def test_query_kept(self):
        """A base URL with a query keeps it and gets the token added."""
        self.assertEqual(console_url("wss://h/c?x=1", "T"), "wss://h/c?x=1&token=T")
        self.assertEqual(console_url("ws://h:1", "T"), "ws://h:1/?token=T")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=6)


class JSONListTests(SynchronousTestCase):
    @given(st.lists(_JSON, max_size=12), st.text(min_size=1, max_size=10), st.integers(1, 5))
    def test_same_bytes_as_json_dumps(self, items, name, size):
        """The sliced answer is byte for byte what json.dumps makes of the whole list, after a turn per extra slice."""
        clock, request = Clock(), DummyRequest([b""])
        made = Deferred.fromCoroutine(_json_list(clock, request, name, items, lambda item: [item], size))
        self.assertEqual(run_turns(clock), max(0, -(-len(items) // size) - 1))  # a turn per slice after the first
        self.assertEqual(self.successResultOf(made), json.dumps({name: [[item] for item in items]}).encode("utf-8"))
        self.assertEqual((request.responseCode, request.responseHeaders.getRawHeaders(b"content-type")),
                         (200, [b"application/json"]))
