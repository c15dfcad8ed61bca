"""The measurements, each an async function of a target and its sizes, returning plain dicts.

Every loop is bounded in count and in time; every session a scenario opens
is closed (or aborted) before it returns, also when it fails.
"""

import asyncio
import collections
import json
import os
import statistics
import sys
import time
from typing import Callable, List

from procs import cpu_seconds, die_with_parent, fd_count, memory_kib, pss_kib
from sessions import Session, SessionError, open_session

__all__ = ["open_many", "close_all", "echo_all", "latency_and_memory", "throughput", "new_sessions", "new_sessions_lean",
           "stalled_reader", "spectators", "ladder", "percentile"]

OPEN_TIMEOUT = 20.0   # seconds to connect, upgrade and see the first echo
ECHO_TIMEOUT = 20.0   # seconds for an echo under load
OPENING = 32          # sessions being opened at once
MIB = 1 << 20


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _why(error: BaseException) -> str:
    if isinstance(error, SessionError) and error.code is not None:
        return f"close {error.code}"
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    if type(error).__name__ == "InvalidState":  # sending on a websocket the server had closed
        return "closed by the server"
    return type(error).__name__


async def _open_echoing(target, timeout: float) -> Session:
    session = await open_session(target, timeout)
    try:
        await session.echo(b"!", timeout)
    except BaseException:
        session.abort()
        raise
    return session


async def open_many(targets: list, timeout: float = OPEN_TIMEOUT, concurrency: int = OPENING, time_limit: float = 300.0):
    """Open a session per target, each proven by one echo; (sessions, Counter of failure reasons).

    Nothing new is started after ``time_limit`` seconds: those count as "not tried (time limit)".
    """
    gate = asyncio.Semaphore(concurrency)
    failures = collections.Counter()
    deadline = time.monotonic() + time_limit

    async def one(target):
        async with gate:
            if time.monotonic() > deadline:
                failures["not tried (time limit)"] += 1
                return None
            try:
                return await _open_echoing(target, timeout)
            except Exception as e:
                failures[_why(e)] += 1
                return None

    opened = await asyncio.gather(*(one(t) for t in targets))
    return [s for s in opened if s is not None], failures


async def close_all(sessions: List[Session], timeout: float = 10.0) -> None:
    """Close politely, at most ``timeout`` seconds in all; abort what is left."""
    gate = asyncio.Semaphore(256)

    async def one(session):
        async with gate:
            try:
                await session.close(timeout)
            except Exception:
                session.abort()

    try:
        await asyncio.wait_for(asyncio.gather(*(one(s) for s in sessions)), timeout)
    except asyncio.TimeoutError:
        pass
    for session in sessions:
        if not session.lost.done():
            session.abort()


async def echo_all(sessions: List[Session], timeout: float = ECHO_TIMEOUT):
    """Every session echoes one byte; the Counter of failure reasons (empty: all echoed)."""
    failures = collections.Counter()

    async def one(session):
        try:
            await session.echo(b".", timeout)
        except Exception as e:
            failures[_why(e)] += 1

    await asyncio.gather(*(one(s) for s in sessions))
    return failures


async def _settle(seconds: float = 1.0) -> None:
    await asyncio.sleep(seconds)


async def _warm_up(target, count: int) -> None:
    """Open and close a few sessions, so that one-time allocations are made before the baseline."""
    warm, _ = await open_many(target.targets("echo", count))
    await close_all(warm)


async def _round_trips(samples: dict, rounds: int, time_limit: float) -> dict:
    """Echo round trips, one at a time, taking the targets in turn so that they share any background noise."""
    payload = b"0123456789abcdef"
    times = {key: [] for key in samples}
    deadline = time.monotonic() + time_limit
    for i in range(rounds):
        if time.monotonic() > deadline:
            break
        for key, sample in samples.items():
            if sample:
                times[key].append(await sample[i % len(sample)].echo(payload, ECHO_TIMEOUT))
    return times


async def latency_and_memory(targets: list, steps, rounds: int, sample_size: int, time_limit: float, warmup: int) -> dict:
    """Echo latency with K live sessions per target for each K in ``steps``; PSS per idle session at the last K.

    Every target has its K sessions open at once and the round trips take
    the targets in turn. Returns a result per target key.
    """
    results, sessions, addresses = {}, {}, {}
    try:
        for target in targets:
            await _warm_up(target, warmup)
            addresses[target.key] = target.targets("echo", max(steps))
            sessions[target.key] = []
        await _settle()
        for target in targets:
            pss, anon = memory_kib(target.proxy_pids())
            results[target.key] = {"pss_before_kib": pss, "anon_before_kib": anon, "steps": []}
        for k in steps:
            failures = {}
            for target in targets:
                open_now = sessions[target.key]
                more, failures[target.key] = await open_many(addresses[target.key][len(open_now):k])
                open_now.extend(more)
            await _settle(0.5)
            samples = {key: s[:: max(1, len(s) // sample_size)][:sample_size] for key, s in sessions.items()}
            times = await _round_trips(samples, rounds, time_limit)
            for target in targets:
                t = times[target.key]
                pss, anon = memory_kib(target.proxy_pids())
                results[target.key]["steps"].append({
                    "k": k, "open": len(sessions[target.key]), "failures": dict(failures[target.key]), "rounds": len(t),
                    "p50_us": percentile(t, 0.5) * 1e6 if t else None, "p99_us": percentile(t, 0.99) * 1e6 if t else None,
                    "mean_us": statistics.mean(t) * 1e6 if t else None,
                    "pss_kib": pss, "anon_kib": anon, "processes": len(target.proxy_pids())})
        for result in results.values():
            last = result["steps"][-1]
            result["pss_per_session_kib"] = (last["pss_kib"] - result["pss_before_kib"]) / max(1, last["open"])
            result["anon_per_session_kib"] = (last["anon_kib"] - result["anon_before_kib"]) / max(1, last["open"])
            result["idle_sessions"] = last["open"]
    finally:
        for opened in sessions.values():
            await close_all(opened)
    return results


async def _stream_once(target, total: int, timeout: float) -> float:
    """VM->client MiB/s, timed from the first byte (so that attaching, or a fork, is not counted)."""
    session = await open_session(target, OPEN_TIMEOUT)
    try:
        await session.wait_received(1, OPEN_TIMEOUT)
        start, first = time.monotonic(), session.received
        await session.wait_received(total, timeout)
        return (total - first) / MIB / (time.monotonic() - start)
    finally:
        session.abort()


async def _sink_once(target, total: int, timeout: float) -> float:
    session = await open_session(target, OPEN_TIMEOUT)
    chunk = bytes(64 * 1024)  # the largest frame serialproxy takes
    try:
        start = time.monotonic()
        deadline = start + timeout
        for _ in range(total // len(chunk)):
            session.send(chunk)
            await session.drain(max(0.001, deadline - time.monotonic()))
        await session.wait_received(2, max(0.001, deadline - time.monotonic()))  # the sink's OK
        return total / MIB / (time.monotonic() - start)
    finally:
        session.abort()


async def throughput(target, way: str, total: int, index: int, timeout: float) -> dict:
    """MiB/s of one session one way: ``vm_to_client`` (stream) or ``client_to_vm`` (sink), and the proxy's CPU."""
    mode, once = ("stream", _stream_once) if way == "vm_to_client" else ("sink", _sink_once)
    pids = target.proxy_pids(mode)
    cpu = cpu_seconds(pids, reaped=True)
    try:
        rate, error = await once(target.targets(mode, index + 1)[index], total, timeout), None
    except Exception as e:
        rate, error = None, _why(e)
    await _settle(0.3)
    return {"mib_per_s": rate, "error": error, "proxy_cpu_s": cpu_seconds(target.proxy_pids(mode), reaped=True) - cpu}


PHASES = ("connect", "upgrade", "first_byte", "close")  # of a new session, as the load client sees them


async def _cycle(target) -> tuple:
    """One new session: connect, upgrade (and token check), first byte back, close; each phase's seconds."""
    start = time.perf_counter()
    session = await open_session(target, OPEN_TIMEOUT)
    marks = [start, session.made_at, time.perf_counter()]
    try:
        await session.echo(b"!", OPEN_TIMEOUT)
        marks.append(time.perf_counter())
        await session.close()
        marks.append(time.perf_counter())
    except BaseException:
        session.abort()
        raise
    return tuple(b - a for a, b in zip(marks, marks[1:]))


async def new_sessions(target, pool: int, count: int, parallel: int, time_limit: float) -> dict:
    """New sessions per second, one after another (parallel=1) or ``parallel`` at a time."""
    targets = target.targets("echo", pool)
    errors = collections.Counter()
    phases = []
    done = 0
    next_index = 0
    deadline = time.monotonic() + time_limit

    async def worker():
        nonlocal done, next_index
        while next_index < count and time.monotonic() < deadline:
            t = targets[next_index % len(targets)]
            next_index += 1
            try:
                phases.append(await _cycle(t))
                done += 1
            except Exception as e:
                errors[_why(e)] += 1

    master = target.proxy_pids()[:1]  # websockify's children are reaped by the listener: counted there
    cpu = cpu_seconds(master, reaped=True)
    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    elapsed = time.monotonic() - start
    await _settle(0.5)  # let the last children be reaped
    return {"parallel": parallel, "sessions": done, "seconds": elapsed, "per_second": done / elapsed,
            "errors": dict(errors), "proxy_cpu_ms_per_session": 1000 * (cpu_seconds(master, reaped=True) - cpu) / max(1, done),
            "phases_us": {name: 1e6 * statistics.median(p[i] for p in phases) if phases else None
                          for i, name in enumerate(PHASES)}}


async def new_sessions_lean(target, pool: int, count: int, time_limit: float) -> dict:
    """New sessions one after another from bench/leanclient.py (blocking sockets, no event loop), in a process of its own."""
    targets = list(dict.fromkeys(t if isinstance(t, str) else f"tcp://{t[0]}:{t[1]}" for t in target.targets("echo", pool)))
    master = target.proxy_pids()[:1]
    cpu = cpu_seconds(master, reaped=True)
    client = await asyncio.create_subprocess_exec(
        sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "leanclient.py"),
        "--count", str(count), "--seconds", str(time_limit), *targets,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent)
    try:
        out, _ = await asyncio.wait_for(client.communicate(), time_limit + 60)
    except BaseException:
        client.kill()
        await client.wait()
        raise
    if client.returncode != 0:
        raise RuntimeError(f"bench/leanclient.py failed (exit {client.returncode})")
    result = json.loads(out)
    await _settle(0.5)  # let the last children be reaped
    result["proxy_cpu_ms_per_session"] = 1000 * (cpu_seconds(master, reaped=True) - cpu) / max(1, result["sessions"])
    return result


async def _watch_memory(pids: Callable[[], list], seconds: float, interval: float = 0.5) -> List[tuple]:
    """(seconds since start, PSS KiB, anonymous PSS KiB) every ``interval``."""
    samples = []
    start = time.monotonic()
    for _ in range(int(seconds / interval) + 1):
        samples.append((round(time.monotonic() - start, 1), *memory_kib(pids())))
        await asyncio.sleep(interval)
    return samples


def _growth(baseline: List[tuple], samples: List[tuple]) -> dict:
    """How far memory rose above the baseline (medians of its samples): PSS at its peak; anonymous PSS at its peak."""
    pss0 = statistics.median(s[1] for s in baseline)
    anon0 = statistics.median(s[2] for s in baseline)
    return {"pss_before_kib": pss0, "anon_before_kib": anon0, "samples": samples,
            "growth_kib": max(s[1] for s in samples) - pss0, "anon_growth_kib": max(s[2] for s in samples) - anon0,
            "anon_growth_last_half_kib": samples[-1][2] - samples[len(samples) // 2][2]}


async def stalled_reader(target, seconds: float) -> dict:
    """A writer that stops reading while the VM floods: the proxy's memory over ``seconds``."""
    pids = lambda: target.proxy_pids("flood")  # noqa: E731
    await _settle(0.5)
    baseline = await _watch_memory(pids, 1.0, 0.25)
    session = await open_session(target.targets("flood", 1)[0], OPEN_TIMEOUT)
    try:
        await session.wait_received(1 << 20, OPEN_TIMEOUT)
        session.stall()
        got = session.received
        samples = await _watch_memory(pids, seconds)
    finally:
        session.abort()
    return {**_growth(baseline, samples), "read_before_stall": got}


async def spectators(target, count: int, seconds: float, stall: bool) -> dict:
    """``count`` read-only spectators of one flooding console (reading, or stalled): memory and closes."""
    pids = target.proxy_pids
    await _settle(0.5)
    baseline = await _watch_memory(pids, 1.0, 0.25)
    url = target.targets("flood", 1)[0] + "&mode=read"
    watchers, failures = [], collections.Counter()
    try:
        watchers, failures = await _open_spectators(url, count)
        if stall:
            for session in watchers:
                session.stall()
        start_bytes = sum(s.received for s in watchers)
        start = time.monotonic()
        samples = await _watch_memory(pids, seconds)
        elapsed = time.monotonic() - start
        delivered = sum(s.received for s in watchers) - start_bytes
        if stall:  # a paused reader does not see a reset until it reads again
            for session in watchers:
                session.unstall()
            await _settle(1.5)
        codes = collections.Counter(str(s.close_code) if s.close_code else "reset" for s in watchers if s.lost.done())
    finally:
        for session in watchers:
            session.abort()
    return {**_growth(baseline, samples), "spectators": len(watchers), "open_failures": dict(failures), "stalled": stall,
            "closed_by_proxy": dict(codes), "still_open": count - sum(codes.values()) - sum(failures.values()),
            "delivered_mib_per_s": delivered / MIB / elapsed}


async def _open_spectators(url: str, count: int):
    gate = asyncio.Semaphore(OPENING)
    failures = collections.Counter()

    async def one():
        async with gate:
            try:
                return await open_session(url, OPEN_TIMEOUT)
            except Exception as e:
                failures[_why(e)] += 1

    opened = await asyncio.gather(*(one() for _ in range(count)))
    return [s for s in opened if s is not None], failures


def ladder_steps(cap: int, ceiling: int, quick: bool) -> List[int]:
    """Session counts to climb: round steps, then 90 %, 99 % of ``cap`` and the ``ceiling`` the fds allow."""
    rungs = (25, 50, 100) if quick else (100, 500, 1000, 2000, 5000)
    steps = [s for s in rungs if s < 0.9 * cap] + [int(0.9 * cap), -(-99 * cap // 100)]
    if ceiling > int(0.9 * cap):
        steps.append(ceiling)
    return sorted(set(steps))


async def ladder(target, steps: List[int], time_limit: float, pid: int) -> dict:
    """Climb ``steps``: open sessions up to each, check every one echoes; stop at the first failing step."""
    targets = target.targets("echo", max(steps))
    sessions: List[Session] = []
    rows = []
    deadline = time.monotonic() + time_limit
    try:
        for step in steps:
            if time.monotonic() > deadline:
                rows.append({"step": step, "skipped": "time limit"})
                break
            start = time.monotonic()
            more, open_failures = await open_many(targets[len(sessions):step], time_limit=max(1.0, deadline - start))
            sessions.extend(more)
            opened = time.monotonic() - start
            echo_failures = await echo_all(sessions)
            alive = sum(1 for s in sessions if not s.lost.done())
            ok = not open_failures and not echo_failures and alive == step
            rows.append({"step": step, "open": len(sessions), "all_echo": ok, "open_failures": dict(open_failures),
                         "echo_failures": dict(echo_failures), "open_seconds": opened,
                         "opened_per_second": len(more) / opened if opened else None,
                         "proxy_fds": fd_count(pid), "pss_kib": pss_kib([pid])})
            if not ok:
                break
    finally:
        await close_all(sessions, timeout=30.0)
    passed = [r["step"] for r in rows if r.get("all_echo")]
    return {"rows": rows, "highest_all_echo": max(passed) if passed else 0}
