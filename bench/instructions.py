"""What one new session costs the daemon in machine instructions (user space), counted under valgrind.

``callcount.py`` counts Python function calls, which weigh a call to ``len``
the same as a call to autobahn's handshake. This counts the instructions
the daemon's process runs in user space (the interpreter, its C modules,
sqlite, libc; not the kernel's system calls), which is what its user CPU
time is made of, without the host's noise: two runs of the same code agree
within 1-2 % sixteen at a time and 5 % one after another (how sessions fall
into reactor turns moves with timing), where CPU times on this shared
machine move by a fifth.

How: two daemons run under valgrind's callgrind (no cache or branch
simulation), each with the same set-up (consoles registered, URLs minted,
a warm-up), one taking N/5 new sessions and the other N; the difference of
their totals, divided by the difference in sessions, is one session's
cost. Under valgrind the daemon runs some 50 times slower, so the load
client finds it slow and batches differently than at full speed: compare
versions of the code with the same options, not against other figures.

Needs valgrind (``apt-get install valgrind``); not part of ``bench/run``.

Usage: bench/run's python: .venv/bin/python bench/instructions.py [--sessions 600] [--parallel 16]
       [--pythonpath DIR]
"""

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scenarios  # noqa: E402
from procs import Processes  # noqa: E402
from targets import FakeVM, Serialproxy  # noqa: E402

POOL = 64  # consoles the sessions rotate over
WARM_UP = 100  # sessions before the counted ones, in both daemons
START_TIMEOUT = 600.0  # seconds the daemon gets to start under valgrind
TIME_LIMIT = 1200.0  # seconds for the counted sessions of one daemon
WRITE_WAIT = 120.0  # seconds valgrind gets to write its totals once the daemon stops


async def _count(workdir: str, tag: str, sessions: int, parallel: int, pythonpath: str) -> int:
    """Run one daemon under callgrind for ``sessions`` new sessions (after the warm-up); its instructions in all."""
    processes = Processes()
    out = os.path.join(workdir, f"callgrind-{tag}")
    valgrind = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", f"--log-file={out}.log",
                "--dump-instr=no", "--cache-sim=no", "--branch-sim=no")
    try:
        vm = FakeVM(processes, 1 << 20, 1 << 20, 60.0)
        if pythonpath:
            os.environ["PYTHONPATH"] = pythonpath
        proxy = Serialproxy(processes, os.path.join(workdir, tag), 4096, wrapper=valgrind, start_timeout=START_TIMEOUT)
        proxy.add_consoles("echo", vm.ports["echo"], POOL)
        await scenarios.new_sessions(proxy, POOL, WARM_UP, parallel, TIME_LIMIT)
        done = await scenarios.new_sessions(proxy, POOL, sessions, parallel, TIME_LIMIT)
        if done["sessions"] != sessions:
            raise RuntimeError(f"{tag}: {done['sessions']} of {sessions} sessions ({done['errors']})")
        processes.stop(proxy.process)  # SIGTERM: twistd stops, valgrind writes its totals
    finally:
        processes.stop_all()
    deadline = time.monotonic() + WRITE_WAIT
    while time.monotonic() < deadline:
        text = open(out).read() if os.path.exists(out) else ""
        found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if found:
            return int(found.group(1))
        await asyncio.sleep(1)
    raise RuntimeError(f"{tag}: no totals from callgrind in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=600, help="new sessions of the larger run (the smaller: a fifth)")
    parser.add_argument("--parallel", type=int, default=16, help="sessions at a time (1: one after another)")
    parser.add_argument("--pythonpath", default="", help="PYTHONPATH for the daemons: another checkout's code")
    options = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py needs valgrind: apt-get install valgrind")
    small_count = max(1, options.sessions // 5)
    with tempfile.TemporaryDirectory(prefix="instructions-") as workdir:
        small = asyncio.run(_count(workdir, "small", small_count, options.parallel, options.pythonpath))
        large = asyncio.run(_count(workdir, "large", options.sessions, options.parallel, options.pythonpath))
    per_session = (large - small) / (options.sessions - small_count)
    print(f"per session: {per_session:,.0f} instructions in user space "
          f"({options.parallel} at a time; totals {small:,} and {large:,} for {small_count} and {options.sessions} sessions)")


if __name__ == "__main__":
    main()
