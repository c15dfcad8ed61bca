"""In-memory fakes for tests: a store, and an adbapi pool that runs inline.

:class:`MemoryStore` passes the same contract tests as the SQL store
(tests/contract). :func:`inline_database` runs real SQL on a real database
without threads, so unit tests stay synchronous.
"""

import copy
import xml.etree.ElementTree as ET

from attrs import define, evolve, field
from twisted.enterprise import adbapi
from twisted.internet.defer import fail, succeed
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from .database import Database, _prepare_sqlite, parse_url, upgrade
from .domain import NAMESPACE
from .errors import Conflict, NotFound
from .interfaces import IHypervisorDriver, IStore
from .libvirt_driver import HypervisorError
from .ports import IPortProbe

__all__ = ["MemoryStore", "FakeHypervisorDriver", "FakeProbe", "InlineThreadPool", "InlineReactor", "inline_database",
           "TCPStringTransport"]


def _result(fn):
    """Run ``fn`` now; its value or exception as a Deferred (like the SQL store)."""
    try:
        return succeed(fn())
    except Exception:
        return fail(Failure())


@implementer(IStore)
@define
class MemoryStore:
    """:class:`~serialproxy.interfaces.IStore` in a few dicts."""

    keys: dict = field(factory=dict)  # key_hash -> ApiKey
    servers: dict = field(factory=dict)
    tokens: dict = field(factory=dict)
    locks: dict = field(factory=dict)  # (server_id, port_index) -> ConsoleLock
    hypervisors: dict = field(factory=dict)
    images: dict = field(factory=dict)
    ports: dict = field(factory=dict)  # (hypervisor_id, port) -> (state, server_id)
    sessions: dict = field(factory=dict)  # id -> SessionRecord

    def create_key(self, key, key_hash):
        def create():
            if key_hash in self.keys or any(k.id == key.id for k in self.keys.values()):
                raise Conflict("duplicate key")
            self.keys[key_hash] = key
        return _result(create)

    def find_key(self, key_hash):
        return succeed(self.keys.get(key_hash))

    def list_keys(self):
        return succeed(sorted(self.keys.values(), key=lambda k: (k.created, k.id)))

    def revoke_key(self, key_id):
        found = [h for h, k in self.keys.items() if k.id == key_id]
        for h in found:
            del self.keys[h]
        return succeed(bool(found))

    def create_server(self, server):
        def create():
            taken = {(p.host, p.port): s.id for s in self.servers.values() for p in s.serial_ports}
            for port in server.serial_ports:
                if (port.host, port.port) in taken:
                    raise Conflict(f"serial port {port.host}:{port.port} already belongs to server {taken[(port.host, port.port)]}")
            if server.id in self.servers:
                raise Conflict("duplicate server id")
            self.servers[server.id] = copy.deepcopy(server)
        return _result(create)

    def get_server(self, server_id):
        return succeed(self.servers.get(server_id))

    def list_servers(self, tenant_id=None):
        found = [s for s in self.servers.values() if tenant_id is None or s.tenant_id == tenant_id]
        return succeed(sorted(found, key=lambda s: (s.created, s.id)))

    def delete_server(self, server_id):
        self.release_ports(server_id)
        existed = self.servers.pop(server_id, None) is not None
        self.tokens = {h: t for h, t in self.tokens.items() if t.server_id != server_id}
        self.locks = {c: lock for c, lock in self.locks.items() if c[0] != server_id}
        self.sessions = {i: r for i, r in self.sessions.items() if r.server_id != server_id}
        return succeed(existed)

    def add_token(self, token):
        self.tokens[token.token_hash] = token
        return succeed(None)

    def find_token(self, token_hash):
        return succeed(self.tokens.get(token_hash))

    def purge_tokens(self, now):
        expired = [h for h, t in self.tokens.items() if t.expires < now]
        for h in expired:
            del self.tokens[h]
        return succeed(len(expired))

    def acquire_lock(self, lock, now):
        return succeed(self._take_lock(lock, now))

    def _take_lock(self, lock, now):
        console = (lock.server_id, lock.port_index)
        holder = self.locks.get(console)
        if holder is not None and holder.expires >= now:
            return holder
        self.locks[console] = lock
        return None

    def release_lock(self, session_id):
        self.locks = {c: lock for c, lock in self.locks.items() if lock.session_id != session_id}
        return succeed(None)

    def renew_locks(self, node, expires):
        mine = {c: evolve(lock, expires=expires) for c, lock in self.locks.items() if lock.node == node}
        self.locks.update(mine)
        return succeed(len(mine))

    def set_server_status(self, server_id, status):
        if server_id not in self.servers:
            return succeed(False)
        self.servers[server_id] = evolve(self.servers[server_id], status=status)
        return succeed(True)

    def set_serial_ports(self, server_id, ports):
        self.servers[server_id] = evolve(self.servers[server_id], serial_ports=tuple(ports))
        return succeed(None)

    def _create_named(self, table, kind, record):
        def create():
            if any(r.name == record.name for r in table.values()):
                raise Conflict(f"a {kind} named {record.name!r} exists already")
            table[record.id] = record
        return _result(create)

    def _find_named(self, table, id_or_name):
        found = table.get(id_or_name) or next((r for r in table.values() if r.name == id_or_name), None)
        return succeed(found)

    def create_hypervisor(self, hypervisor):
        return self._create_named(self.hypervisors, "hypervisor", hypervisor)

    def find_hypervisor(self, id_or_name):
        return self._find_named(self.hypervisors, id_or_name)

    def list_hypervisors(self):
        return succeed(sorted(self.hypervisors.values(), key=lambda h: (h.created, h.id)))

    def create_image(self, image):
        return self._create_named(self.images, "image", copy.deepcopy(image))

    def find_image(self, id_or_name):
        return self._find_named(self.images, id_or_name)

    def list_images(self):
        return succeed(sorted(self.images.values(), key=lambda i: (i.created, i.id)))

    def claim_tested_port(self, hypervisor_id, low, high, server_id):
        free = sorted(p for (h, p), (state, _) in self.ports.items() if h == hypervisor_id and state == "free" and low <= p <= high)
        if not free:
            return succeed(None)
        self.ports[(hypervisor_id, free[0])] = ("allocated", server_id)
        return succeed(free[0])

    def known_ports(self, hypervisor_id):
        return succeed([p for (h, p) in self.ports if h == hypervisor_id])

    def record_port(self, hypervisor_id, port, server_id):
        if (hypervisor_id, port) in self.ports:
            return succeed(False)
        self.ports[(hypervisor_id, port)] = ("allocated", server_id) if server_id else ("foreign", None)
        return succeed(True)

    def release_ports(self, server_id):
        mine = [k for k, (state, owner) in self.ports.items() if owner == server_id]
        for key in mine:
            self.ports[key] = ("free", None)
        return succeed(len(mine))

    def count_unavailable_ports(self, hypervisor_id, low, high):
        return succeed(sum(1 for (h, p), (state, _) in self.ports.items()
                           if h == hypervisor_id and state != "free" and low <= p <= high))

    def allocations(self, hypervisor_id):
        return succeed({p: owner for (h, p), (state, owner) in self.ports.items() if h == hypervisor_id and state == "allocated"})

    def open_session(self, session, lock, now, closed=()):
        if session.server_id not in self.servers:
            return fail(NotFound(f"server {session.server_id} is gone"))
        self._close_sessions(closed)
        holder = self._take_lock(lock, now) if lock is not None else None
        if holder is not None:
            return succeed(holder)
        return self.add_session(session)

    def close_sessions(self, session_ids):
        self._close_sessions(session_ids)
        return succeed(None)

    def _close_sessions(self, session_ids):
        gone = set(session_ids)
        self.locks = {c: lock for c, lock in self.locks.items() if lock.session_id not in gone}
        self.sessions = {i: r for i, r in self.sessions.items() if i not in gone}

    def add_session(self, session):
        self.sessions[session.id] = session
        return succeed(None)

    def list_sessions(self, now, server_id=None):
        found = [r for r in self.sessions.values()
                 if r.expires >= now and r.kick_reason is None and server_id in (None, r.server_id)]
        return succeed(sorted(found, key=lambda r: (r.since, r.id)))

    def renew_sessions(self, node, expires, counters, only=None):
        only = None if only is None else set(only)

        def renewed(session_id):
            return only is None or session_id in only

        for session_id, record in list(self.sessions.items()):
            if record.node == node:
                bytes_in, bytes_out = counters.get(session_id, (record.bytes_in, record.bytes_out))
                self.sessions[session_id] = evolve(record, expires=expires if renewed(session_id) else record.expires,
                                                   bytes_in=bytes_in, bytes_out=bytes_out)
        self.locks.update({c: evolve(lock, expires=expires) for c, lock in self.locks.items()
                           if lock.node == node and renewed(lock.session_id)})
        return succeed([r for r in self.sessions.values() if r.node == node and r.kick_reason is not None])

    def purge_sessions(self, now):
        self.locks = {c: lock for c, lock in self.locks.items() if lock.expires >= now}
        dead = [i for i, r in self.sessions.items() if r.expires < now]
        for session_id in dead:
            del self.sessions[session_id]
        return succeed(len(dead))

    def kick_session(self, server_id, session_id, reason, actor, now):
        record = self.sessions.get(session_id)
        if record is None or record.server_id != server_id or record.expires < now or record.kick_reason is not None:
            return succeed(None)
        record = self.sessions[session_id] = evolve(record, kick_reason=reason, kicked_by=actor)
        self.release_lock(session_id)
        return succeed(record)

    def mark_ports_foreign(self, hypervisor_id, ports):
        for port in ports:
            state, owner = self.ports.get((hypervisor_id, port), ("free", None))
            if state == "free":
                self.ports[(hypervisor_id, port)] = ("foreign", None)
        return succeed(None)

    def adopt_ports(self, hypervisor_id, ports, server_id):
        held = []
        for port in ports:
            state, owner = self.ports.get((hypervisor_id, port), ("free", None))
            if owner not in (None, server_id):
                held.append(port)
            else:
                self.ports[(hypervisor_id, port)] = ("allocated", server_id)
        return succeed(held)


class InlineThreadPool:
    """A thread pool that runs each job at once, in the caller's thread."""

    def callInThreadWithCallback(self, on_result, fn, *args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def start(self):
        pass

    def stop(self):
        pass


class InlineReactor:
    """The little of a reactor that adbapi uses, all inline."""

    def callFromThread(self, fn, *args, **kwargs):
        fn(*args, **kwargs)

    def callWhenRunning(self, fn, *args, **kwargs):
        return None

    def addSystemEventTrigger(self, *args, **kwargs):
        return None

    def removeSystemEventTrigger(self, trigger):
        pass


class TCPStringTransport(StringTransport):
    """A StringTransport that, as Twisted's TCP transport does, lets a protocol unregister a producer it never registered (autobahn does)."""

    def unregisterProducer(self):
        self.producer = None


def inline_database(url: str) -> Database:
    """A :class:`Database` on ``url`` (upgraded) whose queries run inline, without threads."""
    upgrade(url)
    dialect = parse_url(url)
    extra = {"cp_openfun": _prepare_sqlite} if dialect.name == "sqlite" else {}
    pool = adbapi.ConnectionPool(dialect.module, *dialect.args, **dialect.kwargs, cp_min=1, cp_max=1,
                                 cp_noisy=False, cp_reactor=InlineReactor(), **extra)
    pool.threadpool = InlineThreadPool()
    pool.running = True
    return Database(pool, dialect)


@implementer(IHypervisorDriver)
@define
class FakeHypervisorDriver:
    """:class:`IHypervisorDriver` in memory: ``{uri: {name: [xml, state]}}``.

    ``fail_boot`` makes the next boot fail, as a broken image would.
    """

    hypervisors: dict = field(factory=dict)
    fail_boot: str = ""

    def _domains(self, uri):
        return self.hypervisors.setdefault(uri, {})

    def boot(self, uri, xml):
        def boot():
            name = ET.fromstring(xml).findtext("name")
            if self.fail_boot:
                message, self.fail_boot = self.fail_boot, ""
                raise HypervisorError(f"libvirt at {uri}: {message}")
            domains = self._domains(uri)
            if name in domains:
                raise HypervisorError(f"libvirt at {uri}: domain '{name}' already exists")
            domains[name] = [xml, "active"]
            return name
        return _result(boot)

    def destroy(self, uri, name):
        return succeed(self._domains(uri).pop(name, None) is not None)

    def state(self, uri, name):
        found = self._domains(uri).get(name)
        return succeed(found[1] if found else None)

    def domain_xml(self, uri, name):
        found = self._domains(uri).get(name)
        return succeed(found[0] if found else None)

    def domains(self, uri):
        return succeed([(name, xml) for name, (xml, state) in self._domains(uri).items()])

    def set_owner(self, uri, name, server_id, tenant_id):
        def set_owner():
            found = self._domains(uri).get(name)
            if found is None:
                raise HypervisorError(f"libvirt at {uri}: no domain {name!r}")
            root = ET.fromstring(found[0])
            metadata = root.find("metadata") if root.find("metadata") is not None else ET.SubElement(root, "metadata")
            for old in metadata.findall(f"{{{NAMESPACE}}}server"):
                metadata.remove(old)
            server = ET.SubElement(metadata, f"{{{NAMESPACE}}}server", id=server_id)
            ET.SubElement(server, f"{{{NAMESPACE}}}tenant").text = tenant_id
            found[0] = ET.tostring(root, encoding="unicode")
        return _result(set_owner)


@implementer(IPortProbe)
class FakeProbe:
    """A port probe that finds ``busy`` ports in use and records what it probed."""

    def __init__(self, busy=()):
        self.busy = set(busy)
        self.probed = []

    def is_free(self, hypervisor, port):
        self.probed.append(port)
        return succeed(port not in self.busy)
