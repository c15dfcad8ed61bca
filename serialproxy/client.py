"""``serialproxy-client``: the user's command line (console URLs, servers, sessions, and the console itself).

Results go to standard output alone, so
``URL=$(serialproxy-client get-serial-console vm1 serial)`` works; every
error is one line on standard error (a traceback only for a bug). Exit
codes: 0 done, 1 error (API, network, console closed by the proxy), 2 bad
usage, 128+N interrupted by signal N. The flags and the environment are
:mod:`serialproxy.client_options`; the API calls
:mod:`serialproxy.client_api`; the console :mod:`serialproxy.client_console`.
"""

import json
import os
import signal
import sys
import traceback
from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlsplit

from attrs import define, field
from twisted.internet import task
from twisted.internet.defer import Deferred

from .client_api import APIClient, ClientError, UsageError, http_client, resolve_session
from .client_console import ConsoleSession, run_console
from .client_options import PROG, Settings, build_parser, load_settings
from .client_terminal import NEWLINE_MODES, EscapeFilter, NewlineTranslator, StdioState, escape_name

__all__ = ["main", "format_table", "with_mode", "COMMANDS"]


def format_table(headers: tuple, rows: list) -> str:
    """Columns aligned on two spaces, a header line first."""
    table = [tuple(str(c) for c in row) for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def with_mode(url: str, mode: str) -> str:
    """A console URL with ``mode=`` set in its query."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "mode"] + [("mode", mode)]
    return parts._replace(query=urlencode(query)).geturl()


def _console_url(answer) -> str:
    try:
        return answer["serial_console"]["url"]
    except (KeyError, TypeError):
        raise ClientError(f"the proxy's answer has no serial_console.url: {json.dumps(answer)[:200]}") from None


def _ports(server: dict) -> str:
    return ",".join(f"{p['index']}={p['host']}:{p['port']}" if "host" in p else str(p.get("index"))
                    for p in server.get("serial_ports", []))


# the commands: each returns its exit code


async def _get_serial_console(reactor, api: APIClient, args) -> int:
    server = await api.find_server(args.server)
    answer = await api.console(server["id"], args.console_type, args.port)
    print(json.dumps(answer, indent=2) if args.json else _console_url(answer))
    return 0


async def _list(reactor, api: APIClient, args) -> int:
    servers = await api.servers()
    if api.tenant:
        servers = [s for s in servers if s.get("tenant_id") == api.tenant]
    if args.json:
        print(json.dumps({"servers": servers}, indent=2))
    else:
        print(format_table(("ID", "NAME", "STATUS", "PORTS"),
                           [(s.get("id"), s.get("name"), s.get("status"), _ports(s)) for s in servers]))
    return 0


async def _sessions(reactor, api: APIClient, args) -> int:
    sessions = await api.sessions((await api.find_server(args.server))["id"])
    if args.json:
        print(json.dumps({"serial_sessions": sessions}, indent=2))
    else:
        keys = ("id", "port", "mode", "peer", "since", "bytes_in", "bytes_out")
        print(format_table(("ID", "PORT", "MODE", "PEER", "SINCE", "IN", "OUT"),
                           [tuple(s.get(k, "") for k in keys) for s in sessions]))
    return 0


async def _kick(reactor, api: APIClient, args) -> int:
    server = await api.find_server(args.server)
    session = resolve_session(await api.sessions(server["id"]), args.session, args.server)
    await api.kick(server["id"], session["id"], args.reason)
    print(f"{PROG}: kicked session {session['id']} ({session.get('mode')}, {session.get('peer')})", file=sys.stderr)
    return 0


def _banner(server: dict, args) -> str:
    how = ("no escape: the session lasts until the proxy closes it" if args.escape is None
           else f"{escape_name(args.escape)}. after Enter leaves")
    mode = "read-only, " if args.read_only else ""
    return f"{PROG}: connected to {server.get('name')} port {args.port} ({mode}{how})"


async def _console(reactor, api: APIClient, args) -> int:
    server = await api.find_server(args.server)
    url = _console_url(await api.console(server["id"], "serial", args.port))
    try:
        state = StdioState.save()
    except OSError as e:
        raise ClientError(str(e)) from None
    session = ConsoleSession(reactor, state, EscapeFilter(args.escape), NewlineTranslator(NEWLINE_MODES[args.newline]),
                             args.read_only, args.linger, _banner(server, args))
    try:
        outcome = await run_console(reactor, with_mode(url, "read") if args.read_only else url, session, state)
    finally:
        if session.interactive and session.mid_line:
            print(file=sys.stderr)  # what we say next starts a line of its own
    if outcome.message:
        print(f"{PROG}: {outcome.message}", file=sys.stderr)
    return outcome.code


COMMANDS = {"get-serial-console": _get_serial_console, "list": _list, "sessions": _sessions, "kick": _kick,
            "console": _console}


@define
class _Signals:
    """SIGINT, SIGTERM and SIGHUP cancel the running command (whose cleanups then run)."""

    _reactor: object
    _work: Deferred
    received: Optional[int] = None
    _previous: dict = field(factory=dict)

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            self._reactor.callFromThread(self._work.cancel)


def _report(e: Exception, signum: Optional[int]) -> int:
    """Tell why the command failed, in one line (a traceback for a bug); its exit code."""
    if signum is not None:
        print(f"{PROG}: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    if isinstance(e, ClientError):
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{PROG}: internal error (a bug, please report it):", file=sys.stderr)
    traceback.print_exception(e)
    return 1


async def _run(reactor, args, settings: Settings) -> None:
    api = APIClient(settings.url, settings.token, settings.tenant, http_client(reactor), reactor)
    work = Deferred.fromCoroutine(COMMANDS[args.command](reactor, api, args))
    signals = _Signals(reactor, work)
    reactor.callWhenRunning(signals.install)
    try:
        code = await work
    except Exception as e:
        code = _report(e, signals.received)
    finally:
        signals.uninstall()
    if code:
        raise SystemExit(code)


def main(argv=None) -> None:
    """The ``serialproxy-client`` console script."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        settings = load_settings(args, os.environ)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    try:
        task.react(_run, (args, settings))
    except KeyboardInterrupt:  # before the reactor took over SIGINT
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    main()
