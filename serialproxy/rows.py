"""This node's session rows, written behind: one transaction per new session.

Opening a session is one transaction: it writes the closes queued so far,
takes the writer lock and records the session row. Closing one is written
behind: the ids of closed sessions are queued and written together, inside
the next open of this node, or ``close_delay`` seconds after the first was
queued, or when :meth:`SessionRows.flush` is asked for (before anything
reads session or lock rows), whichever comes first. An open first waits for
a transaction still in flight that carries closes queued before it, so a
client that reconnects at once is never refused by its own previous
session's lock. See docs/performance.md for why this keeps expiry and
revocation as strong as before.
"""

from typing import Callable, ClassVar, Optional

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .errors import NotFound
from .interfaces import ConsoleLock, IStore, SessionRecord

__all__ = ["SessionRows"]


@define(eq=False)
class _Write:
    """A transaction carrying queued closes, the first of them numbered ``first``; who waits for its end."""

    first: int
    waiters: list = field(factory=list)


@define
class SessionRows:
    """Opens now, closes written behind, on one store for this node."""

    _store: IStore
    _reactor: IReactorTime
    close_delay: float = 0.05
    max_queued_closes: int = 100000
    _closed: list = field(factory=list)  # ids of sessions closed here, not yet written; oldest first
    _closed_from: int = 0  # the number of _closed[0], or less (closes are numbered as they are queued)
    _closes: int = 0  # how many closes were queued
    _writes: list = field(factory=list)  # a _Write for each transaction carrying closes now
    _flush_call: Optional[IDelayedCall] = None
    _log: ClassVar[Logger] = Logger()

    async def open(self, record: SessionRecord, lock: Optional[ConsoleLock], now: float) -> Optional[ConsoleLock]:
        """Record a session (and take its lock) with the queued closes: None, or the lock's holder.

        :class:`NotFound` if its server is gone; the closes it carried are queued again.
        """
        await self._earlier_closes_written()  # so a lock this node just let go never refuses it
        try:
            return await self._write(self._store.open_session, record, lock, now)
        except NotFound:
            self._flush_soon()
            raise

    def close(self, session_id: str) -> None:
        """Free the lock and forget the row of a session, within close_delay or with the next open."""
        if len(self._closed) >= self.max_queued_closes:
            self._log.error("{count} closed console sessions wait for the database: dropping the close of session "
                            "{session}; its row goes when its lease runs out, its writer lock (if any) when this node stops",
                            count=len(self._closed), session=session_id)
            return
        self._closed.append(session_id)
        self._closes += 1
        self._flush_soon()

    async def flush(self) -> None:
        """Write every close queued so far; a failure is logged and the closes stay queued for the next try."""
        await self._earlier_closes_written()
        if not self._closed:
            return
        count = len(self._closed)
        try:
            await self._write(self._store.close_sessions)
        except Exception:
            self._log.failure("writing {count} closed console sessions failed; they stay queued", count=count)

    def _flush_soon(self) -> None:
        if self._closed and self._flush_call is None:
            self._flush_call = self._reactor.callLater(self.close_delay, self._flush_later)

    def _flush_later(self) -> None:
        self._flush_call = None
        Deferred.fromCoroutine(self.flush())  # it logs its own failure

    async def _earlier_closes_written(self) -> None:
        """Wait for the transactions carrying closes queued before now; the caller writes those still queued."""
        before = self._closes
        while True:
            earlier = [w for w in self._writes if w.first < before]
            if not earlier:
                return
            waiter = Deferred()
            earlier[0].waiters.append(waiter)
            await waiter

    async def _write(self, write: Callable, *args):
        """``write(*args, ids)``: a transaction carrying the queued closes; if it fails, they are queued again."""
        ids, self._closed = self._closed, []
        carrying = _Write(self._closed_from)
        self._closed_from = self._closes
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        if ids:
            self._writes.append(carrying)
        try:
            return await write(*args, ids)
        except BaseException:
            if ids:
                self._closed[:0] = ids
                self._closed_from = min(self._closed_from, carrying.first)
            raise
        finally:
            if ids:
                self._writes.remove(carrying)
                for waiter in carrying.waiters:
                    waiter.callback(None)
