"""``twistd serialproxy``: command-line options and the service tree. Wiring only."""

import os
import socket
from typing import Optional

from twisted.application import internet, service
from twisted.application.internet import TimerService
from twisted.internet import endpoints, tcp
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from . import __version__
from .api import API
from .config import OPTIONS, Config, load_config
from .consoles import RESERVED_FILES
from .database import Database, NodeClaim, claim_sqlite, open_database, parse_url
from .errors import ConfigError, DatabaseError
from .libvirt_driver import LibvirtDriver
from .logs import log_through_us
from .polling import lean_poll
from .ports import PortAllocator, PortProbe
from .recording import Recorder
from .servers import Servers
from .sessions import SessionManager
from .store import SQLStore
from .tokens import KeyService, TokenService, new_id
from .transports import ClientTransport
from .web import make_site
from .websocket import ConsoleFactory

__all__ = ["Options", "makeService", "build_service", "ConsoleURLs"]

TOKEN_PURGE_INTERVAL = 60.0
_log = Logger()


class Options(usage.Options):
    """Options of ``twistd serialproxy``; each flag overrides the config file."""

    synopsis = "[--config FILE] [--OPTION=VALUE ...]"
    longdesc = ("Web serial consoles for libvirt/QEMU VMs. Options come from the INI file given "
                "with --config ([serial_console] and [database] sections); flags override it.")
    optParameters = [["config", "c", None, "INI configuration file"]] + [
        [o.flag, None, None, f"{o.help} (file: [{o.section}] {o.name}; default: {o.default or 'empty'})"]
        for o in OPTIONS
    ]

    def postOptions(self):
        try:
            self.config = load_config(self["config"], {o.flag: self[o.flag] for o in OPTIONS})
        except ConfigError as e:
            raise SystemExit(f"serialproxy: configuration error: {e}")
        parent = getattr(self, "parent", None)
        if parent is not None and "nodaemon" in parent and not self.config.daemon:
            parent["nodaemon"] = True  # daemon = false (the default) keeps it in the foreground
        if parent is not None and "logger" in parent:
            log_through_us(parent)  # twistd's log, its timestamps formatted once a second


class ConsoleURLs:
    """The base of console URLs, known once the listener is bound."""

    def __init__(self, config: Config):
        self._config = config
        self.port = config.serialproxy_port

    def base_url(self) -> str:
        return self._config.console_base_url(self.port)


class _ListeningEndpoint:
    """A server endpoint that reports the address it bound."""

    def __init__(self, endpoint, urls: ConsoleURLs, describe: str):
        self._endpoint = endpoint
        self._urls = urls
        self._describe = describe

    def listen(self, factory):
        return self._endpoint.listen(factory).addCallback(self._bound)

    def _bound(self, port):
        if type(port) is tcp.Port and port.transport is tcp.Server:
            port.transport = ClientTransport  # reads 512 KiB at a time (see transports.ClientTransport)
        address = port.getHost()
        self._urls.port = getattr(address, "port", self._urls.port)
        where = f"{address.host}:{address.port}" if hasattr(address, "port") else str(address)
        _log.info("serialproxy {version} listening on {where} ({endpoint}); console URLs: {base}?token=...",
                  version=__version__, where=where, endpoint=self._describe, base=self._urls.base_url())
        return port


class _DatabaseService(service.Service):
    def __init__(self, database: Database, claim: Optional[NodeClaim]):
        self.database = database
        self.claim = claim

    def stopService(self):
        super().stopService()
        self.database.close()
        if self.claim is not None:
            self.claim.release()


class StagedService(service.MultiService):
    """A MultiService that stops its children one at a time, last first.

    So that sessions release their locks before the database pool closes.
    """

    async def _stop(self):
        for child in reversed(list(self)):
            await _maybe(child.stopService())

    def stopService(self):
        service.Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())


async def _maybe(result):
    if isinstance(result, Deferred):
        await result


def _purge(tokens: TokenService, sessions: SessionManager) -> Deferred:
    """Expired tokens, and the sessions and locks of dead nodes, go."""
    async def purge():
        await tokens.purge()
        await sessions.purge()
    d = Deferred.fromCoroutine(purge())
    d.addErrback(lambda f: _log.failure("purging expired state failed", f))
    return d


class _ReconcileService(service.Service):
    """At start, makes the database agree with every hypervisor's domains."""

    def __init__(self, store, servers: Servers):
        self._store = store
        self._servers = servers

    def startService(self):
        super().startService()
        self.done = Deferred.fromCoroutine(self._reconcile_all())

    async def _reconcile_all(self):
        for hypervisor in await self._store.list_hypervisors():
            try:
                await self._servers.reconcile(hypervisor)
            except Exception:
                _log.failure("reconciling hypervisor {name} failed; its ports stay as the database has them",
                             name=hypervisor.name)


def raise_file_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; the resulting limit.

    Each console session holds two sockets (client and VM), so the limit sets
    how many sessions one process can carry.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


# Young collections run after this many new container objects (CPython: 700).
GC_YOUNG_THRESHOLD = 20000


def tune_gc() -> None:
    """Garbage collection for a server that makes and drops many objects per session.

    Every new console session allocates hundreds of container objects
    (protocol state, Deferreds, coroutines) that die with it: young
    collections every 700 of them come often during bursts of new sessions.
    What exists when the service is built (modules, classes, configuration)
    lives as long as the process, so it is frozen out of every collection.
    See docs/performance.md.
    """
    import gc

    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    gc.freeze()


def build_service(config: Config, reactor, entropy=os.urandom, database: Database = None) -> StagedService:
    """The whole node: database, token purge, console leases, HTTP listener."""
    top = StagedService()
    dialect = database.dialect if database is not None else parse_url(config.database_url)
    claim = claim_sqlite(dialect) if dialect.name == "sqlite" else None  # this node is its only user
    database = database or open_database(config.database_url)
    _DatabaseService(database, claim).setServiceParent(top)
    store = SQLStore(database)
    tokens = TokenService(store, reactor, config.token_ttl, entropy)

    node = f"{socket.gethostname()}/{os.getpid()}/{new_id(entropy)[:8]}"
    recorder = None
    if config.record:
        recorder = Recorder(config.recordings_dir, config.record_max_bytes, config.record_keep, reactor, reactor=reactor)
        recorder.setServiceParent(top)
    sessions = SessionManager(store, tokens, reactor, node, entropy=entropy, scrollback_bytes=config.scrollback_bytes,
                              lag_bytes=config.spectator_lag_bytes, idle_timeout=config.idle_timeout,
                              close_on_token_expiry=config.close_on_token_expiry, recorder=recorder,
                              linger=config.console_linger, sole_node=claim is not None)
    sessions.service().setServiceParent(top)
    purge = TimerService(TOKEN_PURGE_INTERVAL, _purge, tokens, sessions)
    purge.clock = reactor
    purge.setServiceParent(top)
    driver = LibvirtDriver(reactor)
    driver.setServiceParent(top)
    servers = Servers(store, driver, PortAllocator(store, PortProbe(reactor)), reactor, entropy)
    _ReconcileService(store, servers).setServiceParent(top)
    urls = ConsoleURLs(config)
    api = API(config, store, KeyService(store, reactor, entropy), tokens, sessions, reactor, urls.base_url, entropy, servers)
    site = make_site(api, ConsoleFactory(sessions, config.allowed_origins, config.ping_interval, config.ping_timeout), config.web_dir, reactor)
    description = config.listen_endpoint()
    endpoint = _ListeningEndpoint(endpoints.serverFromString(reactor, description), urls, description)
    listener = internet.StreamServerEndpointService(endpoint, site)
    listener._raiseSynchronously = True
    listener.setServiceParent(top)
    top.urls = urls
    top.sessions = sessions
    top.servers = servers
    return top


def makeService(options, reactor=None):
    """Entry point for twistd (plugin and .tac)."""
    if reactor is None:
        from twisted.internet import reactor
    config = getattr(options, "config", None) or load_config(options.get("config"))
    limit = raise_file_limit()
    _log.info("open-file limit {limit}: room for about {sessions} console sessions", limit=limit, sessions=(limit - RESERVED_FILES) // 2)
    try:
        service = build_service(config, reactor)
    except DatabaseError as e:
        raise SystemExit(f"serialproxy: database error: {e}")
    tune_gc()
    lean_poll(reactor)  # no log context built around every socket event (polling.py)
    return service
