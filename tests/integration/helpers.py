"""Helpers for integration tests: a real node on loopback, fake VMs, clients.

Everything listens on ``tcp:0:interface=127.0.0.1`` and reads its port back;
everything a helper starts is stopped by a cleanup it registers on the test
case. Every wait is bounded in time (and every poll in count).
"""

import datetime
import hashlib
import ipaddress
import json
import os
from urllib.parse import parse_qs, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.client import HTTPClient
from twisted.internet import reactor, ssl, tcp
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from serialproxy.config import load_config
from serialproxy.database import open_database
from serialproxy.store import SQLStore
from serialproxy.tap import build_service
from serialproxy.tokens import KeyService

__all__ = [
    "IntegrationTestCase",
    "Node",
    "start_node",
    "self_signed",
    "FakeVM",
    "start_vm",
    "closed_port",
    "EchoVM",
    "SinkVM",
    "SourceVM",
    "DeafVM",
    "FloodVM",
    "ConsoleClient",
    "ClientPusher",
    "open_console",
    "token_of",
    "pattern",
    "PATTERN_CHUNK",
    "wait_until",
    "wait_for_stall",
    "wait_for_quiet",
    "within",
]

WAIT = 10.0          # seconds any single wait may take
POLL = 0.01          # seconds between polls
QUIET_TIMEOUT = 5.0  # seconds cleanup waits for every connection to close


async def wait_until(predicate, what, timeout: float = WAIT, interval: float = POLL):
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds.

    ``what`` (a string, or a callable giving one) says what was awaited.
    """
    deadline = reactor.seconds() + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return
        if reactor.seconds() >= deadline:
            break
        await deferLater(reactor, interval)
    if not predicate():
        raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")


async def within(d: Deferred, what: str, timeout: float = WAIT):
    """Await the one-shot ``d`` (it is cancelled on timeout), failing after ``timeout`` seconds."""
    timed_out = []

    def on_timeout(result, seconds):
        timed_out.append(True)
        return result

    d.addTimeout(timeout, reactor, onTimeoutCancel=on_timeout)
    try:
        return await d
    except Exception:
        if timed_out:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
        raise


async def wait_for_stall(read, what: str, still: float = 0.5, timeout: float = 15.0, interval: float = 0.05) -> int:
    """Poll the counter ``read()`` until it is above 0 and has not moved for ``still`` seconds."""
    needed = int(still / interval)
    last, same = read(), 0
    for _ in range(int(timeout / interval) + 1):
        await deferLater(reactor, interval)
        value = read()
        same = same + 1 if value == last and value > 0 else 0
        last = value
        if same >= needed:
            return value
    raise AssertionError(f"{what} kept moving (or never started) for {timeout} s: now {last}")


def _open_sockets():
    """TCP ports and connections the reactor still watches."""
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    return [s for s in selectables if isinstance(s, (tcp.Connection, tcp.Port))]


async def wait_for_quiet(timeout: float = QUIET_TIMEOUT):
    """Wait (bounded) until no TCP socket is left open; abort leftovers and fail."""
    try:
        await wait_until(lambda: not _open_sockets(), "every connection and port to close", timeout)
    except AssertionError:
        left = _open_sockets()
        for s in left:
            if isinstance(s, tcp.Port):
                s.stopListening()
            else:
                s.abortConnection()
        raise AssertionError(f"left open after the test: {left!r}") from None


class IntegrationTestCase(TestCase):
    """A trial test case whose cleanup checks that every socket was closed."""

    timeout = 30

    def setUp(self):
        # Registered first, so it runs after every other cleanup.
        self.addCleanup(wait_for_quiet)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))


# --- the node -------------------------------------------------------------


class Node:
    """One serialproxy node: the whole service tree on a loopback port."""

    def __init__(self, case, top, database, path, http, trust=None):
        self.case = case
        self.top = top
        self.database = database
        self.path = path
        self.http = http
        self.trust = trust  # the certificate of a TLS node (ssl_only), which its clients trust
        self.port = top.urls.port
        self.store = SQLStore(database)
        self.keys = KeyService(self.store, reactor)

    @property
    def base(self) -> str:
        return f"{'https' if self.trust else 'http'}://127.0.0.1:{self.port}"

    def sessions(self) -> list:
        return self.top.sessions.sessions()

    async def stop(self):
        """Stop the service tree (once) and wait for it.

        The database pool is closed even when stopping fails, or its threads
        would keep the test process from exiting.
        """
        if self.top.running:
            try:
                await within(self.top.stopService(), "the service tree to stop")
            finally:
                if self.database.pool.running:
                    self.database.close()

    async def make_key(self, tenant: str, admin: bool = False) -> str:
        """A new API key's secret."""
        _key, secret = await self.keys.create(tenant, admin)
        return secret

    async def call(self, method: str, path: str, key=None, body=None):
        """One REST call: ``(status, parsed JSON body or None)``."""
        headers = {"X-Auth-Token": [key]} if key is not None else {}
        kwargs = {"json": body} if body is not None else {}
        response = await within(
            self.http.request(method, self.base + path, headers=headers, **kwargs), f"{method} {path}"
        )
        content = await within(response.content(), f"the body of {method} {path}")
        return response.code, (json.loads(content) if content else None)

    async def register_server(self, admin_key: str, tenant: str, *ports: int, host: str = "127.0.0.1") -> str:
        """Register a server of ``tenant`` whose serial ports listen on ``ports`` of ``host`` (loopback)."""
        body = {"server": {"name": f"vm-{ports[0]}", "tenant_id": tenant,
                           "serial_ports": [{"host": host, "port": p} for p in ports]}}
        status, answer = await self.call("POST", "/v3/servers", admin_key, body)
        assert status == 201, (status, answer)
        return answer["server"]["id"]

    async def console_url(self, key: str, server_id: str, index: int = 0) -> str:
        """A console URL from the v3 API."""
        body = {"get_serial_console": {"type": "serial", "port": index}}
        status, answer = await self.call("POST", f"/v3/servers/{server_id}/get-serial-console", key, body)
        assert status == 202, (status, answer)
        return answer["serial_console"]["url"]

    async def console_for(self, vm: "FakeVM", tenant: str = "tenant-a") -> tuple:
        """Register ``vm`` as a server of ``tenant``: ``(server id, console URL)``."""
        admin = await self.make_key("ops", admin=True)
        member = await self.make_key(tenant)
        server_id = await self.register_server(admin, tenant, vm.port)
        return server_id, await self.console_url(member, server_id)


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def self_signed(directory: str) -> tuple:
    """A throwaway certificate for 127.0.0.1 and its key, as PEM files: ``(cert path, key path, ssl.Certificate)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                   .sign(key, hashes.SHA256()))
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path, ssl.Certificate.loadPEM(cert_pem)


@implementer(IPolicyForHTTPS)
class _Trusting:
    """HTTPS for treq that trusts one certificate (a test node's) and checks the host against it."""

    def __init__(self, certificate):
        self._certificate = certificate

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._certificate)


async def start_node(case: IntegrationTestCase, tls: bool = False, **flags) -> Node:
    """Start a node with a fresh sqlite database (``tls``: ssl_only, with a throwaway certificate); stopped at cleanup."""
    state = os.path.abspath(case.mktemp())
    os.makedirs(state)
    path = os.path.join(state, "serialproxy.sqlite")
    database = open_database("sqlite:///" + path)
    options = {"enabled": "true", "serialproxy-port": "0", "state-dir": state}
    http, trust = case.http, None
    if tls:
        cert, key, trust = self_signed(state)
        options.update({"ssl-only": "true", "cert": cert, "key": key})
        http = HTTPClient(Agent(reactor, contextFactory=_Trusting(trust), pool=HTTPConnectionPool(reactor, persistent=False)))
    options.update(flags)
    config = load_config(None, options)
    top = build_service(config, reactor, database=database)
    top.startService()
    node = Node(case, top, database, path, http, trust)
    case.addCleanup(node.stop)
    await wait_until(lambda: top.urls.port != 0, "the HTTP listener to bind")
    node.port = top.urls.port
    return node


# --- fake VMs -------------------------------------------------------------


class FakeVM:
    """A TCP server on loopback standing in for a VM serial port."""

    def __init__(self, case, protocol_factory):
        self._case = case
        self._make = protocol_factory
        self.connections = []
        self.port = None
        self._listening = None

    async def start(self) -> "FakeVM":
        def build():
            protocol = self._make()
            self.connections.append(protocol)
            return protocol

        factory = Factory.forProtocol(build)
        factory.noisy = False
        self._listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.port = self._listening.getHost().port
        self._case.addCleanup(self.stop)
        return self

    async def stop(self):
        """Stop listening, drop what is still connected, wait for it to go."""
        if self._listening is not None:
            await maybeDeferred(self._listening.stopListening)
            self._listening = None
        for protocol in self.connections:
            if not protocol.lost and protocol.transport is not None:
                protocol.transport.abortConnection()
        await wait_until(lambda: all(p.lost for p in self.connections), "the fake VM connections to close", 2)

    async def connected(self):
        """The first connection the proxy made to this VM."""
        await wait_until(lambda: self.connections, "the proxy to connect to the VM")
        return self.connections[0]


async def start_vm(case, protocol_factory) -> FakeVM:
    return await FakeVM(case, protocol_factory).start()


async def closed_port(case) -> int:
    """A loopback port nothing listens on (bound, read back, then closed)."""
    vm = await start_vm(case, _VMProtocol)
    await vm.stop()
    return vm.port


class _VMProtocol(Protocol):
    lost = False

    def connectionLost(self, reason):
        self.lost = True


class EchoVM(_VMProtocol):
    """Writes back whatever it reads."""

    def dataReceived(self, data):
        self.transport.write(data)


class SinkVM(_VMProtocol):
    """Reads everything, keeps only its SHA-256 and length."""

    def __init__(self):
        self.hash = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data):
        self.hash.update(data)
        self.count += len(data)


class SourceVM(_VMProtocol):
    """Writes ``data`` once, as soon as the proxy connects."""

    def __init__(self, data: bytes):
        self.data = data

    def connectionMade(self):
        self.transport.write(self.data)


class DeafVM(_VMProtocol):
    """Does not read until told to: what the proxy writes to it backs up."""

    def __init__(self):
        self.received = bytearray()

    def connectionMade(self):
        self.transport.pauseProducing()

    def start_reading(self):
        self.transport.resumeProducing()

    def dataReceived(self, data):
        self.received += data


PATTERN_CHUNK = bytes(range(256)) * 256  # 64 KiB, period 256


def pattern(length: int, offset: int = 0) -> bytes:
    """``length`` bytes of the 256-periodic stream that FloodVM writes, from ``offset``."""
    start = offset % 256
    reps = (start + length) // len(PATTERN_CHUNK) + 1
    return (PATTERN_CHUNK * reps)[start:start + length]


class _Pusher:
    """A push producer that writes ``chunk`` until paused, stopped or at ``limit`` bytes.

    Registered as a transport's producer, it stops when that transport's
    buffer is full, that is when the other side stops reading.
    """

    limit = 128 * 1024 * 1024

    def _reset(self):
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.stopped = False

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self.resumes += 1
        self._push()

    def stopProducing(self):
        self.stopped = True

    def _more(self) -> bool:
        return not (self.paused or self.stopped or self.sent >= self.limit)

    def _push(self):
        for _ in range(64):  # the transport pauses us long before this
            if not self._more():
                return
            self._write(self.chunk)
            self.sent += len(self.chunk)
        if not self.paused and not self.stopped:
            reactor.callLater(0, self._push)


class FloodVM(_Pusher, _VMProtocol):
    """Writes PATTERN_CHUNKs as fast as its transport takes them (a push producer on it)."""

    chunk = PATTERN_CHUNK

    def __init__(self):
        self._reset()

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self._push()

    def stop(self):
        """Write no more."""
        self.stopped = True

    def _write(self, data):
        self.transport.write(data)


# --- the websocket client -------------------------------------------------


class _ClientProtocol(WebSocketClientProtocol):
    def onConnect(self, response):
        self.factory.console.subprotocol = response.protocol

    def onOpen(self):
        self.factory.console.is_open = True

    def onMessage(self, payload, isBinary):
        self.factory.console._message(payload, isBinary)

    def onPong(self, payload):
        self.factory.console.pongs.append(payload)

    def onClose(self, wasClean, code, reason):
        self.factory.console._on_close(wasClean, code, reason)

    def connectionLost(self, reason):
        try:
            super().connectionLost(reason)
        finally:
            self.factory.console._lost_connection()


class ConsoleClient:
    """An autobahn websocket client of one console URL.

    Binary frames are appended to ``received`` (and hashed); text frames are
    kept in ``texts``; ``code`` and ``reason`` are set when it closes.
    """

    def __init__(self, url: str, origin=None, protocols=None, keep: bool = True, trust=None):
        self.url = url
        self.trust = trust  # for wss://: the certificate to trust
        self.origin = origin
        self.protocols = protocols
        self.keep = keep
        self.received = bytearray()
        self.count = 0
        self.hash = hashlib.sha256()
        self.texts = []
        self.subprotocol = None
        self.protocol = None
        self.code = None
        self.reason = None
        self.is_open = False
        self.is_lost = False
        self.pongs = []
        self._pings = 0

    async def connect(self, case) -> "ConsoleClient":
        factory = WebSocketClientFactory(self.url, origin=self.origin, protocols=self.protocols)
        factory.protocol = _ClientProtocol
        factory.console = self
        factory.noisy = False
        endpoint = TCP4ClientEndpoint(reactor, factory.host, factory.port, timeout=5)
        if factory.isSecure:
            endpoint = wrapClientTLS(ssl.optionsForClientTLS(factory.host, trustRoot=self.trust), endpoint)
        self.protocol = await within(endpoint.connect(factory), "the websocket TCP connection")
        case.addCleanup(self.close)
        return self

    async def opened(self):
        await wait_until(lambda: self.is_open or self.is_lost, "the websocket handshake")
        assert self.is_open, f"the websocket handshake failed: {self.code} {self.reason!r}"

    async def closed(self, timeout: float = WAIT) -> tuple:
        """``(code, reason)`` once the websocket connection has closed."""
        await wait_until(lambda: self.is_lost, f"the websocket to {self.url} to close", timeout)
        return self.code, self.reason

    def _message(self, payload, is_binary):
        if is_binary:
            self.count += len(payload)
            self.hash.update(payload)
            if self.keep:
                self.received += payload
        else:
            self.texts.append(payload)

    def _on_close(self, clean, code, reason):
        if self.code is None:
            self.code, self.reason = code, reason

    def _lost_connection(self):
        self.is_lost = True

    @property
    def transport(self):
        return self.protocol.transport

    def send(self, data: bytes):
        self.protocol.sendMessage(data, isBinary=True)

    def send_text(self, text: bytes):
        self.protocol.sendMessage(text, isBinary=False)

    def send_fragmented(self, pieces, binary: bool = True):
        """One message sent as a frame per piece."""
        self.protocol.beginMessage(isBinary=binary)
        for piece in pieces:
            self.protocol.sendMessageFrame(piece)
        self.protocol.endMessage()

    async def wait_for_bytes(self, count: int, timeout: float = WAIT):
        await wait_until(lambda: self.count >= count or self.is_lost,
                         lambda: f"{count} bytes from the console (got {self.count})", timeout)
        assert self.count >= count, f"the console closed ({self.code}, {self.reason!r}) after {self.count} of {count} bytes"

    async def barrier(self):
        """Ping the proxy and wait for its pong: every frame sent before has been handled."""
        self._pings += 1
        payload = b"barrier-%d" % self._pings
        self.protocol.sendPing(payload)
        await wait_until(lambda: payload in self.pongs or self.is_lost, "the pong of a barrier ping")
        assert payload in self.pongs, f"the console closed ({self.code}, {self.reason!r}) before answering a ping"

    async def echo(self, data: bytes):
        """Send ``data`` and wait until as many more bytes came back; they must be ``data``."""
        before = self.count
        self.send(data)
        await self.wait_for_bytes(before + len(data))
        assert bytes(self.received[before:]) == data, (bytes(self.received[before:]), data)

    async def close(self):
        """Close (cleanly if open) and wait for the TCP connection to go."""
        if self.protocol is None or self.is_lost:
            return
        self.transport.resumeProducing()
        if self.protocol.state == self.protocol.STATE_OPEN:
            self.protocol.sendClose(1000)
        try:
            await wait_until(lambda: self.is_lost, "the websocket connection to close", 5)
        except AssertionError:
            self.transport.abortConnection()
            raise


class ClientPusher(_Pusher):
    """Sends the PATTERN stream from a console client as binary frames (a push producer on its transport)."""

    chunk = PATTERN_CHUNK[:32 * 1024]

    def __init__(self, client: "ConsoleClient", limit: int = 128 * 1024 * 1024):
        self._client = client
        self.limit = limit
        self._reset()

    def start(self):
        self._client.transport.registerProducer(self, True)
        self._push()

    def stop(self):
        if not self.stopped:
            self.stopped = True
            self._client.transport.unregisterProducer()

    def _more(self) -> bool:
        return super()._more() and not self._client.is_lost

    def _write(self, data):
        self._client.send(data)


async def open_console(case, url: str, **kwargs) -> ConsoleClient:
    """Connect a console client and wait for its handshake."""
    client = await ConsoleClient(url, **kwargs).connect(case)
    await client.opened()
    return client
