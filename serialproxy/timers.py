"""The timed work of console sessions: a writer's idle timer, and the service renewing this node's leases."""

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .bridge import IConsoleClient
from .errors import CloseCode

__all__ = ["IdleTimer", "LeaseService"]

_log = Logger()


class IdleTimer:
    """Warns a writer that sent nothing for a while, then closes it.

    Input only notes its time (no timer is moved per keystroke or read); the
    timer, when it fires, looks at how long the writer has been quiet and
    either sleeps again for the rest, warns, or closes.
    """

    def __init__(self, clock: IReactorTime, client: IConsoleClient, timeout: int):
        self._clock = clock
        self._client = client
        self._timeout = timeout
        self._warning = min(60, max(1, timeout // 4))  # seconds between the warning and the close
        self._quiet = timeout - self._warning  # seconds without input before the warning
        self._call = None
        self._last = clock.seconds()
        self._warned_at = None  # when it warned; input since then spares the session

    def start(self) -> "IdleTimer":
        self._call = self._clock.callLater(self._quiet, self._check)
        return self

    def touch(self) -> None:
        self._last = self._clock.seconds()

    def _check(self) -> None:
        now = self._clock.seconds()
        if self._warned_at is not None and self._last < self._warned_at:  # warned, and nothing typed since
            self._client.close(CloseCode.IDLE_TIMEOUT, f"idle for {self._timeout} s: closed; reconnect to go on")
            return
        quiet = now - self._last
        if quiet < self._quiet:
            self._warned_at = None
            self._call = self._clock.callLater(self._quiet - quiet, self._check)
            return
        self._warned_at = now
        self._client.send(f"\r\n[serialproxy: no input for {self._quiet} s; this session closes in "
                          f"{self._warning} s unless you type]\r\n".encode())
        self._call = self._clock.callLater(self._warning, self._check)

    def active(self) -> bool:
        return self._call is not None and self._call.active()

    def cancel(self) -> None:
        if self.active():
            self._call.cancel()


class LeaseService(TimerService):
    """Renews this node's leases, and closes and releases every session when stopped."""

    def __init__(self, manager, clock: IReactorTime):
        """``manager``: the node's :class:`~serialproxy.sessions.SessionManager`."""
        super().__init__(manager.lease / 3, self._renew)
        self.clock = clock
        self._manager = manager

    def startService(self):
        if self._manager.sole_node:
            d = Deferred.fromCoroutine(self._manager.forget_earlier_runs())
            d.addErrback(lambda f: _log.failure("forgetting the sessions of an earlier run failed", f))
        super().startService()

    def _renew(self):
        d = Deferred.fromCoroutine(self._manager.renew())
        d.addErrback(lambda f: _log.failure("renewing console leases failed", f))
        return d

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._manager.close_all())
