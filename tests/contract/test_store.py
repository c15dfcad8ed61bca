"""One contract for every IStore: the in-memory fake, sqlite and PostgreSQL."""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from serialproxy.errors import Conflict, NotFound
from serialproxy.interfaces import ApiKey, ConsoleLock, ConsoleToken, Hypervisor, Image, IStore, SerialPort, Server, SessionRecord
from serialproxy.store import SQLStore
from serialproxy.testing import MemoryStore, inline_database

from ..support import postgres_url, sqlite_url


def _server(server_id="s1", tenant="acme", ports=((("127.0.0.1", 7000)),), created=1.0):
    return Server(server_id, f"vm-{server_id}", tenant, "active", created,
                  tuple(SerialPort(i, host, port) for i, (host, port) in enumerate(ports)))


def _token(token_hash="h1", server_id="s1", index=0, expires=100.0):
    return ConsoleToken(token_hash, server_id, index, "127.0.0.1", 7000, "acme", 0.0, expires)


def _lock(session="a", node="n1", server_id="s1", index=0, since=0.0, expires=30.0):
    return ConsoleLock(server_id, index, session, node, "127.0.0.1:5000", "acme", since, expires)


class StoreContract:
    """Behaviour every IStore must have; mixed into one TestCase per store,
    which provides ``make_store()``."""

    def setUp(self):
        self.store = self.make_store()

    def get(self, d):
        return self.successResultOf(d)

    def test_interface(self):
        """The store provides IStore."""
        self.assertTrue(verifyObject(IStore, self.store))

    def test_keys(self):
        """A key is found by its hash, listed, and gone once revoked."""
        key = ApiKey("k1", "acme", True, "ops", 5.0)
        self.get(self.store.create_key(key, "hash1"))
        self.assertEqual(self.get(self.store.find_key("hash1")), key)
        self.assertIsNone(self.get(self.store.find_key("other")))
        self.assertEqual(self.get(self.store.list_keys()), [key])
        self.assertTrue(self.get(self.store.revoke_key("k1")))
        self.assertFalse(self.get(self.store.revoke_key("k1")))
        self.assertIsNone(self.get(self.store.find_key("hash1")))

    def test_member_key_is_not_admin(self):
        """is_admin round-trips as a bool."""
        self.get(self.store.create_key(ApiKey("k2", "t", False, "", 1.0), "hash2"))
        self.assertIs(self.get(self.store.find_key("hash2")).is_admin, False)

    def test_servers(self):
        """Servers keep their serial ports in order, list by tenant, and delete."""
        one = _server("s1", "acme", (("127.0.0.1", 7000), ("127.0.0.1", 7001)), 1.0)
        two = _server("s2", "other", (("::1", 7000),), 2.0)
        self.get(self.store.create_server(one))
        self.get(self.store.create_server(two))
        self.assertEqual(self.get(self.store.get_server("s1")), one)
        self.assertIsNone(self.get(self.store.get_server("nope")))
        self.assertEqual(self.get(self.store.list_servers()), [one, two])
        self.assertEqual(self.get(self.store.list_servers("other")), [two])
        self.assertEqual(self.get(self.store.list_servers("nobody")), [])
        self.assertTrue(self.get(self.store.delete_server("s1")))
        self.assertFalse(self.get(self.store.delete_server("s1")))
        self.assertEqual(self.get(self.store.list_servers()), [two])

    def test_serial_port_belongs_to_one_server(self):
        """A host:port already registered is refused with Conflict naming its server."""
        self.get(self.store.create_server(_server("s1")))
        failure = self.failureResultOf(self.store.create_server(_server("s2")), Conflict)
        self.assertIn("127.0.0.1:7000", str(failure.value))
        self.assertIn("s1", str(failure.value))
        self.assertIsNone(self.get(self.store.get_server("s2")))

    def test_tokens(self):
        """Tokens are found by hash, expired ones purged, live ones kept."""
        self.get(self.store.create_server(_server()))
        self.get(self.store.add_token(_token("old", expires=10.0)))
        self.get(self.store.add_token(_token("new", expires=100.0)))
        self.assertEqual(self.get(self.store.find_token("old")), _token("old", expires=10.0))
        self.assertEqual(self.get(self.store.purge_tokens(50.0)), 1)
        self.assertIsNone(self.get(self.store.find_token("old")))
        self.assertEqual(self.get(self.store.find_token("new")).expires, 100.0)

    def test_delete_server_drops_tokens_and_locks(self):
        """Deleting a server deletes its tokens and frees its consoles."""
        self.get(self.store.create_server(_server()))
        self.get(self.store.add_token(_token()))
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("a"), 0.0)))
        self.get(self.store.delete_server("s1"))
        self.assertIsNone(self.get(self.store.find_token("h1")))
        self.get(self.store.create_server(_server()))
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("b"), 1.0)))

    def test_one_writer(self):
        """A second session is refused with the holder's lock; after release it gets in."""
        self.get(self.store.create_server(_server()))
        first = _lock("a", since=1.0)
        self.assertIsNone(self.get(self.store.acquire_lock(first, 1.0)))
        self.assertEqual(self.get(self.store.acquire_lock(_lock("b", node="n2"), 2.0)), first)
        self.get(self.store.release_lock("a"))
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("b", node="n2"), 3.0)))

    def test_consoles_are_separate(self):
        """Each serial port of a server has its own lock."""
        self.get(self.store.create_server(_server(ports=(("127.0.0.1", 7000), ("127.0.0.1", 7001)))))
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("a", index=0), 0.0)))
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("b", index=1), 0.0)))

    def test_expired_lease_is_taken_over(self):
        """A lock whose lease ran out (a dead node's) does not block the console."""
        self.get(self.store.create_server(_server()))
        self.get(self.store.acquire_lock(_lock("a", expires=30.0), 0.0))
        self.assertIsNotNone(self.get(self.store.acquire_lock(_lock("b", expires=60.0), 29.0)))
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("b", since=31.0, expires=61.0), 31.0)))
        held = self.get(self.store.acquire_lock(_lock("c", node="n2", since=32.0, expires=62.0), 32.0))
        self.assertEqual(held, _lock("b", since=31.0, expires=61.0), "the taker holds the lock, all of it its own")

    def test_renew_extends_only_own_leases(self):
        """Renewing moves the expiry of one node's locks and no other's."""
        self.get(self.store.create_server(_server(ports=(("127.0.0.1", 7000), ("127.0.0.1", 7001)))))
        self.get(self.store.acquire_lock(_lock("a", node="n1", index=0, expires=30.0), 0.0))
        self.get(self.store.acquire_lock(_lock("b", node="n2", index=1, expires=30.0), 0.0))
        self.assertEqual(self.get(self.store.renew_locks("n1", 90.0)), 1)
        self.assertEqual(self.get(self.store.acquire_lock(_lock("c", index=0), 60.0)).session_id, "a")
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("d", index=1), 60.0)))

    def test_release_unknown_session(self):
        """Releasing a session that holds nothing is harmless."""
        self.successResultOf(self.store.release_lock("nobody"))


    def hypervisor(self, hid="h1", name="hv1"):
        hypervisor = Hypervisor(hid, name, "test:///default", "127.0.0.1", (10000, 10009), 1.0, "kvm")
        self.get(self.store.create_hypervisor(hypervisor))
        return hypervisor

    def test_hypervisors(self):
        """Hypervisors are found by id or name; a name is taken once."""
        one = self.hypervisor()
        self.assertEqual(self.get(self.store.find_hypervisor("h1")), one)
        self.assertEqual(self.get(self.store.find_hypervisor("hv1")), one)
        self.assertIsNone(self.get(self.store.find_hypervisor("nope")))
        self.failureResultOf(self.store.create_hypervisor(Hypervisor("h2", "hv1", "x", "", (1, 2), 2.0)), Conflict)
        self.assertEqual(self.get(self.store.list_hypervisors()), [one])

    def test_images(self):
        """Images keep their metadata; a name is taken once."""
        image = Image("i1", "tiny", "/k", "/i", "console=ttyS0", "", {"serial_ports": "2"}, 1.0)
        self.get(self.store.create_image(image))
        self.assertEqual(self.get(self.store.find_image("tiny")), image)
        self.assertEqual(self.get(self.store.find_image("i1")), image)
        self.failureResultOf(self.store.create_image(Image("i2", "tiny", "", "", "", "/d", {}, 2.0)), Conflict)
        self.assertEqual(self.get(self.store.list_images()), [image])

    def test_booted_server_fields(self):
        """A server booted on a hypervisor keeps its hypervisor, image, domain and memory; status changes."""
        self.hypervisor()
        server = Server("s9", "vm", "acme", "building", 1.0, (SerialPort(0, "127.0.0.1", 10000),), "h1", "i1", "dom-s9", 128)
        self.get(self.store.create_server(server))
        self.assertEqual(self.get(self.store.get_server("s9")), server)
        self.assertTrue(self.get(self.store.set_server_status("s9", "active")))
        self.assertFalse(self.get(self.store.set_server_status("nope", "active")))
        self.get(self.store.set_serial_ports("s9", (SerialPort(0, "127.0.0.1", 10005),)))
        found = self.get(self.store.get_server("s9"))
        self.assertEqual((found.status, found.serial_ports[0].port), ("active", 10005))

    def test_port_rows(self):
        """Tested ports are recorded once; released ones are claimed again lowest first."""
        self.hypervisor()
        self.assertIsNone(self.get(self.store.claim_tested_port("h1", 10000, 10009, "s1")))
        self.assertTrue(self.get(self.store.record_port("h1", 10000, "s1")))
        self.assertFalse(self.get(self.store.record_port("h1", 10000, "s2")))
        self.assertTrue(self.get(self.store.record_port("h1", 10001, None)))  # in use by something else
        self.assertTrue(self.get(self.store.record_port("h1", 10002, "s1")))
        self.assertEqual(sorted(self.get(self.store.known_ports("h1"))), [10000, 10001, 10002])
        self.assertEqual(self.get(self.store.allocations("h1")), {10000: "s1", 10002: "s1"})
        self.assertEqual(self.get(self.store.count_unavailable_ports("h1", 10000, 10009)), 3)
        self.assertEqual(self.get(self.store.release_ports("s1")), 2)
        self.assertEqual(self.get(self.store.count_unavailable_ports("h1", 10000, 10009)), 1)
        self.assertEqual(self.get(self.store.claim_tested_port("h1", 10000, 10009, "s3")), 10000)
        self.assertEqual(self.get(self.store.claim_tested_port("h1", 10001, 10009, "s3")), 10002)
        self.assertIsNone(self.get(self.store.claim_tested_port("h1", 10000, 10009, "s3")))

    def test_adopt_ports(self):
        """Adopting marks ports allocated, except those another server holds."""
        self.hypervisor()
        self.get(self.store.record_port("h1", 10003, "other"))
        self.assertEqual(self.get(self.store.adopt_ports("h1", (10003, 10004), "s1")), [10003])
        self.assertEqual(self.get(self.store.allocations("h1")), {10003: "other", 10004: "s1"})
        self.assertEqual(self.get(self.store.adopt_ports("h1", (10004,), "s1")), [])

    def test_foreign_ports(self):
        """Ports another domain uses become foreign: never claimed, never counted free."""
        self.hypervisor()
        self.get(self.store.record_port("h1", 10000, "s1"))
        self.get(self.store.release_ports("s1"))
        self.get(self.store.mark_ports_foreign("h1", (10000, 10001)))
        self.assertIsNone(self.get(self.store.claim_tested_port("h1", 10000, 10009, "s2")))
        self.assertEqual(sorted(self.get(self.store.known_ports("h1"))), [10000, 10001])
        self.assertEqual(self.get(self.store.count_unavailable_ports("h1", 10000, 10009)), 2)

    def session(self, sid="a", node="n1", expires=30.0):
        record = SessionRecord(sid, "s1", 0, "write", "127.0.0.1:1", "acme", node, 1.0, expires)
        self.get(self.store.add_session(record))
        return record

    def test_sessions(self):
        """Sessions are listed while their lease lasts, renewed with their byte counts, and removed."""
        self.get(self.store.create_server(_server()))
        self.session("a")
        self.session("b", node="n2", expires=10.0)
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(5.0))], ["a", "b"])
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(20.0, "s1"))], ["a"])
        self.assertEqual(self.get(self.store.list_sessions(5.0, "s2")), [])
        self.assertEqual(self.get(self.store.renew_sessions("n1", 100.0, {"a": (3, 4), "b": (9, 9)})), [])
        renewed = self.get(self.store.list_sessions(50.0))
        self.assertEqual([(r.id, r.bytes_in, r.bytes_out) for r in renewed], [("a", 3, 4)])
        self.get(self.store.close_sessions(["a"]))
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(0.0))], ["b"])

    def test_renewal_extends_every_lease_of_the_node_and_stores_the_counts_given(self):
        """All of a node's sessions are renewed; byte counts only where given (hundreds of them, in chunks)."""
        self.get(self.store.create_server(_server()))
        ids = [f"s{i:04d}" for i in range(700)]
        for sid in ids:
            self.session(sid)
        self.session("other", node="n2")
        counts = {sid: (i, 2 * i + 1) for i, sid in enumerate(ids) if i % 3}  # a third unchanged since the last renewal
        self.assertEqual(self.get(self.store.renew_sessions("n1", 100.0, counts)), [])
        renewed = {r.id: (r.bytes_in, r.bytes_out) for r in self.get(self.store.list_sessions(50.0))}
        self.assertEqual(renewed, {sid: counts.get(sid, (0, 0)) for sid in ids})

    def test_renewal_of_the_sessions_named_only(self):
        """With ``only``, the node's other sessions and their locks keep their leases: they run out and are purged."""
        self.get(self.store.create_server(_server(ports=(("127.0.0.1", 7000), ("127.0.0.1", 7001)))))
        self.opened("a", 0)
        self.opened("b", 1)
        self.opened("c", 0, "read")
        self.assertEqual(self.get(self.store.renew_sessions("n1", 40.0, {})), [])  # every lease, locks too
        self.assertEqual(self.get(self.store.acquire_lock(_lock("z", index=1), 35.0)).session_id, "b")
        self.assertEqual(self.get(self.store.renew_sessions("n1", 100.0, {"b": (5, 6)}, ["a", "c"] + [f"x{i}" for i in range(600)])), [])
        self.assertEqual([(r.id, r.bytes_in) for r in self.get(self.store.list_sessions(50.0))], [("a", 0), ("c", 0)])
        self.assertEqual(self.get(self.store.purge_sessions(50.0)), 1)  # b's lease (40) ran out, a's did not
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("e", index=1), 50.0)))  # b's console is free
        self.assertEqual(self.get(self.store.acquire_lock(_lock("f", index=0), 50.0)).session_id, "a")

    def test_open_and_close_session(self):
        """Opening takes the lock and records the session at once; a busy console records nothing."""
        self.get(self.store.create_server(_server()))
        first = SessionRecord("a", "s1", 0, "write", "p", "acme", "n1", 1.0, 30.0)
        second = SessionRecord("b", "s1", 0, "write", "p", "acme", "n1", 2.0, 30.0)
        spectator = SessionRecord("c", "s1", 0, "read", "p", "acme", "n1", 3.0, 30.0)
        self.assertIsNone(self.get(self.store.open_session(first, _lock("a"), 1.0)))
        self.assertEqual(self.get(self.store.open_session(second, _lock("b"), 2.0)).session_id, "a")
        self.assertIsNone(self.get(self.store.open_session(spectator, None, 3.0)))
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(3.0))], ["a", "c"])
        self.get(self.store.close_sessions(["a"]))
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(3.0))], ["c"])
        self.assertIsNone(self.get(self.store.open_session(second, _lock("b"), 4.0)))

    def opened(self, sid, index=0, mode="write"):
        record = SessionRecord(sid, "s1", index, mode, "p", "acme", "n1", 1.0, 30.0)
        self.assertIsNone(self.get(self.store.open_session(record, _lock(sid, index=index) if mode == "write" else None, 1.0)))
        return record

    def test_close_sessions(self):
        """Many sessions close in one call: their locks are free, their rows gone, others and unknown ids untouched."""
        self.get(self.store.create_server(_server(ports=(("127.0.0.1", 7000), ("127.0.0.1", 7001)))))
        self.opened("a", 0)
        self.opened("b", 1)
        self.opened("c", 0, "read")
        self.opened("d", 1, "read")
        unknown = [f"gone-{i}" for i in range(1200)]  # more than one statement's worth of ids
        self.get(self.store.close_sessions(unknown[:600] + ["a", "c"] + unknown[600:]))
        self.get(self.store.close_sessions([]))
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(2.0))], ["b", "d"])
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("e", index=0), 2.0)))
        self.assertEqual(self.get(self.store.acquire_lock(_lock("f", index=1), 2.0)).session_id, "b")

    def test_open_closes_first(self):
        """An open first closes the sessions it is given: the console they held is free for it."""
        self.get(self.store.create_server(_server()))
        self.opened("a")
        self.opened("c", mode="read")
        again = SessionRecord("b", "s1", 0, "write", "p", "acme", "n1", 2.0, 30.0)
        self.assertIsNone(self.get(self.store.open_session(again, _lock("b"), 2.0, ["a", "c"])))
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(2.0))], ["b"])
        self.assertEqual(self.get(self.store.acquire_lock(_lock("z"), 2.0)).session_id, "b")

    def test_busy_open_keeps_its_closes(self):
        """An open refused as busy still closes the sessions it carried."""
        self.get(self.store.create_server(_server(ports=(("127.0.0.1", 7000), ("127.0.0.1", 7001)))))
        self.opened("a", 0)
        self.opened("b", 1)
        refused = SessionRecord("c", "s1", 1, "write", "p", "acme", "n2", 2.0, 30.0)
        self.assertEqual(self.get(self.store.open_session(refused, _lock("c", index=1), 2.0, ["a"])).session_id, "b")
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(2.0))], ["b"])
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("d", index=0), 2.0)))

    def test_open_on_a_deleted_server(self):
        """An open for a server that is gone fails with NotFound and writes nothing, not even its closes."""
        self.get(self.store.create_server(_server()))
        self.opened("a")
        orphan = SessionRecord("x", "s9", 0, "write", "p", "acme", "n1", 2.0, 30.0)
        self.failureResultOf(self.store.open_session(orphan, _lock("x", server_id="s9"), 2.0, ["a"]), NotFound)
        self.failureResultOf(self.store.open_session(orphan, None, 2.0), NotFound)
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(2.0))], ["a"])
        self.assertEqual(self.get(self.store.acquire_lock(_lock("z"), 2.0)).session_id, "a")

    def test_purge_sessions(self):
        """Sessions and locks whose lease ran out are purged; live ones stay."""
        self.get(self.store.create_server(_server(ports=(("127.0.0.1", 7000), ("127.0.0.1", 7001)))))
        self.session("dead", expires=10.0)
        self.session("live", expires=100.0)
        self.get(self.store.acquire_lock(_lock("dead", expires=10.0), 0.0))
        self.get(self.store.acquire_lock(_lock("live", index=1, expires=100.0), 0.0))
        self.assertEqual(self.get(self.store.purge_sessions(50.0)), 1)
        self.assertEqual([r.id for r in self.get(self.store.list_sessions(0.0))], ["live"])
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("new", expires=200.0), 50.0)))
        self.assertIsNotNone(self.get(self.store.acquire_lock(_lock("other", index=1, expires=200.0), 50.0)))

    def test_kick(self):
        """A kick marks the session (once), frees its writer lock, and its node learns of it on renewal."""
        self.get(self.store.create_server(_server()))
        self.session("a")
        self.get(self.store.acquire_lock(_lock("a"), 0.0))
        record = self.get(self.store.kick_session("s1", "a", "maintenance", "admin", 5.0))
        self.assertEqual((record.kick_reason, record.kicked_by), ("maintenance", "admin"))
        self.assertIsNone(self.get(self.store.acquire_lock(_lock("z", node="n2"), 6.0)))
        self.assertIsNone(self.get(self.store.kick_session("s1", "a", "again", "admin", 5.0)))
        self.assertIsNone(self.get(self.store.kick_session("s2", "a", "x", "admin", 5.0)))
        self.assertEqual([r.id for r in self.get(self.store.renew_sessions("n1", 60.0, {"a": (0, 0)}))], ["a"])
        self.assertEqual(self.get(self.store.list_sessions(5.0)), [])

    def test_delete_server_frees_its_ports(self):
        """Deleting a server releases its port allocations."""
        self.hypervisor()
        self.get(self.store.create_server(_server("s1", ports=(("127.0.0.1", 10000),))))
        self.get(self.store.record_port("h1", 10000, "s1"))
        self.get(self.store.delete_server("s1"))
        self.assertEqual(self.get(self.store.allocations("h1")), {})


class MemoryStoreTests(StoreContract, SynchronousTestCase):
    def make_store(self):
        return MemoryStore()


class SQLiteStoreTests(StoreContract, SynchronousTestCase):
    def make_store(self):
        database = inline_database(sqlite_url(self))
        self.addCleanup(database.close)
        return SQLStore(database)


class PostgreSQLStoreTests(StoreContract, SynchronousTestCase):
    def make_store(self):
        database = inline_database(postgres_url(self))
        self.addCleanup(database.close)
        return SQLStore(database)
