"""The console path end to end on loopback: REST API, websocket, bridge, fake VMs.

A real node (``build_service``) listens on 127.0.0.1:0 with a fresh sqlite
database; Twisted TCP servers stand in for VM serial ports; treq talks to
the API and an autobahn client opens the console.
"""

import base64
import gc
import hashlib
import os
import random
import socket
import sqlite3
import uuid
import weakref

from twisted.internet import reactor

from serialproxy.transports import ClientTransport
from serialproxy.config import load_config
from serialproxy.errors import CloseCode, DatabaseError
from serialproxy.tap import build_service
from serialproxy.tokens import hash_secret

from .helpers import (
    ClientPusher,
    DeafVM,
    EchoVM,
    FloodVM,
    IntegrationTestCase,
    SinkVM,
    SourceVM,
    closed_port,
    open_console,
    pattern,
    start_node,
    start_vm,
    token_of,
    wait_for_stall,
    wait_until,
)

MIB = 1024 * 1024
BIG = 16 * MIB


class EchoTests(IntegrationTestCase):
    async def test_echo_both_ways(self):
        """Bytes sent in binary frames reach the VM, and the VM's bytes come back in binary frames."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        await client.echo(b"hello\r\n")
        await client.echo(bytes(range(256)))
        self.assertEqual(client.texts, [])
        self.assertIsNone(client.code)

    async def test_a_vm_at_a_host_name(self):
        """A serial port registered by host name (localhost) is dialled at the address it resolves to."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        admin = await node.make_key("ops", admin=True)
        member = await node.make_key("tenant-a")
        url = await node.console_url(member, await node.register_server(admin, "tenant-a", vm.port, host="localhost"))
        for _ in range(2):
            client = await open_console(self, url)
            await client.echo(b"by name\r\n")
            await client.close()
        self.assertEqual(len(vm.connections), 2)

    async def test_both_connections_send_small_writes_at_once(self):
        """TCP_NODELAY on the client's and the VM's connection: a keystroke never waits for the last one's ACK (Nagle)."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        await client.echo(b"k")
        session = node.sessions()[0]
        self.assertEqual((session.client.transport.getTcpNoDelay(), session.console._vm.transport.getTcpNoDelay()),
                         (True, True))

    async def test_small_vm_output_is_acknowledged_at_once(self):
        """After a small read from the VM its socket is in quick-ACK mode (the kernel left it, as the proxy sent keystrokes)."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        for key in b"keys":
            await client.echo(bytes([key]))  # each keystroke sent just after the last echo was read: delayed ACKs
        skt = node.sessions()[0].console._vm.transport.socket
        self.assertEqual(skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK), 1)

    async def test_base64_subprotocol(self):
        """A base64 client gets the VM's bytes as base64 text frames; its base64 text frames reach the VM decoded."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url, protocols=["base64"])
        self.assertEqual(client.subprotocol, "base64")
        data = bytes(range(256)) * 4
        client.send_text(base64.b64encode(data))

        def decoded():
            return b"".join(base64.b64decode(text, validate=True) for text in client.texts)

        await wait_until(lambda: len(decoded()) >= len(data), "the base64 echo")
        self.assertEqual(decoded(), data)
        self.assertEqual(client.count, 0, "no binary frames on the base64 subprotocol")
        self.assertEqual(node.sessions()[0].attachment.bytes_in, len(data))

    async def test_fragmented_messages(self):
        """Fragmented messages and control frames amid plain frames reach the VM in order: base64 text decoded whole."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        client.send_fragmented([b"one ", b"", b"two ", bytes(range(256))])
        client.send_fragmented([b"three ", b"four"], binary=False)
        expected = b"one two " + bytes(range(256)) + b"three four"
        await wait_until(lambda: len(client.received) >= len(expected), "the fragmented echo")
        self.assertEqual(bytes(client.received), expected)
        client.protocol.beginMessage(isBinary=True)
        client.protocol.sendMessageFrame(b"before the end")
        await wait_until(lambda: client.received.endswith(b"before the end"), "a frame streamed before its message ends")
        client.protocol.endMessage()
        client.send(b"[")
        client.protocol.sendPing(b"between")  # a control frame amid plain ones: read by autobahn, in order
        client.send(b"]")
        await wait_until(lambda: client.received.endswith(b"[]") and client.pongs == [b"between"], "the echo and the pong")
        await client.close()

        client = await open_console(self, url, protocols=["base64"])
        data = bytes(range(256)) * 3
        text = base64.b64encode(data)
        client.send_fragmented([text[:5], text[5:501], text[501:]], binary=False)  # pieces that are not base64 on their own
        await wait_until(lambda: sum(len(base64.b64decode(t)) for t in client.texts) >= len(data), "the base64 echo")
        self.assertEqual(b"".join(base64.b64decode(t) for t in client.texts), data)


class BulkTests(IntegrationTestCase):
    async def test_16_mib_client_to_vm(self):
        """16 MiB sent by the client reach the VM intact and in order, read 512 KiB at a time (ClientTransport)."""
        node = await start_node(self)
        vm = await start_vm(self, SinkVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        await wait_until(lambda: node.sessions(), "the session to attach")
        self.assertIs(type(node.sessions()[0].attachment.client.transport), ClientTransport)
        data = random.Random(6083).randbytes(BIG)
        for offset in range(0, BIG, 64 * 1024):
            client.send(data[offset:offset + 64 * 1024])
        sink = await vm.connected()
        await wait_until(lambda: sink.count >= BIG, f"{BIG} bytes at the VM", timeout=20)
        self.assertEqual(sink.count, BIG)
        self.assertEqual(sink.hash.hexdigest(), hashlib.sha256(data).hexdigest())

    async def test_16_mib_vm_to_client(self):
        """16 MiB written by the VM reach the client intact and in order."""
        node = await start_node(self)
        data = random.Random(6084).randbytes(BIG)
        vm = await start_vm(self, lambda: SourceVM(data))
        _server, url = await node.console_for(vm)
        client = await open_console(self, url, keep=False)
        await client.wait_for_bytes(BIG, timeout=20)
        self.assertEqual(client.count, BIG)
        self.assertEqual(client.hash.hexdigest(), hashlib.sha256(data).hexdigest())


class TLSTests(IntegrationTestCase):
    async def test_wss_console_both_ways(self):
        """With ssl_only the API and the console are https/wss; the console carries bytes both ways over TLS."""
        node = await start_node(self, tls=True)
        vm = await start_vm(self, SinkVM)
        _server, url = await node.console_for(vm)
        self.assertTrue(url.startswith("wss://127.0.0.1:"), url)
        client = await open_console(self, url, trust=node.trust)
        await wait_until(lambda: node.sessions(), "the session to attach")
        tls = node.sessions()[0].attachment.client.transport
        self.assertIs(type(tls.transport), ClientTransport, "TLS runs over the listener's own transport")
        data = random.Random(443).randbytes(4 * MIB)
        for offset in range(0, len(data), 64 * 1024):
            client.send(data[offset:offset + 64 * 1024])
        sink = await vm.connected()
        await wait_until(lambda: sink.count >= len(data), "4 MiB at the VM over TLS", timeout=20)
        self.assertEqual(sink.hash.hexdigest(), hashlib.sha256(data).hexdigest())
        sink.transport.write(b"from the VM")
        await wait_until(lambda: bytes(client.received) == b"from the VM", "the VM's bytes over TLS")
        client.protocol.sendClose(1000)
        code, _reason = await client.closed()
        self.assertEqual(code, 1000)


class FlowControlTests(IntegrationTestCase):
    async def test_slow_client_pauses_the_vm(self):
        """A client that stops reading makes the proxy stop reading the VM; resuming delivers the rest intact."""
        node = await start_node(self)
        vm = await start_vm(self, FloodVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        client.transport.pauseProducing()
        flood = await vm.connected()
        await wait_until(lambda: node.sessions(), "the session to attach")
        bridge = node.sessions()[0].attachment

        accepted = await wait_for_stall(lambda: bridge.bytes_out, "bytes the proxy accepted from the VM")
        self.assertTrue(flood.paused, "the flooding VM's transport paused it")
        self.assertLess(accepted, 64 * MIB, "the proxy holds a bounded amount")
        sent = flood.sent
        await wait_for_stall(lambda: flood.sent, "bytes the VM wrote", still=0.2)
        self.assertEqual(flood.sent, sent, "the VM's writes back up: it stays paused")
        self.assertEqual(bridge.bytes_out, accepted)

        client.transport.resumeProducing()
        await client.wait_for_bytes(accepted + 4 * MIB, timeout=20)
        self.assertGreater(flood.resumes, 0)
        self.assertGreater(bridge.bytes_out, accepted)
        flood.stop()
        await client.wait_for_bytes(flood.sent, timeout=20)
        self.assertEqual(client.count, flood.sent)
        self.assertTrue(client.received == pattern(flood.sent), "the stream arrives intact")

    async def test_vm_output_during_close_handshake(self):
        """VM output arriving while the proxy closes the websocket is dropped quietly, and both sides close."""
        node = await start_node(self)
        vm = await start_vm(self, FloodVM)
        server, url = await node.console_for(vm)
        client = await open_console(self, url, keep=False)
        flood = await vm.connected()
        await client.wait_for_bytes(1 * MIB)
        admin = await node.make_key("ops", admin=True)
        status, _body = await node.call("DELETE", f"/v3/servers/{server}", admin)
        self.assertEqual(status, 204)
        code, _reason = await client.closed()
        self.assertEqual(code, CloseCode.SERVER_GONE)
        await wait_until(lambda: flood.lost and not node.sessions(), "the VM side and the session to go")

    async def test_slow_vm_pauses_the_client(self):
        """A VM that stops reading makes the proxy stop reading the client; the VM then gets it all intact."""
        node = await start_node(self)
        vm = await start_vm(self, DeafVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        deaf = await vm.connected()
        await wait_until(lambda: node.sessions(), "the session to attach")
        bridge = node.sessions()[0].attachment
        pusher = ClientPusher(client)
        pusher.start()

        accepted = await wait_for_stall(lambda: bridge.bytes_in, "bytes the proxy accepted from the client")
        self.assertTrue(pusher.paused, "the client's transport paused the sender")
        self.assertLess(accepted, 64 * MIB, "the proxy holds a bounded amount")

        deaf.start_reading()
        await wait_until(lambda: len(deaf.received) >= accepted + 4 * MIB, "the VM to read what backed up")
        self.assertGreater(pusher.resumes, 0)
        pusher.stop()
        await wait_until(lambda: len(deaf.received) >= pusher.sent, "the VM to read everything sent")
        self.assertEqual(len(deaf.received), pusher.sent)
        self.assertTrue(deaf.received == pattern(pusher.sent), "the stream arrives intact")


class WriterLockTests(IntegrationTestCase):
    async def test_second_writer_refused(self):
        """A second writer is closed with 4009 and a reason naming the holder's address and since when."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        server, url = await node.console_for(vm)
        first = await open_console(self, url)
        await first.echo(b"mine")
        member = await node.make_key("tenant-a")
        second = await open_console(self, await node.console_url(member, server))
        code, reason = await second.closed()
        self.assertEqual(code, CloseCode.CONSOLE_BUSY)
        holder = first.transport.getHost()
        self.assertIn(f"{holder.host}:{holder.port}", reason)
        self.assertIn("since", reason)
        await first.echo(b"still mine")

    async def test_lock_released_on_close(self):
        """Once the writer closes, a new client attaches to the same console."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        server, url = await node.console_for(vm)
        first = await open_console(self, url)
        await first.echo(b"first")
        await first.close()
        self.assertEqual(first.code, CloseCode.NORMAL)
        member = await node.make_key("tenant-a")
        second = await open_console(self, await node.console_url(member, server))
        await second.echo(b"second")
        self.assertIsNone(second.code)


class RefusalTests(IntegrationTestCase):
    async def test_expired_token(self):
        """A token past its expiry is refused with 4002 (one another node minted: this node looks it up)."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        secret = "B" * 43

        def minted_long_ago(cursor, token_hash, like):  # the same binding as ``like``, expired
            return cursor.execute(
                "INSERT INTO console_tokens (token_hash, server_id, port_index, host, port, tenant_id, created, expires, "
                "key_tenant_id) SELECT ?, server_id, port_index, host, port, tenant_id, 0.0, 1.0, key_tenant_id "
                "FROM console_tokens WHERE token_hash = ?", (token_hash, like)).rowcount

        self.assertEqual(await node.database.run(minted_long_ago, hash_secret(secret), hash_secret(token_of(url))), 1)
        client = await open_console(self, url.replace(token_of(url), secret))
        code, reason = await client.closed()
        self.assertEqual(code, CloseCode.TOKEN_EXPIRED)
        self.assertIn("expired", reason)
        self.assertEqual(vm.connections, [])

    async def test_unknown_token(self):
        """A made-up token is refused with 4001."""
        node = await start_node(self)
        client = await open_console(self, f"ws://127.0.0.1:{node.port}/?token={'A' * 43}")
        code, _reason = await client.closed()
        self.assertEqual(code, CloseCode.TOKEN_INVALID)

    async def test_vm_unreachable(self):
        """A console whose VM port does not answer is closed with 4502."""
        node = await start_node(self)
        port = await closed_port(self)
        admin = await node.make_key("ops", admin=True)
        member = await node.make_key("tenant-a")
        server = await node.register_server(admin, "tenant-a", port)
        client = await open_console(self, await node.console_url(member, server))
        code, reason = await client.closed()
        self.assertEqual(code, CloseCode.VM_UNREACHABLE)
        self.assertEqual(reason, f"cannot reach the VM serial port at 127.0.0.1:{port}: Connection refused")
        await wait_until(lambda: not node.sessions(), "the session to go")

    async def test_server_deleted(self):
        """Deleting the server through the API closes its attached session with 4004."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        server, url = await node.console_for(vm)
        client = await open_console(self, url)
        await client.echo(b"here")
        admin = await node.make_key("ops", admin=True)
        status, _body = await node.call("DELETE", f"/v3/servers/{server}", admin)
        self.assertEqual(status, 204)
        code, _reason = await client.closed()
        self.assertEqual(code, CloseCode.SERVER_GONE)
        await wait_until(lambda: all(c.lost for c in vm.connections), "the VM side to close")


class LifecycleTests(IntegrationTestCase):
    async def test_vm_closes_its_port(self):
        """The VM closing its serial port closes the client with 4501 after a full close handshake, freeing the console."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        await client.echo(b"bye")
        proxy_side = node.sessions()[0].client
        (await vm.connected()).transport.loseConnection()
        code, _reason = await client.closed()
        self.assertEqual(code, CloseCode.VM_CLOSED)
        self.assertIsNotNone(proxy_side.remoteCloseCode, "the proxy waited for the client's close reply")
        await wait_until(lambda: not node.sessions(), "the session to go")
        again = await open_console(self, url)
        await again.echo(b"back")

    async def test_stopping_the_node(self):
        """Stopping the node closes attached consoles with 1001 and releases their locks before the database closes."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url)
        await client.echo(b"running")
        await node.stop()
        code, _reason = await client.closed()
        self.assertEqual(code, CloseCode.GOING_AWAY)
        await wait_until(lambda: all(c.lost for c in vm.connections), "the VM side to close")
        with sqlite3.connect(node.path) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM console_locks").fetchone(), (0,))

    async def test_internal_error_while_attaching(self):
        """An unexpected failure while attaching (here the database) closes the console with 1011 and a reason."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        await node.database.run(lambda cursor: cursor.execute("DROP TABLE console_locks"))
        client = await open_console(self, url)
        code, reason = await client.closed(timeout=3)
        self.assertEqual(code, CloseCode.INTERNAL_ERROR)
        self.assertIn("internal error", reason)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)


    async def test_an_ended_session_is_freed_without_the_garbage_collector(self):
        """A closed session's protocol, transports, console and VM connection are freed by reference counting
        alone: no reference cycle is left for the garbage collector (disabled here) to find."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        client = await open_console(self, url)
        await client.echo(b"freed")
        session = node.sessions()[0]
        parts = {"protocol": session.client, "client transport": session.client.transport, "console": session.console,
                 "VM protocol": session.console._vm, "VM transport": session.console._vm.transport}
        alive = {name: weakref.ref(part) for name, part in parts.items()}
        del session, parts
        await client.close()
        await wait_until(lambda: not node.sessions(), "the session to go")
        await wait_until(lambda: all(c.lost for c in vm.connections), "the VM side to close")
        await node.top.sessions.rows.flush()  # the session's open and close, written behind, hold it till then
        self.assertEqual([name for name, ref in alive.items() if ref() is not None], [])

    async def test_first_start_makes_the_state_directory(self):
        """A node starts on a state directory that does not exist yet (a fresh install), and makes it."""
        state = os.path.join(os.path.abspath(self.mktemp()), "state")
        config = load_config(None, {"enabled": "true", "serialproxy-port": "0", "state-dir": state})
        top = build_service(config, reactor)
        top.startService()
        await top.stopService()
        self.assertEqual(sorted(n for n in os.listdir(state) if not n.endswith(("-wal", "-shm"))),
                         ["serialproxy.sqlite", "serialproxy.sqlite.node"])

    async def test_second_node_on_one_sqlite_database_refused(self):
        """A second node on the sqlite database of a running node is refused at start, naming the first."""
        node = await start_node(self)
        config = load_config(None, {"enabled": "true", "serialproxy-port": "0", "database": "sqlite:///" + node.path})
        with self.assertRaises(DatabaseError) as refused:
            build_service(config, reactor)
        self.assertIn(f"is in use by another serialproxy node (pid {os.getpid()}", str(refused.exception))


class OriginTests(IntegrationTestCase):
    async def _attach(self, origin, **flags):
        node = await start_node(self, **flags)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        return node, await open_console(self, url, origin=origin)

    async def test_foreign_origin_refused(self):
        """A browser Origin that is not the Host and not allowed is closed with 4003."""
        _node, client = await self._attach("http://evil.example.com")
        code, reason = await client.closed()
        self.assertEqual(code, CloseCode.ORIGIN_REFUSED)
        self.assertIn("origin", reason)

    async def test_origin_matching_host_accepted(self):
        """An Origin equal to the Host header (with its port) is accepted."""
        node = await start_node(self)
        vm = await start_vm(self, EchoVM)
        _server, url = await node.console_for(vm)
        client = await open_console(self, url, origin=f"http://127.0.0.1:{node.port}")
        await client.echo(b"same origin")
        self.assertIsNone(client.code)

    async def test_allowed_origin_accepted(self):
        """An Origin listed in allowed_origins is accepted."""
        _node, client = await self._attach("https://dash.example.com",
                                           **{"allowed-origins": "https://dash.example.com"})
        await client.echo(b"allowed")
        self.assertIsNone(client.code)


class ApiTests(IntegrationTestCase):
    async def setUp(self):
        super().setUp()
        self.node = await start_node(self)
        admin = await self.node.make_key("ops", admin=True)
        self.key_a = await self.node.make_key("tenant-a")
        # These tests only mint URLs: nothing connects to (or listens on) these ports.
        self.server_a = await self.node.register_server(admin, "tenant-a", 10001)
        self.server_b = await self.node.register_server(admin, "tenant-b", 10002)

    def v2(self, server, tenant="tenant-a"):
        return f"/v2/{tenant}/servers/{server}/get-serial-console"

    def v3(self, server):
        return f"/v3/servers/{server}/get-serial-console"

    def assert_console(self, body):
        self.assertEqual(set(body), {"serial_console"})
        console = body["serial_console"]
        self.assertEqual({k: v for k, v in console.items() if k != "url"}, {"type": "serial", "port": 0})
        self.assertTrue(console["url"].startswith(f"ws://127.0.0.1:{self.node.port}/?token="), console["url"])

    def assert_error(self, answer, expected):
        self.assertEqual(answer[0], expected, answer)
        self.assertEqual(set(answer[1]), {"error"})
        self.assertEqual(answer[1]["error"]["code"], expected)
        self.assertIsInstance(answer[1]["error"]["message"], str)

    async def test_v2_answers_200(self):
        """v2 get-serial-console answers 200 with {"serial_console": {"type", "port", "url"}}."""
        status, body = await self.node.call("POST", self.v2(self.server_a), self.key_a,
                                            {"get_serial_console": {"type": "serial"}})
        self.assertEqual(status, 200)
        self.assert_console(body)

    async def test_v3_answers_202(self):
        """v3 get-serial-console answers 202 with the same body, even without a request body."""
        status, body = await self.node.call("POST", self.v3(self.server_a), self.key_a)
        self.assertEqual(status, 202)
        self.assert_console(body)

    async def test_other_tenants_server_is_404(self):
        """Another tenant's server is 404 from both v2 and v3, as if it did not exist."""
        self.assert_error(await self.node.call("POST", self.v2(self.server_b), self.key_a), 404)
        self.assert_error(await self.node.call("POST", self.v3(self.server_b), self.key_a), 404)

    async def test_unknown_server_is_404(self):
        """A server id that does not exist is 404 from both v2 and v3."""
        unknown = str(uuid.uuid4())
        self.assert_error(await self.node.call("POST", self.v2(unknown), self.key_a), 404)
        self.assert_error(await self.node.call("POST", self.v3(unknown), self.key_a), 404)

    async def test_no_key_is_401(self):
        """A call without X-Auth-Token is 401."""
        self.assert_error(await self.node.call("POST", self.v3(self.server_a)), 401)
        self.assert_error(await self.node.call("POST", self.v2(self.server_a)), 401)

    async def test_bad_key_is_401(self):
        """A call with an unknown API key is 401."""
        self.assert_error(await self.node.call("POST", self.v3(self.server_a), "spk_not-a-key"), 401)
        self.assert_error(await self.node.call("POST", self.v2(self.server_a), "spk_not-a-key"), 401)


class DisabledTests(IntegrationTestCase):
    async def test_disabled_is_400_saying_how_to_enable(self):
        """With enabled=false get-serial-console is 400 and the message says how to enable consoles."""
        node = await start_node(self, enabled="false")
        admin = await node.make_key("ops", admin=True)
        server = await node.register_server(admin, "tenant-a", 10001)
        for path in (f"/v3/servers/{server}/get-serial-console", f"/v2/tenant-a/servers/{server}/get-serial-console"):
            status, body = await node.call("POST", path, admin)
            self.assertEqual(status, 400, body)
            self.assertIn("enabled = true", body["error"]["message"])
