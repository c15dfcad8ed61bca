"""ClientFrames (the console's own reader of plain binary and text client frames and the close frame) against frames built by the RFC and autobahn; each connection's ping interval; autobahn's connection set-up and tear-down."""

import struct

from hypothesis import given, settings, strategies as st
from autobahn.twisted import websocket as autobahn_twisted
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from txaio._common import _BatchedTimer  # autobahn's timer buckets, given a test clock (console_reads)

from serialproxy.frames import ClientFrames
from serialproxy.testing import TCPStringTransport
from serialproxy.websocket import MAX_FRAME, ConsoleFactory, ConsoleProtocol


def frame(payload: bytes, mask: bytes = b"\x01\x02\x03\x04", first: int = 0x82, masked: bool = True,
          long_form: bool = False) -> bytes:
    """A client frame as RFC 6455 5.2 lays it out (``long_form``: a 64-bit length even when shorter would do)."""
    length = len(payload)
    bit = 0x80 if masked else 0
    if long_form:
        head = struct.pack("!BBQ", first, bit | 127, length)
    elif length < 126:
        head = bytes((first, bit | length))
    elif length < 65536:
        head = struct.pack("!BBH", first, bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, bit | 127, length)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read(chunks, max_payload: int = MAX_FRAME, text: bool = False):
    """Feed chunks; (what was delivered, what was left to autobahn, idle at the end)."""
    delivered = []
    frames = ClientFrames(lambda *pieces: delivered.extend(pieces), max_payload, text=text)
    rest = b""
    for chunk in chunks:
        if rest:
            rest += chunk  # once it has given up, the rest is autobahn's
            continue
        rest = frames.feed(chunk)
    return b"".join(delivered), rest, frames.idle


def split(data: bytes, cuts) -> list:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def console_reads(stream: bytes, cuts, ours: bool, head: bytes = None) -> tuple:
    """A console protocol given the upgrade ``head`` (default _HEAD), then ``stream`` cut at ``cuts``.

    ``ours``: as it runs, with ClientFrames; else autobahn reads every
    frame. Returns the protocol and what it wrote after its 101. autobahn's
    timers (a close it began waits for the reply) run on a clock of their
    own, not on the global reactor, which a later test would find unclean.
    """
    factory = ConsoleFactory(sessions=None, ping_interval=0)
    clock = Clock()
    factory._batched_timer = _BatchedTimer(200.0, 1000, seconds_provider=clock.seconds, delayed_call_creator=clock.callLater)
    protocol = factory.buildProtocol(None)
    protocol.onOpen = lambda: None
    if not ours:
        protocol._frames = None  # autobahn reads every frame
    transport = TCPStringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(_HEAD if head is None else head)
    transport.clear()
    for chunk in split(stream, cuts):
        protocol.dataReceived(chunk)
    return protocol, transport.value()


_PAYLOADS = st.lists(st.binary(max_size=300) | st.sampled_from([bytes(range(256)) * 200, b"x" * 125, b"y" * 126]),
                     max_size=6)


class ClientFramesTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_PAYLOADS, st.lists(st.integers(0, 80000), max_size=8), st.binary(min_size=4, max_size=4))
    def test_payloads_arrive_whole_however_reads_cut_them(self, payloads, cuts, mask):
        """Any run of plain binary frames, cut anywhere into reads, delivers the payloads in order and nothing else."""
        stream = b"".join(frame(p, mask) for p in payloads)
        delivered, rest, idle = read(split(stream, cuts))
        self.assertEqual(delivered, b"".join(payloads))
        self.assertEqual(rest, b"")
        self.assertTrue(idle)

    @settings(max_examples=200, deadline=None)
    @given(_PAYLOADS, st.sampled_from([
        frame(b"", first=0x89),                      # ping
        frame(b"\x03\xe8", first=0x88),              # close
        frame(b"text", first=0x81),                  # text
        frame(b"part", first=0x02),                  # binary, not final
        frame(b"more", first=0x80),                  # continuation
        frame(b"rsv", first=0xC2),                   # an extension bit
        frame(b"plain", masked=False),               # unmasked: a protocol error for autobahn to report
        frame(b"short", long_form=True),             # a length not in its shortest form
        frame(b"z" * (MAX_FRAME + 1)),               # too big
    ]), _PAYLOADS, st.lists(st.integers(0, 80000), max_size=8))
    def test_anything_else_goes_to_autobahn_from_its_first_byte(self, before, other, after, cuts):
        """At the first frame it does not read, it stops: what came before is delivered, the rest returned intact."""
        head = b"".join(frame(p) for p in before)
        tail = other + b"".join(frame(p) for p in after)
        delivered, rest, _ = read(split(head + tail, cuts))
        self.assertEqual(delivered, b"".join(before))
        self.assertEqual(rest, tail)

    def test_one_delivery_per_read(self):
        """The payloads of every frame one read carries are handed on together (one write to the VM)."""
        calls = []
        frames = ClientFrames(lambda *pieces: calls.append(pieces), MAX_FRAME)
        stream = frame(b"ab") + frame(b"cd") + frame(b"ef") + frame(b"gh")  # 8 bytes each
        for read in (stream[:10], stream[10:24], stream[24:]):  # a frame and a header's start; that frame, one more; the last
            self.assertEqual(frames.feed(read), b"")
        self.assertEqual(calls, [(b"ab",), (b"cd", b"ef"), (b"gh",)])

    def test_idle_only_between_frames(self):
        """Mid-frame or mid-header it is not idle (autobahn must not read then)."""
        whole = frame(b"abcdef")
        frames = ClientFrames(lambda data: None, MAX_FRAME)
        for cut, idle in ((1, False), (7, False), (len(whole), True)):
            frames = ClientFrames(lambda data: None, MAX_FRAME)
            self.assertEqual(frames.feed(whole[:cut]), b"")
            self.assertEqual(frames.idle, idle)


_CODES = st.none() | st.sampled_from([1000, 1001, 1003, 1004, 1005, 1006, 1011, 1015, 2999, 3000, 4000, 4999, 5000, 999, 0]) \
    | st.integers(0, 65535)
_REASONS = st.binary(max_size=123) | st.text(max_size=40).map(lambda text: text.encode("utf-8")[:123])


def close_frame(code, reason: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    return frame(b"" if code is None else struct.pack("!H", code) + reason, mask, first=0x88)


_TEXTS = st.lists(st.text(max_size=100).map(lambda t: t.encode("utf-8")) | st.sampled_from(["é" * 30000, "x" * 126]).map(str.encode),
                  max_size=6)


class TextFrameTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=6), _TEXTS)
    def test_whole_text_frames_are_read_with_binary_ones(self, binaries, texts):
        """With ``text``: final text frames whole in a read, valid UTF-8, are delivered in order with binary ones."""
        payloads = [p for _, p in binaries] + texts
        stream = b"".join(frame(p) for p in [p for _, p in binaries]) + b"".join(frame(t, first=0x81) for t in texts)
        delivered, rest, idle = read([stream], text=True)
        self.assertEqual((delivered, rest, idle), (b"".join(payloads), b"", True))
        self.assertEqual(read([frame(b"abc", first=0x81)])[1], frame(b"abc", first=0x81), "without text: autobahn's")

    def test_a_text_frame_cut_across_reads_is_autobahns(self):
        """Cut anywhere after its header: from its first byte to autobahn (holding it back would copy it at each read)."""
        before, text = frame(b"ab"), frame("é€".encode(), first=0x81)
        for cut in range(6, len(text)):
            delivered, rest, _ = read([before + text[:cut], text[cut:]], text=True)
            self.assertEqual((delivered, rest), (b"ab", text), cut)
        delivered, rest, _ = read([before + text[:3], text[3:]], text=True)  # only its header cut: read whole next time
        self.assertEqual((delivered, rest), (b"ab" + "é€".encode(), b""))

    def test_text_that_is_not_utf8_is_autobahns(self):
        """Invalid UTF-8 (a lone continuation byte, a surrogate, an overlong form, a cut character) goes to autobahn, which closes with 1007."""
        for bad in (b"\x80", b"\xed\xa0\x80", b"\xc0\xaf", "é".encode()[:1], b"ok\xff"):
            stream = frame(b"ab") + frame(bad, first=0x81) + frame(b"cd")
            delivered, rest, _ = read([stream], text=True)
            self.assertEqual((delivered, rest), (b"ab", frame(bad, first=0x81) + frame(b"cd")), bad)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([0x82, 0x81]), st.binary(max_size=60) | st.text(max_size=30).map(str.encode)),
                    max_size=5), st.lists(st.integers(0, 400), max_size=4), st.sampled_from([None, "binary", "base64"]))
    def test_a_console_reads_text_as_autobahn_does(self, frames, cuts, subprotocol):
        """Any binary and text frames (UTF-8 or not), cut anywhere, under any subprotocol: the same input, reply, state and close code as when autobahn reads every frame."""
        stream = b"".join(frame(payload, first=first) for first, payload in frames)
        head = _HEAD if subprotocol is None else _HEAD.replace(b"\r\n\r\n", f"\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n".encode())
        outcomes = []
        for ours in (True, False):
            protocol, written = console_reads(stream, cuts, ours, head)
            outcomes.append((written, protocol.state, protocol.localCloseCode, b"".join(protocol._pending or [])))
        self.assertEqual(outcomes[0], outcomes[1])


class CloseFrameTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_PAYLOADS, _CODES, _REASONS, st.binary(max_size=20), st.binary(min_size=4, max_size=4))
    def test_a_whole_close_frame_goes_to_on_close(self, before, code, reason, after, mask):
        """After the payloads before it, a close frame in one read is handed on as autobahn reads it (code, raw reason, None when absent); what follows is returned."""
        delivered, closes = [], []
        frames = ClientFrames(lambda *pieces: delivered.extend(pieces), MAX_FRAME,
                              lambda code, reason: closes.append((code, reason, b"".join(delivered))))
        rest = frames.feed(b"".join(frame(p, mask) for p in before) + close_frame(code, reason, mask) + after)
        expected_reason = reason if code is not None and reason else None
        self.assertEqual(closes, [(code, expected_reason, b"".join(before))])
        self.assertEqual(rest, after)

    def test_a_close_frame_not_whole_in_one_read_is_autobahns(self):
        """Cut after its first two bytes, a one-byte payload, or unmasked: from its first byte to autobahn. Cut within its first two bytes: read whole with the next read."""
        closes = []
        whole = close_frame(1000, b"bye")
        for cut in range(1, len(whole)):
            frames = ClientFrames(lambda *pieces: None, MAX_FRAME, lambda *close: closes.append(close))
            first = frames.feed(whole[:cut])
            if cut < 2:
                self.assertEqual((first, frames.feed(whole[cut:]), closes.pop()), (b"", b"", (1000, b"bye")))
            else:
                self.assertEqual(first, whole[:cut])
        for odd in (frame(b"\x03", first=0x88), frame(b"\x03\xe8", first=0x88, masked=False)):
            frames = ClientFrames(lambda *pieces: None, MAX_FRAME, lambda *close: closes.append(close))
            self.assertEqual(frames.feed(odd), odd)
        self.assertEqual(closes, [])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=200), max_size=3), _CODES, _REASONS, st.binary(max_size=12),
           st.lists(st.integers(0, 700), max_size=3))
    def test_a_console_closes_as_autobahn_closes(self, before, code, reason, after, cuts):
        """Any close frame after any input, cut anywhere: the same reply, state, close code and reason, and input, as when autobahn reads every frame."""
        stream = b"".join(frame(p) for p in before) + close_frame(code, reason) + after
        outcomes = []
        for ours in (True, False):
            protocol, written = console_reads(stream, cuts, ours)
            outcomes.append((written, protocol.state, protocol.wasClean, protocol.remoteCloseCode,
                             protocol.remoteCloseReason, protocol.localCloseCode, b"".join(protocol._pending)))
        self.assertEqual(outcomes[0], outcomes[1])


_HEAD = (b"GET /?token=t HTTP/1.1\r\nHost: 127.0.0.1:6083\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0ODw==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class _Request:
    """What ConsoleProtocol.onConnect reads of autobahn's ConnectionRequest."""

    params = {"token": ["t"]}
    headers = {"host": "127.0.0.1:6083"}
    protocols = []


class PingTests(SynchronousTestCase):
    def test_each_connection_pings_at_an_interval_of_its_own(self):
        """Between three quarters of ping_interval and all of it, so that sessions opened together are not pinged together."""
        factory = ConsoleFactory(sessions=None, ping_interval=20)
        intervals = []
        for _ in range(50):
            protocol = factory.buildProtocol(None)
            protocol.onConnect(_Request())
            intervals.append(protocol.autoPingInterval)
        self.assertTrue(all(15 <= interval <= 20 for interval in intervals), intervals)
        self.assertGreater(len(set(intervals)), 40)
        self.assertEqual(factory.buildProtocol(None).autoPingInterval, 20)  # the configured interval stays as it was
        unpinged = ConsoleFactory(sessions=None, ping_interval=0).buildProtocol(None)
        unpinged.onConnect(_Request())
        self.assertEqual(unpinged.autoPingInterval, 0)


class ConnectionTests(SynchronousTestCase):
    def patch_debug_text(self) -> list:
        """Record every debug text autobahn builds (hltype, hlval), in the modules where it looks them up."""
        built = []
        for module in (autobahn_protocol, autobahn_twisted):
            self.patch(module, "hltype", lambda obj: built.append(obj) or "")
            self.patch(module, "hlval", lambda obj, **kw: built.append(obj) or "")
        return built

    def both(self):
        """A console factory, and one of autobahn's own server protocol with the same options."""
        ours = ConsoleFactory(sessions=None)
        theirs = ConsoleFactory(sessions=None)
        theirs.protocol = type("Plain", (WebSocketServerProtocol,), {})
        return ours, theirs

    def test_set_up_and_tear_down_as_autobahns_without_debug_text(self):
        """A connection made and closed cleanly: autobahn's state, details and the factory's count as its server protocol leaves them, no debug text built."""
        built = self.patch_debug_text()
        seen = []
        for factory in self.both():
            protocol = factory.buildProtocol(None)
            transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
            transport.setTcpNoDelay = lambda enabled: seen.append(enabled)
            protocol.makeConnection(transport)
            if factory.protocol is ConsoleProtocol:
                self.assertIsNone(protocol._transport_details.peer, "made when asked, not on every connection")
            details = protocol.transport_details
            seen.append((protocol.state, factory.countConnections, protocol.peer, details.peer,
                         details.channel_framing, details.channel_type, details.is_server))
            protocol.connectionLost(Failure(ConnectionDone()))
            seen.append((protocol.state, factory.countConnections))
            if factory.protocol is ConsoleProtocol:
                self.assertEqual(built, [])
        self.assertTrue(built, "autobahn's own protocol builds its debug text (the patch is where it looks)")
        ours, theirs = seen[:len(seen) // 2], seen[len(seen) // 2:]
        self.assertEqual(ours, theirs)
        self.assertEqual(ours[0], True, "Nagle off, as autobahn sets it")
        self.assertEqual(ours[1][:4], (ConsoleProtocol.STATE_CONNECTING, 1, "tcp4:192.0.2.7:40000", "tcp4:192.0.2.7:40000"))
        self.assertEqual(ours[2], (ConsoleProtocol.STATE_CLOSED, 0))

    def test_a_transport_without_nagle_is_taken_as_autobahn_takes_it(self):
        """A transport with no setTcpNoDelay (not TCP) is connected all the same."""
        protocol = ConsoleFactory(sessions=None).buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertEqual(protocol.state, protocol.STATE_CONNECTING)

    def test_any_other_end_takes_autobahns_own_way(self):
        """A connection lost or aborted goes through autobahn's connectionLost (which logs TLS errors), with the same end state."""
        calls = []
        autobahns = WebSocketServerProtocol.connectionLost
        self.patch(WebSocketServerProtocol, "connectionLost", lambda self, why: calls.append(why) or autobahns(self, why))
        for reason in (ConnectionLost("reset"), ConnectionAborted()):
            ends = []
            for factory in self.both():
                protocol = factory.buildProtocol(None)
                protocol.makeConnection(StringTransport())
                del calls[:]
                protocol.connectionLost(Failure(reason))
                ends.append((protocol.state, factory.countConnections, protocol.wasClean, len(calls)))
            self.assertEqual(ends[0], ends[1])
            self.assertEqual(ends[0], (ConsoleProtocol.STATE_CLOSED, 0, False, 1))

    def test_autobahns_logger_is_its_own(self):
        """The protocol holds autobahn's own (txaio) logger, so txaio's level settings reach it."""
        protocol = ConsoleFactory(sessions=None).buildProtocol(None)
        self.assertIs(protocol.log, WebSocketServerProtocol.log)
        self.assertIn("log", vars(protocol), "held by the instance, not looked up through the descriptor")
