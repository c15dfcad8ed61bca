"""bench/RESULTS.md from a run's results: the machine, the versions, every figure, the targets of issue 7."""

import collections
import datetime
import statistics
from typing import Optional

from scenarios import PHASES

__all__ = ["render", "summary", "targets"]

NA = "n/a"


def _get(results: dict, *path):
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def _num(value, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return NA
    return f"{value:,.{digits}f}{unit}"


def _ratio(a, b) -> Optional[float]:
    return a / b if a is not None and b else None


def _latency_step(results: dict, name: str, k: int) -> Optional[dict]:
    for step in _get(results, name, "latency", "steps") or ():
        if step["k"] == k:
            return step
    return None


def _top_k(results: dict) -> Optional[int]:
    steps = _get(results, "serialproxy", "latency", "steps") or _get(results, "raw", "latency", "steps") or []
    return max((s["k"] for s in steps), default=None)


def targets(results: dict) -> list:
    """(what, figure, goal, met) for each target of the issue; met is None when it could not be measured."""
    rows = []
    ladder = _get(results, "serialproxy", "ladder") or {}
    share = _ratio(ladder.get("highest_all_echo"), ladder.get("cap"))
    rows.append(("concurrent sessions, all echoing, of (proxy fd limit / 2)",
                 f"{_num(ladder.get('highest_all_echo'))} of {_num(ladder.get('cap'))} = {_num(share and 100 * share, 1, ' %')}",
                 "≥ 99 %", None if share is None else share >= 0.99))
    per = _get(results, "serialproxy", "latency", "pss_per_session_kib")
    rows.append(("memory per idle session (PSS)", _num(per, 1, " KiB"), "≤ 30 KiB", None if per is None else per <= 30))
    k = _top_k(results)
    proxy_p99 = _get(_latency_step(results, "serialproxy", k) or {}, "p99_us")
    raw_p99 = _get(_latency_step(results, "raw", k) or {}, "p99_us")
    r = _ratio(proxy_p99, raw_p99)
    rows.append((f"echo p99 with {k} sessions, × raw TCP's", f"{_num(proxy_p99)} µs vs {_num(raw_p99)} µs = {_num(r, 2, '×')}",
                 "≤ 2.5×", None if r is None else r <= 2.5))
    for way, goal in (("vm_to_client", 1.0), ("client_to_vm", 3.0)):
        mine, theirs = _get(results, "serialproxy", "throughput", way), _get(results, "websockify", "throughput", way)
        r = _ratio(mine, theirs)
        label = "VM→client" if way == "vm_to_client" else "client→VM"
        rows.append((f"{label} throughput, × websockify's", f"{_num(mine, 1)} vs {_num(theirs, 1)} MiB/s = {_num(r, 2, '×')}",
                     f"≥ {goal:g}×", None if r is None else r >= goal))
    for kind, goal in (("new_sequential", 8.0), ("new_parallel", 5.0), ("new_sequential_lean", 8.0)):
        mine, theirs = _get(results, "serialproxy", kind, "per_second"), _get(results, "websockify", kind, "per_second")
        if kind == "new_sequential_lean" and mine is None and theirs is None:
            continue  # a run from before the lean client
        r = _ratio(mine, theirs)
        label = _NEW_LABELS[kind]
        rows.append((f"new sessions/s {label}, × websockify's", f"{_num(mine)} vs {_num(theirs)} /s = {_num(r, 2, '×')}",
                     f"≥ {goal:g}×", None if r is None else r >= goal))
    growth = _get(results, "serialproxy", "stalled", "anon_growth_kib")
    pss = _get(results, "serialproxy", "stalled", "growth_kib")
    rows.append(("stalled reader: proxy memory growth while the VM floods (anonymous PSS; all PSS)",
                 f"{_num(growth, 0, ' KiB')}; {_num(pss, 0, ' KiB')}", "≤ 256 KiB", None if growth is None else growth <= 256))
    return rows


def _mark(met) -> str:
    return "not measured" if met is None else ("**met**" if met else "**not met**")


def _machine(results: dict) -> str:
    run, m, load = results["run"], results["run"]["machine"], results["run"]["load"]
    busy = load["other_cores"]
    phases = results.get("load_by_phase") or {}
    worst = max(phases.items(), key=lambda item: item[1]["other_cores"], default=None)
    if busy < 0.05:
        note = "the machine was otherwise idle"
    else:
        note = (f"{'**the machine was busy with other work**' if busy >= 0.25 else 'the machine had a little other work'}: "
                f"processes outside this run used {busy:.2f} cores on average"
                + (f", at most {worst[1]['other_cores']:.2f} during the {worst[0]} phase" if worst else ""))
    steal = load.get("steal_cores")
    if steal is not None:
        most = max(phases.items(), key=lambda item: item[1].get("steal_cores", 0.0), default=None)
        note += ("; the host withheld " + (f"{steal:.2f} cores on average (steal)" if steal >= 0.005 else "nothing (no steal)")
                 + (f", at most {most[1]['steal_cores']:.2f} during the {most[0]} phase" if most and most[1].get("steal_cores", 0.0) >= 0.005 else ""))
    started = datetime.datetime.fromtimestamp(run["started"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"- run: `{' '.join(['bench/run', *run['argv']])}` ({run['mode']}), {started}, {run['seconds']:.0f} s; raw data in `{run['workdir']}/results.json` (not committed)",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB memory, Linux {m['kernel']}",
        f"- load: {note} (load average {load['loadavg_before'][0]:.2f} before, {load['loadavg_after'][0]:.2f} after; "
        f"this run used {load['run_cpu_s']:.0f} CPU s, the machine {load['machine_cpu_s']:.0f})",
        f"- versions: Python {m['python']}, Twisted {m['twisted']}, autobahn {m['autobahn']}, websockets {m['websockets']} (load client), "
        f"serialproxy {m['serialproxy_commit']} ({m['serialproxy_tree']} under serialproxy/), "
        f"websockify {_get(results, 'websockify', 'version') or NA}",
        "- other work by phase (cores used by processes outside this run" + ("; in brackets, cores the host withheld" if steal is not None else "") + "): "
        + (", ".join(f"{name} {load['other_cores']:.2f}" + (f" ({load['steal_cores']:.2f})" if "steal_cores" in load else "")
                     for name, load in phases.items()) or NA),
        "- everyone shares the same 2 cores: the load client (one asyncio process; for the lean client's rows, `bench/leanclient.py` in a "
        "process of its own), the fake VM (one asyncio process) and the proxy under test",
    ])


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_TARGETS = (("serialproxy", "serialproxy"), ("raw", "raw TCP"), ("websockify", "websockify"))


def _per_target(results: dict, fmt) -> list:
    return [fmt(results.get(key) or {}) for key, _ in _TARGETS]


def _latency(results: dict) -> str:
    ks = sorted({s["k"] for key, _ in _TARGETS for s in (_get(results, key, "latency", "steps") or ())})
    rows = []
    for k in ks:
        cells = []
        for key, _ in _TARGETS:
            step = _latency_step(results, key, k)
            cells.append(NA if step is None else f"{_num(step['p50_us'])} / {_num(step['p99_us'])}"
                         + (f" (only {step['open']} open: {sum(step['failures'].values())} failed, {step['failures']})"
                            if step["failures"] else ""))
        rows.append([k, *cells])
    text = _table(["live sessions", *(f"{n} p50 / p99 µs" for _, n in _TARGETS)], rows)
    errors = _get(results, "websockify", "log_errors")
    if errors:
        text += "\n\nwebsockify's logs: " + "; ".join(f"{n} × `{line}`" for line, n in errors.items())
    return text


def _memory(results: dict) -> str:
    def cell(r):
        lat = r.get("latency") or {}
        if "pss_per_session_kib" not in lat:
            return NA
        last = lat["steps"][-1]
        return (f"{lat['pss_per_session_kib']:.1f} KiB, anonymous {lat['anon_per_session_kib']:.1f} KiB "
                f"({lat['pss_before_kib'] / 1024:.1f} → {last['pss_kib'] / 1024:.1f} MiB "
                f"with {lat['idle_sessions']} sessions, {last['processes']} process{'es' if last['processes'] != 1 else ''})")

    cells = _per_target(results, cell)
    cells[1] = "— (no proxy)"
    return _table(["", *(n for _, n in _TARGETS)], [["PSS per idle session", *cells]])


def _throughput(results: dict) -> str:
    rows = []
    for way, label in (("vm_to_client", "VM → client (stream)"), ("client_to_vm", "client → VM (sink)")):
        def cell(r, way=way):
            t = r.get("throughput") or {}
            runs = (t.get("runs") or {}).get(way) or []
            if not runs:
                return NA
            text = f"{_num(t.get(way))} (" + ", ".join(_num(x["mib_per_s"]) if x["error"] is None else x["error"] for x in runs)
            cpu = [x["proxy_cpu_s"] for x in runs if x["mib_per_s"]]
            size = results["run"]["sizes"]["transfer_bytes"] / (1 << 20)
            return text + (f"; proxy CPU {1000 * statistics.mean(cpu) / size:.1f} ms/MiB)" if cpu and any(cpu) else ")")
        rows.append([label, *_per_target(results, cell)])
    return _table(["MiB/s, one session: median (each round)", *(n for _, n in _TARGETS)], rows)


_NEW_LABELS = {"new_sequential": "sequential", "new_parallel": "16 in parallel",
               "new_sequential_lean": "sequential, lean client (bench/leanclient.py)"}


def _new_sessions(results: dict) -> str:
    rows = []
    for kind, label in (("new_sequential", "one after another"), ("new_parallel", "16 in parallel"),
                        ("new_sequential_lean", "one after another, lean client")):
        def cell(r, kind=kind):
            n = r.get(kind)
            if not n or not n.get("runs"):
                return NA
            runs = n["runs"]
            text = f"{_num(n['per_second'])} (" + ", ".join(_num(x["per_second"]) for x in runs)
            cpu = [x["proxy_cpu_ms_per_session"] for x in runs]
            text += f"; proxy CPU {statistics.mean(cpu):.2f} ms each" if any(cpu) else ""
            errors = collections.Counter()
            for x in runs:
                errors.update(x["errors"])
            return text + (f"; errors {dict(errors)})" if errors else ")")
        rows.append([label, *_per_target(results, cell)])
    text = _table(["new sessions/s: median (each round)", *(n for _, n in _TARGETS)], rows)
    kinds = ("new_sequential", "new_parallel", "new_sequential_lean")
    floor, linger, websockify = ([_get(results, key, kind, "per_second") for kind in kinds] for key in ("floor", "linger", "websockify"))
    if linger[0] and linger[1]:
        text += (f"\n\nWith `console_linger = 5` (off by default; a reconnect within 5 s reuses the console's VM connection, "
                 f"see docs/configuration.md) serialproxy did {_each(linger)} new sessions/s "
                 f"({_KINDS_SAID}) in the same run"
                 + (f", {_each(_ratios(linger, websockify), 2, '×')} websockify's" if websockify[0] and websockify[1] else "") + ".")
    if floor[0] and floor[1]:
        text += (f"\n\nFor scale, the floor (`bench/floor.py`: a websocket relay on Twisted's reactor with no token, "
                 f"database, Origin check, autobahn, logging or flow control) did {_each(floor)} new "
                 f"sessions/s ({_KINDS_SAID}) in the same run"
                 + (f", {_each(_ratios(floor, websockify), 1, '×')} websockify's" if websockify[0] and websockify[1] else "")
                 + ": the most any design on this reactor and this machine can reach with these load clients.")
    lean_cpu = [x["client_cpu_us"] for x in _get(results, "serialproxy", "new_sequential_lean", "runs") or ()]
    if lean_cpu:
        text += ("\n\nThe lean client (`bench/leanclient.py`, a process of its own) opens sessions one after another over a "
                 f"blocking socket, its frames built by hand: {statistics.median(lean_cpu):,.0f} µs of its own CPU a "
                 "serialproxy session, against about 1,000 for the suite's asyncio client (measured 2026-11-26), so more of "
                 "what it times is the proxy's own part, as a lean harness would see it.")
    for kind, title in (("new_sequential", "the suite's client"), ("new_sequential_lean", "the lean client")):
        phases = _phases(results, kind, title)
        if phases:
            text += "\n\n" + phases
    return text


_KINDS_SAID = "one after another / 16 in parallel / one after another with the lean client"


def _each(values: list, digits: int = 0, unit: str = "") -> str:
    return " / ".join(_num(v, digits, unit) for v in values)


def _ratios(mine: list, theirs: list) -> list:
    return [_ratio(a, b) for a, b in zip(mine, theirs)]


_PHASE_ROWS = (("serialproxy", "serialproxy"), ("linger", "serialproxy, console_linger = 5"),
               ("floor", "Twisted floor"), ("websockify", "websockify"), ("raw", "raw TCP"))


def _phases(results: dict, kind: str, title: str) -> str:
    """One after another, each phase of a new session as a load client saw it (median of the rounds' medians)."""
    rows = []
    for key, name in _PHASE_ROWS:
        runs = [r["phases_us"] for r in _get(results, key, kind, "runs") or () if r.get("phases_us")]
        if not runs or any(v is None for r in runs for v in r.values()):
            continue
        medians = [statistics.median(r[p] for r in runs) for p in PHASES]
        rows.append([name, *(f"{m:,.0f}" for m in medians), f"{sum(medians):,.0f}"])
    if not rows:
        return ""
    return (f"Where a new session's time goes, one after another, as {title} sees it (µs, medians of the "
            "rounds' medians). The proxies dial the VM after their 101, so the VM connection is in \"first byte back\" "
            "(except with `console_linger`, which reuses it); raw TCP has no upgrade (the column is the client's own "
            "turn) and its close is a plain TCP close:\n\n"
            + _table([f"one after another, {title}", "TCP connect", "upgrade (token check, lock, 101)", "first byte back",
                      "closing handshake", "total"], rows))


def _samples(samples: list) -> str:
    picked = samples[:: max(1, len(samples) // 10)]
    return ", ".join(f"{s[1] / 1024:.1f}" for s in picked)


def _flood_row(name: str, s: dict) -> list:
    return [name, f"{s['pss_before_kib'] / 1024:.1f}", f"{s['growth_kib']:,.0f}", f"{s['anon_growth_kib']:,.0f}",
            f"{s['anon_growth_last_half_kib']:,.0f}", _samples(s["samples"])]


def _stalled(results: dict) -> str:
    rows = []
    for key, name in (("serialproxy", "serialproxy: the writer stops reading"), ("websockify", "websockify: the client stops reading")):
        s = _get(results, key, "stalled")
        if s:
            rows.append(_flood_row(name, s))
    for key, label in (("spectators", "reading"), ("spectators_stalled", "stalled")):
        s = _get(results, "serialproxy", key)
        if s:
            closed = ", ".join(f"{n} by {code}" for code, n in s["closed_by_proxy"].items()) or "none"
            rows.append(_flood_row(f"serialproxy: {s['spectators']} {label} spectators (closed: {closed}; {s['still_open']} still open; "
                                   f"{s['delivered_mib_per_s']:.0f} MiB/s delivered in all)", s))
    seconds = results["run"]["sizes"]["stall_seconds"]
    return ("PSS of the proxy (websockify: summed over its processes) sampled every 0.5 s for "
            f"{seconds:g} s after the reader stops; growth is over the median of 1 s of samples taken before the session "
            "opened. Anonymous PSS leaves out shared code pages, whose PSS moves with whatever else runs on the machine.\n\n"
            + _table(["while the VM floods", "PSS before, MiB", "PSS peak growth, KiB", "anon. PSS peak growth, KiB",
                      "anon. growth over the 2nd half, KiB", "PSS over time, MiB (every ~1 s)"], rows))


def _ladder(results: dict) -> str:
    ladder = _get(results, "serialproxy", "ladder")
    if not ladder:
        return "not run"
    setup = _get(results, "serialproxy", "setup") or {}
    rows = []
    for r in ladder["rows"]:
        if "skipped" in r:
            rows.append([r["step"], f"skipped: {r['skipped']}", "", "", "", ""])
            continue
        failures = {**{f"open: {k}": v for k, v in r["open_failures"].items()}, **{f"echo: {k}": v for k, v in r["echo_failures"].items()}}
        rows.append([f"{r['step']:,}", "yes" if r["all_echo"] else f"**no** {failures}", f"{r['open']:,}",
                     _num(r["opened_per_second"]), f"{r['proxy_fds']:,}", f"{r['pss_kib'] / 1024:.1f}"])
    head = (f"Daemon open-file limit {setup.get('file_limit')} (it logged room for about {setup.get('logged_room')} sessions); "
            f"cap = limit / 2 = {ladder['cap']:,}; the idle daemon held {ladder['idle_fds']} files. "
            f"Registering the consoles and minting their URLs through the API took {setup.get('register_seconds', 0):.0f} s (untimed).\n\n")
    if ladder.get("note"):
        head += f"Note: {ladder['note']}.\n\n"
    text = head + _table(["step", "all echo", "sessions open", "opened/s", "daemon fds", "daemon PSS MiB"], rows)
    steps = _get(results, "websockify", "latency", "steps")
    if steps:
        last = steps[-1]
        text += (f"\n\nFor comparison, websockify (forking, its default) held {last['open']:,} of the {last['k']:,} sessions "
                 "asked for in the latency phase" + (" (see its log lines under Echo latency)." if last["failures"] else "."))
    return text


def _profile(results: dict) -> str:
    profile = results.get("profile") or {}
    if not profile:
        return ""
    parts = ["## Where the daemon spends its time (py-spy, `--profile`)\n",
             "Share of the daemon's busy samples (250 Hz; waiting threads left out). *Self*: the function on top of the "
             "stack. *Inside*: serialproxy and autobahn functions anywhere on the stack.\n"]
    for phase, p in profile.items():
        parts.append(f"**{phase}** ({p['busy_samples']} busy samples)\n")
        parts.append("- by area (self): " + "; ".join(f"{name} {pct} %" for name, pct in p["areas"]))
        parts.append("- top functions (self): " + "; ".join(f"{name} {pct} %" for name, pct in p["self"][:12]))
        parts.append("- inside: " + "; ".join(f"{name} {pct} %" for name, pct in p["inside"][:12]) + "\n")
    return "\n".join(parts)


METHOD = """\
- **serialproxy** runs as operators run it: `twistd -n serialproxy --config FILE`, sqlite in its state
  directory, every option at its default except `serialproxy_port = 0` and `token_ttl = 86400` (so that the
  URLs minted before the run outlive it). Its open-file limit is its inherited hard limit (`--proxy-files`
  to change; capped at 32768 so that the ladder fits in the time). websockify 0.13 runs as
  `websockify 127.0.0.1:PORT 127.0.0.1:VMPORT`, forking a process per connection (its default).
- **Fake VM** (`bench/fakevm.py`, one asyncio process): one port per mode (echo; stream: N bytes as fast as
  the peer takes them; sink: counts, answers `OK` after N bytes; flood: without end), listening on 0.0.0.0
  bound to the loopback device, so each serialproxy console is a distinct 127.A.B.C address on the same port.
  Consoles are registered 32 serial ports per server, and a URL minted per console, through the REST API
  before anything is timed.
- **Load client**: one asyncio process (the harness itself); each session is a plain `asyncio.Protocol`
  driving websockets' sans-I/O client (no task per connection); raw TCP sessions go straight to the fake
  VM's ports; websockify gets the same websocket client, no subprotocol. Each opened session is proven by
  one echoed byte. **Lean client** (`bench/leanclient.py`, for "one after another, lean client"): a process
  of its own, a blocking socket per session, the upgrade request and the masked frames built by hand, no
  event loop; the same session, timed the same way.
- **Sessions ladder**: sessions are added up to each step (32 opening at once); at every step every open
  session must echo a byte; the climb stops at the first step where one does not.
- **Memory**: PSS from `/proc/PID/smaps_rollup` (websockify: summed over the listener and its per-connection
  children) after a warm-up of opened and closed sessions, then with the largest latency step open and idle.
- **Latency**: 16-byte echo round trips, one at a time, rotating over up to 10 of the open sessions while the
  rest sit idle; the targets take turns round trip by round trip, so background noise hits them alike.
- **Throughput**: one session; VM→client timed from the first byte until N bytes arrived; client→VM in
  64 KiB binary frames (the largest frame serialproxy accepts), timed from the first frame until the sink's
  `OK` (so it includes attaching, or websockify's fork). Rounds alternate between the targets.
- **New sessions**: connect + websocket upgrade (serialproxy: + token check, writer lock, VM connect) + one
  byte echoed + closing handshake until the server drops TCP; serialproxy rotates over a pool of consoles
  with reused tokens so that a console is free again before its next session. Proxy CPU per session is the
  daemon's (websockify: the listener's and its reaped children's) CPU time over the sessions done. One after
  another, the phases are timed from the client: TCP connect until `connection_made`, upgrade until the 101 is
  read, first byte until the echo is back, closing handshake until the server has dropped TCP.
- **Stalled reader**: a writer reads 1 MiB of a flooding console, then stops reading; the proxy's PSS is
  sampled every 0.5 s. Spectators: `&mode=read` sessions of one flooding console with no writer, reading as
  fast as this client can, or stalled. A stalled spectator that falls `spectator_lag_bytes` behind is sent
  close 4011, which waits behind its full buffers, so autobahn drops it after its 5 s closing-handshake
  timeout: the client sees a reset.
"""


def render(results: dict) -> str:
    run = results["run"]
    parts = [
        "# serialproxy benchmark results\n",
        f"**The run failed**: {results['failed']}; the figures below are what was measured before.\n" if results.get("failed") else None,
        f"Written by `bench/run` ({run['mode']} run); see `bench/README.md` for how to run it and what each figure means.\n",
        "## Machine and versions\n", _machine(results), "",
        "## Targets (issue 7)\n",
        _table(["target", "measured", "goal", ""], [[w, f, g, _mark(m)] for w, f, g, m in targets(results)]), "",
        "## Concurrent sessions (serialproxy)\n", _ladder(results), "",
        "## Memory per idle session\n", _memory(results), "",
        "## Echo latency\n", _latency(results), "",
        "## Throughput\n", _throughput(results), "",
        "## New sessions per second\n", _new_sessions(results), "",
        "## Memory while the VM floods\n", _stalled(results), "",
        _profile(results) or None,
        "## How it is measured\n", METHOD,
    ]
    return "\n".join(p for p in parts if p is not None)


def summary(results: dict) -> str:
    return "\n".join(f"  {_mark(m).strip('*'):12} {w}: {f} (goal {g})" for w, f, g, m in targets(results))
