"""``--profile``: py-spy samples the daemon during chosen phases; where its time goes, per phase.

py-spy is installed on first use into bench/.venv-tools. Each phase's raw
stacks go to OUT/profile-PHASE.txt; :meth:`Profiler.summary` gives, per
phase, the functions with the most samples on top of the stack (self) and
anywhere on it (total).
"""

import collections
import contextlib
import os
import signal
import subprocess
import sys

__all__ = ["Profiler", "area"]

TOOLS_VENV = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".venv-tools")
PY_SPY = "py-spy==0.4.3"
TOP = 15


def _py_spy() -> str:
    binary = os.path.join(TOOLS_VENV, "bin", "py-spy")
    if not os.path.exists(binary):
        subprocess.run([getattr(sys, "_base_executable", "python3"), "-m", "venv", TOOLS_VENV], check=True, timeout=300)
        subprocess.run([os.path.join(TOOLS_VENV, "bin", "pip"), "install", "-q", PY_SPY], check=True, timeout=600)
    return binary


_AREAS = (  # (what a frame's file path contains, the area it counts for), first match wins
    ("serialproxy/", "serialproxy"), ("autobahn/", "autobahn"), ("txaio/", "autobahn"),
    ("twisted/web/", "twisted.web (HTTP, upgrade)"), ("twisted/logger/", "logging"),
    ("twisted/python/log.py", "twisted reactor and TCP"),  # callWithLogger wraps every I/O event, it logs nothing
    ("twisted/python/context.py", "twisted reactor and TCP"),
    ("twisted/enterprise/", "database (adbapi, sqlite)"), ("sqlite3/", "database (adbapi, sqlite)"),
    ("twisted/internet/", "twisted reactor and TCP"), ("twisted/", "twisted, other"), ("logging/", "logging"),
)
_IDLE = ("Condition.wait (", "Thread.join (", "EPollReactor.doPoll (", "Event.wait (")  # waiting, not working


def area(path: str) -> str:
    """Which area of the daemon a source file's path belongs to (``_AREAS``)."""
    for needle, name in _AREAS:
        if needle in path:
            return name
    return "Python library and other"


def _area(frame: str) -> str:
    return area(frame.partition(" (")[2])


def _short(frame: str) -> str:
    """``function (path/to/module.py:123)`` -> ``function (module.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({os.path.basename(where.rsplit(':', 1)[0])})" if where else name


def summarise(path: str) -> dict:
    """From py-spy's raw (collapsed) stacks: busy samples, self time by area and by function, and the
    functions of serialproxy and autobahn with the most time inside them. Waiting threads are left out."""
    areas, own, inside, busy = collections.Counter(), collections.Counter(), collections.Counter(), 0
    with open(path, errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit() or stack.rsplit(";", 1)[-1].startswith(_IDLE):
                continue
            frames, n = stack.split(";"), int(count)
            if frames[-1].startswith("untilConcludes (") and len(frames) > 1:  # a syscall retried on EINTR: count it for its caller
                frames = frames[:-1]
                frames[-1] = frames[-1].replace(" (", " [syscall] (", 1)
            busy += n
            areas[_area(frames[-1])] += n
            own[_short(frames[-1])] += n
            for frame in {f for f in frames if _area(f) in ("serialproxy", "autobahn")}:
                inside[_short(frame)] += n
    share = lambda c, top=TOP: [(name, round(100.0 * n / max(1, busy), 1)) for name, n in c.most_common(top)]  # noqa: E731
    return {"busy_samples": busy, "areas": share(areas, 20), "self": share(own), "inside": share(inside)}


class Profiler:
    """Runs py-spy on one process for the length of each ``phase``."""

    def __init__(self, processes, workdir: str):
        self._processes = processes
        self._workdir = workdir
        self._pid = None
        self._files = {}
        self._binary = _py_spy() if processes is not None else None

    @classmethod
    def off(cls) -> "Profiler":
        return cls(None, "")

    def attach(self, pid: int) -> None:
        self._pid = pid

    @contextlib.contextmanager
    def phase(self, name: str):
        if self._binary is None or self._pid is None:
            yield
            return
        path = os.path.join(self._workdir, f"profile-{name}.txt")
        process = self._processes.start([self._binary, "record", "--pid", str(self._pid), "--format", "raw",
                                         "--nonblocking", "--rate", "250", "--output", path],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._processes.stop(process)
            self._files[name] = path

    def summary(self) -> dict:
        return {name: summarise(path) for name, path in self._files.items() if os.path.exists(path)}
