"""Secrets: console tokens and API keys, minted from injected entropy, kept as hashes.

A console token is 256 random bits, shown once in a console URL and stored
only as its SHA-256; it is bound to one serial port of one server and lives
``token_ttl`` seconds on the injected clock. API keys are made the same way.
Both are long random secrets, so a plain SHA-256 (no slow KDF) is the right
hash: nothing to guess, nothing to brute-force.

:class:`TokenService` keeps the tokens it minted or found in a bounded
in-memory cache, so a console session does not wait for the database to
check its token. Expiry is checked on every use all the same; a token of a
server deleted on another node is refused when its session is opened (the
open transaction finds the server gone), and then forgotten here.
"""

import base64
import hashlib
import os
import re
from collections import OrderedDict
from typing import Callable, ClassVar

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .errors import TokenExpired, TokenInvalid, Unauthorized
from .interfaces import ApiKey, ConsoleToken, IStore, SerialPort, Server

__all__ = ["TokenService", "KeyService", "hash_secret", "new_secret", "new_id", "UNKNOWN_TOKEN"]

UNKNOWN_TOKEN = "unknown or expired console token: ask the API for a new console URL"

_SECRET_BYTES = 32
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_KEY_PREFIX = "spk_"


def hash_secret(secret: str) -> str:
    """The stored form of a token or key."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret(entropy: Callable[[int], bytes]) -> str:
    """43 URL-safe characters carrying 256 random bits."""
    return base64.urlsafe_b64encode(entropy(_SECRET_BYTES)).rstrip(b"=").decode("ascii")


def new_id(entropy: Callable[[int], bytes]) -> str:
    """A random UUID (version 4) from the given entropy, as text: ``str(uuid.UUID(bytes=..., version=4))``.

    Spelled out because every console session takes one, and ``uuid.UUID``
    checks its arguments and builds the text in Python, field by field; a
    test checks the two agree for any 16 bytes.
    """
    raw = bytearray(entropy(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@define
class TokenService:
    """Mints and checks console tokens."""

    _store: IStore
    _clock: IReactorTime
    _ttl: int
    _entropy: Callable[[int], bytes] = os.urandom
    cache_size: int = 16384
    _cache: OrderedDict = field(factory=OrderedDict)  # token_hash -> ConsoleToken, least recently used first
    _log: ClassVar[Logger] = Logger()

    async def mint(self, server: Server, port: SerialPort, key_tenant_id: str = "") -> str:
        """A new token for one serial port; the secret is returned, its hash stored (and cached)."""
        secret = new_secret(self._entropy)
        now = self._clock.seconds()
        token = ConsoleToken(hash_secret(secret), server.id, port.index, port.host, port.port,
                             server.tenant_id, now, now + self._ttl, key_tenant_id or server.tenant_id)
        await self._store.add_token(token)
        self._remember(token)
        return secret

    async def check(self, secret: str) -> ConsoleToken:
        """The token's binding, or :class:`TokenInvalid` / :class:`TokenExpired`; from the cache if there."""
        if not isinstance(secret, str) or not _TOKEN_SHAPE.match(secret):
            raise TokenInvalid("malformed console token: ask the API for a new console URL")
        token_hash = hash_secret(secret)
        token = self._cache.get(token_hash)
        if token is None:
            token = await self._store.find_token(token_hash)
            if token is None:
                raise TokenInvalid(UNKNOWN_TOKEN)
        if token.expires <= self._clock.seconds():
            self._cache.pop(token_hash, None)
            raise TokenExpired("expired console token: ask the API for a new console URL")
        self._remember(token)
        return token

    def _remember(self, token: ConsoleToken) -> None:
        self._cache[token.token_hash] = token
        self._cache.move_to_end(token.token_hash)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def forget_server(self, server_id: str) -> None:
        """Drop every cached token of a server (it was deleted, here or on another node)."""
        self._drop(lambda token: token.server_id == server_id)

    def _drop(self, doomed: Callable[[ConsoleToken], bool]) -> None:
        for token_hash in [h for h, token in self._cache.items() if doomed(token)]:
            del self._cache[token_hash]

    async def purge(self) -> int:
        """Delete expired tokens (and drop them from the cache); how many went from the database."""
        now = self._clock.seconds()
        self._drop(lambda token: token.expires <= now)
        count = await self._store.purge_tokens(now)
        if count:
            self._log.info("purged {count} expired console tokens", count=count)
        return count


@define
class KeyService:
    """Makes API keys and tells who an API key is."""

    _store: IStore
    _clock: IReactorTime
    _entropy: Callable[[int], bytes] = os.urandom

    async def create(self, tenant_id: str, is_admin: bool, description: str = "") -> tuple:
        """A new key: ``(ApiKey, secret)``; the secret is shown once, never stored."""
        secret = _KEY_PREFIX + new_secret(self._entropy)
        key = ApiKey(new_id(self._entropy), tenant_id, is_admin, description, self._clock.seconds())
        await self._store.create_key(key, hash_secret(secret))
        return key, secret

    async def authenticate(self, secret) -> ApiKey:
        """The :class:`ApiKey` for a secret, or :class:`Unauthorized`."""
        if not secret:
            raise Unauthorized("missing X-Auth-Token header: pass an API key made by 'serialproxy-manage create-key'")
        if len(secret) > 200:
            raise Unauthorized("invalid API key in X-Auth-Token")
        key = await self._store.find_key(hash_secret(secret))
        if key is None:
            raise Unauthorized("invalid API key in X-Auth-Token")
        return key
