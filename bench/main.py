"""``bench/run``: the serialproxy benchmark suite, one run, every figure, bench/RESULTS.md.

Starts a fake VM, then measures raw TCP (the baseline), websockify 0.13 (in
its own virtualenv, installed here on first use) and the real serialproxy
daemon one after another, with this process as the load client. Writes the
raw figures to OUT/results.json and the report to bench/RESULTS.md
(``--quick``: OUT/RESULTS-quick.md). Stops every process it started, by
PID, also on failure or Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import machine  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402
from procs import Processes, fd_count, raise_own_file_limit  # noqa: E402
from profiling import Profiler  # noqa: E402
from targets import ROOT, FakeVM, Floor, LingeringSerialproxy, RawTCP, Serialproxy, Websockify  # noqa: E402

__all__ = ["main", "Sizes", "SIZES"]

BENCH = os.path.join(ROOT, "bench")
WEBSOCKIFY_VENV = os.path.join(BENCH, ".venv-websockify")
WEBSOCKIFY = "websockify==0.13.0"
CLIENT_FILES = 1 << 17  # this process holds one socket per session
CLIENT_SPARE_FILES = 256
PROXY_FILES_MAX = 32768  # the daemon's hard open-file limit when the inherited one is higher (--proxy-files to change)
RUN_LIMIT = {"full": 1500.0, "quick": 300.0}  # seconds the whole run may take


@dataclass(frozen=True)
class Sizes:
    latency_steps: tuple = (1, 100, 1000)
    rounds: int = 3000            # echo round trips per step
    sample: int = 10              # sessions the round trips rotate over
    latency_seconds: float = 20.0
    warmup: int = 50              # sessions opened and closed before the baseline PSS
    transfer_bytes: int = 128 << 20
    repeats: int = 5              # rounds of throughput and of new sessions, the targets taking turns
    sequential: int = 500         # new sessions one after another, per round
    parallel_count: int = 1000    # new sessions 16 at a time, per round
    parallel: int = 16
    new_seconds: float = 10.0     # at most, per round and target
    pool: int = 256               # consoles the new sessions rotate over
    stall_seconds: float = 10.0
    spectators: int = 100
    spectator_seconds: float = 10.0
    proxy_files: Optional[int] = None  # hard open-file limit for the daemon; None: as inherited
    ladder_seconds: float = 240.0
    quick: bool = False


SIZES = {
    "full": Sizes(),
    "quick": Sizes(latency_steps=(1, 10, 50), rounds=100, latency_seconds=5.0, warmup=5, transfer_bytes=8 << 20,
                   repeats=1, sequential=30, parallel_count=60, new_seconds=5.0, pool=40, stall_seconds=2.0,
                   spectators=10, spectator_seconds=2.0, proxy_files=256, ladder_seconds=30.0, quick=True),
}


def _install_websockify() -> str:
    """websockify 0.13 in bench/.venv-websockify (made on first use); the venv."""
    marker = os.path.join(WEBSOCKIFY_VENV, "bin", "websockify")
    if not os.path.exists(marker):
        print(f"bench: installing {WEBSOCKIFY} into {WEBSOCKIFY_VENV}", flush=True)
        subprocess.run([getattr(sys, "_base_executable", "python3"), "-m", "venv", WEBSOCKIFY_VENV], check=True, timeout=300)
        subprocess.run([os.path.join(WEBSOCKIFY_VENV, "bin", "pip"), "install", "-q", WEBSOCKIFY], check=True, timeout=600)
    return WEBSOCKIFY_VENV


def _say(text: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')}: {text}", flush=True)


class _Phases:
    """Runs the phases in order, noting how busy the machine was with other work during each."""

    def __init__(self, results: dict):
        self._load = results.setdefault("load_by_phase", {})

    @contextlib.contextmanager
    def phase(self, name: str, what: str):
        _say(what)
        before = machine.snapshot()
        try:
            yield
        finally:
            self._load[name] = machine.load_during(before)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


async def _latency(targets, sizes: Sizes, results: dict, profiler) -> None:
    with profiler.phase("latency"):
        figures = await scenarios.latency_and_memory(targets, sizes.latency_steps, sizes.rounds, sizes.sample,
                                                     sizes.latency_seconds, sizes.warmup)
    for key, figure in figures.items():
        results[key]["latency"] = figure


async def _throughput(targets, sizes: Sizes, results: dict, profiler) -> None:
    runs = {t.key: {"vm_to_client": [], "client_to_vm": []} for t in targets}
    with profiler.phase("throughput"):
        for index in range(sizes.repeats):
            for target in targets:
                for way in ("vm_to_client", "client_to_vm"):
                    runs[target.key][way].append(await scenarios.throughput(target, way, sizes.transfer_bytes, index, 120.0))
    for key, ways in runs.items():
        results[key]["throughput"] = {**{way: _median([r["mib_per_s"] for r in rs]) for way, rs in ways.items()}, "runs": ways}


async def _new_sessions(targets, sizes: Sizes, results: dict, profiler) -> None:
    runs = {t.key: {"new_sequential": [], "new_parallel": [], "new_sequential_lean": []} for t in targets}
    for target in targets:
        results.setdefault(target.key, {})
    with profiler.phase("new-sessions"):
        for _ in range(sizes.repeats):
            for target in targets:
                runs[target.key]["new_sequential"].append(
                    await scenarios.new_sessions(target, sizes.pool, sizes.sequential, 1, sizes.new_seconds))
                runs[target.key]["new_parallel"].append(
                    await scenarios.new_sessions(target, sizes.pool, sizes.parallel_count, sizes.parallel, sizes.new_seconds))
                runs[target.key]["new_sequential_lean"].append(
                    await scenarios.new_sessions_lean(target, sizes.pool, sizes.sequential, sizes.new_seconds))
    for key, kinds in runs.items():
        for kind, rs in kinds.items():
            results[key][kind] = {"per_second": _median([r["per_second"] for r in rs]), "runs": rs}


async def _start_serialproxy(processes, vm, workdir, sizes: Sizes) -> Serialproxy:
    proxy = Serialproxy(processes, workdir, sizes.proxy_files)
    consoles = max(proxy.file_limit // 2, max(sizes.latency_steps) + sizes.pool)
    _say(f"serialproxy: open-file limit {proxy.file_limit}; registering {consoles} consoles and minting their URLs")
    proxy.setup = {"file_limit": proxy.file_limit, "logged_room": proxy.room, "version": proxy.version,
                   "register_seconds": proxy.add_consoles("echo", vm.ports["echo"], consoles), "consoles": consoles}
    for mode in ("stream", "sink", "flood"):
        proxy.add_consoles(mode, vm.ports[mode], max(sizes.repeats, 2))
    return proxy


async def _memory_under_flood(targets, sizes: Sizes, results: dict, phases) -> None:
    for target in targets:
        if target.key != "raw":
            with phases.phase(f"stalled-{target.key}", f"{target.name}: a stalled reader for {sizes.stall_seconds} s"):
                results[target.key]["stalled"] = await scenarios.stalled_reader(target, sizes.stall_seconds)
        if target.key == "serialproxy":
            for stall in (False, True):
                kind = "spectators_stalled" if stall else "spectators"
                with phases.phase(kind, f"serialproxy: {sizes.spectators} {'stalled' if stall else 'reading'} spectators of a flooding console"):
                    results[target.key][kind] = await scenarios.spectators(target, sizes.spectators, sizes.spectator_seconds, stall)


async def _ladder(proxy: Serialproxy, sizes: Sizes, profiler) -> dict:
    await asyncio.sleep(1.0)
    idle_fds = fd_count(proxy.process.pid)
    cap = proxy.file_limit // 2
    steps = scenarios.ladder_steps(cap, (proxy.file_limit - idle_fds) // 2, sizes.quick)
    room = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - CLIENT_SPARE_FILES  # this client holds a socket per session
    note = None
    if steps[-1] > room:
        note = f"steps above {room} left out: this client's open-file limit is {room + CLIENT_SPARE_FILES} (run as root)"
        steps = [s for s in steps if s <= room]
    _say(f"serialproxy: the ladder {steps} (the idle daemon holds {idle_fds} files)")
    with profiler.phase("ladder"):
        return {"cap": cap, "idle_fds": idle_fds, "steps": steps, "note": note,
                **await scenarios.ladder(proxy, steps, sizes.ladder_seconds, proxy.process.pid)}


async def _run(processes, workdir, sizes: Sizes, args, results: dict) -> None:
    phases = _Phases(results)
    vm = FakeVM(processes, sizes.transfer_bytes, sizes.transfer_bytes, flood_seconds=120.0)
    targets, proxy, websockify = [], None, None
    profiler = Profiler.off()
    with phases.phase("setup", "starting the targets"):
        if "raw" in args.targets:
            targets.append(RawTCP(vm))
        if "websockify" in args.targets:
            websockify = Websockify(processes, _install_websockify(), vm, workdir)
            targets.append(websockify)
        if "serialproxy" in args.targets:
            proxy = await _start_serialproxy(processes, vm, workdir, sizes)
            targets.append(proxy)
            if args.profile:
                profiler = Profiler(processes, workdir)
                profiler.attach(proxy.process.pid)
    for target in targets:
        results[target.key] = {"version": target.version} if hasattr(target, "version") else {}
    if proxy is not None:
        results["serialproxy"]["setup"] = proxy.setup
    names = ", ".join(t.name for t in targets)
    with phases.phase("latency", f"latency and memory with {sizes.latency_steps} sessions: {names}"):
        await _latency(targets, sizes, results, profiler)
    with phases.phase("throughput", f"throughput, {sizes.transfer_bytes >> 20} MiB each way, {sizes.repeats} rounds: {names}"):
        await _throughput(targets, sizes, results, profiler)
    relays = targets + ([Floor(processes, vm)] if "floor" in args.targets else [])
    if "linger" in args.targets:
        relays.append(LingeringSerialproxy(processes, workdir, vm, sizes.pool))
    with phases.phase("new-sessions", f"new sessions, {sizes.repeats} rounds: {', '.join(t.name for t in relays)}"):
        await _new_sessions(relays, sizes, results, profiler)
    for relay in relays[len(targets):]:
        processes.stop(relay.process)
    await _memory_under_flood(targets, sizes, results, phases)
    if websockify is not None:
        websockify.stop(processes)
        results["websockify"]["log_errors"] = websockify.log_errors()
    if proxy is not None:
        with phases.phase("ladder", "serialproxy: the sessions ladder"):
            results["serialproxy"]["ladder"] = await _ladder(proxy, sizes, profiler)
    results["profile"] = profiler.summary()


def _prune_runs(keep: int = 10) -> None:
    """Keep the newest ``keep`` run directories of bench/out (each holds logs and a database)."""
    out = os.path.join(BENCH, "out")
    runs = sorted(d for d in os.listdir(out) if d.startswith("run-")) if os.path.isdir(out) else []
    for old in runs[:-keep]:
        shutil.rmtree(os.path.join(out, old), ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds, small counts")
    parser.add_argument("--targets", default="raw,websockify,serialproxy,floor,linger",
                        help="comma-separated subset of raw,websockify,serialproxy,floor,linger (floor, and serialproxy "
                             "with console_linger = 5: new sessions only)")
    parser.add_argument("--proxy-files", type=int, help="hard open-file limit for the daemon (default: inherited)")
    parser.add_argument("--profile", action="store_true", help="sample the daemon with py-spy (figures then carry its overhead)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait, at most this long, until other work on the machine uses under a quarter of a core")
    parser.add_argument("--output", help="the report to write (default: bench/RESULTS.md; --quick: OUT/RESULTS-quick.md)")
    args = parser.parse_args(argv)
    args.targets = set(args.targets.split(","))
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    inherited = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    proxy_files = args.proxy_files or sizes.proxy_files or (PROXY_FILES_MAX if inherited > PROXY_FILES_MAX else None)
    sizes = Sizes(**{**asdict(sizes), "proxy_files": proxy_files})
    _prune_runs()
    workdir = os.path.join(BENCH, "out", datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S"))
    os.makedirs(workdir)
    signal.signal(signal.SIGTERM, _interrupt)
    raise_own_file_limit(CLIENT_FILES)
    processes = Processes()
    started = time.time()
    before = machine.snapshot()
    results = {}
    if args.wait_quiet:
        _say(f"waiting (at most {args.wait_quiet:.0f} s) for other work on this machine to calm down")
        results["waited_for_quiet"] = {"other_cores_at_start": machine.wait_until_quiet(args.wait_quiet)}
    failed = None
    try:
        asyncio.run(asyncio.wait_for(_run(processes, workdir, sizes, args, results), RUN_LIMIT[mode]))
    except BaseException as e:  # still report what was measured, then fail
        failed = e
        results["failed"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        processes.stop_all()
    run = {"mode": "quick" if args.quick else "full", "started": started, "seconds": time.time() - started,
           "argv": sys.argv[1:], "workdir": os.path.relpath(workdir, ROOT), "sizes": asdict(sizes),
           "machine": machine.describe(), "load": machine.load_during(before)}
    results["run"] = run
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    output = args.output or (os.path.join(workdir, "RESULTS-quick.md") if args.quick else os.path.join(BENCH, "RESULTS.md"))
    output = os.path.join(os.environ.get("BENCH_CALLER_DIR", os.getcwd()), output)
    with open(output, "w") as f:
        f.write(report.render(results))
    _say(f"done in {run['seconds']:.0f} s: {os.path.relpath(output, os.getcwd())}")
    print(report.summary(results), flush=True)
    if failed is not None:
        _say(f"the run failed: {results['failed']}")
        return 130 if isinstance(failed, KeyboardInterrupt) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
