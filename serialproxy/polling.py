"""Twisted's epoll reactor, its ready descriptors handed to their handlers without a log context each.

Twisted's epoll reactor calls each ready descriptor's handler through
``log.callWithLogger``: the handler's ``logPrefix()``, a copy of the legacy
log context with that name as ``system``, and a context stack pushed and
popped around the call, so that old-style ``log.msg`` lines from within it
name the connection. That is about a dozen function calls an event, paid
on every keystroke and every piece of guest output: an echo round trip
cost the daemon 108 function calls with it and 85 without (two events), a
new session 782 and 733 sixteen at a time (``bench/callcount.py``).
Nothing in this daemon logs through the old API from a handler; an error
that escapes one (Twisted logs it as "Unhandled Error") still names its
connection here, as Twisted's wrapper would have. See docs/performance.md.

:func:`lean_poll` gives a reactor this loop if it is Twisted's epoll
reactor (twistd's default on Linux); any other reactor keeps its own. The
loop reads the reactor's own state (``_poller``, ``_selectables``,
``_reads``) as Twisted's does; an integration test runs it beside
Twisted's on real sockets and pipes.
"""

import select
from types import MethodType

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

__all__ = ["lean_poll"]

_DISCONNECTED = select.EPOLLHUP | select.EPOLLERR


def lean_poll(reactor) -> bool:
    """Have ``reactor`` poll with :func:`_poll` if it is Twisted's epoll reactor; whether it does."""
    if type(reactor) is not EPollReactor:
        return False
    reactor.doIteration = reactor.doPoll = MethodType(_poll, reactor)
    return True


def _poll(reactor: EPollReactor, timeout) -> None:
    """``EPollReactor.doPoll``, calling :func:`_handle` for each ready descriptor."""
    try:
        events = reactor._poller.poll(-1 if timeout is None else timeout, len(reactor._selectables))
    except InterruptedError:  # EINTR, as Twisted's: the next iteration polls again
        return
    selectables = reactor._selectables
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is not None:
            _handle(reactor, selectable, fd, event)


def _handle(reactor: EPollReactor, selectable, fd: int, event: int) -> None:
    """Twisted's ``_doReadOrWrite`` for one event, an error that escapes logged with the selectable's name.

    A hang-up with nothing left to read ends the connection (cleanly if it
    was being read); otherwise it is read, then written if the read did not
    end it. A handler's exception ends the connection with that exception,
    as in Twisted.
    """
    why, reading = None, False
    try:
        if event & _DISCONNECTED and not event & select.EPOLLIN:
            reading = fd in reactor._reads
            why = CONNECTION_DONE if reading else CONNECTION_LOST
        elif selectable.fileno() == -1:
            why = _NO_FILEDESC
        else:
            if event & select.EPOLLIN:
                why, reading = selectable.doRead(), True
            if not why and event & select.EPOLLOUT:
                why, reading = selectable.doWrite(), False
    except BaseException as e:
        why = e
        log.err(system=_name(selectable))
    if why:
        try:
            reactor._disconnectSelectable(selectable, why, reading)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system=_name(selectable))


def _name(selectable) -> str:
    """What Twisted's wrapper names a selectable's log lines: its ``logPrefix()``."""
    try:
        return selectable.logPrefix()
    except BaseException:
        return "(buggy logPrefix method)"
