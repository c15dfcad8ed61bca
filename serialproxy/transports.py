"""Twisted's TCP transports, used closer to the kernel on the byte path (see docs/performance.md).

``send_now`` writes straight to the kernel when nothing is queued,
``close_now`` closes at once when nothing is queued, ``held_bytes`` reads
what a transport holds unsent, ``quick_ack`` acknowledges at once what a
connection received, ``ClientTransport`` reads client
connections 512 KiB at a time, and ``VMEndpoint`` connects to a VM without
waiting a reactor turn when the kernel has already made the connection.
Each keeps Twisted's order, flow control and error handling, and any
transport that is not plain TCP (TLS, a test's) takes Twisted's usual way.
"""

import errno
import os
import socket
from typing import Optional

from attrs import frozen
from twisted.internet import error, main, tcp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, connectionDone
from zope.interface import implementer

__all__ = ["CLIENT_READ_SIZE", "ClientTransport", "VMEndpoint", "close_now", "held_bytes", "quick_ack", "send_now"]


# Bytes read from a client connection at a time (see ClientTransport).
CLIENT_READ_SIZE = 512 * 1024


class ClientTransport(tcp.Server):
    """Twisted's TCP server transport, reading up to CLIENT_READ_SIZE at a time (Twisted: 64 KiB).

    A client that types into a console at full speed sends 64 KiB frames; read
    64 KiB at a time, each frame took two reads and two writes to the VM.
    Read 512 KiB at a time, the frames of a read go to the VM in one write
    (``ClientFrames``): the proxy's CPU per MiB from client to VM fell by a
    third to a half (docs/performance.md). Twisted's ``bufferSize`` is both its
    read size and the write buffer's pause threshold, which bounds what a
    client that stops reading costs; so the read size is this class's own
    and the threshold stays Twisted's. The listener uses this class for
    every connection (``tap``); a read's buffer lives only until the read
    is handled.
    """

    def doRead(self):
        try:
            data = self.socket.recv(CLIENT_READ_SIZE)
        except OSError as e:
            return None if e.args[0] == errno.EWOULDBLOCK else main.CONNECTION_LOST
        return self._dataReceived(data)  # Twisted's: the end of the connection, or the protocol's dataReceived


_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK)


class _VMTransport(tcp.Server):
    """The transport of a VM connection the kernel made within ``connect()`` (``VMEndpoint``).

    Twisted's transport for a connected TCP socket, whichever end began the
    connection: ``tcp.Server`` is what Twisted's own ``adoptStreamConnection``
    makes of one. Reading, writing, flow control and closing are Twisted's;
    the factory is started and stopped around the connection, as Twisted's
    connector does.
    """

    def __init__(self, skt, protocol, peer: tuple, factory, reactor):
        self._factory = factory
        super().__init__(skt, protocol, peer, None, peer[1], reactor)
        host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        self.repstr = f"<{type(protocol).__name__} to the VM at {host}:{peer[1]}>"

    def connectionLost(self, reason):
        try:
            super().connectionLost(reason)
        finally:
            self._factory.doStop()


class _VMClient(tcp.Client):
    """Twisted's TCP client transport, for a VM connection still in progress after ``VMEndpoint`` asked twice.

    It takes the socket ``VMEndpoint`` began the connection on, so the VM
    sees one attempt; from there it is Twisted's way: it watches the socket,
    and its connector times the wait out. Only a VM farther away than this
    host gets here, so its reactor turns cost nothing that counts.
    """

    def __init__(self, skt, *args):
        self._socket = skt
        super().__init__(*args)

    def createInternetSocket(self):
        return self._socket

    def _connectDone(self):
        super()._connectDone()
        if self.connected:
            self.connector.factory.made(self.protocol)


class _VMConnector(tcp.Connector):
    """Twisted's connector, its client transport on the socket ``VMEndpoint`` began the connection on."""

    def __init__(self, skt, *args):
        self._socket = skt
        super().__init__(*args)

    def _makeTransport(self):
        return _VMClient(self._socket, self.host, self.port, self.bindAddress, self, self.reactor)


class _Dial(ClientFactory):
    """A connection attempt of ``VMEndpoint`` that waits: the caller's protocol, and a Deferred of it once connected."""

    noisy = False

    def __init__(self, factory):
        self._factory = factory
        self._connector = None
        self.connected = Deferred(self._cancel)

    def _cancel(self, deferred):
        deferred.errback(error.ConnectingCancelledError(self._connector.getDestination()))
        self._connector.stopConnecting()

    def startedConnecting(self, connector):
        self._connector = connector

    def doStart(self):
        self._factory.doStart()

    def doStop(self):
        self._factory.doStop()

    def buildProtocol(self, addr):
        try:
            protocol = self._factory.buildProtocol(addr)
            if protocol is None:
                raise error.NoProtocol()
        except BaseException:
            self.connected.errback()
            return None  # Twisted closes the connection
        return protocol

    def made(self, protocol):
        """The connection is made and the protocol has it (``_VMClient``)."""
        if not self.connected.called:
            self.connected.callback(protocol)

    def clientConnectionFailed(self, connector, reason):
        if not self.connected.called:
            self.connected.errback(reason)


@implementer(IStreamClientEndpoint)
@frozen
class VMEndpoint:
    """A TCP client endpoint for a VM's serial port at an IP address (v4 or v6, no name).

    Twisted's ``TCP4ClientEndpoint`` and ``TCP6ClientEndpoint`` but for the
    connection itself. A non-blocking ``connect()`` to a port on this host
    (loopback, a local bridge) says EINPROGRESS, yet the kernel has done the
    whole handshake within the call: asked again at once, ``connect()`` says
    the connection is made. Twisted's client would wait a reactor turn to
    make its first attempt and another to hear that the socket is writable,
    through its connector and client transport. So this asks twice, and a
    connection made by then gets the plain transport of a connected socket
    (``_VMTransport``), the caller's protocol on it, at once: no turn, no
    timer, two system calls fewer than a client transport asking twice (the
    socket is made non-blocking as it is made), and about 3 % less of the
    proxy's CPU a new console session (docs/performance.md). A VM farther
    away is still connecting then: Twisted's client takes over the same
    socket and waits its way, with its timeout and cancelling. Failures
    are Twisted's errors.
    """

    reactor: object
    host: str
    port: int
    timeout: float = 30

    def connect(self, protocolFactory) -> Deferred:
        if not isinstance(self.reactor, PosixReactorBase):
            # _VMTransport and _VMClient refine the TCP transports of
            # Twisted's reactors on POSIX; any other reactor (a test's) makes
            # its own connections.
            endpoint = TCP6ClientEndpoint if isIPv6Address(self.host) else TCP4ClientEndpoint
            return endpoint(self.reactor, self.host, self.port, timeout=self.timeout).connect(protocolFactory)
        six = isIPv6Address(self.host)
        try:
            # The address as Twisted's client makes it (for v6 with its scope), and the socket as Twisted makes it.
            where = (socket.getaddrinfo(self.host, self.port, socket.AF_INET6, 0, 0, socket.AI_NUMERICHOST)[0][4]
                     if six else (self.host, self.port))
            skt = socket.socket(socket.AF_INET6 if six else socket.AF_INET,
                                socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as e:
            return fail(error.ConnectBindError(e.errno, e.strerror))
        try:
            result = skt.connect_ex(where)
            if result in _IN_PROGRESS:
                result = skt.connect_ex(where)
        except OSError as e:
            result = e.errno or errno.EINVAL
        if result in (0, errno.EISCONN):
            return self._made(skt, where, protocolFactory)
        if result in _IN_PROGRESS:
            dial = _Dial(protocolFactory)
            try:
                _VMConnector(skt, self.host, self.port, dial, self.timeout, None, self.reactor).connect()
            except BaseException:
                skt.close()
                return fail()
            return dial.connected
        skt.close()
        return fail(error.getConnectError((result, os.strerror(result))))

    def _made(self, skt, where: tuple, protocolFactory) -> Deferred:
        """The caller's protocol on a connection the kernel has made."""
        try:
            protocolFactory.doStart()
            try:
                protocol = protocolFactory.buildProtocol((IPv6Address if len(where) == 4 else IPv4Address)("TCP", *where[:2]))
                if protocol is None:
                    raise error.NoProtocol()
            except BaseException:
                protocolFactory.doStop()
                raise
        except BaseException:
            skt.close()
            return fail()
        protocol.makeConnection(_VMTransport(skt, protocol, where, protocolFactory, self.reactor))
        return succeed(protocol)


_PLAIN_TCP = frozenset((tcp.Server, tcp.Client, ClientTransport, _VMClient, _VMTransport))


def _plain_tcp(transport) -> bool:
    """A plain (not TLS) TCP transport of Twisted's, whose socket and buffers send_now and held_bytes use."""
    return type(transport) in _PLAIN_TCP and not transport.TLS


def _open_and_idle(transport) -> bool:
    """A plain TCP transport (as ``_plain_tcp``), open (not closing, nor half-closing), that holds nothing unsent.

    What ``send_now`` may write past, and ``close_now`` close at once.
    """
    return (type(transport) in _PLAIN_TCP and not transport.TLS and transport.connected and not transport.disconnecting
            and not transport._writeDisconnecting and not transport._writeDisconnected
            and not transport._tempDataBuffer and transport.offset == len(transport.dataBuffer))


def send_now(transport, chunks: tuple) -> None:
    """``transport.writeSequence(chunks)``, but sent at once when nothing is queued.

    Twisted queues every write and sends it on the reactor's next turn, after
    asking epoll to watch the socket (and then to stop): per console write,
    a reactor turn and two system calls, and a copy joining the chunks. When
    a plain TCP transport has nothing queued, this hands the chunks straight
    to the kernel in one ``sendmsg`` instead, gathering them without a copy;
    what the kernel does not take (or any error) goes through the transport
    as usual, behind nothing, so order, flow control (its producer is paused
    as before when the rest is queued) and error handling stay Twisted's. TLS
    and any other transport always take the usual way.
    See docs/performance.md.
    """
    if _open_and_idle(transport):
        try:
            sent = transport.socket.sendmsg(chunks)
        except OSError:  # full (EAGAIN), or broken: Twisted's own write finds out and reports it
            sent = 0
        rest = _after(chunks, sent)
        if rest:
            transport.writeSequence(rest)
        return
    transport.writeSequence(chunks)


def _after(chunks: tuple, sent: int) -> list:
    """What of ``chunks`` is left once ``sent`` bytes went: whole chunks kept, only a cut one copied."""
    for i, chunk in enumerate(chunks):
        if sent < len(chunk):
            return [chunk[sent:] if sent else chunk, *chunks[i + 1:]]
        sent -= len(chunk)
    return []


def close_now(transport) -> None:
    """``transport.loseConnection()``, but closed at once when nothing is queued.

    Twisted closes on a later reactor turn, once it has written what it holds.
    With nothing held, that turn only asks epoll to watch the socket for
    writing (and then to stop), sends zero bytes and closes: per connection,
    three system calls and the reactor's dispatch, twice a console session
    (client and VM). A plain TCP transport that holds nothing, is not closing
    already and has no paused producer (Twisted would resume it rather than
    close) is closed here instead, the way Twisted closes a connection whose
    write side is already shut: ``connectionLost`` runs (reading stops, the
    socket is closed, the protocol is told) before this returns. Anything else takes
    Twisted's way. See docs/performance.md.
    """
    if _open_and_idle(transport) and (transport.producer is None
                                      or (transport.streamingProducer and not transport.producerPaused)):
        # Twisted's connectionLost stops reading and writing, closes the
        # socket, then tells the protocol; connectionDone is its shared
        # "closed cleanly" Failure.
        transport.connectionLost(connectionDone)
        return
    transport.loseConnection()


def held_bytes(transport) -> Optional[int]:
    """Bytes a plain TCP transport holds unsent (what send_now reads); None for other transports."""
    if _plain_tcp(transport):
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return None


def quick_ack(transport) -> None:
    """Have the kernel acknowledge at once what a plain TCP connection receives (TCP_QUICKACK), for now.

    The kernel delays acknowledgements (up to 40 ms) on a connection that
    also sends, and goes back to doing so by itself; so this is asked again
    after each read that wants it (``bridge._VMProtocol``). Anything else
    (TLS, a test's transport) is left as it is.
    """
    skt = getattr(transport, "socket", None) if _plain_tcp(transport) else None  # None too once closed
    if skt is not None:
        try:
            skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
