"""Console tokens and API keys: entropy, hashing, binding, expiry, purge."""

import hashlib
import itertools
import uuid

from attrs import define
from hypothesis import given, strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.errors import TokenExpired, TokenInvalid, Unauthorized
from serialproxy.interfaces import SerialPort, Server
from serialproxy.testing import MemoryStore
from serialproxy.tokens import UNKNOWN_TOKEN, KeyService, TokenService, hash_secret, new_id, new_secret


def counting_entropy():
    """Deterministic 'random' bytes: each call gives new ones."""
    counter = itertools.count()
    return lambda n: hashlib.sha512(str(next(counter)).encode()).digest()[:n]


SERVER = Server("s1", "vm1", "acme", "active", 0.0, (SerialPort(0, "127.0.0.1", 7000), SerialPort(1, "127.0.0.1", 7001)))
OTHER = Server("s2", "vm2", "acme", "active", 0.0, (SerialPort(0, "127.0.0.1", 7002),))


@define
class CountingStore(MemoryStore):
    """A MemoryStore that counts token look-ups."""

    lookups: int = 0

    def find_token(self, token_hash):
        self.lookups += 1
        return MemoryStore.find_token(self, token_hash)


class TokenServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = CountingStore()
        self.tokens = TokenService(self.store, self.clock, 600, counting_entropy())

    def mint(self, index=0, server=SERVER, tokens=None):
        return self.successResultOf(Deferred.fromCoroutine((tokens or self.tokens).mint(server, server.serial_ports[index])))

    def check(self, secret):
        return Deferred.fromCoroutine(self.tokens.check(secret))

    def test_secret_has_256_bits(self):
        """A token is 43 base64url characters: 256 bits of injected entropy."""
        secret = self.mint()
        self.assertEqual(len(secret), 43)
        self.assertNotEqual(secret, self.mint())

    def test_only_hash_is_stored(self):
        """The store holds the SHA-256 of the token, never the token."""
        secret = self.mint()
        self.assertEqual(list(self.store.tokens), [hash_secret(secret)])
        self.assertNotIn(secret, repr(self.store.tokens))

    def test_bound_to_server_and_port(self):
        """A token resolves to the server, port index and address it was minted for."""
        token = self.successResultOf(self.check(self.mint(1)))
        self.assertEqual((token.server_id, token.port_index, token.host, token.port, token.tenant_id),
                         ("s1", 1, "127.0.0.1", 7001, "acme"))

    def test_valid_until_ttl(self):
        """A token works until token_ttl seconds have passed, then is refused as expired."""
        secret = self.mint()
        self.clock.advance(599)
        self.successResultOf(self.check(secret))
        self.clock.advance(1)
        self.failureResultOf(self.check(secret), TokenExpired)

    def test_purge(self):
        """Purging deletes expired tokens; a purged token is then unknown."""
        secret = self.mint()
        self.clock.advance(601)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(self.tokens.purge())), 1)
        self.failureResultOf(self.check(secret), TokenInvalid)
        self.assertEqual(self.store.tokens, {})

    def test_unknown(self):
        """A well-formed token that was never minted is invalid."""
        failure = self.failureResultOf(self.check(new_secret(counting_entropy())), TokenInvalid)
        self.assertNotIsInstance(failure.value, TokenExpired)
        self.assertEqual(str(failure.value), UNKNOWN_TOKEN)

    def test_minted_token_checked_from_memory(self):
        """A token this node minted is checked without asking the database."""
        secret = self.mint()
        self.successResultOf(self.check(secret))
        self.successResultOf(self.check(secret))
        self.assertEqual(self.store.lookups, 0)

    def test_found_token_kept(self):
        """A token minted on another node is looked up once, then checked from memory."""
        secret = self.mint(tokens=TokenService(self.store, self.clock, 600, lambda n: b"\x01" * n))
        self.successResultOf(self.check(secret))
        self.successResultOf(self.check(secret))
        self.assertEqual(self.store.lookups, 1)

    def test_cached_token_still_expires(self):
        """A cached token is refused as expired once its time is up, and dropped from memory."""
        secret = self.mint()
        self.clock.advance(600)
        self.failureResultOf(self.check(secret), TokenExpired)
        self.assertEqual(self.store.lookups, 0)
        self.failureResultOf(self.check(secret), TokenExpired)
        self.assertEqual(self.store.lookups, 1)

    def test_purge_drops_cached_tokens(self):
        """Purging drops expired tokens from memory too: the next check asks the database, which has none."""
        secret = self.mint()
        self.clock.advance(601)
        self.successResultOf(Deferred.fromCoroutine(self.tokens.purge()))
        failure = self.failureResultOf(self.check(secret), TokenInvalid)
        self.assertNotIsInstance(failure.value, TokenExpired)
        self.assertEqual(self.store.lookups, 1)

    def test_forget_server(self):
        """Forgetting a server drops its cached tokens, and only its: once deleted, they are unknown."""
        mine, other = self.mint(), self.mint(server=OTHER)
        self.successResultOf(self.store.create_server(SERVER))
        self.successResultOf(self.store.delete_server("s1"))
        self.successResultOf(self.check(mine))  # still in memory: the open transaction would refuse it
        self.tokens.forget_server("s1")
        self.failureResultOf(self.check(mine), TokenInvalid)
        self.successResultOf(self.check(other))
        self.assertEqual(self.store.lookups, 1)

    def test_cache_is_bounded(self):
        """At most cache_size tokens are kept; the least recently used goes first."""
        self.tokens.cache_size = 2
        first, second = self.mint(), self.mint()
        self.successResultOf(self.check(first))
        third = self.mint()
        self.successResultOf(self.check(first))
        self.successResultOf(self.check(third))
        self.assertEqual(self.store.lookups, 0)
        self.successResultOf(self.check(second))
        self.assertEqual(self.store.lookups, 1)

    @given(st.text(max_size=100))
    def test_tampered_token_rejected(self, junk):
        """Any string that is not a minted token is refused as invalid."""
        secret = self.mint()
        if junk != secret:
            self.failureResultOf(self.check(junk), TokenInvalid)

    @given(st.integers(0, 42), st.sampled_from("A_-z9"))
    def test_one_character_changed(self, position, char):
        """Changing one character of a token makes it invalid."""
        secret = self.mint()
        tampered = secret[:position] + char + secret[position + 1:]
        if tampered != secret:
            self.failureResultOf(self.check(tampered), TokenInvalid)


class KeyServiceTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()
        self.keys = KeyService(self.store, Clock(), counting_entropy())

    def create(self, tenant="acme", admin=False):
        return self.successResultOf(Deferred.fromCoroutine(self.keys.create(tenant, admin, "note")))

    def auth(self, secret):
        return Deferred.fromCoroutine(self.keys.authenticate(secret))

    def test_create_and_authenticate(self):
        """A new key authenticates as its tenant and role; only its hash is stored."""
        key, secret = self.create(admin=True)
        self.assertTrue(secret.startswith("spk_"))
        self.assertEqual(self.successResultOf(self.auth(secret)), key)
        self.assertEqual(list(self.store.keys), [hash_secret(secret)])

    def test_missing_and_wrong(self):
        """No key and a wrong key are Unauthorized, with different messages."""
        self.create()
        missing = self.failureResultOf(self.auth(None), Unauthorized)
        wrong = self.failureResultOf(self.auth("spk_wrong"), Unauthorized)
        self.assertIn("missing", str(missing.value))
        self.assertIn("invalid", str(wrong.value))
        self.failureResultOf(self.auth("x" * 10000), Unauthorized)


class NewIdTests(SynchronousTestCase):
    @given(st.binary(min_size=16, max_size=16))
    def test_as_the_uuid_module_writes_it(self, raw):
        """Any 16 bytes give the text of uuid.UUID(bytes=..., version=4)."""
        self.assertEqual(new_id(lambda n: raw[:n]), str(uuid.UUID(bytes=raw, version=4)))

    def test_asks_for_16_bytes(self):
        asked = []
        new_id(lambda n: asked.append(n) or bytes(n))
        self.assertEqual(asked, [16])
