"""Console sessions end to end on loopback: one writer and its spectators, kicks,
scrollback, dead, idle and slow clients, recordings.

A real node (``build_service``) listens on 127.0.0.1:0 with a fresh sqlite
database; Twisted TCP servers stand in for VM serial ports; treq talks to the
API and autobahn clients open the consoles (see :mod:`tests.integration.helpers`).
"""

import glob
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from serialproxy.bridge import READ_ONLY_NOTICE
from serialproxy.errors import CloseCode

from .helpers import (
    EchoVM,
    FloodVM,
    IntegrationTestCase,
    open_console,
    pattern,
    start_node,
    start_vm,
    wait_until,
)

MIB = 1024 * 1024
IDLE_WARNING = b"[serialproxy: no input for"


def read_only(url: str) -> str:
    """The spectator URL of a console URL."""
    return url + "&mode=read"


def peer_of(client) -> str:
    """How the proxy names a client: its address as the proxy sees it."""
    address = client.transport.getHost()
    return f"{address.host}:{address.port}"


def session_of(node, client):
    """The node's session of ``client`` (matched by the client's address)."""
    matches = [s for s in node.sessions() if s.peer == peer_of(client)]
    assert len(matches) == 1, (peer_of(client), [s.peer for s in node.sessions()])
    return matches[0]


async def open_all(case, urls) -> list:
    """Open consoles for ``urls`` all at once."""
    return await gatherResults([Deferred.fromCoroutine(open_console(case, url)) for url in urls], consumeErrors=True)


async def eventually(probe, what: str, timeout: float = 5.0, interval: float = 0.05):
    """Await ``probe()`` until it returns something true (and return that); fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    for _ in range(int(timeout / interval) + 2):
        result = await probe()
        if result:
            return result
        if reactor.seconds() >= deadline:
            break
        await deferLater(reactor, interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class LoggingEchoVM(EchoVM):
    """Echoes, and keeps everything it read."""

    def __init__(self):
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data
        super().dataReceived(data)


class GreetingEchoVM(EchoVM):
    """Writes ``greeting`` as soon as the proxy connects, then echoes."""

    def __init__(self, greeting: bytes):
        self.greeting = greeting

    def connectionMade(self):
        self.transport.write(self.greeting)


class SplitCharacterVM(EchoVM):
    """Greets with a character cut in two: its first byte now, the rest with the first echo."""

    greeting = "login: caf\u00e9".encode("utf-8")[:-1]
    rest = "\u00e9".encode("utf-8")[1:] + b"\r\n"

    def __init__(self):
        self.finished = False

    def connectionMade(self):
        self.transport.write(self.greeting)

    def dataReceived(self, data):
        if not self.finished:
            self.finished = True
            data = self.rest + data
        self.transport.write(data)


def read_cast(path: str):
    """``(header, events)`` of an asciicast v2 file, checking its shape."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    header = json.loads(lines[0])
    events = [json.loads(line) for line in lines[1:]]
    for event in events:
        assert isinstance(event, list) and len(event) == 3, event
        assert isinstance(event[0], (int, float)) and event[1] in ("o", "i") and isinstance(event[2], str), event
    times = [event[0] for event in events]
    assert times == sorted(times) and all(t >= 0 for t in times), times
    return header, events


def texts(events, kind: str) -> str:
    return "".join(text for _t, k, text in events if k == kind)


class WriterAndSpectatorsTests(IntegrationTestCase):
    async def _console_with_spectators(self, spectators: int = 3):
        node = await start_node(self)
        vm = await start_vm(self, LoggingEchoVM)
        server, url = await node.console_for(vm)
        clients = await open_all(self, [url] + [read_only(url)] * spectators)
        await wait_until(lambda: len(node.sessions()) == spectators + 1, "every session to attach")
        return node, vm, server, clients[0], clients[1:]

    async def test_everyone_sees_the_writers_echo_over_one_vm_connection(self):
        """A writer and three spectators attaching at once share one VM connection, and all see the echo."""
        node, vm, _server, writer, spectators = await self._console_with_spectators()
        self.assertEqual(sorted(s.mode for s in node.sessions()), ["read", "read", "read", "write"])
        await writer.echo(b"uname -a\r\n")
        for spectator in spectators:
            await spectator.wait_for_bytes(10)
            self.assertEqual(bytes(spectator.received), b"uname -a\r\n")
        self.assertEqual(len(vm.connections), 1, "one VM connection for the console")
        self.assertEqual(bytes(vm.connections[0].received), b"uname -a\r\n")

    async def test_spectator_input_dropped_and_told_once(self):
        """What a spectator types never reaches the VM, and it alone is told so, once."""
        _node, vm, _server, writer, spectators = await self._console_with_spectators()
        typist, others = spectators[0], spectators[1:]
        await writer.echo(b"one ")
        typist.send(b"rm -rf /\r")
        typist.send_text(b"reboot\r")
        await typist.barrier()
        await writer.echo(b"two")
        for spectator in spectators:
            await spectator.wait_for_bytes(len(b"one two") + (len(READ_ONLY_NOTICE) if spectator is typist else 0))
        self.assertEqual(bytes(typist.received), b"one " + READ_ONLY_NOTICE + b"two")
        for other in others:
            self.assertEqual(bytes(other.received), b"one two")
        self.assertEqual(bytes(vm.connections[0].received), b"one two")
        self.assertEqual(len(vm.connections), 1)

    async def test_second_writer_refused_spectators_allowed(self):
        """While a writer holds the console a second writer is closed with 4009; spectators still attach."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        server, url = await node.console_for(vm)
        writer = await open_console(self, url)
        await writer.echo(b"mine")
        member = await node.make_key("tenant-a")
        second = await open_console(self, await node.console_url(member, server) + "&mode=write")
        code, reason = await second.closed()
        self.assertEqual(code, CloseCode.CONSOLE_BUSY)
        self.assertIn(peer_of(writer), reason)
        spectator = await open_console(self, read_only(url))
        await wait_until(lambda: len(node.sessions()) == 2, "the spectator to attach")
        await writer.echo(b" still")
        await spectator.wait_for_bytes(len(b"mine still"))
        self.assertEqual(bytes(spectator.received), b"mine still", "the scrollback, then live output")
        self.assertIsNone(spectator.code)
        self.assertEqual(len(vm.connections), 1)

    async def test_unknown_mode_refused(self):
        """A mode other than write or read is closed with 4000 and a reason naming both."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url + "&mode=admin")
        code, reason = await client.closed()
        self.assertEqual(code, CloseCode.BAD_REQUEST)
        self.assertIn("mode=read", reason)
        self.assertEqual(vm.connections, [])


class KickTests(IntegrationTestCase):
    async def setUp(self):
        super().setUp()
        self.node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        self.server, self.url = await self.node.console_for(vm)
        self.owner = await self.node.make_key("tenant-a")
        self.writer = await open_console(self, self.url)
        self.spectator = await open_console(self, read_only(self.url))
        await wait_until(lambda: len(self.node.sessions()) == 2, "both sessions to attach")
        await self.writer.echo(b"abc")
        await self.spectator.wait_for_bytes(3)

    async def listed(self, key=None) -> list:
        status, body = await self.node.call("GET", f"/v3/servers/{self.server}/serial-sessions", key or self.owner)
        self.assertEqual(status, 200, body)
        return body["serial_sessions"]

    async def test_list_shows_modes_peers_and_bytes(self):
        """The owner's list shows each session's mode, peer and bytes each way; the admin's shows them with the server."""
        sessions = {s["mode"]: s for s in await self.listed()}
        self.assertEqual(set(sessions), {"write", "read"})
        writer, spectator = sessions["write"], sessions["read"]
        self.assertEqual((writer["peer"], writer["bytes_in"], writer["bytes_out"]), (peer_of(self.writer), 3, 3))
        self.assertEqual((spectator["peer"], spectator["bytes_in"], spectator["bytes_out"]), (peer_of(self.spectator), 0, 3))
        for session in sessions.values():
            self.assertEqual((session["port"], session["tenant_id"]), (0, "tenant-a"))
        admin = await self.node.make_key("ops", admin=True)
        status, body = await self.node.call("GET", "/v3/serial-sessions", admin)
        self.assertEqual(status, 200, body)
        self.assertEqual({(s["id"], s["server_id"]) for s in body["serial_sessions"]},
                         {(s["id"], self.server) for s in sessions.values()})
        status, _body = await self.node.call("GET", "/v3/serial-sessions", self.owner)
        self.assertEqual(status, 403)

    async def test_kick_closes_with_reason_and_frees_the_lock_at_once(self):
        """A kick answers 204, closes the session with 4010 and the reason, and a new writer attaches at once."""
        kicked_id = session_of(self.node, self.writer).id
        status, _body = await self.node.call("DELETE", f"/v3/servers/{self.server}/serial-sessions/{kicked_id}",
                                             self.owner, {"reason": "maintenance"})
        self.assertEqual(status, 204)
        fresh = await open_console(self, self.url)
        await fresh.echo(b"mine now")
        code, reason = await self.writer.closed()
        self.assertEqual(code, CloseCode.KICKED)
        self.assertRegex(reason, r"^kicked by .*tenant-a.*: maintenance$")
        await self.spectator.wait_for_bytes(len(b"abcmine now"))
        self.assertEqual(bytes(self.spectator.received), b"abcmine now")

        async def kicked_gone():
            sessions = await self.listed()
            return sessions if kicked_id not in {s["id"] for s in sessions} else None

        sessions = await eventually(kicked_gone, "the kicked session to leave the list")
        self.assertEqual(sorted((s["mode"], s["peer"]) for s in sessions),
                         sorted([("write", peer_of(fresh)), ("read", peer_of(self.spectator))]))
        self.assertIsNone(fresh.code)
        self.assertIsNone(self.spectator.code)

    async def test_kick_a_spectator(self):
        """A spectator can be kicked too; the writer stays."""
        kicked_id = session_of(self.node, self.spectator).id
        status, _body = await self.node.call("DELETE", f"/v3/servers/{self.server}/serial-sessions/{kicked_id}", self.owner)
        self.assertEqual(status, 204)
        code, reason = await self.spectator.closed()
        self.assertEqual(code, CloseCode.KICKED)
        self.assertRegex(reason, r"^kicked by .*: no reason given$")
        await self.writer.echo(b"still here")

    async def test_other_tenant_gets_404(self):
        """A member of another tenant gets 404 listing or kicking, and the session stays."""
        stranger = await self.node.make_key("tenant-b")
        session_id = session_of(self.node, self.writer).id
        status, body = await self.node.call("GET", f"/v3/servers/{self.server}/serial-sessions", stranger)
        self.assertEqual(status, 404, body)
        status, body = await self.node.call("DELETE", f"/v3/servers/{self.server}/serial-sessions/{session_id}",
                                            stranger, {"reason": "mine now"})
        self.assertEqual(status, 404, body)
        await self.writer.echo(b"untouched")
        self.assertEqual(len(await self.listed()), 2)

    async def test_unknown_session_is_404(self):
        """Kicking a session id that is not live on the server answers 404."""
        status, body = await self.node.call(
            "DELETE", f"/v3/servers/{self.server}/serial-sessions/00000000-0000-4000-8000-000000000000", self.owner)
        self.assertEqual(status, 404, body)
        self.assertEqual(len(await self.listed()), 2)


class ScrollbackTests(IntegrationTestCase):
    async def test_newcomer_gets_the_last_scrollback_bytes_first(self):
        """A session attaching later gets the last scrollback_bytes of the VM's output, then live output."""
        node = await start_node(self, **{"scrollback-bytes": "1024"})
        greeting = bytes(range(256)) * 20 + b"login: "
        vm = await start_vm(self, lambda: GreetingEchoVM(greeting))
        _server, url = await node.console_for(vm)
        writer = await open_console(self, url)
        await writer.wait_for_bytes(len(greeting))
        self.assertEqual(bytes(writer.received), greeting)
        spectator = await open_console(self, read_only(url))
        await spectator.wait_for_bytes(1024)
        self.assertEqual(bytes(spectator.received), greeting[-1024:])
        await writer.echo(b"root\r\n")
        await spectator.wait_for_bytes(1024 + 6)
        self.assertEqual(bytes(spectator.received), greeting[-1024:] + b"root\r\n")
        self.assertEqual(len(vm.connections), 1)


class LingerTests(IntegrationTestCase):
    async def test_reconnect_finds_the_console_as_it_was(self):
        """A writer that reconnects within console_linger gets the same VM connection and the scrollback."""
        node = await start_node(self, **{"console-linger": "30"})
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        first = await open_console(self, url)
        await first.echo(b"before the reload\r\n")
        await first.close()
        await wait_until(lambda: not node.sessions(), "the first session to go")
        self.assertFalse(vm.connections[0].lost, "the VM connection lingers")
        second = await open_console(self, url)
        await second.wait_for_bytes(19)
        self.assertEqual(bytes(second.received), b"before the reload\r\n")
        await second.echo(b"after")
        self.assertEqual(len(vm.connections), 1)

    async def test_closed_at_once_without_linger(self):
        """With console_linger 0 the VM connection closes when the last session leaves."""
        node = await start_node(self, **{"console-linger": "0"})
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        await client.echo(b"x")
        await client.close()
        await wait_until(lambda: vm.connections[0].lost, "the VM side to close")


class DeadClientTests(IntegrationTestCase):
    async def test_frozen_writer_dropped_by_pings(self):
        """A writer that stops reading never answers pings: it is dropped, and a new writer attaches."""
        node = await start_node(self, **{"ping-interval": "1", "ping-timeout": "1"})
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        frozen, spectator = await open_all(self, [url, read_only(url)])
        await wait_until(lambda: len(node.sessions()) == 2, "both sessions to attach")
        await frozen.echo(b"last words")
        live_side = session_of(node, spectator).client
        frozen.transport.pauseProducing()
        await wait_until(lambda: len(node.sessions()) == 1, "the proxy to drop the frozen writer", timeout=6)
        self.assertEqual(node.sessions()[0].mode, "read")
        fresh = await open_console(self, url)
        await fresh.echo(b"mine now")
        await wait_until(lambda: live_side.autoPingPendingSeq >= 2, "the spectator to answer a ping", timeout=4)
        self.assertIsNone(spectator.code, "a client that answers pings stays")
        frozen.transport.resumeProducing()
        code, _reason = await frozen.closed()
        self.assertEqual(code, 1006, "dropped without a close handshake")

    async def test_idle_writer_warned_then_closed(self):
        """A writer silent for idle_timeout is warned, then closed with 4008; typing restarts the count; spectators stay."""
        node = await start_node(self, **{"idle-timeout": "2"})
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        writer, spectator = await open_all(self, [url, read_only(url)])
        await wait_until(lambda: IDLE_WARNING in writer.received, "the idle warning", timeout=4)
        await writer.echo(b"x")
        typed = reactor.seconds()
        code, reason = await writer.closed(timeout=5)
        self.assertEqual(code, CloseCode.IDLE_TIMEOUT)
        self.assertIn("idle", reason)
        self.assertGreaterEqual(reactor.seconds() - typed, 1.9, "typing restarted the idle count")
        self.assertEqual(writer.received.count(IDLE_WARNING), 2)
        self.assertNotIn(IDLE_WARNING, spectator.received)
        self.assertIsNone(spectator.code)
        fresh = await open_console(self, url)
        await fresh.echo(b"back")


class SlowSpectatorTests(IntegrationTestCase):
    async def test_slow_spectator_closed_others_keep_up(self):
        """A spectator that stops reading is closed with 4011 while the writer and another spectator keep receiving."""
        node = await start_node(self, **{"spectator-lag-bytes": "262144"})
        vm = await start_vm(self, FloodVM)
        _server, url = await node.console_for(vm)
        writer = await open_console(self, url)
        flood = await vm.connected()
        slow = await open_console(self, read_only(url), keep=False)
        slow.transport.pauseProducing()
        fast = await open_console(self, read_only(url), keep=False)
        await wait_until(lambda: len(node.sessions()) == 3, "every session to attach")
        slow_side = session_of(node, slow).client

        await wait_until(lambda: slow_side.localCloseCode is not None, "the proxy to close the slow spectator", timeout=5)
        self.assertEqual(slow_side.localCloseCode, CloseCode.TOO_SLOW)
        slow.transport.resumeProducing()
        code, reason = await slow.closed()
        self.assertEqual(code, CloseCode.TOO_SLOW)
        self.assertIn("behind", reason)

        writer_mark, fast_mark = writer.count, fast.count
        await writer.wait_for_bytes(writer_mark + 4 * MIB)
        await fast.wait_for_bytes(fast_mark + 4 * MIB)
        flood.stop()
        await writer.wait_for_bytes(flood.sent, timeout=20)
        self.assertEqual(writer.count, flood.sent)
        self.assertTrue(writer.received == pattern(flood.sent), "the writer's stream arrives intact")
        self.assertIsNone(writer.code)
        self.assertIsNone(fast.code)
        self.assertEqual([s.mode for s in node.sessions()], ["write", "read"])


class RecordingTests(IntegrationTestCase):
    async def _recorded_node(self):
        directory = os.path.abspath(self.mktemp())
        node = await start_node(self, record="true", **{"record-dir": directory})
        vm = await start_vm(self, SplitCharacterVM)
        server, url = await node.console_for(vm)
        return node, directory, server, url

    def cast_of(self, directory: str, server: str, session_id: str) -> str:
        paths = glob.glob(os.path.join(directory, f"*{session_id}*.cast"))
        self.assertEqual(len(paths), 1, os.listdir(directory))
        self.assertRegex(os.path.basename(paths[0]), rf"^{server}-0-{session_id}-\d{{8}}T\d{{6}}Z\.cast$")
        return paths[0]

    async def _type(self, writer, chunks):
        expected = len(writer.received) + sum(map(len, chunks)) + len(SplitCharacterVM.rest)
        for chunk in chunks:
            writer.send(chunk)
        await writer.wait_for_bytes(expected)

    async def test_writer_session_recorded_as_asciicast(self):
        """A writer's recording is asciicast v2 whose output is exactly what it received and input what it sent."""
        node, directory, server, url = await self._recorded_node()
        writer = await open_console(self, url)
        await writer.wait_for_bytes(len(SplitCharacterVM.greeting))
        session_id = session_of(node, writer).id
        typed = ["ls \u2713".encode("utf-8")[:-1], "\u2713".encode("utf-8")[-1:] + b"\r"]
        await self._type(writer, typed)
        await writer.close()
        await node.stop()  # the recorder writes and closes every file before it stops

        header, events = read_cast(self.cast_of(directory, server, session_id))
        self.assertEqual(header["version"], 2)
        self.assertTrue(all(isinstance(header[k], int) and header[k] > 0 for k in ("width", "height")), header)
        self.assertEqual(texts(events, "o"), bytes(writer.received).decode("utf-8"))
        self.assertEqual(texts(events, "o"), "login: caf\u00e9\r\nls \u2713\r")
        self.assertEqual(texts(events, "i"), "ls \u2713\r")

    async def test_recording_starts_with_the_scrollback(self):
        """A writer attaching after a spectator is recorded from the scrollback it was shown."""
        node, directory, server, url = await self._recorded_node()
        spectator = await open_console(self, read_only(url))
        await spectator.wait_for_bytes(len(SplitCharacterVM.greeting))
        writer = await open_console(self, url)
        await writer.wait_for_bytes(len(SplitCharacterVM.greeting))
        ids = {session_of(node, c).id: c for c in (spectator, writer)}
        await self._type(writer, [b"id\r"])
        await spectator.wait_for_bytes(len(writer.received))
        await writer.close()
        await spectator.close()
        await node.stop()

        for session_id, client in ids.items():
            _header, events = read_cast(self.cast_of(directory, server, session_id))
            self.assertEqual(texts(events, "o"), bytes(client.received).decode("utf-8"), session_id)
        self.assertEqual(bytes(writer.received), bytes(spectator.received))
