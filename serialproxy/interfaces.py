"""The seams of serialproxy: one zope Interface per seam, and the records they pass.

Every method of a store returns a Deferred. The records are frozen attrs
classes, so what crosses a seam cannot change behind anyone's back.
"""

from typing import Optional

from attrs import frozen
from zope.interface import Interface

__all__ = [
    "ApiKey",
    "ConsoleLock",
    "ConsoleToken",
    "IStore",
    "SerialPort",
    "Server",
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
class Server:
    id: str
    name: str
    tenant_id: str
    status: str
    created: float
    serial_ports: tuple = ()


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
