"""A lean load client: new sessions one after another over blocking sockets.

The suite's load client (sessions.py: asyncio with websockets' sans-I/O
client) spends about a millisecond of its own per new session, more than
the proxy under test: one after another, the client's turns are most of what
is timed, and every proxy looks alike. This client does the least a client
can: a blocking socket, the upgrade request and the frames built by hand
(one masked byte, one masked close), no event loop. What it times is then
mostly the proxy's (and the kernel's) part, as a lean harness (a compiled
tool, a thread per client) would see it.

Each session is the same as the suite's: connect; upgrade (the 101 read);
one byte sent and echoed (bytes counted, as the suite's client counts them);
the closing handshake until the server drops TCP. Raw TCP (``tcp://`` targets)
sends the byte and closes with a plain TCP close, waiting for the peer's.
The targets are rotated over. Every socket operation times out after
``--timeout`` seconds; the run stops after ``--seconds``.

Prints one JSON object: sessions, seconds, per_second, client_cpu_us (this
process's CPU per session), phases_us (medians: connect, upgrade, first_byte,
close), errors (by kind). Usage: leanclient.py --count N [--seconds S] TARGET...
with TARGET ws://HOST:PORT/PATH?QUERY or tcp://HOST:PORT.
"""

import argparse
import base64
import collections
import json
import os
import socket
import statistics
import sys
import time
from urllib.parse import urlsplit

PHASES = ("connect", "upgrade", "first_byte", "close")
_MASK = b"\x5a\x17\xc3\x2e"
_BYTE = b"!"
_FRAME = bytes((0x82, 0x80 | len(_BYTE))) + _MASK + bytes(b ^ _MASK[i % 4] for i, b in enumerate(_BYTE))
_CLOSE_PAYLOAD = (1000).to_bytes(2, "big")
_CLOSE = bytes((0x88, 0x80 | len(_CLOSE_PAYLOAD))) + _MASK + bytes(b ^ _MASK[i % 4] for i, b in enumerate(_CLOSE_PAYLOAD))


class _Frames:
    """The server's frames on a blocking socket: payload bytes counted, the close seen."""

    def __init__(self, sock: socket.socket, buffered: bytes = b""):
        self._sock = sock
        self._buffer = buffered
        self.received = 0
        self.closed = False

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise EOFError("the server dropped the connection")
        self._buffer += chunk

    def _parse(self) -> bool:
        """Take one whole frame off the buffer, if there is one."""
        if len(self._buffer) < 2:
            return False
        length, at = self._buffer[1] & 0x7F, 2
        if length >= 126:
            size = 2 if length == 126 else 8
            if len(self._buffer) < 2 + size:
                return False
            length, at = int.from_bytes(self._buffer[2:2 + size], "big"), 2 + size
        if len(self._buffer) < at + length:
            return False
        opcode = self._buffer[0] & 0x0F
        if opcode in (1, 2, 0):
            self.received += length
        elif opcode == 8:
            self.closed = True
        self._buffer = self._buffer[at + length:]
        return True

    def wait_received(self, goal: int) -> None:
        while self.received < goal:
            if not self._parse():
                self._fill()

    def wait_close(self) -> None:
        while not self.closed:
            if not self._parse():
                self._fill()


def _upgrade(sock: socket.socket, url) -> bytes:
    """Send the upgrade request, read the 101; whatever came after its head."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode("ascii"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("the server dropped the connection before its answer")
        head += chunk
        if len(head) > 65536:
            raise ValueError("an answer head over 64 KiB")
    head, rest = head.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        raise ValueError(f"refused: {status}")
    return rest


def _drain(sock: socket.socket) -> None:
    """Read until the peer drops TCP."""
    while sock.recv(65536):
        pass


def session(url, timeout: float) -> tuple:
    """One new session; the seconds of each of its phases."""
    marks = [time.perf_counter()]
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        marks.append(time.perf_counter())
        if url.scheme == "tcp":
            marks.append(marks[-1])
            sock.sendall(_BYTE)
            got = b""
            while len(got) < len(_BYTE):
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError("the peer dropped the connection")
                got += chunk
            marks.append(time.perf_counter())
            sock.shutdown(socket.SHUT_WR)
            _drain(sock)
        else:
            frames = _Frames(sock, _upgrade(sock, url))
            marks.append(time.perf_counter())
            goal = frames.received + len(_BYTE)
            sock.sendall(_FRAME)
            frames.wait_received(goal)
            marks.append(time.perf_counter())
            sock.sendall(_CLOSE)
            frames.wait_close()
            _drain(sock)
        marks.append(time.perf_counter())
    finally:
        sock.close()
    return tuple(b - a for a, b in zip(marks, marks[1:]))


def _why(e: BaseException) -> str:
    return type(e).__name__ if not str(e) else f"{type(e).__name__}: {str(e)[:80]}"


def run(targets: list, count: int, seconds: float, timeout: float) -> dict:
    urls = [urlsplit(t) for t in targets]
    phases, errors = [], collections.Counter()
    deadline = time.monotonic() + seconds
    cpu, start = time.process_time(), time.perf_counter()
    for index in range(count):
        if time.monotonic() >= deadline:
            break
        try:
            phases.append(session(urls[index % len(urls)], timeout))
        except (OSError, EOFError, ValueError) as e:
            errors[_why(e)] += 1
    elapsed = time.perf_counter() - start
    done = len(phases)
    return {"sessions": done, "seconds": elapsed, "per_second": done / elapsed if elapsed else 0.0,
            "client_cpu_us": 1e6 * (time.process_time() - cpu) / max(1, done + sum(errors.values())),
            "phases_us": {name: 1e6 * statistics.median(p[i] for p in phases) if phases else None
                          for i, name in enumerate(PHASES)},
            "errors": dict(errors)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, required=True, help="sessions, at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="stop after this long (default 30)")
    parser.add_argument("--timeout", type=float, default=10.0, help="each socket operation, at most (default 10)")
    parser.add_argument("targets", nargs="+", metavar="TARGET")
    args = parser.parse_args(argv)
    json.dump(run(args.targets, args.count, args.seconds, args.timeout), sys.stdout)
    print()


if __name__ == "__main__":
    main()
