"""Twisted's TCP transports, used closer to the kernel on the byte path (see docs/performance.md).

``send_now`` writes straight to the kernel when nothing is queued,
``close_now`` closes at once when nothing is queued, ``held_bytes`` reads
what a transport holds unsent, and ``ClientTransport`` reads client
connections 512 KiB at a time. Each keeps Twisted's order, flow control and
error handling, and any transport that is not plain TCP (TLS, a test's)
takes Twisted's usual way.
"""

import errno
from typing import Optional

from twisted.internet import main, tcp
from twisted.python.failure import Failure

__all__ = ["CLIENT_READ_SIZE", "ClientTransport", "close_now", "held_bytes", "send_now"]


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


def _plain_tcp(transport) -> bool:
    """A plain (not TLS) TCP transport of Twisted's, whose socket and buffers send_now and held_bytes use."""
    return type(transport) in (tcp.Server, tcp.Client, ClientTransport) and not transport.TLS


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
    if (_plain_tcp(transport) and transport.connected and not transport.disconnecting
            and not transport._writeDisconnected and not transport._tempDataBuffer
            and transport.offset == len(transport.dataBuffer)):
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
    write side is already shut: reading stops and ``connectionLost`` runs,
    the protocol's included, before this returns. Anything else takes
    Twisted's way. See docs/performance.md.
    """
    if (_plain_tcp(transport) and transport.connected and not transport.disconnecting
            and not transport._writeDisconnecting and not transport._writeDisconnected
            and not transport._tempDataBuffer and transport.offset == len(transport.dataBuffer)
            and (transport.producer is None or (transport.streamingProducer and not transport.producerPaused))):
        transport.stopReading()
        transport.stopWriting()
        transport.connectionLost(Failure(main.CONNECTION_DONE))
        return
    transport.loseConnection()


def held_bytes(transport) -> Optional[int]:
    """Bytes a plain TCP transport holds unsent (what send_now reads); None for other transports."""
    if _plain_tcp(transport):
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return None
