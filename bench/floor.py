"""The floor: the least a websocket-to-TCP relay on Twisted's reactor can do per new session.

Not a console proxy: no token, no database, no Origin check, no autobahn, no
logging, no flow control; it accepts the upgrade, dials the VM port, relays
final binary frames each way and answers a close. ``bench/run`` measures its
new sessions per second beside serialproxy's, as the ceiling of any design on
this reactor, this Python and this machine. It runs on the reactor loop the
daemon runs on (``serialproxy.polling.lean_poll``: no log context built
around each socket event), so that it stays the ceiling. Prints its port,
then serves until killed. Usage: floor.py VM_PORT
"""

import base64
import hashlib
import struct
import sys

from twisted.internet import endpoints, protocol, reactor
from websockets.speedups import apply_mask

from serialproxy.polling import lean_poll

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _VM(protocol.Protocol):
    def __init__(self, client):
        self.client = client

    def connectionMade(self):
        self.client.vm_ready(self)

    def dataReceived(self, data):
        n = len(data)
        head = bytes((0x82, n)) if n < 126 else struct.pack("!BBH", 0x82, 126, n) if n < 65536 else struct.pack("!BBQ", 0x82, 127, n)
        self.client.transport.writeSequence((head, data))

    def connectionLost(self, reason):
        self.client.transport.loseConnection()


class _Client(protocol.Protocol):
    def __init__(self, vm_port):
        self.vm_port, self.buffer, self.upgraded, self.vm, self.pending = vm_port, b"", False, None, []

    def dataReceived(self, data):
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.upgraded = True
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.vm_port).connect(
                protocol.Factory.forProtocol(lambda: _VM(self))).addErrback(lambda f: self.transport.loseConnection())
        while len(self.buffer) >= 2:
            length, at = self.buffer[1] & 0x7F, 2
            if length >= 126:
                size = 2 if length == 126 else 8
                if len(self.buffer) < 2 + size:
                    return
                length, at = int.from_bytes(self.buffer[2:2 + size], "big"), 2 + size
            if len(self.buffer) < at + 4 + length:
                return
            opcode, payload = self.buffer[0] & 0x0F, apply_mask(self.buffer[at + 4:at + 4 + length], self.buffer[at:at + 4])
            self.buffer = self.buffer[at + 4 + length:]
            if opcode == 8:
                self.transport.write(b"\x88\x02\x03\xe8")
                self.transport.loseConnection()
                return
            if self.vm is None:
                self.pending.append(payload)
            else:
                self.vm.transport.write(payload)

    def vm_ready(self, vm):
        self.vm = vm
        if self.pending:
            vm.transport.writeSequence(self.pending)
            self.pending = []

    def connectionLost(self, reason):
        if self.vm is not None:
            self.vm.transport.loseConnection()


def main():
    lean_poll(reactor)
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(lambda: _Client(int(sys.argv[1]))), interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
