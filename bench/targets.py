"""What the load client talks to: serialproxy, raw TCP to the fake VM, websockify.

Each target hands out session addresses for a fake VM mode (``echo``,
``stream``, ``sink``, ``flood``) and says which processes are the proxy
(whose memory is measured). serialproxy is the real daemon under ``twistd``
on loopback port 0 with sqlite; its consoles are registered and their URLs
minted through the REST API before anything is timed.
"""

import collections
import http.client
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

from procs import Processes, file_limit, tree

__all__ = ["FakeVM", "Floor", "LingeringSerialproxy", "Serialproxy", "RawTCP", "Websockify", "console_host", "ROOT"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
PORTS_PER_SERVER = 32   # serial ports one registered server may have
START_TIMEOUT = 60.0    # seconds a process gets to start listening
API_THREADS = 4         # concurrent API calls while registering and minting


def console_host(index: int) -> str:
    """A distinct loopback address per console: 127.A.B.C, never 127.0.x.x (the proxy's own)."""
    return f"127.{1 + index // (254 * 254)}.{(index // 254) % 254 + 1}.{index % 254 + 1}"


def _wait_for(what: str, predicate, timeout: float = START_TIMEOUT, process: Optional[subprocess.Popen] = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process {process.pid} exited with {process.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready after {timeout} s")


class FakeVM:
    """The fake VM serial ports (bench/fakevm.py) in a process of their own."""

    def __init__(self, processes: Processes, stream_bytes: int, sink_bytes: int, flood_seconds: float):
        argv = [sys.executable, os.path.join(ROOT, "bench", "fakevm.py"), "--stream-bytes", str(stream_bytes),
                "--sink-bytes", str(sink_bytes), "--flood-seconds", str(flood_seconds)]
        self.process = processes.start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ports: Dict[str, int] = json.loads(self.process.stdout.readline())


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? (read from /proc, without connecting)"""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local == f"0100007F:{port:04X}":
                return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawTCP:
    """The baseline: straight to the fake VM's ports."""

    name = "raw TCP"
    key = "raw"

    def __init__(self, vm: FakeVM):
        self._vm = vm

    def proxy_pids(self, mode: str = "echo") -> List[int]:
        return []

    def targets(self, mode: str, count: int) -> list:
        return [("127.0.0.1", self._vm.ports[mode])] * count


class Floor:
    """bench/floor.py: the least a relay on Twisted's reactor does per session (new sessions only)."""

    name = "Twisted floor"
    key = "floor"

    def __init__(self, processes: Processes, vm: FakeVM):
        self.process = processes.start([sys.executable, os.path.join(ROOT, "bench", "floor.py"), str(vm.ports["echo"])],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self._port = int(self.process.stdout.readline())

    def proxy_pids(self, mode: str = "echo") -> List[int]:
        return [self.process.pid]

    def targets(self, mode: str, count: int) -> list:
        if mode != "echo":
            raise ValueError("the floor relays the echo port only")
        return [f"ws://127.0.0.1:{self._port}/"] * count


class Websockify:
    """websockify 0.13 from PyPI in its own virtualenv, one instance per fake VM mode, forking per connection."""

    name = "websockify"
    key = "websockify"

    def __init__(self, processes: Processes, venv: str, vm: FakeVM, log_dir: str):
        self._instances = {}
        self._logs = []
        for mode, vm_port in vm.ports.items():
            port = free_port()
            self._logs.append(os.path.join(log_dir, f"websockify-{mode}.log"))
            log = open(self._logs[-1], "w")
            process = processes.start([os.path.join(venv, "bin", "websockify"), f"127.0.0.1:{port}", f"127.0.0.1:{vm_port}"],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            self._instances[mode] = (process, port)
        for mode, (process, port) in self._instances.items():
            _wait_for(f"websockify for {mode}", lambda: _listening(port), process=process)
        self.version = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                                       "from importlib.metadata import version; print(version('websockify'))"],
                                      capture_output=True, text=True, timeout=60).stdout.strip()

    def proxy_pids(self, mode: str = "echo") -> List[int]:
        return tree(self._instances[mode][0].pid)

    def stop(self, processes: Processes) -> None:
        for process, _ in self._instances.values():
            processes.stop(process)

    def log_errors(self) -> dict:
        """How often each kind of ``exception:`` line appears in the instances' logs."""
        errors = collections.Counter()
        for path in self._logs:
            with open(path, errors="replace") as f:
                for line in f:
                    if "exception:" in line:
                        errors[line.split("exception:", 1)[1].strip()[:120]] += 1
        return dict(errors)

    def targets(self, mode: str, count: int) -> list:
        return [f"ws://127.0.0.1:{self._instances[mode][1]}/"] * count


class _API:
    """The REST API over a few keep-alive connections."""

    def __init__(self, port: int, key: str):
        self._port = port
        self._key = key
        self._local = threading.local()

    def call(self, method: str, path: str, body=None) -> dict:
        for attempt in range(3):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._local.connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=60)
            try:
                connection.request(method, path, json.dumps(body) if body is not None else None, {"X-Auth-Token": self._key})
                response = connection.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
                continue
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
            return json.loads(data)


def _file_limit_setter(hard: Optional[int]):
    """A preexec_fn giving the daemon this hard open-file limit (it raises its soft limit to it itself)."""
    def set_limit():
        if hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    return set_limit


class Serialproxy:
    """The real daemon: twistd -n serialproxy, sqlite, port 0, started and configured here."""

    name = "serialproxy"
    key = "serialproxy"

    def __init__(self, processes: Processes, workdir: str, file_limit_hard: Optional[int] = None, settings: str = "",
                 twistd_args: Sequence[str] = (), wrapper: Sequence[str] = (), start_timeout: float = START_TIMEOUT):
        """``settings``: more ``[serial_console]`` lines for its config file; ``twistd_args``: more twistd options;
        ``wrapper``: a command that runs twistd (valgrind, for bench/instructions.py)."""
        self._dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config = os.path.join(workdir, "serialproxy.ini")
        with open(self.config, "w") as f:
            f.write(f"[serial_console]\nenabled = true\nserialproxy_port = 0\nstate_dir = {workdir}/state\ntoken_ttl = 86400\n"
                    + settings)
        self.admin_key = self._manage("create-key", "--tenant", "ops", "--admin")
        self.log = os.path.join(workdir, "twistd.log")
        self.process = processes.start([*wrapper, os.path.join(BIN, "twistd"), "-n", "--pidfile=", "-l", self.log, *twistd_args,
                                        "serialproxy", "--config", self.config],
                                       cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, preexec_fn=_file_limit_setter(file_limit_hard))
        found = _wait_for("serialproxy", self._listening_line, start_timeout, process=self.process)
        self.base_url, self.port = found.group(1), int(found.group(2))
        self.file_limit = file_limit(self.process.pid)
        self.room = int(re.search(r"room for about (\d+) console sessions", open(self.log).read()).group(1))
        self._api = _API(self.port, self.admin_key)
        self._consoles: Dict[str, List[str]] = {}
        self._hosts = 0
        self.version = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                      capture_output=True, text=True, timeout=30).stdout.strip()

    def _manage(self, *args) -> str:
        result = subprocess.run([os.path.join(BIN, "serialproxy-manage"), "--config", self.config, *args],
                                capture_output=True, text=True, timeout=120, cwd=self._dir)
        if result.returncode != 0:
            raise RuntimeError(f"serialproxy-manage {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def _listening_line(self):
        text = open(self.log).read() if os.path.exists(self.log) else ""
        return re.search(r"console URLs: (ws://\S+?:(\d+)/)\?token=", text)

    def proxy_pids(self, mode: str = "echo") -> List[int]:
        return [self.process.pid]

    def add_consoles(self, mode: str, vm_port: int, count: int) -> float:
        """Register ``count`` more consoles on a fake VM port and mint a URL for each; seconds it took."""
        start = time.monotonic()
        urls = self._consoles.setdefault(mode, [])
        hosts = [console_host(self._hosts + i) for i in range(count)]
        self._hosts += count
        groups = [hosts[i:i + PORTS_PER_SERVER] for i in range(0, len(hosts), PORTS_PER_SERVER)]
        with ThreadPoolExecutor(API_THREADS) as pool:
            servers = list(pool.map(lambda g: self._register(mode, g, vm_port), groups))
            consoles = [(server, index) for server, size in servers for index in range(size)]
            urls.extend(pool.map(self._mint, consoles))
        return time.monotonic() - start

    def _register(self, mode: str, hosts: list, vm_port: int):
        body = {"server": {"name": f"bench-{mode}-{hosts[0]}", "tenant_id": "bench",
                           "serial_ports": [{"host": h, "port": vm_port} for h in hosts]}}
        return self._api.call("POST", "/v3/servers", body)["server"]["id"], len(hosts)

    def _mint(self, console) -> str:
        server, index = console
        body = {"get_serial_console": {"type": "serial", "port": index}}
        return self._api.call("POST", f"/v3/servers/{server}/get-serial-console", body)["serial_console"]["url"]

    def targets(self, mode: str, count: int) -> list:
        """URLs of ``count`` distinct consoles (one writer each)."""
        urls = self._consoles.get(mode, [])
        if len(urls) < count:
            raise RuntimeError(f"only {len(urls)} {mode} consoles registered, {count} wanted")
        return urls[:count]


class LingeringSerialproxy(Serialproxy):
    """The daemon again with ``console_linger = 5`` (opt-in): new sessions only, as the option's effect."""

    name = "serialproxy, console_linger = 5"
    key = "linger"

    def __init__(self, processes: Processes, workdir: str, vm: FakeVM, pool: int):
        super().__init__(processes, os.path.join(workdir, "linger"), settings="console_linger = 5\n")
        self.add_consoles("echo", vm.ports["echo"], pool)
