"""Driving the daemon as real processes: twistd, serialproxy-manage, urllib, an echo server."""

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

__all__ = ["DaemonMixin", "start_echo", "ROOT", "TWISTD", "MANAGE"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


class DaemonMixin:
    """For SynchronousTestCases that run the daemon: a config in a temp dir, and helpers."""

    extra_config = ""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "serialproxy.ini")
        with open(self.config, "w") as f:
            f.write(f"[serial_console]\nenabled = true\nserialproxy_port = 0\nstate_dir = {self.dir}/state\n"
                    + self.extra_config)

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
        return http_json(method, url, key, body)


def http_json(method, url, key, body=None):
    """One API call with urllib: ``(status, the JSON answer)``."""
    request = urllib.request.Request(url, method=method, headers={"X-Auth-Token": key},
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

