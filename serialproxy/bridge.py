"""The byte path: one VM serial port shared by the sessions attached to it on this node.

A :class:`Console` holds one TCP connection to the VM's serial port and fans
its output out to every attached :class:`Attachment` (one writer at most,
any number of read-only spectators), keeping a bounded scrollback ring that
is replayed to newcomers.

Flow control follows ``twisted/protocols/portforward.py``: the VM side is
paused until it connects; then the writer's transport and the VM transport
pause each other (a writer that stops reading pauses the VM; a VM that stops
reading pauses the writer). Spectators never slow anyone down: each has a
bounded allowance of bytes it may fall behind by, past which it is closed.
One byte path serves websocket and telnet clients alike.
"""

import errno
import os
from collections import deque
from typing import Callable, ClassVar, Optional

from attrs import define, field
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from .errors import CloseCode, SerialProxyError
from .names import NameCache, NamedVMEndpoint
from .transports import VMEndpoint, close_now, held_bytes, quick_ack, send_now

__all__ = ["Attachment", "Console", "IConsoleClient", "NodeFull", "Scrollback", "VMUnreachable", "vm_endpoint"]

READ_ONLY_NOTICE = b"\r\n[serialproxy: read-only session: what you type is not sent to the VM]\r\n"


class VMUnreachable(SerialProxyError):
    """The VM's serial port does not answer."""

    http_status = 502
    close_code = CloseCode.VM_UNREACHABLE


class NodeFull(SerialProxyError):
    """This node has no file descriptor left for another VM connection (its open-file limit)."""

    http_status = 503
    close_code = CloseCode.TRY_AGAIN_LATER


class IConsoleClient(Interface):
    """The client end of a session: a websocket or telnet connection."""

    transport = Attribute("The client's transport: a consumer and a push producer.")

    def send(data, eager=False):
        """Send bytes from the VM to the client.

        ``eager``: it is the only session on its console, so the bytes may go
        straight to the kernel (:func:`send_now`); with others on the console
        every client's bytes take its transport's queue, which the reactor
        drains by turns, so that a spectator keeping up with the writer is
        not left behind by the writer's eager writes.
        """

    def close(code, reason):
        """Close the client with a close code and a reason a person can read."""


def vm_endpoint(reactor, host: str, port: int, timeout: float, names: NameCache):
    """A client endpoint for a VM serial port; IP literals skip name resolution, names are kept a while.

    Literals are told apart with ``inet_pton`` (Twisted's ``isIPAddress``),
    which the TCP transport runs on them again anyway; ``ipaddress`` objects
    cost a new session a hundredth of its CPU. A literal's endpoint is
    ``VMEndpoint``: Twisted's TCP endpoint, but a connection the kernel has
    already made (a VM on this host) needs no reactor turn. A host name's is
    ``NamedVMEndpoint``: its addresses from ``names`` (asked of the resolver
    once per ``NAME_TTL``), each dialled by ``VMEndpoint``.
    """
    literal = host.strip("[]")
    if isIPAddress(literal) or isIPv6Address(literal):
        return VMEndpoint(reactor, literal, port, timeout)
    return NamedVMEndpoint(names, reactor, host, port, timeout)


class Scrollback:
    """The last ``size`` bytes a VM wrote, for newcomers to see.

    Chunks are kept as they came and whole ones dropped from the front, so a
    full ring costs no copying per chunk; the one chunk straddling the limit
    is cut only when the contents are asked for.
    """

    __slots__ = ("_chunks", "_held", "_size")

    def __init__(self, size: int):
        self._size = size
        self._chunks = deque()
        self._held = 0

    def append(self, data: bytes) -> None:
        if self._size <= 0:
            return
        self._chunks.append(data)
        self._held += len(data)
        while self._held - len(self._chunks[0]) >= self._size:
            self._held -= len(self._chunks.popleft())

    def contents(self) -> bytes:
        return b"".join(self._chunks)[-self._size:] if self._size > 0 else b""


@implementer(IPushProducer)
class _Throttle:
    """Pauses and resumes a transport's reading for its peer; never closes it.

    A transport calls its producer's stopProducing() when its own connection
    is lost, before its protocol hears of it; registering the peer transport
    itself would drop the peer at once (no websocket close handshake). The
    console closes the peer instead.
    """

    def __init__(self, transport):
        self._transport = transport

    def pauseProducing(self):
        self._transport.pauseProducing()

    def resumeProducing(self):
        self._transport.resumeProducing()

    def stopProducing(self):
        pass


@implementer(IPushProducer)
class _Lag:
    """Registered on a spectator's transport: tells its attachment when the transport's buffer is full."""

    def __init__(self, attachment: "Attachment"):
        self._attachment = attachment

    def pauseProducing(self):
        # Twisted calls this on every write while the buffer stays full: count from the first.
        if self._attachment.behind is None:
            self._attachment.behind = 0

    def resumeProducing(self):
        self._attachment.behind = None

    def stopProducing(self):
        pass


@define(eq=False)
class Attachment:
    """One session's place on a console: its client, mode and byte counts."""

    id: str
    client: IConsoleClient
    writer: bool
    lag_limit: int
    bytes_in: int = 0
    bytes_out: int = 0
    behind: Optional[int] = None  # bytes held for it once its transport's buffer filled; None: keeping up
    told_read_only: bool = False
    on_output: Optional[Callable[[bytes], None]] = None
    on_input: Optional[Callable[[bytes], None]] = None

    def deliver(self, data: bytes, eager: bool = False) -> bool:
        """Send VM bytes; False when a spectator fell too far behind (the caller closes it)."""
        if self.behind is not None and not self.writer:
            # What its transport holds unsent, where Twisted shows it; else
            # every byte sent since the buffer filled (it may never drain whole
            # while the VM writes, so this closes sooner).
            held = held_bytes(self.client.transport)
            self.behind = held if held is not None else self.behind + len(data)
            if self.behind > self.lag_limit:
                return False
        self.send(data, eager)
        return True

    def send(self, data: bytes, eager: bool = False) -> None:
        """Send bytes to the client, counted and recorded."""
        self.bytes_out += len(data)
        self.client.send(data, eager)
        if self.on_output is not None:
            self.on_output(data)


# Bytes read from a VM at a time (Twisted's default is 64 KiB): a flooding
# VM costs half the reads and frames. A stalled writer holds at most its
# transport's 64 KiB pause threshold plus one read before the VM is paused.
VM_READ_SIZE = 128 * 1024

# VM reads shorter than this (interactive output, not a flood) are
# acknowledged at once (_VMProtocol.dataReceived).
QUICK_ACK_BELOW = 4096


class _VMProtocol(Protocol):
    def __init__(self, console: "Console"):
        self._console = console

    def connectionMade(self) -> None:
        self.transport.bufferSize = VM_READ_SIZE
        # Keystrokes go to the VM as they come, a few bytes at a time. With
        # Nagle's algorithm a small write waits while the last is unacknowledged,
        # and a VM that also sends (echo, output) acknowledges late (delayed
        # ACK): on loopback, 56 of 60 keystrokes a millisecond apart waited
        # up to 41 ms. The client side is set the same (autobahn's tcpNoDelay).
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):  # not TCP (a test's transport)
            pass

    def dataReceived(self, data: bytes) -> None:
        self._console.from_vm(data)
        if len(data) < QUICK_ACK_BELOW:
            # QEMU's serial socket has Nagle's algorithm on (libvirt sets no
            # nodelay): while a small write of the VM is unacknowledged, its
            # next ones wait, and this end, which sends keystrokes, delays
            # its ACKs up to 40 ms. Acknowledged at once (after the bytes
            # went on to the clients), a guest's output comes as it is
            # written (docs/performance.md).
            quick_ack(self.transport)

    def connectionLost(self, reason) -> None:
        console, self._console = self._console, None  # the console holds this protocol: no cycle left behind
        console.vm_lost(reason)


class _VMFactory(Factory):
    """Builds the one protocol of a console's VM connection, and lets go of the console then.

    A factory that kept the console would make a cycle (console, protocol,
    factory, console) that only the garbage collector frees; with the
    protocol's own let-go (``_VMProtocol.connectionLost``), reference
    counting frees a VM connection's objects when it closes.
    """

    noisy = False

    def __init__(self, console: "Console"):
        self._console = console

    def buildProtocol(self, addr) -> _VMProtocol:
        protocol, self._console = _VMProtocol(self._console), None
        protocol.factory = self
        return protocol


@define(eq=False)
class Console:
    """One VM serial port as this node serves it: a VM connection shared by its attachments."""

    name: str
    scrollback: Scrollback
    _attachments: dict = field(factory=dict)
    _writer: Optional[Attachment] = None
    _vm: Optional[_VMProtocol] = None
    _lost: bool = False
    _log: ClassVar[Logger] = Logger()

    async def connect(self, endpoint, where: str) -> None:
        """Connect to the VM's serial port (once, for every attachment)."""
        try:
            self._vm = await endpoint.connect(_VMFactory(self))
        except (ConnectError, DNSLookupError, TimeoutError, OSError) as e:
            if _errno(e) in (errno.EMFILE, errno.ENFILE):
                raise NodeFull("the console proxy is at its open-file limit and takes no more sessions now; "
                               "try again later") from e
            raise VMUnreachable(f"cannot reach the VM serial port at {where}: {_reason(e)}") from e

    @property
    def connected(self) -> bool:
        return self._vm is not None and not self._lost

    @property
    def idle(self) -> bool:
        """Nobody is attached."""
        return not self._attachments

    def attach(self, attachment: Attachment) -> None:
        """Join a session: replay the scrollback, then live output; a writer drives the VM."""
        transport = attachment.client.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()  # an HTTP channel that handed over its transport
        if attachment.writer:
            self._demote_writer()
            self._writer = attachment
            transport.registerProducer(_Throttle(self._vm.transport), True)
            self._vm.transport.registerProducer(_Throttle(transport), True)
        else:
            transport.registerProducer(_Lag(attachment), True)
        self._attachments[attachment.id] = attachment
        backlog = self.scrollback.contents()
        if backlog:
            attachment.send(backlog)
        transport.resumeProducing()

    def _demote_writer(self) -> None:
        """A writer kicked on another node may still be closing here: it writes no more."""
        old, self._writer = self._writer, None
        if old is None:
            return
        old.writer = False
        if getattr(old.client.transport, "producer", None) is not None:
            old.client.transport.unregisterProducer()
        self._vm.transport.unregisterProducer()
        self._vm.transport.resumeProducing()

    def detach(self, attachment: Attachment) -> bool:
        """Leave; True when nobody is attached any more (the caller then closes or keeps the VM connection)."""
        if self._attachments.pop(attachment.id, None) is None:
            return not self._attachments
        if attachment is self._writer and self._vm is not None and self._vm.transport is not None:
            self._demote_writer()
        return not self._attachments

    def close(self) -> None:
        self._lost = True
        if self._vm is not None and self._vm.transport is not None:
            close_now(self._vm.transport)  # vm_lost runs before this returns, and finds _lost set

    def from_vm(self, data: bytes) -> None:
        self.scrollback.append(data)
        eager = len(self._attachments) == 1  # see IConsoleClient.send
        for attachment in list(self._attachments.values()):
            if not attachment.deliver(data, eager):
                attachment.client.close(CloseCode.TOO_SLOW, f"read-only session fell more than {attachment.lag_limit} bytes behind the VM's output; reconnect")

    def from_client(self, attachment: Attachment, *data: bytes) -> None:
        """Bytes from a client, in one or more pieces: to the VM, in one write, if it is the writer."""
        if attachment is not self._writer:
            if not attachment.told_read_only:
                attachment.told_read_only = True
                attachment.client.send(READ_ONLY_NOTICE)
            return
        if self.connected:
            attachment.bytes_in += sum(map(len, data))
            send_now(self._vm.transport, data)
            if attachment.on_input is not None:
                attachment.on_input(b"".join(data))  # one piece: that piece itself, not a copy

    def vm_lost(self, reason) -> None:
        if self._lost:
            return
        self._lost = True
        for attachment in list(self._attachments.values()):
            attachment.client.close(CloseCode.VM_CLOSED, "the VM closed its serial port")


def _errno(error: Exception) -> Optional[int]:
    """The errno behind a failed connection: Twisted's ``osError`` (a number, or text), or an OSError's."""
    code = getattr(error, "osError", None)
    return code if isinstance(code, int) else getattr(error, "errno", None)


def _reason(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return "connection timed out"
    code = getattr(error, "osError", None)
    if isinstance(code, int):
        return os.strerror(code)  # "Connection refused", not "111"
    text = code or error
    return str(text).strip().rstrip(".") or type(error).__name__
