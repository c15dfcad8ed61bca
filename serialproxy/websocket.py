"""The websocket end of a console: ``ws://proxy:6083/?token=T``.

The handshake is always accepted, so that every refusal reaches the client
as a close code in 4000-4999 with a reason a person can read (a browser sees
only 1006 from a refused handshake). After it: the Origin is checked, then
the token, the writer lock (``mode=write``, the default; ``mode=read``
attaches a spectator) and the VM connection (see :mod:`serialproxy.sessions`). VM bytes go out as binary frames; binary and
text frames from the client go to the VM as bytes. The ``binary`` and
``base64`` subprotocols of noVNC-style clients are accepted.
"""

import base64
import binascii
import random
from typing import ClassVar, Optional
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from zope.interface import implementer

from .bridge import IConsoleClient
from .errors import CloseCode, SerialProxyError
from .frames import BINARY, TEXT, ClientFrames, apply_mask, frame_header
from .lean_autobahn import LeanServerFactory, LeanServerProtocol
from .transports import send_now

__all__ = ["ConsoleFactory", "ConsoleProtocol", "origin_allowed", "close_reason"]

# Bounds on what one client can make us hold (see docs/performance.md).
MAX_FRAME = 64 * 1024
MAX_MESSAGE = 1024 * 1024
_MAX_PENDING = 256 * 1024
_SUBPROTOCOLS = ("binary", "base64")


def origin_allowed(origin: Optional[str], host: Optional[str], allowed: tuple) -> bool:
    """May a page from ``origin`` open a console on a proxy reached as ``host``?

    No Origin: not a browser, allowed. Otherwise the Origin's host[:port] must
    be the Host header, or the origin (or its host[:port]) must be listed.
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # junk such as "http://[" from a hostile client
        return False
    if host and netloc == host.strip().lower():
        return True
    return origin in allowed or (netloc != "" and netloc in allowed)


def close_reason(reason: str) -> str:
    """A close reason cut to the 123 bytes a close frame can carry."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= 123:
        return reason
    return encoded[:120].decode("utf-8", "ignore") + "..."


@implementer(IConsoleClient)
class ConsoleProtocol(LeanServerProtocol):
    """One websocket console session (autobahn's server protocol, leaner: see :mod:`serialproxy.lean_autobahn`)."""

    _log: ClassVar[Logger] = Logger()

    def __init__(self):
        super().__init__()
        self._secret = None
        self._origin_ok = True
        self._base64 = False
        self._session = None
        self._gone = False
        self._pending = []
        self._pending_bytes = 0
        self._streaming = True
        # Plain binary frames (text ones too, but for base64 text, which
        # autobahn reassembles) and the close frame are read by ClientFrames
        # (the close as autobahn reads it, to autobahn's onCloseFrame,
        # without its frame machinery and masker: see docs/performance.md).
        self._frames = ClientFrames(self._input, MAX_FRAME, self.onCloseFrame, text=True) if apply_mask is not None else None

    def connectionLost(self, reason=connectionDone):
        try:
            super().connectionLost(reason)
        finally:
            # The frame reader's bound methods point back at the protocol:
            # they go with the connection, so that reference counting frees a
            # session's objects as it ends (see LeanServerProtocol.connectionLost).
            self._frames = None

    def dataReceived(self, data):
        # Plain binary frames of an open console are read by ClientFrames (to
        # the end of a frame it began, whatever happens meanwhile); autobahn
        # reads the handshake, everything else, and whatever follows until it
        # is between frames again (nothing buffered, no message open).
        frames = self._frames
        if frames is not None and (not frames.idle or (self.state == self.STATE_OPEN and self.current_frame is None
                                                       and not self.inside_message and not self.data)):
            data = frames.feed(data)
            if not data:
                return
        self._dataReceived(data)

    def origin_plain(self, origin: str, host: str) -> bool:
        # An Origin this proxy refuses takes autobahn's reading of the
        # request (onConnect then closes the session with a reason).
        return origin_allowed(origin, host, self.factory.allowed_origins)

    def onConnect(self, request):
        # Each connection pings at an interval of its own, between three
        # quarters of ping_interval and all of it (autobahn schedules the
        # first ping once the handshake succeeds, right after this). With one
        # interval for all, sessions opened together (every client
        # reconnecting after a restart) are pinged together, in one reactor
        # turn per thousand, for as long as they last.
        if self.autoPingInterval:
            self.autoPingInterval *= random.uniform(0.75, 1.0)
        params = request.params
        self._secret = (params.get("token") or [None])[0]
        self._mode = (params.get("mode") or ["write"])[0]
        self._origin_ok = origin_allowed(
            request.headers.get("origin"), request.headers.get("host"), self.factory.allowed_origins
        )
        for protocol in request.protocols:
            if protocol in _SUBPROTOCOLS:
                self._base64 = protocol == "base64"
                if self._base64 and self._frames is not None:
                    self._frames.text = False  # base64 text is decoded from whole messages (onMessage)
                return protocol
        return None

    def onOpen(self):
        # The client is not read while its session attaches (the console
        # resumes it, as does a refusal). An attach that waits for nothing (a
        # token in memory, sqlite) is over before this returns, and nothing
        # can be read meanwhile: the client is paused only when it waits,
        # which spares two epoll_ctl calls a session (docs/performance.md).
        d = Deferred.fromCoroutine(self._attach())
        if not d.called:
            self.transport.pauseProducing()
        d.addErrback(lambda f: self._log.failure("attaching a console failed", f))

    async def _attach(self):
        peer = _peer(self.transport.getPeer())
        try:
            if not self._origin_ok:
                raise _Refusal(CloseCode.ORIGIN_REFUSED, "origin not allowed: open the console from the proxy's own page or an allowed_origins site")
            if not self._secret:
                raise _Refusal(CloseCode.BAD_REQUEST, "missing ?token= in the console URL: ask the API for a console URL")
            session = await self.factory.sessions.attach(self, self._secret, peer, self._mode)
        except (SerialProxyError, _Refusal) as e:
            self._log.info("{event}: {peer} ({code}): {reason}", event="refuse", peer=peer,
                           code=int(e.close_code), reason=str(e))
            self.close(e.close_code, str(e))
            return
        except Exception:
            self._log.failure("attaching a console for {peer} failed", peer=peer)
            self.close(CloseCode.INTERNAL_ERROR, "internal error in the console proxy")
            return
        self._session = session
        if self._gone:
            self.factory.sessions.detach(session)
            return
        if self._pending:
            self.factory.sessions.from_client(session, *self._pending)
        self._pending = None

    # Client input. Binary frames, and text frames outside the base64
    # subprotocol, are streamed: each piece of a frame's payload goes to the
    # VM as it is unmasked, with no reassembly into messages (see
    # docs/performance.md); autobahn still checks every frame and counts
    # each message against maxMessagePayloadSize. base64 text needs whole
    # messages to decode, so those take autobahn's buffering path to onMessage.

    def onMessageBegin(self, isBinary):
        self._streaming = isBinary or not self._base64
        super().onMessageBegin(isBinary)

    def onMessageFrameData(self, payload):
        if not self._streaming:
            super().onMessageFrameData(payload)
        elif payload and not self.failedByMe:
            self._input(payload)

    def onMessageFrameEnd(self):
        if not self._streaming:
            super().onMessageFrameEnd()
        self.frame_data = None

    def onMessageEnd(self):
        if not self._streaming:
            super().onMessageEnd()

    def onMessage(self, payload, isBinary):
        # Only base64 text gets here: everything else is streamed.
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self.close(CloseCode.BAD_REQUEST, "bad base64 in a text frame of the base64 subprotocol")
            return
        self._input(data)

    def _input(self, *data: bytes) -> None:
        try:
            if self._session is not None:
                self.factory.sessions.from_client(self._session, *data)
            elif self._pending is not None:
                self._pending_bytes += sum(map(len, data))
                if self._pending_bytes > _MAX_PENDING:
                    self.close(CloseCode.BAD_REQUEST, "too much input before the console was ready")
                else:
                    self._pending.extend(data)
        except Exception:
            self._log.failure("handling console input failed")

    def onClose(self, wasClean, code, reason):
        self._gone = True
        session, self._session = self._session, None
        if session is not None:
            try:
                self.factory.sessions.detach(session)
            except Exception:
                self._log.failure("releasing a console failed")

    # IConsoleClient

    def send(self, data: bytes, eager: bool = False) -> None:
        if self.state != self.STATE_OPEN:
            return  # closing: the VM's last bytes have nowhere to go
        # The hot path (see docs/performance.md): one unmasked, uncompressed
        # frame per VM read (binary; base64 text for that subprotocol), its
        # header built here and written with the payload (eager: one sendmsg
        # when nothing is queued), so the payload is never copied and none of
        # sendMessage's per-call checks run. Safe because this proxy never
        # fragments, compresses or queues outgoing messages.
        if self._base64:
            data = base64.b64encode(data)
            chunks = (frame_header(TEXT, len(data)), data)
        else:
            chunks = (frame_header(BINARY, len(data)), data)
        if eager:
            send_now(self.transport, chunks)
        else:
            self.transport.writeSequence(chunks)


    def close(self, code, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            # Read again (we pause while attaching), or the client's close reply is never seen.
            self.transport.resumeProducing()
            # Not sendClose(): it refuses 1001 and 1011, which RFC 6455 lets a server send.
            self.sendCloseFrame(code=int(code), reasonUtf8=close_reason(reason).encode("utf-8"), isReply=False)


class _Refusal(Exception):
    def __init__(self, code: CloseCode, reason: str):
        super().__init__(reason)
        self.close_code = code


def _peer(address) -> str:
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


class ConsoleFactory(LeanServerFactory):
    """Makes :class:`ConsoleProtocol` with the limits and timeouts of a console."""

    protocol = ConsoleProtocol

    def __init__(self, sessions, allowed_origins=(), ping_interval: float = 20, ping_timeout: float = 10,
                 url: Optional[str] = None):
        # server=None: no Server header in the 101 (autobahn's default names
        # itself and its version, which helps only an attacker).
        super().__init__(url, server=None)
        self.sessions = sessions
        self.allowed_origins = tuple(allowed_origins)
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_FRAME,
            maxMessagePayloadSize=MAX_MESSAGE,
            autoFragmentSize=MAX_FRAME,
            # No opening-handshake timer of autobahn's (a timer made and
            # cancelled per session): the listener reads the whole request
            # head within web.HTTP_TIMEOUT before autobahn sees it, and the
            # handshake then completes in the same call (onConnect never
            # returns a Deferred).
            openHandshakeTimeout=0,
            closeHandshakeTimeout=5,
            # Pings find clients whose network went away (and keep load
            # balancers with 60 s idle cuts from dropping quiet consoles).
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            # No permessage-deflate: console output is small, compression costs CPU
            # per frame and memory per session, and send() relies on plain frames.
            perMessageCompressionAccept=lambda offers: None,
        )
