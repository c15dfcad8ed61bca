"""The machine and software a run was on, and how busy the machine was with other work meanwhile.

On a virtual machine the host may also withhold CPU that this machine's
processes asked for, to run other guests: /proc/stat counts it as steal. It
is no process's work here, so it is told apart from other work: a run with
much of it measured everyone (the proxy, its baselines, the load client) on
fewer than all the cores.
"""

import os
import platform
import subprocess
import time

from procs import cpu_seconds, tree

__all__ = ["describe", "snapshot", "load_during", "wait_until_quiet"]


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def _git(*args) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


def describe() -> dict:
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": round(_memory_gib(), 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "twisted": _version("twisted"), "autobahn": _version("autobahn"), "websockets": _version("websockets"),
        "serialproxy_commit": _git("rev-parse", "--short=12", "HEAD"),
        "serialproxy_tree": "with uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no", "--", "serialproxy") else "clean",
    }


def _busy_ticks() -> tuple:
    """(ticks the machine's processes ran, ticks the host withheld from them) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def _ours() -> float:
    """CPU seconds used so far by this process and its descendants, living or waited for."""
    return cpu_seconds(tree(os.getpid()), reaped=True)


def snapshot() -> dict:
    busy, steal = _busy_ticks()
    return {"busy": busy, "steal": steal, "ours": _ours(), "time": time.monotonic(), "loadavg": os.getloadavg()}


def load_during(before: dict) -> dict:
    """How much CPU the whole machine used since ``before``, how much of it was not this run's, and what the host withheld."""
    after = snapshot()
    ticks = os.sysconf("SC_CLK_TCK")
    busy = (after["busy"] - before["busy"]) / ticks
    steal = (after["steal"] - before["steal"]) / ticks
    ours = after["ours"] - before["ours"]
    seconds = after["time"] - before["time"]
    return {"seconds": seconds, "machine_cpu_s": busy, "run_cpu_s": ours, "other_cpu_s": max(0.0, busy - ours),
            "other_cores": max(0.0, busy - ours) / seconds if seconds else 0.0,
            "steal_cpu_s": steal, "steal_cores": steal / seconds if seconds else 0.0,
            "loadavg_before": before["loadavg"], "loadavg_after": after["loadavg"]}


def wait_until_quiet(limit: float, cores: float = 0.25, window: float = 5.0) -> float:
    """Wait (at most ``limit`` seconds) until other work uses under ``cores`` over a ``window``; the cores it last used."""
    deadline = time.monotonic() + limit
    while True:
        before = snapshot()
        time.sleep(window)
        other = load_during(before)["other_cores"]
        if other < cores or time.monotonic() + window > deadline:
            return other
