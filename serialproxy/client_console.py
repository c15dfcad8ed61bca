"""``serialproxy-client console``: a console websocket joined to standard input and output.

Bytes typed (or piped) go to the console as binary frames; the console's
frames go to standard output as they are. On a terminal, input passes
through the escape filter (``~.`` leaves) and the terminal is raw while
attached; piped input has its bare newlines rewritten (``--newline``) and,
at its end, the output is read for ``--linger`` more seconds. Each side
throttles the other: a full socket pauses standard input, a full standard
output pauses the socket.
"""

import sys
from typing import Callable, Optional
from urllib.parse import urlsplit

from attrs import define, field
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import error, stdio
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from zope.interface import implementer

from .client_api import ClientError
from .client_terminal import EscapeFilter, NewlineTranslator, StdioState

__all__ = ["ConsoleSession", "Outcome", "connect", "describe_close", "run_console", "redact", "CLOSE_WORDS"]

CONNECT_TIMEOUT = 30   # seconds to connect and finish the websocket handshake
CLOSE_TIMEOUT = 5      # seconds the proxy may take to answer our close
FLUSH_TIMEOUT = 5      # seconds left to write the last output when the console has closed

# What a close code means, for codes that come without a reason (docs/close-codes.md).
CLOSE_WORDS = {
    1000: "closed", 1001: "the proxy is going away", 1002: "websocket protocol error", 1006: "connection lost",
    1007: "text frame that is not UTF-8", 1009: "message too big", 1011: "internal error in the proxy",
    1013: "the proxy is full: try again later",
    4000: "bad request", 4001: "token invalid: ask the API for a new console URL",
    4002: "token expired: ask the API for a new console URL", 4003: "origin refused", 4004: "the server was deleted",
    4008: "idle timeout", 4009: "console busy", 4010: "kicked", 4011: "too slow: fell behind the console's output",
    4501: "the VM closed its serial port", 4502: "the VM's serial port is unreachable",
}


def describe_close(code: Optional[int], reason: Optional[str]) -> str:
    """A close in words: the proxy's reason (or what the code means) and the code."""
    code = 1005 if code is None else code
    return f"{reason or CLOSE_WORDS.get(code, 'closed')} ({code})"


def redact(url: str) -> str:
    """A console URL without its query, which holds the secret token."""
    return urlsplit(url)._replace(query="", fragment="").geturl()


@define(frozen=True)
class Outcome:
    """How a console session ended: the exit code, and the line to print (or None)."""

    code: int
    message: Optional[str] = None


@define(eq=False)
class ConsoleSession:
    """One attached console: the websocket, standard I/O, and who closed what."""

    _reactor: object
    _state: StdioState
    _escape: EscapeFilter
    _newline: NewlineTranslator
    _read_only: bool = False
    _linger: float = 2.0
    _banner: Optional[str] = None
    _stdio_factory: Callable = stdio.StandardIO
    done: Deferred = field(factory=Deferred)
    _ws: object = field(default=None, init=False)
    _stdio: object = field(default=None, init=False)
    _linger_call: object = field(default=None, init=False)
    _flush_call: object = field(default=None, init=False)
    _outcome: Optional[Outcome] = field(default=None, init=False)
    _we_closed: bool = field(default=False, init=False)
    mid_line: bool = field(default=False, init=False)

    @property
    def interactive(self) -> bool:
        return self._state.is_terminal

    # the websocket

    def opened(self, ws) -> None:
        """The console is open: raw mode, then standard I/O, each throttling the other."""
        self._ws = ws
        self._state.make_raw()
        if self.interactive and self._banner:
            # After raw mode: once it shows, what is typed goes to the console.
            sys.stderr.write(self._banner + "\r\n")
            sys.stderr.flush()
        try:
            self._stdio = self._stdio_factory(_Stdio(self), reactor=self._reactor)
        except OSError as e:  # e.g. started with standard input closed
            raise ClientError(f"cannot use standard input and output: {e}") from None
        self._stdio.registerProducer(ws.transport, True)
        ws.transport.registerProducer(self._stdio, True)

    def from_console(self, data: bytes) -> None:
        if self._stdio is not None and data:
            self._stdio.write(data)
            self.mid_line = not data.endswith(b"\n")

    def closed(self, code: Optional[int], reason: Optional[str]) -> None:
        """The websocket closed: decide the outcome, then let standard output drain (bounded)."""
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._outcome = self._outcome_of(code, reason)
        if self._stdio is None or self._stdio.disconnected:
            self._finish()
            return
        self._flush_call = self._reactor.callLater(FLUSH_TIMEOUT, self._finish)
        self._stdio.loseConnection()  # its connectionLost, once the output is written, finishes

    def _outcome_of(self, code: Optional[int], reason: Optional[str]) -> Outcome:
        if self._we_closed:
            return Outcome(0, "disconnected" if self.interactive else None)
        return Outcome(0 if code == 1000 else 1, f"console closed: {describe_close(code, reason)}")

    def _finish(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        if not self.done.called:
            self.done.callback(self._outcome)

    def failed(self, failure) -> None:
        """A bug in our own callbacks ends the session with it."""
        if not self.done.called:
            self.done.errback(failure)
        self.leave()

    # standard I/O

    def from_stdin(self, data: bytes) -> None:
        if self.interactive:
            data, leave = self._escape.feed(data)
        else:
            data, leave = self._newline.feed(data), False
        if data and not self._read_only and self._ws.state == self._ws.STATE_OPEN:
            self._ws.sendMessage(data, isBinary=True)
        if leave:
            self.leave()

    def stdin_ended(self) -> None:
        """End of piped input: read the output for ``linger`` more seconds, then close."""
        if self.interactive:
            self.leave()
        elif self._linger != float("inf"):
            self._linger_call = self._reactor.callLater(self._linger, self.leave)

    def stdio_lost(self) -> None:
        if self._outcome is not None:
            self._finish()
        else:
            self.leave()

    def leave(self) -> None:
        """Close the console from our side (the proxy's answer, or a timeout, ends it)."""
        if self._ws is not None and self._ws.state == self._ws.STATE_OPEN:
            self._we_closed = True
            self._ws.sendClose(1000)

    def abort(self) -> None:
        """Leave at once (interrupted): close, and do not wait for anything."""
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self.leave()
        if self._ws is not None and self._ws.transport is not None:
            self._ws.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class _Stdio(Protocol):
    """Standard input and output of a console session."""

    def __init__(self, session: ConsoleSession):
        self._session = session

    def dataReceived(self, data):
        _guarded(self._session, self._session.from_stdin, data)

    def readConnectionLost(self):
        _guarded(self._session, self._session.stdin_ended)

    def writeConnectionLost(self):
        _guarded(self._session, self._session.leave)

    def connectionLost(self, reason=None):
        _guarded(self._session, self._session.stdio_lost)


def _guarded(session: ConsoleSession, function, *args) -> None:
    try:
        function(*args)
    except Exception:
        session.failed(Failure())


class _ConsoleProtocol(WebSocketClientProtocol):
    """The websocket end of a console session: thin, every callback guarded (a failure ends the session)."""

    def onOpen(self):
        _guarded(self.factory.session, self.factory.session.opened, self)

    def onMessage(self, payload, isBinary):
        _guarded(self.factory.session, self.factory.session.from_console, payload)

    def onClose(self, wasClean, code, reason):
        if self.remoteCloseCode is not None:  # the proxy said why, even if it then dropped the connection early
            code, reason = self.remoteCloseCode, self.remoteCloseReason
        elif not wasClean:
            code, reason = 1006, f"connection lost: {self.wasNotCleanReason or 'dropped'}"
        _guarded(self.factory.session, self.factory.session.closed, code, reason)


async def connect(reactor, url: str, session: ConsoleSession) -> None:
    """Open the console websocket for ``session`` (TLS for ``wss://``)."""
    factory = WebSocketClientFactory(url)
    factory.protocol = _ConsoleProtocol
    factory.session = session
    factory.setProtocolOptions(openHandshakeTimeout=CONNECT_TIMEOUT, closeHandshakeTimeout=CLOSE_TIMEOUT,
                               autoPingInterval=20, autoPingTimeout=10)
    endpoint = HostnameEndpoint(reactor, factory.host, factory.port, timeout=CONNECT_TIMEOUT)
    if factory.isSecure:
        endpoint = wrapClientTLS(optionsForClientTLS(factory.host), endpoint)
    try:
        await endpoint.connect(factory)
    except (error.ConnectError, error.DNSLookupError, error.TimeoutError) as e:
        raise ClientError(f"cannot connect to the console at {redact(url)}: {e}") from None


async def run_console(reactor, url: str, session: ConsoleSession, state: StdioState) -> Outcome:
    """Attach ``session`` to the console at ``url`` until it ends; the terminal is put back on every way out."""
    trigger = reactor.addSystemEventTrigger("before", "shutdown", state.restore)
    try:
        await connect(reactor, url, session)
        return await session.done
    finally:
        session.abort()
        state.restore()
        reactor.removeSystemEventTrigger(trigger)
