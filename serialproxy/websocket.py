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
import inspect
import random
from typing import ClassVar, Optional
from urllib.parse import urlsplit

from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from zope.interface import implementer

from .bridge import IConsoleClient
from .errors import CloseCode, SerialProxyError
from .frames import BINARY, TEXT, ClientFrames, apply_mask, frame_header
from .handshake import PlainUpgrade, query_params, read_plain_upgrade
from .transports import close_now, send_now

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


_AUTOBAHN_LOG = WebSocketServerProtocol.log  # the class's txaio logger (its __get__ returns it)


@implementer(IConsoleClient)
class ConsoleProtocol(WebSocketServerProtocol):
    """One websocket console session."""

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
        # autobahn's logger (txaio's), held by the instance: as a class
        # attribute it is a descriptor, and autobahn asks it for about a
        # dozen debug lines a session (each a call to its __get__, then one
        # to the no-op that drops the line). The same logger: txaio still
        # sets its level.
        self.log = _AUTOBAHN_LOG

    # autobahn wraps a connection's set-up and tear-down in debug lines whose
    # arguments it builds whether or not debug is logged: a method's qualified
    # name through ``inspect`` (Twisted's connectionMade, and connectionLost
    # when the connection ended cleanly) and, in its server protocol, the
    # Failure as text, traceback and all. That was a tenth of a new
    # session's function calls; so these four take autobahn's steps without
    # the lines (docs/performance.md). Any other end of a connection (lost,
    # aborted, a TLS error, which autobahn logs as an error) takes autobahn's
    # own connectionLost.

    def connectionMade(self):
        # autobahn's details of the transport (the process and thread ids,
        # two system calls, a TLS channel id, the peer) are for its WAMP
        # sessions; a console needs the peer, and transport_details is made
        # when asked.
        self.peer = peer2str(self.transport)
        try:
            self.transport.setTcpNoDelay(self.tcpNoDelay)
        except (AttributeError, OSError):  # not TCP (autobahn's way too)
            pass
        self._connectionMade()

    def connectionLost(self, reason=connectionDone):
        try:
            if type(reason.value) is not ConnectionDone:
                return super().connectionLost(reason)
            self._connectionLost(reason)
            return None
        finally:
            # What points back at the protocol goes with the connection, so
            # that reference counting frees a session's objects as it ends
            # rather than the garbage collector later (a young collection
            # per few hundred sessions, ~10 ms each): the frame reader's
            # bound methods, and is_closed, which autobahn resolves with the
            # protocol itself (it has fired by now; nothing here waits on it).
            self._frames = None
            self.is_closed = None

    @property
    def transport_details(self) -> TransportDetails:
        """autobahn's details of this connection's transport, as its connectionMade would have made them."""
        if self._transport_details.peer is None and self.transport is not None:
            details = create_transport_details(self.transport, self.is_server)
            details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
            self._transport_details = details
        return self._transport_details

    def _connectionMade(self):
        WebSocketProtocol._connectionMade(self)
        self.factory.countConnections += 1

    def _connectionLost(self, reason):
        WebSocketProtocol._connectionLost(self, reason)
        self.factory.countConnections -= 1

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

    def processHandshake(self):
        # A plain request (what browsers, the CLI and websocket libraries
        # send) is read here in one pass (handshake.read_plain_upgrade), to
        # the same request and state as autobahn's processHandshake would
        # give it, and answered by autobahn's succeedHandshake; anything
        # else (a header given twice, an absolute URI, another version, junk)
        # takes autobahn's own path, with its checks and error answers.
        # Autobahn's reading takes more than it needs on every new session:
        # urllib's URL parsing, a Deferred around onConnect, debug text built
        # through inspect (docs/performance.md has what this saves).
        upgrade = read_plain_upgrade(self.data)
        if upgrade is None or not self._plain_enough(upgrade):
            return super().processHandshake()
        return self._read_plain(upgrade)

    def _plain_enough(self, upgrade: PlainUpgrade) -> bool:
        """Does autobahn's reading, with this protocol's options, take ``upgrade`` as it is?

        Not with options this proxy does not set (a connection cap, trusted
        X-Forwarded-For, other versions), nor a Host whose port is not the
        one the factory was told it is reached on. An Origin this proxy
        refuses, and those autobahn refuses (null, file:), take autobahn's
        path too: it answers some with 400, and onConnect closes the rest
        with a reason.
        """
        if self.maxConnections or self.trustXForwardedFor or 13 not in self.versions:
            return False
        external = self.factory.externalPort
        if external and upgrade.port is not None and upgrade.port != external:
            return False
        origin = upgrade.headers.get("origin")
        return origin is None or (origin.lower() != "null" and origin[:5].lower() != "file:"
                                  and origin_allowed(origin, upgrade.headers["host"], self.factory.allowed_origins))

    def _read_plain(self, upgrade: PlainUpgrade):
        """autobahn's processHandshake for a plain request: its state, onConnect, then its succeedHandshake."""
        self.http_request_data = self.data[:upgrade.end]
        self.data = self.data[upgrade.end:]
        self.http_status_line = upgrade.status
        self.http_headers = headers = upgrade.headers
        self.http_request_uri = upgrade.uri
        self.http_request_path = "/"
        self.http_request_params = query_params(upgrade.uri)
        self.http_request_host = upgrade.host
        self.websocket_version = 13
        self.websocket_protocols = upgrade.protocols
        self.websocket_origin = headers.get("origin", "")
        offers = headers.get("sec-websocket-extensions")  # succeedHandshake reads them (and declines them all)
        self.websocket_extensions = self._parseExtensionsHeader(offers) if offers is not None else []
        self._wskey = upgrade.key
        request = ConnectionRequest(self.peer, headers, upgrade.host, "/", self.http_request_params, 13,
                                    self.websocket_origin, upgrade.protocols, self.websocket_extensions)
        try:
            protocol = self.onConnect(request)
        except Exception as e:  # autobahn's answer to an onConnect that failed
            self._log.failure("reading a console request failed")
            return self.failHandshake(f"Internal server error: {e}", ConnectionDeny.INTERNAL_SERVER_ERROR)
        return self.succeedHandshake(protocol)

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

    def sendData(self, data, sync=False, chopsize=None):
        # autobahn's own writes (the handshake answer, close, ping and pong
        # frames; console output never comes this way) go straight to the kernel when nothing is queued, as
        # console output does (send_now): the client has its handshake answer
        # while the session is being opened, not after the work that follows
        # it in this reactor turn. The rest is autobahn's sendData.
        if sync or chopsize or self.send_queue:
            super().sendData(data, sync, chopsize)
            return
        send_now(self.transport, (data,))
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state == self.STATE_CONNECTING:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if self.logOctets:
            self.logTxOctets(data, False)

    def _closeConnection(self, abort=False):
        # autobahn's last step in dropping the TCP connection (after the
        # closing handshake, or on a protocol error): with nothing queued it
        # is closed at once, not on the next reactor turn (close_now). An
        # abort (a handshake we began and the client answered, a timeout)
        # stays autobahn's.
        if abort:
            super()._closeConnection(abort)
        else:
            close_now(self.transport)

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


class ConsoleFactory(WebSocketServerFactory):
    """Makes :class:`ConsoleProtocol` with the limits and timeouts of a console."""

    protocol = ConsoleProtocol
    _configured = None  # the protocol class with this factory's options (buildProtocol)

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

    def setProtocolOptions(self, **options):
        super().setProtocolOptions(**options)
        self._configured = None

    def buildProtocol(self, addr):
        # autobahn copies its ~30 options from the factory onto each new
        # protocol and pretty-prints them all for a debug line, eagerly, on
        # every connection: a tenth of a new session's CPU. It skips options
        # the protocol already has, so they are given once to a subclass
        # (functions as staticmethods, or they would become methods).
        if self._configured is None:
            options = {name: getattr(self, name) for name in self.protocol.CONFIG_ATTRS}
            options = {name: staticmethod(v) if inspect.isfunction(v) else v for name, v in options.items()}
            self._configured = type(self.protocol.__name__, (self.protocol,), {**options, "CONFIG_ATTRS": ()})
        protocol = self._configured()
        protocol.factory = self
        return protocol
