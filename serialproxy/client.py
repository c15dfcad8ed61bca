"""``serialproxy-client``: the user's command line (console URLs, servers, sessions, and the console itself).

Configured like the OpenStack clients, by the environment or by flags
(flags win): ``SERIALPROXY_URL`` / ``--url`` (the proxy's API),
``SERIALPROXY_TOKEN`` / ``--token`` (the API key), ``SERIALPROXY_TENANT`` /
``--tenant`` (when set, console URLs come from Nova's v2 path of that
tenant, and only its servers are considered). Results go to standard
output alone, so ``URL=$(serialproxy-client get-serial-console vm1 serial)``
works; every error is one line on standard error. Exit codes: 0 done,
1 error (API, network, console closed by the proxy), 2 bad usage,
128+N interrupted by signal N.

The global flags may come before or after the command, and a command's
flags after its arguments: argparse does both, Twisted's ``usage.Options``
(of ``serialproxy-manage``) neither.
"""

import argparse
import json
import math
import os
import signal
import sys
import traceback
from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlsplit

from attrs import define, field
from twisted.internet import task
from twisted.internet.defer import Deferred

from . import __version__
from .client_api import APIClient, ClientError, UsageError, api_url, http_client, resolve_session
from .client_console import ConsoleSession, run_console
from .client_terminal import NEWLINE_MODES, EscapeFilter, NewlineTranslator, StdioState, escape_name, parse_escape

__all__ = ["main", "build_parser", "Settings", "load_settings", "format_table", "with_mode", "ENV_URL", "ENV_TOKEN",
           "ENV_TENANT"]

PROG = "serialproxy-client"
ENV_URL, ENV_TOKEN, ENV_TENANT = "SERIALPROXY_URL", "SERIALPROXY_TOKEN", "SERIALPROXY_TENANT"
_EPILOG = f"""environment:
  {ENV_URL}     the proxy's API, e.g. http://127.0.0.1:6083 (or --url)
  {ENV_TOKEN}   the API key (or --token)
  {ENV_TENANT}  use the v2 API of this tenant (or --tenant; --tenant '' for v3)

exit codes: 0 done, 1 error, 2 bad usage, 128+N interrupted by signal N"""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors as one line instead of usage and exit."""

    def error(self, message):
        raise UsageError(f"{message} ({self.prog} --help)")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a serial port index (0, 1, ...)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more, or inf)")
    return value


def _escape(text: str) -> Optional[int]:
    try:
        return parse_escape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _connection_flags(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--url", default=default, help=f"the proxy's API (default: ${ENV_URL})")
    parser.add_argument("--token", default=default, help=f"the API key (default: ${ENV_TOKEN})")
    parser.add_argument("--tenant", default=default,
                        help=f"ask for console URLs through the v2 API of this tenant (default: ${ENV_TENANT})")


def _command(commands, name: str, help: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help)
    _connection_flags(parser, argparse.SUPPRESS)  # only when given: else the global one stands
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(prog=PROG, description="Web serial consoles of serialproxy, from a terminal.",
                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _connection_flags(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    get = _command(commands, "get-serial-console", "print a console URL (ws://...?token=...) of a server")
    get.add_argument("server", help="the server's name or id")
    get.add_argument("console_type", metavar="console-type", help="serial (the one type the proxy serves)")
    get.add_argument("--port", type=_non_negative_int, default=0, help="the serial port's index (default: 0)")
    get.add_argument("--json", action="store_true", help="print the API's whole answer")
    _console_command(commands)
    listing = _command(commands, "list", "list the servers this API key can see")
    listing.add_argument("--json", action="store_true", help="print the API's servers as JSON")
    sessions = _command(commands, "sessions", "list the console sessions of a server")
    sessions.add_argument("server", help="the server's name or id")
    sessions.add_argument("--json", action="store_true", help="print the API's sessions as JSON")
    kick = _command(commands, "kick", "disconnect a console session (it closes with 4010)")
    kick.add_argument("server", help="the server's name or id")
    kick.add_argument("session", help="the session's id, or its first characters")
    kick.add_argument("--reason", help="what the kicked session is told")
    return parser


def _console_command(commands) -> None:
    console = _command(commands, "console", "attach this terminal (or piped input) to a server's serial console")
    console.add_argument("server", help="the server's name or id")
    console.add_argument("--port", type=_non_negative_int, default=0, help="the serial port's index (default: 0)")
    console.add_argument("--read-only", action="store_true", help="watch as a spectator: input is not sent")
    console.add_argument("--escape", type=_escape, default=ord("~"), metavar="CHAR",
                         help="escape character on a terminal: CHAR . after a newline leaves, CHAR CHAR sends "
                              "CHAR; ^X for a control character, none to disable (default: ~)")
    console.add_argument("--linger", type=_seconds, default=2.0, metavar="SECONDS",
                         help="after the end of piped input, read the output this long, then close "
                              "(default: 2; inf: until the proxy closes)")
    console.add_argument("--newline", choices=sorted(NEWLINE_MODES), default="cr",
                         help="send each bare newline of piped input as CR (default: serial consoles "
                              "expect it), CR LF, or LF (unchanged)")


@define(frozen=True)
class Settings:
    """Where the proxy is and who we are to it."""

    url: str
    token: str
    tenant: Optional[str] = None


def load_settings(args: argparse.Namespace, environ) -> Settings:
    """The flags, else the environment; a missing setting names its variable and flag."""
    raw_url = args.url or environ.get(ENV_URL)
    if not raw_url:
        raise UsageError(f"no proxy address: set {ENV_URL} or pass --url (e.g. http://127.0.0.1:6083)")
    token = (args.token or environ.get(ENV_TOKEN) or "").strip()
    if not token:
        raise UsageError(f"no API key: set {ENV_TOKEN} or pass --token (serialproxy-manage create-key makes one)")
    if not token.isascii() or not token.isprintable():
        raise UsageError(f"the API key in {'--token' if args.token else '$' + ENV_TOKEN} has characters no key has")
    tenant = args.tenant if args.tenant is not None else environ.get(ENV_TENANT)
    return Settings(api_url(raw_url, "--url" if args.url else f"${ENV_URL}"), token, tenant or None)


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
    state = StdioState.save()
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
