"""Processes the benchmark starts, and what it reads about them from /proc.

Every process is started through :class:`Processes`, which stops each one
by its PID, and its descendants (websockify forks one per connection) by
theirs, when the run ends, fails or is interrupted.
"""

import ctypes
import os
import resource
import signal
import subprocess
import time
from typing import Dict, List, Tuple

__all__ = ["Processes", "pss_kib", "memory_kib", "tree", "file_limit", "fd_count", "raise_own_file_limit", "cpu_seconds",
           "die_with_parent"]

STOP_WAIT = 10.0  # seconds a process gets to exit after SIGTERM
_PR_SET_PDEATHSIG = 1


class Processes:
    """The processes of one run, stopped in reverse order of starting."""

    def __init__(self):
        self._started: List[subprocess.Popen] = []

    def start(self, argv, preexec_fn=None, **kwargs) -> subprocess.Popen:
        """Start a process that also gets SIGTERM should this one die without stopping it."""
        def prepare():
            die_with_parent()
            if preexec_fn is not None:
                preexec_fn()

        process = subprocess.Popen(argv, preexec_fn=prepare, **kwargs)
        self._started.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        """SIGTERM the process and its descendants, by PID; SIGKILL what is left after STOP_WAIT."""
        family = tree(process.pid) if process.poll() is None else []
        for pid in family:
            _signal(pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            _signal(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_WAIT)
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline and any(_alive(pid) for pid in family[1:]):
            time.sleep(0.05)
        for pid in family[1:]:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        while self._started:
            process = self._started.pop()
            try:
                self.stop(process)
            except Exception as e:  # keep stopping the others
                print(f"bench: could not stop process {process.pid}: {e}", flush=True)


def die_with_parent() -> None:
    """Linux: SIGTERM this (child) process when its parent dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _parents() -> Dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return parents


def tree(pid: int) -> List[int]:
    """``pid`` and all its living descendants."""
    children: Dict[int, list] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    family, todo = [], [pid]
    while todo and len(family) < 100000:
        current = todo.pop()
        family.append(current)
        todo.extend(children.get(current, ()))
    return family


def memory_kib(pids) -> Tuple[int, int]:
    """(PSS, anonymous PSS) of these processes together, in KiB, from smaps_rollup.

    The anonymous part leaves out file-backed pages (code, shared libraries),
    whose PSS moves whenever other processes mapping them start or stop.
    """
    pss = anon = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Pss_Anon:"):
                        anon += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return pss, anon


def pss_kib(pids) -> int:
    """Proportional set size of these processes together, in KiB."""
    return memory_kib(pids)[0]


def cpu_seconds(pids, reaped: bool = False) -> float:
    """User + system CPU time these processes used so far (``reaped``: and their children they waited for)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15 if reaped else 13])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / ticks


def file_limit(pid: int) -> int:
    """The soft open-file limit of a process."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise RuntimeError(f"no open-file limit for process {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_own_file_limit(want: int) -> int:
    """Raise this process's open-file limit to ``want`` (root may raise the hard limit); the soft limit got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((want, max(want, hard)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
