"""autobahn's websocket server, without the work it does on every connection for nothing.

A console proxy opens and closes many short sessions, and autobahn spends
much of a new session on things no console uses: debug text built whether
or not debug is logged, its ~30 options copied to each protocol and
printed, WAMP's transport details, urllib's reading of a plain request, a
reactor turn before its writes and before its close. These two classes
take autobahn's own steps without that work, to the same state (the unit
tests compare them with autobahn's own), and leave anything unusual to
autobahn. What each step saves is in docs/performance.md. The console
protocol (:mod:`serialproxy.websocket`) builds on them.
"""

import inspect

from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger

from .handshake import PlainUpgrade, query_params, read_plain_upgrade
from .transports import close_now, send_now

__all__ = ["LeanServerFactory", "LeanServerProtocol"]

_AUTOBAHN_LOG = WebSocketServerProtocol.log  # the class's txaio logger (its __get__ returns it)


class LeanServerProtocol(WebSocketServerProtocol):
    """autobahn's server protocol, its per-connection steps taken without their unused work."""

    _log = Logger()

    def __init__(self):
        super().__init__()
        # autobahn's logger (txaio's), held by the instance: as a class
        # attribute it is a descriptor, and autobahn asks it for about a
        # dozen debug lines a session (each a call to its __get__, then one
        # to the no-op that drops the line). The same logger: txaio still
        # sets its level.
        self.log = _AUTOBAHN_LOG

    def origin_plain(self, origin: str, host: str) -> bool:
        """Is ``origin`` (given, not null nor file:) one this server lets in, so the plain reading may take it?

        An Origin a subclass refuses takes autobahn's path (see ``_plain_enough``).
        """
        return True

    # autobahn wraps a connection's set-up and tear-down in debug lines whose
    # arguments it builds whether or not debug is logged: a method's qualified
    # name through ``inspect`` (Twisted's connectionMade, and connectionLost
    # when the connection ended cleanly) and, in its server protocol, the
    # Failure as text, traceback and all. That was a tenth of a new
    # session's function calls; so these four take autobahn's steps without
    # the lines. Any other end of a connection (lost, aborted, a TLS error,
    # which autobahn logs as an error) takes autobahn's own connectionLost.

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
            # is_closed, which autobahn resolves with the protocol itself,
            # goes with the connection (it has fired by now), so that
            # reference counting frees the protocol as it ends rather than
            # the garbage collector later.
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

    def processHandshake(self):
        # A plain request (what browsers, the CLI and websocket libraries
        # send) is read here in one pass (handshake.read_plain_upgrade), to
        # the same request and state as autobahn's processHandshake would
        # give it, and answered by autobahn's succeedHandshake; anything
        # else (a header given twice, an absolute URI, another version, junk)
        # takes autobahn's own path, with its checks and error answers.
        # Autobahn's reading takes more than it needs on every new session:
        # urllib's URL parsing, a Deferred around onConnect, debug text built
        # through inspect.
        upgrade = read_plain_upgrade(self.data)
        if upgrade is None or not self._plain_enough(upgrade):
            return super().processHandshake()
        return self._read_plain(upgrade)

    def _plain_enough(self, upgrade: PlainUpgrade) -> bool:
        """Does autobahn's reading, with this protocol's options, take ``upgrade`` as it is?

        Not with options this server does not set (a connection cap, trusted
        X-Forwarded-For, other versions), nor a Host whose port is not the
        one the factory was told it is reached on. An Origin the subclass
        refuses (``origin_plain``), and those autobahn refuses (null,
        file:), take autobahn's path too: it answers some with 400, and
        onConnect closes the rest with a reason.
        """
        if self.maxConnections or self.trustXForwardedFor or 13 not in self.versions:
            return False
        external = self.factory.externalPort
        if external and upgrade.port is not None and upgrade.port != external:
            return False
        origin = upgrade.headers.get("origin")
        return origin is None or (origin.lower() != "null" and origin[:5].lower() != "file:"
                                  and self.origin_plain(origin, upgrade.headers["host"]))

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
            self._log.failure("reading a websocket request failed")
            return self.failHandshake(f"Internal server error: {e}", ConnectionDeny.INTERNAL_SERVER_ERROR)
        return self.succeedHandshake(protocol)

    def sendData(self, data, sync=False, chopsize=None):
        # autobahn's own writes (the handshake answer, close, ping and pong
        # frames) go straight to the kernel when nothing is queued
        # (send_now): the client has its handshake answer while the session
        # is being opened, not after the work that follows it in this
        # reactor turn. The rest is autobahn's sendData.
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


class LeanServerFactory(WebSocketServerFactory):
    """autobahn's server factory, its options given once to a protocol class rather than to each protocol."""

    protocol = LeanServerProtocol
    _configured = None  # the protocol class with this factory's options (buildProtocol)

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
