"""serialproxy-client as a user runs it: a process against the real daemon (twistd), an echo server for the VM.

Interactive sessions run under a pseudo-terminal driven by pexpect, inside
``sh -c 'stty -g; serialproxy-client console vm1; stty -g'``, so the test
sees the terminal's settings before and after.
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pexpect
from twisted.trial.unittest import SynchronousTestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ..daemon import DaemonMixin, start_echo

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "serialproxy-client")
# The console script once setup.py declares it; until then the same main() through -m.
CLIENT = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "serialproxy.client"]
WAIT = 20  # seconds any one client run or expectation may take
_STTY = r"([0-9a-f]+(?::[0-9a-f]+)+)\r\n"


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClientTests(DaemonMixin, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        self.admin = self.manage("create-key", "--tenant", "ops", "--admin")
        self.member = self.manage("create-key", "--tenant", "acme")
        self.process, self.base = self.start("serialproxy", "--config", self.config)
        self.api = self.base.replace("ws://", "http://").rstrip("/")
        self.server = self.register("vm1", start_echo(self))

    def register(self, name: str, port: int) -> str:
        code, body = self.http("POST", f"{self.api}/v3/servers", self.admin, {"server": {
            "name": name, "tenant_id": "acme", "serial_ports": [{"host": "127.0.0.1", "port": port}]}})
        self.assertEqual(code, 201, body)
        return body["server"]["id"]

    def env(self, key=None, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERIALPROXY_")}
        env.update({"SERIALPROXY_URL": self.api, "SERIALPROXY_TOKEN": key or self.member}, **extra)
        return {k: v for k, v in env.items() if v is not None}

    def client(self, *args, key=None, input="", env=None) -> subprocess.CompletedProcess:
        """Run serialproxy-client to its end (bounded)."""
        result = subprocess.run([*CLIENT, *args], input=input.encode(), capture_output=True, timeout=WAIT,
                                cwd=self.dir, env=env or self.env(key))
        # Decoded here, not with text=True: that would turn the console's CRs into LFs.
        result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
        return result

    def assert_one_error_line(self, result, *expected, code=1):
        self.assertEqual(result.returncode, code, result.stderr)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("serialproxy-client: "), lines[0])
        for text in expected:
            self.assertIn(text, lines[0])

    def console_url(self) -> str:
        code, body = self.http("POST", f"{self.api}/v3/servers/{self.server}/get-serial-console", self.member)
        self.assertEqual(code, 202, body)
        return body["serial_console"]["url"]

    def access_log(self, line: str) -> None:
        """Wait (bounded) for the daemon's access log to show ``line``."""
        deadline = time.monotonic() + WAIT
        while line not in open(self.process.log).read():
            if time.monotonic() > deadline:
                self.fail(f"the daemon never logged {line!r}")
            time.sleep(0.05)

    # console URLs

    def test_get_serial_console_by_name(self):
        """get-serial-console NAME serial prints only a working console URL."""
        result = self.client("get-serial-console", "vm1", "serial")
        self.assertEqual(result.returncode, 0, result.stderr)
        url = result.stdout.strip()
        self.assertEqual(result.stdout, url + "\n")
        self.assertTrue(url.startswith(self.base + "?token="), url)
        with connect(url, open_timeout=10) as console:
            console.send(b"ping\r")
            self.assertEqual(console.recv(timeout=10), b"ping\r")

    def test_get_serial_console_by_id_json(self):
        """get-serial-console ID serial --json prints the API's answer."""
        result = self.client("get-serial-console", self.server, "serial", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        console = json.loads(result.stdout)["serial_console"]
        self.assertEqual((console["type"], console["port"]), ("serial", 0))
        self.assertTrue(console["url"].startswith(self.base + "?token="))

    def test_v2_with_tenant(self):
        """With SERIALPROXY_TENANT the URL comes from the v2 path of that tenant."""
        result = self.client("get-serial-console", "vm1", "serial", env=self.env(SERIALPROXY_TENANT="acme"))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith(self.base + "?token="))
        self.access_log(f'"POST /v2/acme/servers/{self.server}/get-serial-console HTTP/1.1" 200')

    def test_port_the_server_lacks(self):
        """A port index the server lacks is the API's 400, in one line."""
        result = self.client("get-serial-console", "vm1", "serial", "--port", "3")
        self.assert_one_error_line(result, "HTTP 400")

    # servers and sessions

    def test_list(self):
        """list shows id, name, status and ports; an admin also sees where the ports are."""
        member = self.client("list")
        self.assertEqual(member.returncode, 0, member.stderr)
        self.assertEqual(member.stdout.splitlines()[0].split(), ["ID", "NAME", "STATUS", "PORTS"])
        self.assertEqual(member.stdout.splitlines()[1].split(), [self.server, "vm1", "active", "0"])
        admin = self.client("list", key=self.admin)
        self.assertRegex(admin.stdout, rf"{self.server}\s+vm1\s+active\s+0=127\.0\.0\.1:\d+")

    def test_sessions_and_kick(self):
        """sessions lists the live session; kick with an id prefix closes it with 4010 and the reason."""
        with connect(self.console_url(), open_timeout=10) as console:
            console.send(b"x")
            console.recv(timeout=10)
            listed = self.client("sessions", "vm1")
            self.assertEqual(listed.returncode, 0, listed.stderr)
            header, row = listed.stdout.splitlines()
            self.assertEqual(header.split(), ["ID", "PORT", "MODE", "PEER", "SINCE", "IN", "OUT"])
            session, port, mode, peer = row.split()[:4]
            self.assertEqual((port, mode), ("0", "write"))
            self.assertTrue(peer.startswith("127.0.0.1:"))
            kicked = self.client("kick", "vm1", session[:8], "--reason", "maintenance")
            self.assertEqual(kicked.returncode, 0, kicked.stderr)
            self.assertIn(session, kicked.stderr)
            with self.assertRaises(ConnectionClosed) as closed:
                console.recv(timeout=10)
        self.assertEqual(closed.exception.rcvd.code, 4010)
        self.assertIn("maintenance", closed.exception.rcvd.reason)

    # errors

    def test_no_token(self):
        """Without a key: one line naming SERIALPROXY_TOKEN and --token, exit 2."""
        result = self.client("list", env=self.env(SERIALPROXY_TOKEN=None))
        self.assert_one_error_line(result, "SERIALPROXY_TOKEN", "--token", code=2)

    def test_unknown_server(self):
        """An unknown name is one clear line, exit 1."""
        self.assert_one_error_line(self.client("console", "nope"), "no server", "'nope'")

    def test_bad_key(self):
        """A key the proxy does not know: the API's message and 401, no traceback."""
        result = self.client("list", key="spk_" + "x" * 43)
        self.assert_one_error_line(result, "invalid API key", "HTTP 401")

    def test_proxy_not_running(self):
        """Nothing listening at the URL: one line saying the proxy cannot be reached."""
        result = self.client("list", "--url", f"http://127.0.0.1:{closed_port()}")
        self.assert_one_error_line(result, "cannot reach the proxy", "refused")

    def test_bad_arguments(self):
        """Bad arguments: one line and exit 2."""
        self.assert_one_error_line(self.client("console", "vm1", "--linger", "-1"), "--linger", code=2)

    # piped consoles

    def test_piped_console(self):
        """echo hello | serialproxy-client console vm1: the echo comes back (LF sent as CR), then exit 0."""
        result = self.client("console", "vm1", "--linger", "1", input="hello\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "hello\r")
        self.assertEqual(result.stderr, "")

    def test_piped_newline_unchanged(self):
        """--newline lf sends piped input as it is."""
        result = self.client("console", "vm1", "--linger", "1", "--newline", "lf", input="a\nb\n")
        self.assertEqual((result.returncode, result.stdout), (0, "a\nb\n"), result.stderr)

    def test_busy(self):
        """A second writer is refused: the busy reason in one line, exit 1."""
        with connect(self.console_url(), open_timeout=10) as holder:
            holder.send(b"x")
            holder.recv(timeout=10)
            result = self.client("console", "vm1", input="ls\n")
        self.assert_one_error_line(result, "console closed: busy: held by 127.0.0.1:", "(4009)")

    def test_read_only_beside_writer(self):
        """--read-only attaches beside the writer and sees the console's output (replayed scrollback)."""
        with connect(self.console_url(), open_timeout=10) as holder:
            holder.send(b"from the writer\r")
            holder.recv(timeout=10)
            result = self.client("console", "vm1", "--read-only", "--linger", "1", input="not sent\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("from the writer", result.stdout)
        self.assertNotIn("not sent", result.stdout)

    def test_kicked_while_attached(self):
        """A console the owner kicks ends with the kick's reason and code, exit 1."""
        process = subprocess.Popen([*CLIENT, "console", "vm1", "--linger", "inf"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.dir, env=self.env())
        self.addCleanup(lambda: process.poll() is None and process.kill())
        deadline = time.monotonic() + WAIT
        while not (sessions := self.http("GET", f"{self.api}/v3/servers/{self.server}/serial-sessions",
                                         self.member)[1]["serial_sessions"]):
            self.assertLess(time.monotonic(), deadline, "the console never attached")
            time.sleep(0.05)
        code, body = self.http("DELETE", f"{self.api}/v3/servers/{self.server}/serial-sessions/{sessions[0]['id']}",
                               self.member, {"reason": "lunch"})
        self.assertEqual(code, 204, body)
        _, stderr = process.communicate(timeout=WAIT)
        self.assertEqual(process.returncode, 1, stderr)
        self.assertRegex(stderr.decode(), r"^serialproxy-client: console closed: kicked by .*: lunch \(4010\)\n$")

    # interactive consoles

    def spawn(self):
        """``sh -c 'stty -g; serialproxy-client console vm1; echo rc=$?; stty -g'`` under a pty; the first stty line."""
        script = f"stty -g; {shlex.join(CLIENT)} console vm1; echo rc=$?; stty -g"
        child = pexpect.spawn("sh", ["-c", script], env=self.env(), cwd=self.dir, timeout=WAIT)
        self.addCleanup(lambda: child.close(force=True))
        child.expect(_STTY)
        before = child.match.group(1)
        child.expect(r"connected to vm1 port 0 \(~\. after Enter leaves\)\r\n")
        return child, before

    def finish(self, child, before: bytes) -> int:
        """The client's exit code, checking that the terminal is as it was."""
        child.expect(r"rc=(\d+)\r\n")
        code = int(child.match.group(1))
        child.expect(_STTY)
        self.assertEqual(child.match.group(1), before)
        child.expect(pexpect.EOF)
        return code

    def test_interactive(self):
        """On a terminal: raw mode (Ctrl-C goes to the VM), ~. after Enter leaves, the terminal is restored."""
        child, before = self.spawn()
        child.send("hello\r")
        child.expect("hello\r")
        child.send("\x03")
        child.expect("\x03")
        child.send("\r~.")
        child.expect(r"serialproxy-client: disconnected\r\n")
        self.assertEqual(self.finish(child, before), 0)

    def test_sigterm_restores_terminal(self):
        """SIGTERM while attached: the terminal is restored, exit 128+15."""
        child, before = self.spawn()
        child.send("abc")
        child.expect("abc")
        with open(f"/proc/{child.pid}/task/{child.pid}/children") as f:
            client_pid = int(f.read().split()[0])
        os.kill(client_pid, signal.SIGTERM)
        child.expect(r"\r\nserialproxy-client: interrupted by SIGTERM\r\n")
        self.assertEqual(self.finish(child, before), 128 + signal.SIGTERM)

    def test_proxy_closes_interactive(self):
        """The proxy going away ends an interactive console with its reason, exit 1, terminal restored."""
        child, before = self.spawn()
        child.send("abc")
        child.expect("abc")  # attached, not still attaching
        self.stop(self.process)
        child.expect(r"serialproxy-client: console closed: .*\(1001\)\r\n")
        self.assertEqual(self.finish(child, before), 1)
