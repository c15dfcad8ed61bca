"""twistd's own log, with its timestamps formatted once a second; a cheaper Logger for the per-session lines.

twistd writes every event through a text observer that formats the event's
time (local time zone, to the second) from scratch: about a third of what
an event costs, and a console session logs two (attach and detach). Unless
told otherwise (``--logger``, ``--syslog``), ``twistd serialproxy`` logs
through :func:`twistd_observer`: the observer twistd itself would make for
its options (``--logfile``, ``-n`` to stdout, SIGUSR1 to rotate), whose
lines are the same text, with the timestamp string kept for the second it
names. See docs/performance.md.

:class:`Logger` is ``twisted.logger``'s, for the lines every console
session logs, less two costs per event (see its doc).
"""

import math
import time
from typing import Optional

from twisted import logger
from twisted.logger import LogLevel, formatEventAsClassicLogText, formatTime

__all__ = ["Logger", "format_event", "log_through_us", "twistd_observer"]

_LEVELS = frozenset(LogLevel.iterconstants())


class Logger(logger.Logger):
    """``twisted.logger.Logger``, less two costs it pays on every event.

    - ``emit`` checks the level against the set of levels, made once;
      twisted's sorts every level anew to check it. An unknown level takes
      twisted's way (which logs the mistake).
    - As a class attribute (a descriptor), twisted's makes a new logger on
      every access, its source the instance; this one makes one per class,
      on first use, its source the class. Namespace and observer are
      twisted's.

    The events are twisted's, field for field. See docs/performance.md.
    """

    _bound = None  # the logger this descriptor gave its class

    def __get__(self, instance, owner=None):
        bound = self._bound
        if bound is None or bound.source is not owner or bound.observer is not self.observer:
            bound = self._bound = super().__get__(None, owner)
        return bound

    def emit(self, level, format=None, **kwargs):
        if level not in _LEVELS:
            return super().emit(level, format, **kwargs)
        kwargs.update(log_logger=self, log_level=level, log_namespace=self.namespace, log_source=self.source,
                      log_format=format, log_time=time.time())
        trace = kwargs.get("log_trace")
        if trace is not None:
            trace.append((self, self.observer))
        self.observer(kwargs)
        return None


_twistd_options = {}  # twistd's options, for twistd_observer() (set by log_through_us)
_stamp = (None, "-")  # (a whole second, its timestamp text): one tuple, so threads see both or neither


def _timestamp(when: Optional[float]) -> str:
    global _stamp
    if when is None or when < 0:
        return formatTime(when)
    fraction, whole = math.modf(when)
    # The second datetime shows: it rounds to the microsecond first (half to even), as round() does.
    second = int(whole) + (round(fraction * 1e6) >= 1000000)
    cached = _stamp
    if cached[0] == second:
        return cached[1]
    text = formatTime(second)  # the format is to the second (RFC 3339): that second's text is the event's
    _stamp = (second, text)
    return text


def format_event(event: dict) -> Optional[str]:
    """An event as twistd's text observer writes it (``formatEventAsClassicLogText``)."""
    line = _plain_line(event)
    if line is not None:
        return line
    return formatEventAsClassicLogText(event, formatTime=_timestamp)


def _plain_line(event: dict) -> Optional[str]:
    """The line of an event whose format is a plain prefix and one ``{text}`` field, or None for any other.

    Such is each console session's attach and detach line (``sessions.py``):
    ``twisted.logger`` formats even a one-field format with a
    ``string.Formatter`` in Python, field by field, which here is the prefix
    and the text joined. Anything else (other fields, a failure, a system
    name, text that is not a ``str``) takes twisted's own path.
    """
    form = event.get("log_format")
    if type(form) is not str or not form.endswith("{text}"):
        return None
    prefix = form[:-6]
    text = event.get("text")
    if ("{" in prefix or "}" in prefix or type(text) is not str or "log_failure" in event or "log_flattened" in event
            or event.get("log_system") is not None):
        return None
    if not prefix and not text:
        return None  # twisted writes no line for an empty text
    level = event.get("log_level")
    system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    line = f"{_timestamp(event.get('log_time'))} [{system}] {prefix}{text}"
    return line.replace("\n", "\n\t") + "\n"


def log_through_us(twistd_options) -> None:
    """Have twistd log through :func:`twistd_observer`, unless its options chose a logger or syslog."""
    global _twistd_options
    if twistd_options.get("logger") or twistd_options.get("syslog"):
        return
    _twistd_options = twistd_options
    twistd_options["logger"] = f"{__name__}.twistd_observer"


def twistd_observer():
    """The log observer twistd would make for its options, formatting with :func:`format_event`.

    twistd's ``--logger`` names this factory (see :func:`log_through_us`).
    """
    from twisted.scripts._twistd_unix import UnixAppLogger

    observer = UnixAppLogger(_twistd_options)._getLogObserver()
    observer.formatEvent = format_event
    return observer
