"""The byte path: one client (websocket or telnet) joined to one VM serial port.

As in ``twisted/protocols/portforward.py``: the client is paused until the
VM side connects; then each transport is the other's streaming producer, so
a client that stops reading pauses the VM side and a VM that stops reading
pauses the client. Memory per session stays bounded by the transports'
buffers. When either side goes, the other is closed.
"""

import ipaddress
from typing import ClassVar, Optional

from attrs import define, field
from twisted.internet import endpoints
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from .errors import CloseCode, SerialProxyError

__all__ = ["Bridge", "IConsoleClient", "VMUnreachable", "vm_endpoint"]


class VMUnreachable(SerialProxyError):
    """The VM's serial port does not answer."""

    http_status = 502
    close_code = CloseCode.VM_UNREACHABLE


class IConsoleClient(Interface):
    """The client end of a bridge: a websocket or telnet connection."""

    transport = Attribute("The client's transport: a consumer and a push producer.")

    def send(data):
        """Send bytes from the VM to the client."""

    def close(code, reason):
        """Close the client with a close code and a reason a person can read."""


def vm_endpoint(reactor, host: str, port: int, timeout: float):
    """A client endpoint for a VM serial port; IP literals skip name resolution."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if address.version == 6:
        return endpoints.TCP6ClientEndpoint(reactor, str(address), port, timeout=timeout)
    return endpoints.TCP4ClientEndpoint(reactor, str(address), port, timeout=timeout)


class _VMProtocol(Protocol):
    """The VM side: hands bytes to the bridge, tells it when the port closes."""

    def __init__(self, bridge: "Bridge"):
        self._bridge = bridge

    def dataReceived(self, data: bytes) -> None:
        self._bridge.from_vm(data)

    def connectionLost(self, reason) -> None:
        self._bridge.vm_lost(reason)


@implementer(IPushProducer)
class _Throttle:
    """Pauses and resumes a transport's reading for its peer; never closes it.

    A transport calls its producer's stopProducing() when its own connection
    is lost, before its protocol hears of it; registering the peer transport
    itself would drop the peer at once (no websocket close handshake). The
    bridge closes the peer instead, in vm_lost / client_lost.
    """

    def __init__(self, transport):
        self._transport = transport

    def pauseProducing(self):
        self._transport.pauseProducing()

    def resumeProducing(self):
        self._transport.resumeProducing()

    def stopProducing(self):
        pass


@define
class Bridge:
    """Pumps bytes between a client and a VM serial port, with flow control."""

    _client: IConsoleClient
    _vm: Optional[_VMProtocol] = field(default=None, init=False)
    _closing: bool = field(default=False, init=False)
    bytes_to_vm: int = field(default=0, init=False)
    bytes_to_client: int = field(default=0, init=False)
    _log: ClassVar[Logger] = Logger()

    async def connect(self, endpoint, where: str) -> None:
        """Connect to the VM port at ``endpoint``, then join the two transports."""
        try:
            factory = Factory.forProtocol(lambda: _VMProtocol(self))
            factory.noisy = False
            self._vm = await endpoint.connect(factory)
        except (ConnectError, DNSLookupError, TimeoutError, OSError) as e:
            raise VMUnreachable(f"cannot reach the VM serial port at {where}: {_reason(e)}") from e
        if self._closing:
            self._vm.transport.loseConnection()
            return
        self._join(self._client.transport, self._vm.transport)

    @staticmethod
    def _join(client, vm) -> None:
        # An HTTP channel that handed its transport to the websocket is still
        # registered as that transport's producer: replace it.
        if getattr(client, "producer", None) is not None:
            client.unregisterProducer()
        client.registerProducer(_Throttle(vm), True)
        vm.registerProducer(_Throttle(client), True)
        client.resumeProducing()

    def from_client(self, data: bytes) -> None:
        if self._vm is not None and not self._closing:
            self.bytes_to_vm += len(data)
            self._vm.transport.write(data)

    def from_vm(self, data: bytes) -> None:
        if not self._closing:
            self.bytes_to_client += len(data)
            self._client.send(data)

    def vm_lost(self, reason) -> None:
        if not self._closing:
            self._closing = True
            self._client.close(CloseCode.VM_CLOSED, "the VM closed its serial port")

    def client_lost(self) -> None:
        """The client went: close the VM side (the VM keeps running)."""
        self._closing = True
        if self._vm is not None and self._vm.transport is not None:
            self._vm.transport.unregisterProducer()
            self._vm.transport.loseConnection()

    @property
    def connected(self) -> bool:
        return self._vm is not None and not self._closing


def _reason(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return "connection timed out"
    text = getattr(error, "osError", None) or error
    return str(text).strip().rstrip(".") or type(error).__name__

