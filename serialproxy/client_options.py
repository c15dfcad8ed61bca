"""``serialproxy-client``'s command line and settings: flags, commands, and the environment they default to.

Configured like the OpenStack clients, by the environment or by flags
(flags win): ``SERIALPROXY_URL`` / ``--url`` (the proxy's API),
``SERIALPROXY_TOKEN`` / ``--token`` (the API key), ``SERIALPROXY_TENANT`` /
``--tenant`` (when set, console URLs come from Nova's v2 path of that
tenant, and only its servers are considered).

argparse rather than Twisted's ``usage.Options`` (of ``serialproxy-manage``):
the global flags may come before or after the command, and a command's flags
after its arguments (``console vm1 --read-only``); ``usage.Options`` stops at
the first argument. Its errors are one line, not usage and exit.
"""

import argparse
import math
from typing import Optional

from attrs import define

from . import __version__
from .client_api import UsageError, api_url
from .client_terminal import NEWLINE_MODES, parse_escape

__all__ = ["build_parser", "Settings", "load_settings", "PROG", "ENV_URL", "ENV_TOKEN", "ENV_TENANT"]

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
