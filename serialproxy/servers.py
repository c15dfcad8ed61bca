"""Servers booted through libvirt: boot, status, console ports, delete, reconcile, adopt.

The domain logic between the API (or serialproxy-manage) and the store, the
port allocator and the hypervisor driver. Ports are released on every path
that does not end with a running domain.
"""

import ipaddress
from typing import Callable, ClassVar, Optional

from attrs import define, evolve
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .domain import DomainSpec, build_domain_xml, domain_name, owner, serial_ports
from .errors import BadRequest, Conflict, NotFound
from .interfaces import Hypervisor, IHypervisorDriver, Image, IStore, SerialPort, Server
from .ports import PortAllocator
from .tokens import new_id
from .validate import image_serial_ports

__all__ = ["Servers"]


def _reachable(port: SerialPort, hypervisor: Hypervisor) -> SerialPort:
    """A serial socket bound to every address is reached at the hypervisor's proxyclient_address."""
    try:
        unspecified = ipaddress.ip_address(port.host).is_unspecified
    except ValueError:
        unspecified = False
    return evolve(port, host=hypervisor.proxyclient_address) if unspecified or not port.host else port


@define
class Servers:
    """What happens to VMs that serialproxy boots (and to those it adopts)."""

    _store: IStore
    _driver: IHypervisorDriver
    _allocator: PortAllocator
    _clock: IReactorTime
    _entropy: Callable[[int], bytes]
    _log: ClassVar[Logger] = Logger()

    async def boot(self, name: str, tenant_id: str, image: Image, hypervisor: Hypervisor, memory_mb: int) -> Server:
        """Allocate ports, write and start the domain; the server, active."""
        count = image_serial_ports(image.metadata)
        server_id = new_id(self._entropy)
        ports = await self._allocator.allocate(hypervisor, server_id, count)
        serial = tuple(SerialPort(i, hypervisor.proxyclient_address, p) for i, p in enumerate(ports))
        server = Server(server_id, name, tenant_id, "building", self._clock.seconds(), serial,
                        hypervisor.id, image.id, domain_name(server_id), memory_mb)
        try:
            await self._store.create_server(server)
            xml = build_domain_xml(DomainSpec(server.domain, server_id, tenant_id, memory_mb, serial,
                                              image.kernel, image.initrd, image.cmdline, image.disk, hypervisor.virt_type))
            await self._driver.boot(hypervisor.libvirt_uri, xml)
        except BaseException:
            self._log.warn("boot of server {id} on {hv} failed: its ports are released", id=server_id, hv=hypervisor.name)
            await self._store.delete_server(server_id)
            await self._allocator.release(server_id)
            raise
        await self._store.set_server_status(server_id, "active")
        self._log.info("booted server {id} ({name}) of tenant {tenant} on {hv} with serial ports {ports}",
                       id=server_id, name=name, tenant=tenant_id, hv=hypervisor.name, ports=ports)
        return evolve(server, status="active")

    async def register(self, server: Server) -> None:
        """Store a server whose serial ports already listen; the allocator will never hand those ports out."""
        await self._store.create_server(server)
        for hypervisor in await self._store.list_hypervisors():
            taken = tuple(p.port for p in server.serial_ports if p.host == hypervisor.proxyclient_address)
            if taken:
                await self._store.mark_ports_foreign(hypervisor.id, taken)

    async def check_hypervisor(self, hypervisor: Hypervisor) -> None:
        """Refuse to register a hypervisor libvirt cannot reach (HypervisorError)."""
        await self._driver.domains(hypervisor.libvirt_uri)

    async def _hypervisor(self, server: Server) -> Hypervisor:
        hypervisor = await self._store.find_hypervisor(server.hypervisor_id)
        if hypervisor is None:
            raise Conflict(f"server {server.id}: its hypervisor {server.hypervisor_id} is no longer registered")
        return hypervisor

    async def refresh(self, server: Server) -> Server:
        """The server with its status as its domain has it now (booted servers only)."""
        if not server.hypervisor_id:
            return server
        hypervisor = await self._hypervisor(server)
        state = await self._driver.state(hypervisor.libvirt_uri, server.domain) or "error"
        if state != server.status:
            await self._store.set_server_status(server.id, state)
        return evolve(server, status=state)

    async def console_port(self, server: Server, index: int) -> SerialPort:
        """Where serial port ``index`` of the server listens now.

        For a booted server this is read from the live domain XML, so a URL
        always points where the VM really listens.
        """
        if server.hypervisor_id:
            hypervisor = await self._hypervisor(server)
            xml = await self._driver.domain_xml(hypervisor.libvirt_uri, server.domain)
            if xml is None:
                await self._store.set_server_status(server.id, "error")
                raise Conflict(f"server {server.id}: its domain {server.domain} is gone from hypervisor {hypervisor.name}")
            live = tuple(_reachable(p, hypervisor) for p in serial_ports(xml))
            if live != server.serial_ports:
                await self._store.set_serial_ports(server.id, live)
            server = evolve(server, serial_ports=live)
        ports = {p.index: p for p in server.serial_ports}
        if index not in ports:
            raise BadRequest(f"server {server.id} has {len(ports)} serial port(s), indexes 0 to {len(ports) - 1}; "
                             f"port {index} is not one of them" if ports else f"server {server.id} has no serial ports")
        return ports[index]

    async def delete(self, server: Server) -> None:
        """Destroy and undefine its domain (if we booted it), then forget it and free its ports."""
        if server.hypervisor_id:
            hypervisor = await self._store.find_hypervisor(server.hypervisor_id)
            if hypervisor is not None:
                await self._driver.destroy(hypervisor.libvirt_uri, server.domain)
        await self._store.delete_server(server.id)
        self._log.info("deleted server {id}; its ports are free", id=server.id)

    async def reconcile(self, hypervisor: Hypervisor) -> dict:
        """Make the database agree with the hypervisor's domains (at start).

        Our domains get their allocations (and server rows) back; allocations
        whose domain is gone are released; ports other domains use are never
        handed out. Returns counts of what changed.
        """
        found = {"domains": 0, "rebuilt": 0, "released": 0, "foreign": 0}
        ours = {}
        for name, xml in await self._driver.domains(hypervisor.libvirt_uri):
            ports = tuple(p.port for p in serial_ports(xml))
            mine = owner(xml)
            if mine is None:
                await self._store.mark_ports_foreign(hypervisor.id, ports)
                found["foreign"] += len(ports)
                continue
            found["domains"] += 1
            ours[mine.server_id] = name
            held = await self._store.adopt_ports(hypervisor.id, ports, mine.server_id)
            for port in held:
                self._log.error("domain {name} uses port {port}, which the database gives to another server",
                                name=name, port=port)
            if await self._store.get_server(mine.server_id) is None:
                await self._store.create_server(Server(mine.server_id, name, mine.tenant_id, "active", self._clock.seconds(),
                                                       tuple(_reachable(p, hypervisor) for p in serial_ports(xml)),
                                                       hypervisor.id, None, name, 0))
                found["rebuilt"] += 1
        for server_id in set((await self._store.allocations(hypervisor.id)).values()) - set(ours):
            server = await self._store.get_server(server_id)
            if server is not None and server.hypervisor_id != hypervisor.id:
                continue
            found["released"] += await self._store.release_ports(server_id)
            if server is not None:
                await self._store.set_server_status(server_id, "error")
        self._log.info("reconciled hypervisor {name}: {domains} of our domains, {rebuilt} servers rebuilt, "
                       "{released} ports released, {foreign} ports of other domains", name=hypervisor.name, **found)
        return found

    async def adopt(self, hypervisor: Hypervisor, name: str, tenant_id: str, server_name: Optional[str] = None) -> Server:
        """Take an existing domain with TCP serial devices into a tenant."""
        xml = await self._driver.domain_xml(hypervisor.libvirt_uri, name)
        if xml is None:
            raise NotFound(f"no domain {name!r} on hypervisor {hypervisor.name}")
        if owner(xml) is not None:
            raise Conflict(f"domain {name!r} is already a serialproxy server ({owner(xml).server_id})")
        ports = tuple(_reachable(p, hypervisor) for p in serial_ports(xml))
        if not ports:
            raise BadRequest(f"domain {name!r} has no <serial type='tcp'> device in bind mode to serve")
        server_id = new_id(self._entropy)
        held = await self._store.adopt_ports(hypervisor.id, tuple(p.port for p in ports), server_id)
        if held:
            await self._store.release_ports(server_id)
            raise Conflict(f"domain {name!r} uses ports {held} that belong to other servers")
        state = await self._driver.state(hypervisor.libvirt_uri, name) or "error"
        server = Server(server_id, server_name or name, tenant_id, state, self._clock.seconds(), ports,
                        hypervisor.id, None, name, 0)
        await self._store.create_server(server)
        await self._driver.set_owner(hypervisor.libvirt_uri, name, server_id, tenant_id)
        return server
