"""This node's consoles: one VM connection per serial port, shared by every session of it here.

A console is connected when its first session attaches (sessions attaching
meanwhile wait for that one connection) and closed when its last session
leaves, unless ``linger`` (the ``console_linger`` option) keeps it
connected that many seconds for the next one: a page reload or a quick
reconnect then finds the scrollback, with what the VM printed meanwhile,
and no new VM connection is made. Lingering is bounded: at most
``max_lingering`` consoles, the oldest closed first; none while sessions and
consoles hold nine tenths of the node's file budget, and lingering ones are
closed before a new VM connection when files run short, so the sessions
ceiling is unchanged.
"""

import resource
from collections import OrderedDict
from typing import Dict, Optional, Sized

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .bridge import Console, Scrollback, vm_endpoint
from .names import NameCache
from .interfaces import ConsoleToken

__all__ = ["Consoles", "RESERVED_FILES", "name_of"]

# Open files kept for everything but console sockets (database, logs, listener, API clients).
RESERVED_FILES = 64


def name_of(token: ConsoleToken) -> str:
    """How logs and sessions name a console: server id / port index."""
    return f"{token.server_id}/{token.port_index}"


@define
class Consoles:
    """The consoles of this node, by (server id, port index)."""

    _reactor: IReactorTime
    _sessions: Sized  # this node's sessions (each holds a socket), for the file budget
    scrollback_bytes: int = 65536
    connect_timeout: float = 10.0
    linger: float = 0.0  # seconds a console stays connected after its last session leaves (console_linger)
    max_lingering: int = 1024  # consoles kept connected with nobody attached, at most
    file_budget: Optional[int] = None  # open files this node may use for sockets (default: soft limit - RESERVED_FILES)
    _consoles: Dict[tuple, Console] = field(factory=dict)
    _connecting: Dict[tuple, list] = field(factory=dict)
    _lingering: "OrderedDict[tuple, IDelayedCall]" = field(factory=OrderedDict)  # console key -> its closing; oldest first
    names: NameCache = field(default=None)  # the addresses of VM host names (made with the reactor if not given)

    def __attrs_post_init__(self):
        if self.names is None:
            self.names = NameCache(self._reactor)
        if self.file_budget is None:
            self.file_budget = max(0, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - RESERVED_FILES)

    async def connected(self, token: ConsoleToken) -> Console:
        """This node's console for the token's serial port, connecting it if needed."""
        key = (token.server_id, token.port_index)
        console = self._consoles.get(key)
        if console is not None and key in self._connecting:
            waiter = Deferred()
            self._connecting[key].append(waiter)
            return await waiter
        if key in self._lingering:
            self._lingering.pop(key).cancel()
        if console is not None and console.connected:
            return console
        self._make_room()
        console = Console(name_of(token), Scrollback(self.scrollback_bytes))
        self._consoles[key] = console
        self._connecting[key] = []
        try:
            endpoint = vm_endpoint(self._reactor, token.host, token.port, self.connect_timeout, self.names)
            await console.connect(endpoint, f"{token.host}:{token.port}")
        except BaseException as e:
            if self._consoles.get(key) is console:
                del self._consoles[key]
            for waiter in self._connecting.pop(key):
                waiter.errback(e)
            raise
        for waiter in self._connecting.pop(key):
            waiter.callback(console)
        return console

    def release(self, key: tuple, console: Console) -> None:
        """Nobody is attached to ``console`` any more: keep it connected ``linger`` seconds for the next one, or close it."""
        if (self.linger <= 0 or self._consoles.get(key) is not console or not console.connected
                or len(self._sessions) + len(self._consoles) >= self._spare_files()):
            self._close(key, console)
            return
        if len(self._lingering) >= self.max_lingering:
            self._stop_lingering(next(iter(self._lingering)))
        self._lingering[key] = self._reactor.callLater(self.linger, self._linger_over, key)

    def close_server(self, server_id: str) -> None:
        """Close the lingering consoles of a server (it was deleted)."""
        for key in [k for k in self._lingering if k[0] == server_id]:
            self._stop_lingering(key)

    def close_lingering(self) -> None:
        """Close every lingering console (the node stops)."""
        for key in list(self._lingering):
            self._stop_lingering(key)

    def _spare_files(self) -> int:
        """Sockets (sessions plus consoles) above which no console lingers: nine tenths of the budget."""
        return self.file_budget * 9 // 10

    def _make_room(self) -> None:
        """Before a new VM connection: close lingering consoles, oldest first, while files run short."""
        while self._lingering and len(self._sessions) + len(self._consoles) >= self._spare_files():
            self._stop_lingering(next(iter(self._lingering)))

    def _linger_over(self, key: tuple) -> None:
        del self._lingering[key]
        self._close(key, self._consoles.get(key))

    def _stop_lingering(self, key: tuple) -> None:
        self._lingering.pop(key).cancel()
        self._close(key, self._consoles.get(key))

    def _close(self, key: tuple, console: Optional[Console]) -> None:
        if console is None:
            return
        console.close()
        if self._consoles.get(key) is console:
            del self._consoles[key]
