"""The configuration: an INI file and command-line flags into one frozen Config.

Pure and validated: every option has a coercer that either returns a typed
value or raises :class:`~serialproxy.errors.ConfigError` naming the option,
the value and what is allowed. Precedence: defaults < file < flags.
"""

import configparser
import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional
from urllib.parse import urlsplit

from attrs import field, frozen

from .errors import ConfigError
from .validate import HOSTNAME

__all__ = ["Config", "Option", "OPTIONS", "load_config", "DEFAULT_WEB_DIR"]

def _default_web_dir() -> Path:
    """The bundled console page: static/ of the checkout, or where an install put it."""
    checkout = Path(__file__).resolve().parent.parent / "static"
    installed = Path(sys.prefix) / "share" / "serialproxy" / "static"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


DEFAULT_WEB_DIR = _default_web_dir()

# Connections the kernel completes and holds for the listener until it
# accepts them (listen(2)'s backlog; Linux caps it at net.core.somaxconn).
# Twisted's default, 50, is overrun when many clients connect at once (every
# console's client reconnecting after a restart or a network blip): the
# kernel then drops their handshakes, and each waits out a SYN retransmit of
# 1 s, then 3 s, and so on. See docs/performance.md.
LISTEN_BACKLOG = 4096

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _boolean(name, text):
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(name, text, "expected true or false (also yes/no, on/off, 1/0)")


def _integer(low, high):
    def coerce(name, text):
        try:
            value = int(text.strip())
        except ValueError:
            raise ConfigError(name, text, f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ConfigError(name, text, f"expected a whole number from {low} to {high}")
        return value

    return coerce


def _port_range(name, text):
    allowed = "expected LOW:HIGH with 1 <= LOW <= HIGH <= 65535, for example 10000:20000"
    low, sep, high = text.strip().partition(":")
    try:
        bounds = (int(low), int(high))
    except ValueError:
        raise ConfigError(name, text, allowed) from None
    if not sep or not 1 <= bounds[0] <= bounds[1] <= 65535:
        raise ConfigError(name, text, allowed)
    return bounds


def _address(name, text):
    value = text.strip()
    if value == "":
        return value
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if HOSTNAME.match(value):
        return value
    raise ConfigError(name, text, "expected an IPv4 or IPv6 address or a host name, or nothing")


def _text(name, text):
    return text.strip()


def _split(text: str):
    """urlsplit, or None for text it cannot parse (a lone '[' raises)."""
    try:
        parts = urlsplit(text)
        parts.hostname, parts.port  # these raise on junk too
        return parts
    except ValueError:
        return None


def _base_url(name, text):
    value = text.strip()
    parts = _split(value)
    if value and (parts is None or parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc):
        raise ConfigError(name, text, "expected a ws://, wss://, http:// or https:// URL such as ws://proxy.example.com:6083/, or nothing")
    return value


def _origins(name, text):
    origins = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = _split(item if "://" in item else f"//{item}")
        if parts is None or parts.scheme not in ("", "http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(name, text, f"{item!r} is not an origin: expected a comma-separated list like https://dash.example.com, console.example.com:8443")
        origins.append(item.rstrip("/").lower())
    return tuple(origins)


def _database(name, text):
    value = text.strip()
    parts = _split(value)
    if value and (parts is None or parts.scheme not in ("sqlite", "postgresql", "postgres")):
        raise ConfigError(name, text, "expected sqlite:///relative/path.sqlite, sqlite:////absolute/path.sqlite or postgresql://user:password@host:port/dbname")
    return value


def _directory(name, text):
    value = text.strip()
    if value and not os.path.isdir(value):
        raise ConfigError(name, text, "expected an existing directory of static files, or nothing for the bundled console page")
    return value


@frozen
class Option:
    """One configuration option: where it lives, how it is read, its default."""

    section: str
    name: str
    coerce: Callable[[str, str], object]
    default: str
    help: str

    @property
    def qualified(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def flag(self) -> str:
        return "database" if self.section == "database" else self.name.replace("_", "-")


_SC = "serial_console"
OPTIONS = (
    Option(_SC, "enabled", _boolean, "false", "hand out console URLs (get-serial-console answers 400 while false)"),
    Option(_SC, "base_url", _base_url, "", "URL handed to clients; empty: ws(s)://LISTEN:PORT/ of this proxy"),
    Option(_SC, "listen", _address, "", "address the proxy binds; empty: 127.0.0.1"),
    Option(_SC, "serialproxy_port", _integer(0, 65535), "6083", "port of the HTTP/websocket listener (0: any free port)"),
    Option(_SC, "endpoint", _text, "", "a whole Twisted endpoint (tcp:6083:interface=::1, unix:/run/sp.sock) instead of listen/serialproxy_port/ssl_only"),
    Option(_SC, "proxyclient_address", _address, "", "address VM serial sockets bind to on a hypervisor and the proxy connects to"),
    Option(_SC, "port_range", _port_range, "10000:20000", "TCP ports handed to VM serial ports, LOW:HIGH"),
    Option(_SC, "record", _boolean, "false", "record console sessions (asciicast files)"),
    Option(_SC, "daemon", _boolean, "false", "run in the background (same as leaving out twistd -n)"),
    Option(_SC, "ssl_only", _boolean, "false", "serve only https/wss, with cert and key"),
    Option(_SC, "source_is_ipv6", _boolean, "false", "listen on IPv6 (:: when listen is empty)"),
    Option(_SC, "cert", _text, "self.pem", "TLS certificate (PEM) for ssl_only"),
    Option(_SC, "key", _text, "", "TLS private key (PEM) for ssl_only; empty: inside cert"),
    Option(_SC, "web", _directory, "", "directory of static files for the console page; empty: the bundled one"),
    Option(_SC, "token_ttl", _integer(1, 86400), "600", "seconds a console URL stays valid"),
    Option(_SC, "allowed_origins", _origins, "", "browser origins allowed besides the proxy's own Host, comma separated"),
    Option(_SC, "state_dir", _text, "serialproxy-state", "directory for the default sqlite database and other state"),
    Option(_SC, "ping_interval", _integer(1, 3600), "20", "seconds between websocket pings that find dead clients"),
    Option(_SC, "ping_timeout", _integer(1, 3600), "10", "seconds a client has to answer a ping before it is closed"),
    Option(_SC, "idle_timeout", _integer(0, 604800), "0", "close a writer that sent nothing for this many seconds (0: never)"),
    Option(_SC, "scrollback_bytes", _integer(0, 16 * 1024 * 1024), "65536", "recent console output replayed to a session when it attaches"),
    Option(_SC, "spectator_lag_bytes", _integer(131072, 64 * 1024 * 1024), "262144", "bytes a read-only session may fall behind before it is closed"),
    Option(_SC, "console_linger", _integer(0, 3600), "0", "seconds a console's VM connection and scrollback are kept after its last session leaves (0: close at once)"),
    Option(_SC, "close_on_token_expiry", _boolean, "false", "close live sessions when their console token expires"),
    Option(_SC, "record_dir", _text, "", "directory of session recordings (asciicast v2); empty: STATE_DIR/recordings"),
    Option(_SC, "record_max_bytes", _integer(4096, 1 << 40), "10485760", "size at which a recording continues in a new file"),
    Option(_SC, "record_keep", _integer(1, 1000000), "1000", "recording files kept; the oldest go first"),
    Option("database", "connection", _database, "", "database URL; empty: sqlite in state_dir; postgresql://... for several nodes"),
)
_BY_SECTION = {(o.section, o.name): o for o in OPTIONS}


@frozen
class Config:
    """The validated configuration of one serialproxy node."""

    enabled: bool = False
    base_url: str = ""
    listen: str = ""
    serialproxy_port: int = 6083
    endpoint: str = ""
    proxyclient_address: str = ""
    port_range: tuple = (10000, 20000)
    record: bool = False
    daemon: bool = False
    ssl_only: bool = False
    source_is_ipv6: bool = False
    cert: str = "self.pem"
    key: str = ""
    web: str = ""
    token_ttl: int = 600
    allowed_origins: tuple = ()
    state_dir: str = "serialproxy-state"
    ping_interval: int = 20
    ping_timeout: int = 10
    idle_timeout: int = 0
    scrollback_bytes: int = 65536
    spectator_lag_bytes: int = 262144
    console_linger: int = 0
    close_on_token_expiry: bool = False
    record_dir: str = ""
    record_max_bytes: int = 10485760
    record_keep: int = 1000
    connection: str = field(default="")

    @property
    def host(self) -> str:
        """The address the listener binds."""
        return self.listen or ("::" if self.source_is_ipv6 else "127.0.0.1")

    @property
    def database_url(self) -> str:
        return self.connection or f"sqlite:///{os.path.join(self.state_dir, 'serialproxy.sqlite')}"

    @property
    def recordings_dir(self) -> str:
        return self.record_dir or os.path.join(self.state_dir, "recordings")

    @property
    def web_dir(self) -> str:
        return self.web or str(DEFAULT_WEB_DIR)

    def listen_endpoint(self) -> str:
        """The server endpoint description the HTTP listener uses."""
        if self.endpoint:
            return self.endpoint
        interface = self.host.replace(":", r"\:")
        if self.ssl_only:
            return (f"ssl:{self.serialproxy_port}:interface={interface}:backlog={LISTEN_BACKLOG}"
                    f":certKey={_escape(self.cert)}:privateKey={_escape(self.key or self.cert)}")
        return f"tcp:{self.serialproxy_port}:interface={interface}:backlog={LISTEN_BACKLOG}"

    def console_base_url(self, port: int) -> str:
        """The base of console URLs once the listener is bound to ``port``."""
        if self.base_url:
            return self.base_url
        host = self.host
        if ipaddress.ip_address(host).is_unspecified if _is_ip(host) else False:
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"{'wss' if self.ssl_only else 'ws'}://{host}:{port}/"


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", r"\:")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _read_file(path: str) -> Mapping[tuple, str]:
    parser = configparser.ConfigParser(interpolation=None, default_section="__no_default__")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError("--config", path, f"expected a readable INI file ({e.strerror})") from None
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError("--config", path, f"expected an INI file with [serial_console] and [database] sections ({first})") from None
    values = {}
    sections = sorted({o.section for o in OPTIONS})
    for section in parser.sections():
        if section not in sections:
            raise ConfigError(f"[{section}]", section, f"unknown section; known sections: {', '.join(sections)}")
        for name, text in parser.items(section):
            if (section, name) not in _BY_SECTION:
                known = ", ".join(o.name for o in OPTIONS if o.section == section)
                raise ConfigError(f"{section}.{name}", text, f"unknown option; options of [{section}]: {known}")
            values[(section, name)] = text
    return values


def load_config(path: Optional[str] = None, flags: Optional[Mapping[str, str]] = None) -> Config:
    """Read ``path`` (if given) and apply ``flags`` (flag name -> text) on top."""
    raw = {(o.section, o.name): o.default for o in OPTIONS}
    if path:
        raw.update(_read_file(path))
    by_flag = {o.flag: o for o in OPTIONS}
    for flag, text in (flags or {}).items():
        if text is not None:
            raw[(by_flag[flag].section, by_flag[flag].name)] = text
    values = {o.name: o.coerce(o.qualified, raw[(o.section, o.name)]) for o in OPTIONS}
    config = Config(**values)
    _check_together(config)
    return config


def _check_together(config: Config) -> None:
    """Checks that need more than one option."""
    if config.ssl_only and not config.endpoint:
        for option in ("cert", "key"):
            path = getattr(config, option) or config.cert
            if not os.access(path, os.R_OK) or not os.path.isfile(path):
                raise ConfigError(f"serial_console.{option}", path, "expected a readable PEM file, since ssl_only is true")
    if config.source_is_ipv6 and config.listen and ":" not in config.listen and _is_ip(config.listen):
        raise ConfigError("serial_console.listen", config.listen, "expected an IPv6 address, since source_is_ipv6 is true")
