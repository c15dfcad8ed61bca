"""The seams of serialproxy: one zope Interface per seam, and the records they pass.

Every method of a store returns a Deferred. The records are frozen attrs
classes, so what crosses a seam cannot change behind anyone's back.
"""

from typing import Optional, Sequence

from attrs import frozen
from zope.interface import Interface

__all__ = [
    "ApiKey",
    "Hypervisor",
    "Image",
    "ConsoleLock",
    "ConsoleToken",
    "IHypervisorDriver",
    "IStore",
    "SerialPort",
    "Server",
    "SessionRecord",
]


@frozen
class ApiKey:
    id: str
    tenant_id: str
    is_admin: bool
    description: str
    created: float


@frozen
class SerialPort:
    """Where one serial port of a VM listens: ``index`` is its place on the VM."""

    index: int
    host: str
    port: int


@frozen
class Hypervisor:
    """A libvirt host whose VMs' serial ports bind on ``proxyclient_address``."""

    id: str
    name: str
    libvirt_uri: str
    proxyclient_address: str
    port_range: tuple  # (low, high)
    created: float
    virt_type: str = "qemu"  # "kvm" where KVM is usable; "qemu" (TCG) works everywhere


@frozen
class Image:
    """A bootable image: kernel + initrd + command line, or a disk; ``metadata`` is a dict."""

    id: str
    name: str
    kernel: str
    initrd: str
    cmdline: str
    disk: str
    metadata: dict
    created: float


@frozen
class Server:
    """A VM with serial ports: adopted (ports given) or booted by us on a hypervisor."""

    id: str
    name: str
    tenant_id: str
    status: str
    created: float
    serial_ports: tuple = ()
    hypervisor_id: Optional[str] = None
    image_id: Optional[str] = None
    domain: str = ""
    memory_mb: int = 0


@frozen
class ConsoleToken:
    token_hash: str
    server_id: str
    port_index: int
    host: str
    port: int
    tenant_id: str
    created: float
    expires: float
    key_tenant_id: str = ""  # the tenant of the API key that minted it


@frozen
class ConsoleLock:
    """The writer lease on one console (server, port index)."""

    server_id: str
    port_index: int
    session_id: str
    node: str
    peer: str
    tenant_id: str
    since: float
    expires: float


@frozen
class SessionRecord:
    """A console session as every node sees it."""

    id: str
    server_id: str
    port_index: int
    mode: str  # "write" or "read"
    peer: str
    tenant_id: str  # the tenant of the key that minted the session's token
    node: str
    since: float
    expires: float
    bytes_in: int = 0
    bytes_out: int = 0
    kick_reason: Optional[str] = None
    kicked_by: Optional[str] = None


class IStore(Interface):
    """Persistent state: keys, servers, console tokens, console locks."""

    def create_key(key: ApiKey, key_hash: str):
        """Store a new API key by the hash of its secret."""

    def find_key(key_hash: str):
        """The :class:`ApiKey` whose secret hashes to ``key_hash``, or None."""

    def list_keys():
        """Every :class:`ApiKey`, oldest first."""

    def revoke_key(key_id: str):
        """Delete a key; True if it existed."""

    def create_server(server: Server):
        """Store a server and its serial ports."""

    def get_server(server_id: str):
        """The :class:`Server`, or None."""

    def list_servers(tenant_id: Optional[str] = None):
        """Servers of one tenant (or all, for None), oldest first."""

    def delete_server(server_id: str):
        """Delete a server with its tokens and locks; True if it existed."""

    def add_token(token: ConsoleToken):
        """Store a console token (by hash)."""

    def find_token(token_hash: str):
        """The :class:`ConsoleToken`, expired or not, or None."""

    def purge_tokens(now: float):
        """Delete tokens that expired before ``now``; how many."""

    def acquire_lock(lock: ConsoleLock, now: float):
        """Take the console's writer lock: None if taken, else the holder's lock.

        A lock whose lease expired before ``now`` is taken over.
        """

    def release_lock(session_id: str):
        """Drop the lock held by a session, if any."""

    def renew_locks(node: str, expires: float):
        """Extend every lease held by ``node`` to ``expires``; how many."""

    def set_server_status(server_id: str, status: str):
        """Record a server's status; True if the server exists."""

    def set_serial_ports(server_id: str, ports: tuple):
        """Replace a server's serial ports (as read back from its domain)."""

    def create_hypervisor(hypervisor: Hypervisor):
        """Store a hypervisor; Conflict if its name is taken."""

    def find_hypervisor(id_or_name: str):
        """The :class:`Hypervisor` with this id or name, or None."""

    def list_hypervisors():
        """Every hypervisor, oldest first."""

    def create_image(image: Image):
        """Store an image; Conflict if its name is taken."""

    def find_image(id_or_name: str):
        """The :class:`Image` with this id or name, or None."""

    def list_images():
        """Every image, oldest first."""

    def claim_tested_port(hypervisor_id: str, low: int, high: int, server_id: str):
        """Allocate the lowest tested free port in low..high to a server; the port or None."""

    def known_ports(hypervisor_id: str):
        """Every port of the hypervisor that has a row (allocated, free or foreign)."""

    def record_port(hypervisor_id: str, port: int, server_id: Optional[str]):
        """Remember a newly tested port: allocated to ``server_id``, or foreign for None.

        False if another node recorded it first.
        """

    def release_ports(server_id: str):
        """Free every port of a server (they stay tested); how many."""

    def count_unavailable_ports(hypervisor_id: str, low: int, high: int):
        """How many ports of low..high are allocated or foreign."""

    def allocations(hypervisor_id: str):
        """``{port: server_id}`` of the hypervisor's allocated ports."""

    def open_session(session: SessionRecord, lock: Optional[ConsoleLock], now: float, closed: Sequence[str] = ()):
        """In one transaction: close the sessions ``closed`` (as :meth:`close_sessions`), then take
        the writer lock (if ``lock``) and record the session.

        None when opened; the holder's lock when the console is busy (the
        closes are kept, the session is not recorded). :class:`NotFound` if
        the session's server is gone, with nothing written, not even the closes.
        """

    def close_sessions(session_ids: Sequence[str]):
        """In one transaction: free the writer locks of these sessions (if any) and forget them."""

    def add_session(session: SessionRecord):
        """Record a new session."""

    def list_sessions(now: float, server_id: Optional[str] = None):
        """Live sessions (lease not expired), of one server or all, oldest first."""

    def renew_sessions(node: str, expires: float, counters: dict, only=None):
        """Extend the leases of all of ``node``'s sessions and locks (or of the sessions, and their
        locks, whose ids ``only`` lists), store the byte counts given (``{id: (bytes_in, bytes_out)}``,
        those that changed); the node's sessions that were kicked."""

    def purge_sessions(now: float):
        """Delete sessions and writer locks whose lease ran out (their node died); how many sessions."""

    def kick_session(server_id: str, session_id: str, reason: str, actor: str, now: float):
        """Mark a live session kicked and free its writer lock at once; its record, or None."""

    def mark_ports_foreign(hypervisor_id: str, ports: tuple):
        """Ports found used by a domain that is not ours: never hand them out."""

    def adopt_ports(hypervisor_id: str, ports: tuple, server_id: str):
        """Mark ports as allocated to ``server_id`` (a domain found running); the ports
        another server holds are left alone and returned."""


class IHypervisorDriver(Interface):
    """Libvirt, one URI per hypervisor. Every method returns a Deferred."""

    def boot(uri: str, xml: str):
        """Define the domain and start it."""

    def destroy(uri: str, name: str):
        """Stop (if running) and undefine a domain; False if there was none."""

    def state(uri: str, name: str):
        """'active', 'paused', 'shutoff' or 'error'; None for no such domain."""

    def domain_xml(uri: str, name: str):
        """The live XML of a domain, or None for no such domain."""

    def domains(uri: str):
        """``[(name, live XML)]`` of every domain on the hypervisor."""

    def set_owner(uri: str, name: str, server_id: str, tenant_id: str):
        """Write our metadata into an existing domain (adoption)."""
