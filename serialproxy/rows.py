"""This node's session rows, written behind: at most one transaction per new session.

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

A node that lets sessions in before their open is written (a sole node,
see :class:`serialproxy.sessions.SessionManager`) writes opens behind too
(``behind``): within ``close_delay``, together with the other opens and
closes of that time. Opens are written in the order they came. A session
may then close before its open is written: its close is held until that
open has ended, as if that open's transaction carried it, so it is never
written before the row it deletes. A session that closed before its open
was sent is not written at all.
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
    """A transaction carrying queued closes, the first of them numbered ``first``; who waits for its end.

    Also a close held back until its session's open has ended (see _Open).
    """

    first: int
    waiters: list = field(factory=list)


@define(eq=False)
class _Open:
    """A session's open, until its transaction has ended."""

    held: Optional[_Write] = None  # the session's close, if it closed meanwhile
    waiters: list = field(factory=list)  # who waits for its end (flush)


@define
class SessionRows:
    """Opens now (or within close_delay, together), closes written behind, on one store for this node."""

    _store: IStore
    _reactor: IReactorTime
    close_delay: float = 0.05
    max_queued_closes: int = 100000
    _closed: list = field(factory=list)  # ids of sessions closed here, not yet written; oldest first
    _closed_from: int = 0  # the number of _closed[0], or less (closes are numbered as they are queued)
    _closes: int = 0  # how many closes were queued
    _writes: list = field(factory=list)  # a _Write for each transaction carrying closes now, and each held close
    _opening: dict = field(factory=dict)  # session id -> its _Open, while the open is pending
    _due: list = field(factory=list)  # a Deferred for each open written behind, waiting for the next write
    _write_call: Optional[IDelayedCall] = None
    last_dropped: Optional[float] = None  # when a close was last dropped (the queue was full); see SessionManager.renew
    _log: ClassVar[Logger] = Logger()

    async def open(self, record: SessionRecord, lock: Optional[ConsoleLock], now: float, behind: bool = False) -> Optional[ConsoleLock]:
        """Record a session (and take its lock) with the queued closes: None, or the lock's holder.

        Now, or (``behind``) within close_delay, together with the other opens
        of that time. Opens are written in the order they came: one that goes
        now first sends those waiting. :class:`NotFound` if its server is
        gone; the closes it carried are queued again.
        """
        self._opening[record.id] = opening = _Open()
        before = self._closes  # the closes queued before this open (its own, if held, comes later)
        recorded = False
        try:
            if behind:  # written with the others of the next close_delay
                due = Deferred()
                self._due.append(due)
                self._write_soon()
                await due
            else:
                self._release_due()
            await self._earlier_closes_written(before)  # so a lock this node just let go never refuses it
            if opening.held is not None:
                return None  # it closed already: nothing to write
            holder = await self._write(self._store.open_session, record, lock, now)
            recorded = holder is None
            return holder
        except NotFound:
            self._write_soon()
            raise
        finally:
            self._opened(record.id, recorded)

    def close(self, session_id: str) -> None:
        """Free the lock and forget the row of a session, within close_delay or with the next open."""
        opening = self._opening.get(session_id)
        if opening is not None:  # its open is pending: the close waits for its end (see _opened)
            if opening.held is None:
                opening.held = _Write(self._closes)
                self._closes += 1
                self._writes.append(opening.held)
            return
        if len(self._closed) >= self.max_queued_closes:
            self.last_dropped = self._reactor.seconds()
            self._log.error("{count} closed console sessions wait for the database: dropping the close of session "
                            "{session}; its row and writer lock (if any) go when their lease runs out",
                            count=len(self._closed), session=session_id)
            return
        self._closed.append(session_id)
        self._closes += 1
        self._write_soon()

    async def flush(self) -> None:
        """Write every open and close queued so far; a failed close write is logged and its closes stay queued for the next try."""
        self._release_due()
        for opening in list(self._opening.values()):
            waiter = Deferred()
            opening.waiters.append(waiter)
            await waiter
        await self._earlier_closes_written()
        if not self._closed:
            return
        count = len(self._closed)
        try:
            await self._write(self._store.close_sessions)
        except Exception:
            self._log.failure("writing {count} closed console sessions failed; they stay queued", count=count)

    def _opened(self, session_id: str, recorded: bool) -> None:
        """A session's open has ended: a close held for it is queued now (numbered as when it came) if there is a row to delete."""
        opening = self._opening.pop(session_id)
        held = opening.held
        if held is not None:
            self._writes.remove(held)
            if recorded:
                self._closed_from = min(self._closed_from, held.first) if self._closed else held.first
                self._closed.append(session_id)
                self._write_soon()
            for waiter in held.waiters:
                waiter.callback(None)
        for waiter in opening.waiters:
            waiter.callback(None)

    def _write_soon(self) -> None:
        if (self._closed or self._due) and self._write_call is None:
            self._write_call = self._reactor.callLater(self.close_delay, self._write_later)

    def _write_later(self) -> None:
        self._write_call = None
        Deferred.fromCoroutine(self.flush())  # it logs its own failure

    def _release_due(self) -> None:
        """The opens waiting for the next write go now: the first carries the queued closes, the rest share one transaction."""
        if self._write_call is not None:  # what is queued now is written now
            self._write_call.cancel()
            self._write_call = None
        due, self._due = self._due, []
        for waiter in due:
            waiter.callback(None)

    async def _earlier_closes_written(self, before: Optional[int] = None) -> None:
        """Wait for the transactions carrying closes queued before now (or before the ``before``-th); the caller writes those still queued."""
        before = self._closes if before is None else before
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
        if self._write_call is not None and not self._due:  # opens that wait keep their time
            self._write_call.cancel()
            self._write_call = None
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
