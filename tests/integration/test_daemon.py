"""The daemon as an operator runs it: twistd, the .tac, serialproxy-manage, as real processes.

Clients here are independent of the proxy's own stack: urllib for HTTP and
the `websockets` package for the console.
"""

import json
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import SynchronousTestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from serialproxy.config import OPTIONS
from serialproxy.database import current_version

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
MANAGE = os.path.join(BIN, "serialproxy-manage")
STARTUP_TIMEOUT = 30


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


def start_echo(testcase):
    """A TCP echo server on 127.0.0.1:0 standing in for a VM serial port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    testcase.addCleanup(server.server_close)
    testcase.addCleanup(server.shutdown)
    return server.server_address[1]


class DaemonTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "serialproxy.ini")
        with open(self.config, "w") as f:
            f.write(f"[serial_console]\nenabled = true\nserialproxy_port = 0\nstate_dir = {self.dir}/state\n")

    def run_command(self, *args, env=None):
        return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=self.dir,
                              env={**os.environ, **(env or {})})

    def manage(self, *args):
        result = self.run_command(MANAGE, "--config", self.config, *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.strip()

    def start(self, *args, env=None):
        """Start a twistd process and wait (bounded) for its listening line; its base URL."""
        log = os.path.join(self.dir, f"twistd-{len(os.listdir(self.dir))}.log")
        process = subprocess.Popen([TWISTD, "-n", "--pidfile=", "-l", log, *args], cwd=self.dir,
                                   env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        process.log = log
        self.addCleanup(self.stop, process)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            text = open(log).read() if os.path.exists(log) else ""
            found = re.search(r"console URLs: (ws://\S+?)\?token=", text)
            if found:
                return process, found.group(1)
            time.sleep(0.05)
        self.fail(f"twistd did not start: {process.poll()} {process.stderr.read() if process.poll() is not None else ''}")

    def stop(self, process):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        process.stderr.close()

    def http(self, method, url, key, body=None):
        request = urllib.request.Request(url, method=method, headers={"X-Auth-Token": key},
                                         data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

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

    def test_tac(self):
        """twistd -y serialproxy.tac runs the same node from $SERIALPROXY_CONFIG."""
        admin = self.manage("create-key", "--tenant", "ops", "--admin")
        process, base = self.start("-y", os.path.join(ROOT, "serialproxy.tac"), env={"SERIALPROXY_CONFIG": self.config})
        code, body = self.http("GET", base.replace("ws://", "http://") + "v3/servers", admin)
        self.assertEqual((code, body), (200, {"servers": []}))
        with urllib.request.urlopen(base.replace("ws://", "http://") + "?token=x", timeout=10) as page:
            self.assertEqual(page.headers.get_content_type(), "text/html")
            self.assertIn(b"new WebSocket(", page.read())
