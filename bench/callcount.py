"""What one new session costs the daemon, counted rather than timed: function calls per session.

On a shared machine the rates and CPU times of ``bench/run`` move by a fifth
between rounds, more than most code changes do. Function calls per session
move by about 1 % between runs (only what depends on timing moves: how many
sessions share a reactor turn or a batched write). So this compares versions
of the code (``--pythonpath``) by the work they do, not by a stopwatch.

How: two daemons run under twistd's own cProfile (``--profiler=cprofile``),
each with the same set-up (consoles registered, URLs minted, a warm-up), one
taking N/5 new sessions and the other N; the difference of their profiles,
divided by the difference in sessions, is one session's cost (start-up and
set-up cancel out). cProfile's own overhead inflates the times it reports
(2-3x here), and they move with the host as any time does: read the counts.

Usage: bench/run's python: .venv/bin/python bench/callcount.py [--sessions 2500] [--parallel 1]
       [--pythonpath DIR] [--top 25]
"""

import argparse
import asyncio
import collections
import os
import pstats
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import profiling  # noqa: E402
import scenarios  # noqa: E402
from procs import Processes  # noqa: E402
from targets import FakeVM, Serialproxy  # noqa: E402

POOL = 256  # consoles the sessions rotate over
WARM_UP = 300  # sessions before the counted ones, in both daemons
TIME_LIMIT = 300.0  # seconds for the counted sessions of one daemon


def _name(key: tuple) -> str:
    """``package/module.py:line(function)``; builtins and C methods as cProfile names them."""
    path, line, function = key
    if path == "~":
        return function
    if "site-packages/" in path:
        path = path.split("site-packages/")[-1]
    elif "/serialproxy/" in path:
        path = "serialproxy/" + path.rsplit("/serialproxy/", 1)[-1]
    else:
        path = os.path.basename(path)
    return f"{path}:{line}({function})"


def _area(key: tuple) -> str:
    """The area of the daemon a function belongs to, as ``--profile`` names them (profiling.area)."""
    if key[0] == "~":
        return "builtins and C methods (system calls among them)"
    return profiling.area(key[0])


async def _profile(workdir: str, tag: str, sessions: int, parallel: int, pythonpath: str) -> pstats.Stats:
    """Run one daemon under cProfile for ``sessions`` new sessions (after the warm-up); its profile."""
    processes = Processes()
    profile = os.path.join(workdir, f"profile-{tag}")
    try:
        vm = FakeVM(processes, 1 << 20, 1 << 20, 60.0)
        if pythonpath:
            os.environ["PYTHONPATH"] = pythonpath
        proxy = Serialproxy(processes, os.path.join(workdir, tag), 4096,
                            twistd_args=(f"--profile={profile}", "--profiler=cprofile", "--savestats"))
        proxy.add_consoles("echo", vm.ports["echo"], POOL)
        await scenarios.new_sessions(proxy, POOL, WARM_UP, parallel, TIME_LIMIT)
        done = await scenarios.new_sessions(proxy, POOL, sessions, parallel, TIME_LIMIT)
        if done["sessions"] != sessions:
            raise RuntimeError(f"{tag}: {done['sessions']} of {sessions} sessions ({done['errors']})")
        processes.stop(proxy.process)  # SIGTERM: twistd stops and writes the profile
    finally:
        processes.stop_all()
    return pstats.Stats(profile)


def per_session(small: pstats.Stats, large: pstats.Stats, sessions: int) -> dict:
    """Per function: (calls, profiled self µs) per session, from two profiles ``sessions`` sessions apart."""
    cost = {}
    for key, (_, calls, own, _, _) in large.stats.items():
        _, calls_before, own_before, _, _ = small.stats.get(key, (0, 0, 0.0, 0.0, None))
        calls, own = (calls - calls_before) / sessions, 1e6 * (own - own_before) / sessions
        if calls > 0.05 or own > 0.5:
            cost[key] = (calls, own)
    return cost


def report(cost: dict, top: int) -> str:
    idle = [key for key in cost if "poll' of 'select.epoll" in key[2]]  # waiting in epoll, not working
    working = {key: value for key, value in cost.items() if key not in idle}
    lines = [f"per session: {sum(c for c, _ in working.values()):,.0f} function calls, "
             f"{sum(t for _, t in working.values()):,.0f} µs profiled (cProfile's overhead included; epoll waits left out)",
             "", "by area: calls, profiled µs"]
    areas = collections.defaultdict(lambda: [0.0, 0.0])
    for key, (calls, own) in working.items():
        areas[_area(key)][0] += calls
        areas[_area(key)][1] += own
    lines += [f"  {calls:8,.0f} {own:8,.0f}  {name}" for name, (calls, own) in sorted(areas.items(), key=lambda p: -p[1][0])]
    for title, order in (("most calls", 0), ("most profiled self time", 1)):
        lines += ["", f"{title}: calls, profiled µs"]
        ranked = sorted(working.items(), key=lambda item: -item[1][order])[:top]
        lines += [f"  {calls:8.1f} {own:8.1f}  {_name(key)}" for key, (calls, own) in ranked]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2500, help="new sessions of the larger run (the smaller: a fifth)")
    parser.add_argument("--parallel", type=int, default=1, help="sessions at a time (1: one after another)")
    parser.add_argument("--pythonpath", default="", help="PYTHONPATH for the daemons: another checkout's code")
    parser.add_argument("--top", type=int, default=25, help="functions listed per ranking")
    options = parser.parse_args()
    small_count = max(1, options.sessions // 5)
    with tempfile.TemporaryDirectory(prefix="callcount-") as workdir:
        small = asyncio.run(_profile(workdir, "small", small_count, options.parallel, options.pythonpath))
        large = asyncio.run(_profile(workdir, "large", options.sessions, options.parallel, options.pythonpath))
        print(report(per_session(small, large, options.sessions - small_count), options.top))


if __name__ == "__main__":
    main()
