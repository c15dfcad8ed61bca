"""Console sessions: who is attached to which console, one writer per console.

Attaching checks the token; a writer (``mode=write``, the default) also
takes the console's writer lock in the database, a lease this node renews,
so it holds across nodes and a dead node's locks expire. Read-only
spectators (``mode=read``) take no lock. Every session is a database row,
so any node can list it and kick it; the holding node closes a session
kicked elsewhere when it next renews its leases. Attach, detach, refusal
and kick are logged as structured events (``event``, ``session``,
``console``, ``peer``, ``actor``, ``reason``). Time and entropy are injected.

Opening a session is one transaction (lock and row); closing one is written
behind (see :mod:`serialproxy.rows`): this manager flushes the closes before
anything that reads session or lock rows (list, kick, renew, purge, shutdown).

A node that is its database's only user (``sole_node``: an sqlite database,
which one node holds, see :func:`serialproxy.database.claim_sqlite`) knows
from memory whether a console has a writer and whether a token's server
still exists, since every change to either goes through it. It lets a
session in without waiting for its open transaction: the VM is dialled and
bytes flow at once, the open is written within ``close_delay`` together
with the others of that time (see :mod:`serialproxy.rows`), and its answer
comes later (should it refuse, which memory makes impossible unless the
database was changed behind the node's back, the session is closed with
the refusal).
Whenever memory is not sure (it has a writer on that console, which may
have been kicked straight in the database), the session waits for the
transaction as on any node.
"""

import datetime
import os
from typing import Callable, ClassVar, Dict, Optional

from attrs import define, evolve, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .bridge import Attachment, Console, IConsoleClient
from .consoles import Consoles
from .errors import BadRequest, CloseCode, ConsoleBusy, NotFound, SerialProxyError, TokenInvalid
from .interfaces import ConsoleLock, ConsoleToken, IStore, SessionRecord
from .logs import Logger
from .rows import SessionRows
from .timers import IdleTimer, LeaseService
from .tokens import UNKNOWN_TOKEN, TokenService, new_id

__all__ = ["Session", "SessionManager", "busy_reason", "MODES"]

MODES = ("write", "read")


async def _outcome(d: Deferred):
    """What ``d`` fires with: its result, or its Failure (not raised)."""
    try:
        return await d
    except Exception:
        return Failure()


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def busy_reason(holder: ConsoleLock) -> str:
    """Why a second writer is refused: who holds the console, since when, what to do."""
    return (
        f"busy: held by {holder.peer} since {_utc(holder.since)}, session {holder.session_id[:8]}; "
        "ask them, or the owner/admin to kick it"
    )


@define(eq=False)
class Session:
    """One client attached to one console on this node."""

    id: str
    token: ConsoleToken
    mode: str
    peer: str
    tenant_id: str
    since: float
    client: IConsoleClient
    console: Console
    attachment: Attachment
    lock: Optional[ConsoleLock]
    unrecorded: bool = False  # its open transaction refused it after it was let in (sole_node): no row to delete
    counted: tuple = (0, 0)  # the byte counts its row has (renew writes those that changed)
    timers: list = field(factory=list)  # everything to cancel on detach
    idle: Optional[IdleTimer] = None
    recording: object = None


@define(eq=False)
class _Attaching:
    """A session between its token check and joining its console: the deletion of its server refuses it."""

    server_id: str
    refusal: Optional[Exception] = None


@define
class SessionManager:
    """The sessions and consoles of this node, and the leases it holds for them."""

    _store: IStore
    _tokens: TokenService
    _reactor: IReactorTime
    node: str
    lease: float = 30.0
    connect_timeout: float = 10.0
    _entropy: Callable[[int], bytes] = os.urandom
    scrollback_bytes: int = 65536
    lag_bytes: int = 262144
    idle_timeout: int = 0
    close_on_token_expiry: bool = False
    recorder: object = None
    _sessions: Dict[str, Session] = field(factory=dict)
    linger: float = 0.0  # seconds a console stays connected after its last session leaves (console_linger)
    consoles: Consoles = field(default=None)  # this node's VM connections (made from the options above if not given)
    rows: SessionRows = field(default=None)  # this node's session writes (made from the store and reactor if not given)
    sole_node: bool = False  # the database's only user: sessions are let in while their open transaction runs
    _writers: Dict[tuple, ConsoleLock] = field(factory=dict)  # console key -> the lock of its writer here (or one attaching)
    _attaching: Dict[str, "_Attaching"] = field(factory=dict)  # session id -> its server, while it attaches
    _log: ClassVar[Logger] = Logger()  # logs.Logger: two lines a session (see its doc)

    def __attrs_post_init__(self):
        if self.rows is None:
            self.rows = SessionRows(self._store, self._reactor)
        if self.consoles is None:
            self.consoles = Consoles(self._reactor, self._sessions, self.scrollback_bytes, self.connect_timeout, self.linger)

    # attach and detach

    async def attach(self, client: IConsoleClient, secret: str, peer: str, mode: str = "write") -> Session:
        """Check ``secret``, take the writer lock (writers), join the console."""
        if mode not in MODES:
            raise BadRequest(f"unknown mode {mode!r}: use mode=write (the default) or mode=read")
        token = await self._tokens.check(secret)
        now = self._reactor.seconds()
        session_id = new_id(self._entropy)
        tenant = token.key_tenant_id or token.tenant_id
        lock = ConsoleLock(token.server_id, token.port_index, session_id, self.node, peer, token.tenant_id,
                           now, now + self.lease) if mode == "write" else None
        record = SessionRecord(session_id, token.server_id, token.port_index, mode, peer, tenant, self.node, now, now + self.lease)
        console, opening = await self._admit(token, record, lock, now)
        attachment = Attachment(session_id, client, mode == "write", self.lag_bytes)
        session = Session(session_id, token, mode, peer, tenant, now, client, console, attachment, lock)
        self._sessions[session_id] = session
        if not opening.called:  # let in before its open transaction answered (sole_node)
            opening.addBoth(self._opened, session)
        self._start_recording(session)
        console.attach(attachment)
        self._start_timers(session)
        # The line is formatted here by an f-string, not field by field by the
        # log observer (a tenth of a new session's CPU went to these two
        # events); the fields stay in the event for structured observers.
        console_name = console.name  # server id / port index (consoles.name_of), made once with the console
        self._log.info("attach: {text}", text=f"{peer} on console {console_name} as {mode} (session {session_id}, tenant {tenant})",
                       event="attach", peer=peer, console=console_name, mode=mode, session=session_id, tenant=tenant)
        return session

    async def _admit(self, token: ConsoleToken, record: SessionRecord, lock: Optional[ConsoleLock], now: float) -> tuple:
        """Open the session's row (and lock) and connect its console: ``(console, the open's Deferred)``.

        On a sole node memory decides, unless it has a writer on this console
        already (see the module's doc): the session is let in while its open
        waits to be written, and the open's answer comes later. Otherwise it
        waits for that answer first.
        """
        key = (token.server_id, token.port_index)
        early = self.sole_node and (lock is None or key not in self._writers)
        opening = Deferred.fromCoroutine(self.rows.open(record, lock, now, behind=early))  # the queued closes, the lock, the row
        if lock is not None and early:
            self._writers[key] = lock
        self._attaching[record.id] = attaching = _Attaching(token.server_id)  # close_server() may refuse it meanwhile
        try:
            if not early:
                refusal = self._refusal(await _outcome(opening), token)
                if refusal is not None:
                    raise refusal
                if lock is not None:
                    self._writers[key] = lock
            return await self._connected(token, record.id, opening, attaching), opening
        except BaseException:
            if lock is not None and self._writers.get(key) is lock:
                del self._writers[key]
            raise
        finally:
            del self._attaching[record.id]

    async def _connected(self, token: ConsoleToken, session_id: str, opening: Deferred, attaching: "_Attaching") -> Console:
        """The session's console, connected, unless refused meanwhile: by its open transaction, if that
        has answered, or by the deletion of its server on this node (``attaching.refusal``)."""
        if attaching.refusal is not None:  # deleted while its open was written: no VM dial
            self.rows.close(session_id)
            raise attaching.refusal
        try:
            console = await self.consoles.connected(token)
        except BaseException:
            opening.addErrback(lambda _: None)  # the client is told why the VM is out of reach
            self.rows.close(session_id)
            raise
        answer = self._refusal(await _outcome(opening), token) if opening.called else None
        if answer is None and attaching.refusal is not None:
            self.rows.close(session_id)  # its row, if its open wrote one
        refusal = answer or attaching.refusal
        if refusal is not None:
            if console.idle:
                self.consoles.release((token.server_id, token.port_index), console)
            raise refusal
        return console

    def _refusal(self, outcome, token: ConsoleToken) -> Optional[Exception]:
        """What refuses a session, from its open transaction's outcome (its result or Failure); None if opened.

        A server gone from the database also drops its tokens from memory.
        """
        if isinstance(outcome, Failure):
            if outcome.check(NotFound):  # the server was deleted (on another node) since its token was cached
                self._tokens.forget_server(token.server_id)
                return TokenInvalid(UNKNOWN_TOKEN)
            return outcome.value
        if outcome is not None:  # the holder's lock; the client logs the refusal with the reason
            return ConsoleBusy(busy_reason(outcome))
        return None

    def _opened(self, outcome, session: Session) -> None:
        """The open transaction's answer for a session let in before it: a refusal closes the session."""
        refusal = self._refusal(outcome, session.token)
        if refusal is None:
            return
        session.unrecorded = True
        if isinstance(refusal, SerialProxyError):
            code, reason = refusal.close_code, str(refusal)
        else:
            self._log.failure("opening console session {session} failed in the database", outcome, session=session.id)
            code, reason = CloseCode.INTERNAL_ERROR, "internal error in the console proxy"
        self._log.info("{event}: {peer} ({code}): {reason}", event="refuse", peer=session.peer, code=int(code), reason=reason)
        session.client.close(code, reason)

    def detach(self, session: Session) -> None:
        """The client went: leave the console (closing the VM side if last); the lock is freed behind (nothing waits)."""
        if self._sessions.pop(session.id, None) is None:
            return
        for timer in session.timers:
            if timer.active():
                timer.cancel()
        key = (session.token.server_id, session.token.port_index)
        if session.lock is not None and self._writers.get(key) is session.lock:
            del self._writers[key]
        if session.console.detach(session.attachment):
            self.consoles.release(key, session.console)
        if session.recording is not None:
            session.recording.close()
        if not session.unrecorded:
            self.rows.close(session.id)
        console_name, bytes_in, bytes_out = session.console.name, session.attachment.bytes_in, session.attachment.bytes_out
        self._log.info("detach: {text}", text=f"{session.peer} from console {console_name} (session {session.id}, {bytes_in} bytes in, {bytes_out} out)",
                       event="detach", peer=session.peer, console=console_name, session=session.id, bytes_in=bytes_in, bytes_out=bytes_out)

    # timers and recording

    def _start_timers(self, session: Session) -> None:
        if self.close_on_token_expiry:
            delay = max(0.0, session.token.expires - self._reactor.seconds())
            session.timers.append(self._reactor.callLater(delay, session.client.close, CloseCode.TOKEN_EXPIRED,
                                                          "the console token expired; ask the API for a new console URL"))
        if self.idle_timeout and session.mode == "write":
            session.idle = IdleTimer(self._reactor, session.client, self.idle_timeout).start()
            session.timers.append(session.idle)

    def _start_recording(self, session: Session) -> None:
        if self.recorder is None:
            return
        try:
            session.recording = self.recorder.open(session.token.server_id, session.token.port_index, session.id, session.mode)
        except Exception:
            self._log.failure("could not start recording session {session}", session=session.id)
            return
        session.attachment.on_output = session.recording.output
        if session.mode == "write":
            session.attachment.on_input = session.recording.input

    def from_client(self, session: Session, *data: bytes) -> None:
        """Bytes the client typed (one or more pieces): to the VM if it is the writer; resets the idle timer."""
        session.console.from_client(session.attachment, *data)
        if session.idle is not None:
            session.idle.touch()

    # listing and kicking

    def sessions(self) -> list:
        return list(self._sessions.values())

    async def list(self, server_id: Optional[str] = None) -> list:
        """Live sessions on every node, with this node's byte counts as of now."""
        await self.rows.flush()
        records = await self._store.list_sessions(self._reactor.seconds(), server_id)
        local = self._sessions
        return [evolve(r, bytes_in=local[r.id].attachment.bytes_in, bytes_out=local[r.id].attachment.bytes_out)
                if r.id in local else r for r in records]

    async def kick(self, server_id: str, session_id: str, reason: str, actor: str) -> SessionRecord:
        """Disconnect a session (on any node) and free its writer lock at once."""
        await self.rows.flush()
        record = await self._store.kick_session(server_id, session_id, reason, actor, self._reactor.seconds())
        if record is None:
            raise NotFound(f"no live session {session_id!r} on server {server_id!r}")
        self._log.info("{event}: session {session} on console {console} by {actor}: {reason}", event="kick",
                       session=session_id, console=f"{server_id}/{record.port_index}", actor=actor, reason=reason)
        self._close_kicked(record)
        return record

    def _close_kicked(self, record: SessionRecord) -> None:
        session = self._sessions.get(record.id)
        if session is not None:
            reason = record.kick_reason or "no reason given"
            session.client.close(CloseCode.KICKED, f"kicked by {record.kicked_by}: {reason}")

    def close_server(self, server_id: str, code: CloseCode, reason: str) -> int:
        """Close this node's sessions on one server; how many."""
        doomed = [s for s in self._sessions.values() if s.token.server_id == server_id]
        for session in doomed:
            session.client.close(code, reason)
        for attaching in self._attaching.values():
            if attaching.server_id == server_id:
                attaching.refusal = NotFound(reason)
        self.consoles.close_server(server_id)
        return len(doomed)

    # leases

    async def renew(self) -> int:
        """Write queued closes; extend this node's leases, store byte counts, close sessions kicked elsewhere."""
        await self.rows.flush()
        if not self._sessions:
            return 0
        sessions = list(self._sessions.values())
        changed = {s: counts for s in sessions if (counts := (s.attachment.bytes_in, s.attachment.bytes_out)) != s.counted}
        now = self._reactor.seconds()
        only = None
        if self.rows.last_dropped is not None and now <= self.rows.last_dropped + self.lease:
            # Closes were dropped (the database was out of reach for long):
            # the rows and locks of those sessions would live as long as this
            # node if every lease of the node were extended. Only the leases of
            # sessions here go on, for a lease after the last drop; the others
            # run out (another session may take the lock then) and the purge
            # removes them. A session's last extension before its close was
            # dropped ends within a lease of the drop.
            only = [*self._sessions, *self._attaching]
        kicked = await self._store.renew_sessions(self.node, now + self.lease,
                                                  {session.id: counts for session, counts in changed.items()}, only)
        for session, counts in changed.items():
            session.counted = counts
        for record in kicked:
            self._close_kicked(record)
        return len(sessions)

    async def forget_earlier_runs(self) -> int:
        """At a sole node's start: the sessions and locks an earlier run left (it crashed) go now, not a lease later."""
        # An earlier run's leases end a lease from now at the latest.
        count = await self._store.purge_sessions(self._reactor.seconds() + self.lease + 1)
        if count:
            self._log.info("forgot {count} console sessions an earlier run of this node left", count=count)
        return count

    async def purge(self) -> int:
        """Forget sessions and locks of nodes that died (their leases ran out); run with the token purge."""
        await self.rows.flush()
        count = await self._store.purge_sessions(self._reactor.seconds())
        if count:
            self._log.info("forgot {count} console sessions whose node stopped renewing them", count=count)
        return count

    async def close_all(self, reason: str = "the console proxy is shutting down") -> None:
        """Close every session and release its lock, written before this returns (at shutdown)."""
        sessions = list(self._sessions.values())
        for session in sessions:
            session.client.close(CloseCode.GOING_AWAY, reason)
        for session in sessions:
            try:
                self.detach(session)
            except Exception:
                self._log.failure("releasing console session {session} failed", session=session.id)
        self.consoles.close_lingering()
        await self.rows.flush()

    def service(self) -> LeaseService:
        return LeaseService(self, self._reactor)
