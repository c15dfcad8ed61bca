"""Console sessions: attach a client to a console, one writer per console.

Attaching checks the token, takes the console's writer lock in the database
(a lease this node renews, so a crashed node's locks expire) and connects
the bridge. The lock is released when either side closes. Time and entropy
are injected.
"""

import datetime
import os
from typing import Callable, ClassVar, Dict

from attrs import define, field
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .bridge import Bridge, IConsoleClient, vm_endpoint
from .errors import CloseCode, ConsoleBusy
from .interfaces import ConsoleLock, ConsoleToken, IStore
from .tokens import TokenService, new_id

__all__ = ["Session", "SessionManager", "busy_reason"]


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def busy_reason(holder: ConsoleLock) -> str:
    """Why a second writer is refused: who holds the console, since when, what to do."""
    return (
        f"busy: held by {holder.peer} since {_utc(holder.since)}, session {holder.session_id[:8]}; "
        "ask them, or the owner/admin to kick it"
    )


@define
class Session:
    """One client attached to one console."""

    id: str
    token: ConsoleToken
    lock: ConsoleLock
    client: IConsoleClient
    bridge: Bridge


@define
class SessionManager:
    """The sessions of this node, and the writer leases it holds for them."""

    _store: IStore
    _tokens: TokenService
    _reactor: IReactorTime
    node: str
    lease: float = 30.0
    connect_timeout: float = 10.0
    _entropy: Callable[[int], bytes] = os.urandom
    _sessions: Dict[str, Session] = field(factory=dict)
    _log: ClassVar[Logger] = Logger()

    async def attach(self, client: IConsoleClient, secret: str, peer: str) -> Session:
        """Check ``secret``, take the writer lock and connect the VM side."""
        token = await self._tokens.check(secret)
        now = self._reactor.seconds()
        lock = ConsoleLock(token.server_id, token.port_index, new_id(self._entropy), self.node,
                           peer, token.tenant_id, now, now + self.lease)
        holder = await self._store.acquire_lock(lock, now)
        if holder is not None:
            self._log.info("refused {peer} on {console}: held by {holder} since {since}",
                           peer=peer, console=_console(token), holder=holder.peer, since=_utc(holder.since))
            raise ConsoleBusy(busy_reason(holder))
        session = Session(lock.session_id, token, lock, client, Bridge(client))
        self._sessions[session.id] = session
        try:
            where = f"{token.host}:{token.port}"
            await session.bridge.connect(vm_endpoint(self._reactor, token.host, token.port, self.connect_timeout), where)
        except BaseException:
            await self.detach(session)
            raise
        self._log.info("attached {peer} to {console} (session {session})", peer=peer,
                       console=_console(token), session=session.id)
        return session

    async def detach(self, session: Session) -> None:
        """The client went: close the VM side and release the lock."""
        if self._sessions.pop(session.id, None) is None:
            return
        session.bridge.client_lost()
        await self._store.release_lock(session.id)
        self._log.info("detached {peer} from {console} (session {session}, {sent} bytes to VM, {received} to client)",
                       peer=session.lock.peer, console=_console(session.token), session=session.id,
                       sent=session.bridge.bytes_to_vm, received=session.bridge.bytes_to_client)

    def sessions(self) -> list:
        return list(self._sessions.values())

    def close_server(self, server_id: str, code: CloseCode, reason: str) -> int:
        """Close this node's sessions on one server; how many."""
        doomed = [s for s in self._sessions.values() if s.token.server_id == server_id]
        for session in doomed:
            session.client.close(code, reason)
        return len(doomed)

    async def renew(self) -> int:
        """Extend this node's leases; run by :meth:`service` every third of a lease."""
        if not self._sessions:
            return 0
        return await self._store.renew_locks(self.node, self._reactor.seconds() + self.lease)

    async def close_all(self, reason: str = "the console proxy is shutting down") -> None:
        """Close every session and release its lock (at shutdown)."""
        sessions = list(self._sessions.values())
        for session in sessions:
            session.client.close(CloseCode.GOING_AWAY, reason)
        await DeferredList([Deferred.fromCoroutine(self.detach(s)) for s in sessions])

    def service(self) -> "LeaseService":
        return LeaseService(self)


class LeaseService(TimerService):
    """Renews this node's writer leases, and releases them all when stopped."""

    def __init__(self, manager: SessionManager):
        super().__init__(manager.lease / 3, self._renew)
        self.clock = manager._reactor
        self._manager = manager

    def _renew(self):
        d = Deferred.fromCoroutine(self._manager.renew())
        d.addErrback(lambda f: SessionManager._log.failure("renewing console leases failed", f))
        return d

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._manager.close_all())


def _console(token: ConsoleToken) -> str:
    return f"{token.server_id}/{token.port_index}"
