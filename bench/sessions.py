"""Load-client sessions: a websocket or a raw TCP connection, as a cheap asyncio Protocol.

Websocket sessions drive websockets' sans-I/O ``ClientProtocol`` from a
plain ``asyncio.Protocol`` (no task per connection), so that one client
process can hold tens of thousands of them. Both kinds count the payload
bytes they receive and let a caller wait (bounded) for a count; both can
stop reading (``stall``) to play a client that stopped reading.
"""

import asyncio
import socket
import time
from typing import Optional

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["Session", "WebSocketSession", "TCPSession", "open_session", "SessionError"]

_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
CLOSE_WAIT = 5.0  # seconds a closing session waits for the server to drop the connection


class SessionError(Exception):
    """A session failed to open, echo or close; ``code`` is a websocket close code when there was one."""

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.code = code


def _retrieved(future) -> None:
    if not future.cancelled():
        future.exception()


class Session(asyncio.Protocol):
    """What both kinds share: byte counts, waiting for them, flow control, loss."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.transport = None
        self.made_at = None  # time.perf_counter() when the TCP connection was made (before anything is sent)
        self.received = 0
        self.close_code = None
        self.close_reason = ""
        self.opened = loop.create_future()
        self.opened.add_done_callback(_retrieved)  # a failure nobody awaited any more is not an error to log
        self.lost = loop.create_future()
        self._goal = None
        self._writable = None

    # waiting for bytes

    async def wait_received(self, count: int, timeout: float) -> None:
        """Wait until ``count`` payload bytes arrived in total."""
        if self.received >= count:
            return
        self._goal = (count, asyncio.get_running_loop().create_future())
        waiter = asyncio.ensure_future(self._goal[1])
        done, _ = await asyncio.wait((waiter, self.lost), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        self._goal = None
        if self.received >= count:
            return
        waiter.cancel()
        if self.lost.done():
            raise SessionError(f"closed after {self.received} of {count} bytes: {self.close_code} {self.close_reason}", self.close_code)
        raise SessionError(f"timed out after {self.received} of {count} bytes")

    async def echo(self, payload: bytes, timeout: float) -> float:
        """Send ``payload``, wait for it to come back; the round trip in seconds."""
        loop = asyncio.get_running_loop()
        goal = self.received + len(payload)
        start = loop.time()
        self.send(payload)
        await self.wait_received(goal, timeout)
        return loop.time() - start

    def _count(self, size: int) -> None:
        self.received += size
        if self._goal is not None and self.received >= self._goal[0] and not self._goal[1].done():
            self._goal[1].set_result(None)

    # flow control

    def pause_writing(self):
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def drain(self, timeout: float) -> None:
        if self._writable is not None:
            await asyncio.wait_for(asyncio.shield(self._writable), timeout)

    def stall(self) -> None:
        """Stop reading: the kernel buffers fill and the sender must hold back."""
        self.transport.pause_reading()

    def unstall(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(SessionError(f"connection lost while opening: {exc}", self.close_code))
        if not self.lost.done():
            self.lost.set_result(None)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class TCPSession(Session):
    """A raw TCP connection (the baseline): payload is every byte."""

    def connection_made(self, transport):
        self.made_at = time.perf_counter()
        self.transport = transport
        self.opened.set_result(None)

    def data_received(self, data):
        self._count(len(data))

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    async def close(self, timeout: float = CLOSE_WAIT) -> None:
        self.transport.close()
        await asyncio.wait_for(asyncio.shield(self.lost), timeout)


class WebSocketSession(Session):
    """A websocket client: binary frames out, payload of data frames counted in."""

    def __init__(self, url: str, subprotocol: Optional[str] = None):
        super().__init__()
        self._ws = ClientProtocol(parse_uri(url), subprotocols=[subprotocol] if subprotocol else None, max_size=None)
        self._close_timer = None

    def connection_made(self, transport):
        self.made_at = time.perf_counter()
        self.transport = transport
        self._ws.send_request(self._ws.connect())
        self._flush()

    def data_received(self, data):
        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Response):
                self._handshake_done()
            elif event.opcode in _DATA:
                self._count(len(event.data))
            elif event.opcode is Opcode.CLOSE:
                self.close_code, self.close_reason = self._ws.close_code, self._ws.close_reason or ""
        self._flush()

    def eof_received(self):
        self._ws.receive_eof()
        self._flush()
        return False

    def _handshake_done(self) -> None:
        if self.opened.done():
            return
        if self._ws.handshake_exc is not None:
            self.opened.set_exception(SessionError(f"handshake refused: {self._ws.handshake_exc}"))
        else:
            self.opened.set_result(None)

    def _flush(self) -> None:
        for chunk in self._ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self._ws.close_expected() and self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_WAIT, self.transport.abort)

    def send(self, data: bytes) -> None:
        self._ws.send_binary(data)
        self._flush()

    async def close(self, timeout: float = CLOSE_WAIT) -> None:
        """The closing handshake: our close frame, the server's, then the server drops TCP."""
        if not self.lost.done() and self._ws.state is State.OPEN:
            self._ws.send_close(1000)
            self._flush()
        await asyncio.wait_for(asyncio.shield(self.lost), timeout)

    def connection_lost(self, exc):
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.close_code is None and self._ws.close_rcvd is not None:
            self.close_code = self._ws.close_rcvd.code
        super().connection_lost(exc)


async def open_session(target, timeout: float) -> Session:
    """Connect to ``target`` (a ws:// URL, or a (host, port) pair for raw TCP); wait until open.

    ``target`` may also be a (url, subprotocol) pair for websockets.
    """
    loop = asyncio.get_running_loop()
    if isinstance(target, tuple) and isinstance(target[1], int):
        host, port, factory = target[0], target[1], TCPSession
    else:
        url, subprotocol = target if isinstance(target, tuple) else (target, None)
        uri = parse_uri(url)
        host, port, factory = uri.host, uri.port, (lambda: WebSocketSession(url, subprotocol))
    transport, session = await asyncio.wait_for(loop.create_connection(factory, host, port), timeout)
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(asyncio.shield(session.opened), timeout)
    except BaseException:
        transport.abort()
        raise
    return session
