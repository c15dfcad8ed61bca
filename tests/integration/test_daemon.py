"""The daemon as an operator runs it: twistd, the .tac, serialproxy-manage, as real processes.

Clients here are independent of the proxy's own stack: urllib for HTTP and
the `websockets` package for the console.
"""

import errno
import os
import select
import signal
import socket
import time
import urllib.request

from twisted.trial.unittest import SynchronousTestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from serialproxy.config import LISTEN_BACKLOG, OPTIONS
from serialproxy.database import current_version

from ..daemon import ROOT, TWISTD, DaemonMixin, start_echo


class DaemonTests(DaemonMixin, SynchronousTestCase):
    def test_help_lists_every_option(self):
        """twistd serialproxy --help lists a flag for every configuration option."""
        result = self.run_command(TWISTD, "serialproxy", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in OPTIONS:
            self.assertIn(f"--{option.flag}=", result.stdout)
        self.assertIn("--config=", result.stdout)

    def test_bad_config_stops_start_with_one_line(self):
        """A bad value stops the start with one line naming the option, the value and what is allowed."""
        with open(self.config, "a") as f:
            f.write("port_range = 20000:10000\n")
        result = self.run_command(TWISTD, "-n", "--pidfile=", "serialproxy", "--config", self.config)
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("serial_console.port_range", lines[0])
        self.assertIn("'20000:10000'", lines[0])
        self.assertIn("LOW:HIGH", lines[0])

    def test_bad_flag_value(self):
        """A bad flag value is refused the same way."""
        result = self.run_command(TWISTD, "-n", "--pidfile=", "serialproxy", "--config", self.config, "--token-ttl=soon")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("serial_console.token_ttl", result.stderr)

    def test_manage_on_fresh_install(self):
        """create-key and db commands work before the daemon ever ran, creating the schema."""
        self.assertFalse(os.path.exists(os.path.join(self.dir, "state")))
        key = self.manage("create-key", "--tenant", "acme", "--admin")
        self.assertRegex(key, r"^spk_[A-Za-z0-9_-]{43}$")
        self.assertEqual(self.manage("db", "version"), str(current_version()))
        listed = self.manage("list-keys")
        self.assertIn("tenant=acme", listed)
        self.assertNotIn(key, listed)

    def test_end_to_end(self):
        """twistd serialproxy serves the API and bridges a websocket console to a TCP port."""
        admin = self.manage("create-key", "--tenant", "ops", "--admin")
        member = self.manage("create-key", "--tenant", "acme")
        process, base = self.start("serialproxy", "--config", self.config)
        api = base.replace("ws://", "http://").rstrip("/")
        echo = start_echo(self)
        code, body = self.http("POST", f"{api}/v3/servers", admin, {"server": {
            "name": "vm1", "tenant_id": "acme", "serial_ports": [{"host": "127.0.0.1", "port": echo}]}})
        self.assertEqual(code, 201, body)
        server = body["server"]["id"]
        code, body = self.http("POST", f"{api}/v2/acme/servers/{server}/get-serial-console", member,
                               {"get_serial_console": {"type": "serial"}})
        self.assertEqual(code, 200, body)
        url = body["serial_console"]["url"]
        self.assertTrue(url.startswith(base + "?token="))
        with connect(url, open_timeout=10) as console:
            console.send(b"hello serial\n")
            self.assertEqual(console.recv(timeout=10), b"hello serial\n")
            with connect(url, open_timeout=10) as second:
                with self.assertRaises(ConnectionClosed) as closed:
                    second.recv(timeout=10)
            self.assertEqual(closed.exception.rcvd.code, 4009)
            self.assertIn("since", closed.exception.rcvd.reason)
        self.stop(process)
        # twistd shuts down cleanly, then re-raises the signal that stopped it.
        self.assertEqual(process.returncode, -signal.SIGTERM)
        self.assertIn("Server Shut Down.", open(process.log).read())

    def test_connections_wait_for_a_busy_daemon(self):
        """Hundreds of clients connecting at once, while the daemon cannot accept, are all let in by the kernel.

        With Twisted's default backlog (50) the kernel dropped the handshakes
        past the fiftieth, and each client waited out SYN retransmits (1 s,
        then 3 s, ...). The daemon is stopped (SIGSTOP) so that it accepts
        none meanwhile; every connect must complete within 3 s.
        """
        clients = 300
        self.assertGreater(LISTEN_BACKLOG, clients)
        process, base = self.start("serialproxy", "--config", self.config)
        port = int(base.rsplit(":", 1)[1].strip("/"))
        os.kill(process.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, process.pid, signal.SIGCONT)  # before the mixin's stop (cleanups run last first)
        sockets = []
        self.addCleanup(lambda: [s.close() for s in sockets])
        for _ in range(clients):
            s = socket.socket()
            s.setblocking(False)
            self.assertIn(s.connect_ex(("127.0.0.1", port)), (0, errno.EINPROGRESS))
            sockets.append(s)
        pending, deadline = set(sockets), time.monotonic() + 3
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(pending), [], max(0.0, deadline - time.monotonic()))
            pending -= set(writable)
        self.assertEqual(len(pending), 0, f"{len(pending)} of {clients} connections still in their handshake")
        self.assertEqual({s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for s in sockets}, {0})

    def test_tac(self):
        """twistd -y serialproxy.tac runs the same node from $SERIALPROXY_CONFIG."""
        admin = self.manage("create-key", "--tenant", "ops", "--admin")
        process, base = self.start("-y", os.path.join(ROOT, "serialproxy.tac"), env={"SERIALPROXY_CONFIG": self.config})
        code, body = self.http("GET", base.replace("ws://", "http://") + "v3/servers", admin)
        self.assertEqual((code, body), (200, {"servers": []}))
        with urllib.request.urlopen(base.replace("ws://", "http://") + "?token=x", timeout=10) as page:
            self.assertEqual(page.headers.get_content_type(), "text/html")
            self.assertIn(b'<script src="console.js" defer></script>', page.read())
        with urllib.request.urlopen(base.replace("ws://", "http://") + "console.js", timeout=10) as script:
            self.assertEqual(script.headers.get_content_type(), "text/javascript")
            self.assertIn(b"new WebSocket(", script.read())
