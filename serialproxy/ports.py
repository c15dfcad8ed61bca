"""The port allocator: TCP ports from a hypervisor's ``port_range`` for VM serial ports.

Allocations live in the database, one row per (hypervisor, port) under a
primary key, so two proxy nodes can never hand out the same port. Before a
port is given out for the first time it is probed on its hypervisor (a bind
test where the hypervisor is this host, a connection probe otherwise); the
result is remembered, and a port once tested is not tested again.
"""

import errno
import socket
from typing import ClassVar, Iterable, Optional
from urllib.parse import urlsplit

from attrs import define, field
from twisted.internet.interfaces import IReactorTCP
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .errors import Conflict
from .interfaces import Hypervisor, IStore

__all__ = ["IPortProbe", "PortAllocator", "PortProbe", "PortsExhausted", "WARN_AT"]

WARN_AT = 0.9


class PortsExhausted(Conflict):
    """No free port is left in a hypervisor's range."""


class IPortProbe(Interface):
    def is_free(hypervisor: Hypervisor, port: int):
        """A Deferred firing True if nothing listens on ``port`` on that hypervisor."""


def is_local(hypervisor: Hypervisor) -> bool:
    """Does the hypervisor run on this host (a libvirt URI without a host)?"""
    return urlsplit(hypervisor.libvirt_uri).hostname in (None, "", "localhost")


class _Probe(Protocol):
    def connectionMade(self):
        self.transport.abortConnection()


@implementer(IPortProbe)
@define
class PortProbe:
    """Tests ports: bind on this host, connect to a remote hypervisor."""

    _reactor: IReactorTCP
    timeout: float = 2.0

    def is_free(self, hypervisor: Hypervisor, port: int):
        if is_local(hypervisor):
            return Deferred.fromCoroutine(self._bind_free(hypervisor.proxyclient_address, port))
        return Deferred.fromCoroutine(self._nobody_answers(hypervisor.proxyclient_address, port))

    async def _bind_free(self, address: str, port: int) -> bool:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as QEMU binds
            try:
                probe.bind((address or "", port))
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise
        return True

    async def _nobody_answers(self, address: str, port: int) -> bool:
        connected = Deferred()
        factory = ClientFactory.forProtocol(_Probe)
        factory.noisy = False
        factory.clientConnectionFailed = lambda connector, reason: connected.callback(True)
        factory.clientConnectionLost = lambda connector, reason: connected.callback(False)
        self._reactor.connectTCP(address, port, factory, timeout=self.timeout)
        return await connected


@define
class PortAllocator:
    """Hands out and takes back the serial ports of VMs."""

    _store: IStore
    _probe: IPortProbe
    _warned: set = field(factory=set)
    _log: ClassVar[Logger] = Logger()

    async def allocate(self, hypervisor: Hypervisor, server_id: str, count: int) -> list:
        """``count`` free ports of ``hypervisor`` for ``server_id``, or :class:`PortsExhausted`."""
        ports = []
        try:
            while len(ports) < count:
                ports.append(await self._one(hypervisor, server_id))
        except BaseException:
            await self._store.release_ports(server_id)
            raise
        await self._check_usage(hypervisor)
        return ports

    async def _one(self, hypervisor: Hypervisor, server_id: str) -> int:
        low, high = hypervisor.port_range
        while True:
            port = await self._store.claim_tested_port(hypervisor.id, low, high, server_id)
            if port is not None:
                return port
            port = _first_untested(await self._store.known_ports(hypervisor.id), low, high)
            if port is None:
                raise PortsExhausted(
                    f"no free serial port left on hypervisor {hypervisor.name!r}: all of "
                    f"port_range {low}:{high} are allocated or in use; delete servers or widen the range")
            free = await self._probe.is_free(hypervisor, port)
            if not free:
                self._log.warn("port {port} on hypervisor {name} is in use by something else: skipped from now on",
                               port=port, name=hypervisor.name)
            if await self._store.record_port(hypervisor.id, port, server_id if free else None) and free:
                return port

    async def release(self, server_id: str) -> int:
        """Give a server's ports back; they stay tested, ready for the next VM."""
        return await self._store.release_ports(server_id)

    async def _check_usage(self, hypervisor: Hypervisor) -> None:
        low, high = hypervisor.port_range
        used = await self._store.count_unavailable_ports(hypervisor.id, low, high)
        size = high - low + 1
        if used >= WARN_AT * size:
            if hypervisor.id not in self._warned:
                self._warned.add(hypervisor.id)
                self._log.warn("hypervisor {name}: {used} of {size} serial ports in port_range {low}:{high} are used "
                               "({percent:.0f}%); widen the range before it runs out",
                               name=hypervisor.name, used=used, size=size, low=low, high=high, percent=100 * used / size)
        else:
            self._warned.discard(hypervisor.id)


def _first_untested(known: Iterable[int], low: int, high: int) -> Optional[int]:
    """The lowest port of low..high that has no row yet."""
    known = set(known)
    for port in range(low, high + 1):
        if port not in known:
            return port
    return None
