"""Fake VM serial ports for the benchmark: one asyncio process, four modes, one port each.

- echo:   writes back what it reads.
- stream: writes ``--stream-bytes`` bytes as fast as the peer takes them, then idles.
- sink:   reads and counts; writes ``OK`` once it has read ``--sink-bytes``.
- flood:  writes without end (at most ``--flood-seconds`` per connection).

Each port listens on 0.0.0.0 bound to the loopback device (``SO_BINDTODEVICE
lo``), so that every address of 127.0.0.0/8 reaches it and nothing from
outside does; where that option is refused, non-loopback peers are dropped
at accept. Many consoles can so share one port, each at its own 127.x.y.z.

Prints one JSON line ``{"echo": PORT, ...}`` when listening; exits when its
standard input closes (the harness went away) or after ``--max-seconds``.
"""

import argparse
import asyncio
import ipaddress
import json
import os
import resource
import socket
import sys

__all__ = ["main"]

CHUNK = 256 * 1024
_PATTERN = (bytes(range(32, 127)) * (CHUNK // 95 + 1))[:CHUNK]
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class _Loopback(asyncio.Protocol):
    """Drops peers that are not on 127.0.0.0/8 (a fallback for SO_BINDTODEVICE)."""

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer is None or ipaddress.ip_address(peer[0]) not in _LOOPBACK:
            transport.abort()


class Echo(_Loopback):
    def data_received(self, data):
        self.transport.write(data)


class Sink(_Loopback):
    def __init__(self, goal: int):
        self._goal = goal
        self._count = 0

    def data_received(self, data):
        before, self._count = self._count, self._count + len(data)
        if before < self._goal <= self._count:
            self.transport.write(b"OK")


class Stream(_Loopback):
    """Writes ``total`` bytes (None: until ``seconds`` pass), pausing when the peer's buffer is full."""

    def __init__(self, total, seconds: float):
        self._left = total
        self._seconds = seconds
        self._paused = False
        self._deadline = None

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=4 * CHUNK, low=CHUNK)
        self._deadline = asyncio.get_running_loop().time() + self._seconds
        self._pump()

    def pause_writing(self):
        self._paused = True

    def resume_writing(self):
        self._paused = False
        self._pump()

    def _pump(self):
        loop = asyncio.get_running_loop()
        for _ in range(64):  # a bounded burst, then let the loop breathe
            if self._paused or self.transport.is_closing() or self._left == 0 or loop.time() > self._deadline:
                return
            size = CHUNK if self._left is None else min(CHUNK, self._left)
            self.transport.write(_PATTERN[:size])
            if self._left is not None:
                self._left -= size
        loop.call_soon(self._pump)

    def data_received(self, data):
        pass


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    except OSError:
        pass  # _Loopback drops other peers
    sock.bind(("0.0.0.0", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _raise_file_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(args) -> None:
    loop = asyncio.get_running_loop()
    factories = {
        "echo": Echo,
        "sink": lambda: Sink(args.sink_bytes),
        "stream": lambda: Stream(args.stream_bytes, args.flood_seconds),
        "flood": lambda: Stream(None, args.flood_seconds),
    }
    ports = {}
    for name, factory in factories.items():
        server = await loop.create_server(factory, sock=_listener(0), backlog=4096)
        ports[name] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    await asyncio.wait_for(_stdin_closed(loop), args.max_seconds)


async def _stdin_closed(loop) -> None:
    """Returns when standard input reaches its end: the harness is gone."""
    closed = loop.create_future()
    fd = sys.stdin.fileno()

    def readable():
        if not os.read(fd, 4096) and not closed.done():
            closed.set_result(None)

    loop.add_reader(fd, readable)
    await closed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-bytes", type=int, default=256 << 20)
    parser.add_argument("--sink-bytes", type=int, default=256 << 20)
    parser.add_argument("--flood-seconds", type=float, default=120.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--files", type=int, default=65536, help="open-file limit to ask for")
    args = parser.parse_args(argv)
    _raise_file_limit(args.files)
    try:
        asyncio.run(_serve(args))
    except (asyncio.TimeoutError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
