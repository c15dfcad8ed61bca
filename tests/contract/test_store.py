"""One contract for every IStore: the in-memory fake, sqlite and PostgreSQL."""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from serialproxy.errors import Conflict
from serialproxy.interfaces import ApiKey, ConsoleLock, ConsoleToken, IStore, SerialPort, Server
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
