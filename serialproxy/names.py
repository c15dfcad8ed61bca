"""VM host names: resolved once, kept a while, and dialled as addresses (see docs/performance.md).

A VM serial port may be registered by host name (a hypervisor's name, or
``localhost``). Twisted's ``HostnameEndpoint`` asks the system resolver
(``getaddrinfo``, in a thread) on every connection, which cost a new
console session about 0.75 ms more than an address on this machine, and
took a third off the rate of new sessions one after another. Here a name's
addresses are kept ``NAME_TTL`` seconds (at most ``MAX_NAMES`` names), one
question at a time per name, and each connection is ``VMEndpoint``'s (no
reactor turn for a VM on this host). A name none of whose addresses
answered is asked again on the next connection: it may have moved.
"""

from collections import OrderedDict
from typing import Optional

from attrs import define, field, frozen
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from .transports import VMEndpoint

__all__ = ["MAX_NAMES", "NAME_TTL", "NameCache", "NamedVMEndpoint"]

NAME_TTL = 30.0  # seconds a name's addresses are kept
MAX_NAMES = 4096  # names kept at most; the least recently used goes first


@implementer(IResolutionReceiver)
class _Answer:
    """Collects one resolution's addresses (Twisted's resolver interface) for ``done``."""

    def __init__(self, done):
        self._done = done
        self._addresses = []

    def resolutionBegan(self, resolution):
        pass

    def addressResolved(self, address):
        host = address.host
        if getattr(address, "scopeID", 0):  # a link-local IPv6 address keeps its interface
            host = f"{host}%{address.scopeID}"
        self._addresses.append(host)

    def resolutionComplete(self):
        self._done(list(dict.fromkeys(self._addresses)))


@define
class NameCache:
    """The addresses of VM host names, from the reactor's resolver (or ``resolver``), kept ``ttl`` seconds."""

    _reactor: object
    ttl: float = NAME_TTL
    size: int = MAX_NAMES
    resolver: Optional[object] = None  # an IHostnameResolver; the reactor's nameResolver if None
    _known: "OrderedDict[str, tuple]" = field(factory=OrderedDict)  # name -> (addresses, when they expire)
    _asking: dict = field(factory=dict)  # name -> the Deferreds waiting for its answer

    def addresses(self, name: str) -> Deferred:
        """A Deferred list of the name's addresses (at least one), or a DNSLookupError."""
        known = self._known.get(name)
        if known is not None:
            if known[1] > self._reactor.seconds():
                self._known.move_to_end(name)
                return succeed(known[0])
            del self._known[name]
        waiter = Deferred()  # each caller's own: cancelling it leaves the question to the others
        waiting = self._asking.get(name)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._asking[name] = [waiter]
        resolver = self.resolver if self.resolver is not None else self._reactor.nameResolver
        try:
            resolver.resolveHostName(_Answer(lambda addresses: self._answered(name, addresses)), name, 0,
                                     transportSemantics="TCP")
        except Exception:
            failure = Failure()
            for waiting in self._asking.pop(name, ()):
                waiting.errback(failure)
        return waiter

    def _answered(self, name: str, addresses: list) -> None:
        if addresses:
            self._known[name] = (addresses, self._reactor.seconds() + self.ttl)
            self._known.move_to_end(name)
            while len(self._known) > self.size:
                self._known.popitem(last=False)
        for waiter in self._asking.pop(name, ()):
            if addresses:
                waiter.callback(addresses)
            else:
                waiter.errback(error.DNSLookupError(f"no address for {name}"))

    def forget(self, name: str) -> None:
        """Ask again next time."""
        self._known.pop(name, None)


@implementer(IStreamClientEndpoint)
@frozen
class NamedVMEndpoint:
    """A TCP client endpoint for a VM's serial port at a host name: its addresses (``NameCache``) in turn.

    The resolver's answer counts against ``timeout`` (DNSLookupError if it
    runs out first). Each address is dialled by ``VMEndpoint`` until one
    connects; what is left of the timeout is shared between the addresses
    left (a refusal answers at once). Should none connect, the name is
    forgotten and the last error raised.
    """

    names: NameCache
    reactor: object
    host: str
    port: int
    timeout: float = 30

    def connect(self, protocolFactory) -> Deferred:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory):
        deadline = self.reactor.seconds() + self.timeout
        asked = self.names.addresses(self.host)
        if not asked.called:  # the resolver's answer counts against the timeout too
            asked.addTimeout(self.timeout, self.reactor)
        try:
            addresses = await asked
        except defer.TimeoutError:
            raise error.DNSLookupError(f"no answer for {self.host} within {self.timeout:g} s") from None
        last = None
        for tried, address in enumerate(addresses):
            remaining = deadline - self.reactor.seconds()
            if remaining <= 0:
                break
            share = remaining / (len(addresses) - tried)  # of what is left, for each address not tried yet
            try:
                return await VMEndpoint(self.reactor, address, self.port, share).connect(protocolFactory)
            except error.ConnectError as e:  # refused, unreachable, timed out, no socket
                last = e
        self.names.forget(self.host)
        raise last if last is not None else error.TimeoutError(string=f"connecting to {self.host}:{self.port}")
