"""Domain errors, their HTTP status codes, and the websocket close-code table.

Every refusal a client can meet is named here once: the REST API turns a
:class:`SerialProxyError` into ``{"error": {"code", "message"}}`` with its
``http_status``, and the websocket proxy closes with the
:class:`CloseCode` of the refusal and a reason a person can read.
"""

from enum import IntEnum

__all__ = [
    "CloseCode",
    "SerialProxyError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "ConsolesDisabled",
    "ConfigError",
    "DatabaseError",
    "DatabaseTooNew",
    "TokenInvalid",
    "TokenExpired",
    "ConsoleBusy",
]


class CloseCode(IntEnum):
    """Websocket close codes serialproxy sends; documented in docs/close-codes.md."""

    NORMAL = 1000
    GOING_AWAY = 1001
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    BAD_REQUEST = 4000
    TOKEN_INVALID = 4001
    TOKEN_EXPIRED = 4002
    ORIGIN_REFUSED = 4003
    SERVER_GONE = 4004
    IDLE_TIMEOUT = 4008
    CONSOLE_BUSY = 4009
    KICKED = 4010
    TOO_SLOW = 4011
    VM_CLOSED = 4501
    VM_UNREACHABLE = 4502


class SerialProxyError(Exception):
    """Base of the errors a client can be told about."""

    http_status = 500
    close_code = CloseCode.INTERNAL_ERROR

    @property
    def message(self) -> str:
        return str(self)


class BadRequest(SerialProxyError):
    """The request body or a parameter is wrong; the message says which."""

    http_status = 400
    close_code = CloseCode.BAD_REQUEST


class ConsolesDisabled(BadRequest):
    """Serial consoles are switched off in the configuration."""

    def __init__(self):
        super().__init__(
            "serial consoles are disabled on this proxy: set enabled = true in "
            "the [serial_console] section of the configuration file (or start "
            "with --enabled=true) and restart serialproxy"
        )


class Unauthorized(SerialProxyError):
    """No API key, or one that is not known."""

    http_status = 401


class Forbidden(SerialProxyError):
    """The key is known but may not do this."""

    http_status = 403


class NotFound(SerialProxyError):
    """No such thing, or not one the caller may see (never tell which)."""

    http_status = 404
    close_code = CloseCode.SERVER_GONE


class Conflict(SerialProxyError):
    """The request is well formed but clashes with the current state."""

    http_status = 409


class TokenInvalid(SerialProxyError):
    """A console token that is not known (never minted, or purged)."""

    http_status = 401
    close_code = CloseCode.TOKEN_INVALID


class TokenExpired(TokenInvalid):
    """A console token whose time to live has passed."""

    close_code = CloseCode.TOKEN_EXPIRED


class ConsoleBusy(Conflict):
    """Another session holds the writer lock of this serial port."""

    close_code = CloseCode.CONSOLE_BUSY


class ConfigError(Exception):
    """A configuration value is wrong: names the option, the value and what is allowed."""

    def __init__(self, option: str, value: object, allowed: str):
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(f"bad value {value!r} for option {option}: {allowed}")


class DatabaseError(Exception):
    """The database cannot be used as it is (bad URL, unreachable, bad schema)."""


class DatabaseTooNew(DatabaseError):
    """The database schema is newer than this code knows how to use."""
