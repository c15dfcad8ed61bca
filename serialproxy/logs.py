"""twistd's own log, with its timestamps formatted once a second.

twistd writes every event through a text observer that formats the event's
time (local time zone, to the second) from scratch: about a third of what
an event costs, and a console session logs two (attach and detach). Unless
told otherwise (``--logger``, ``--syslog``), ``twistd serialproxy`` logs
through :func:`twistd_observer`: the observer twistd itself would make for
its options (``--logfile``, ``-n`` to stdout, SIGUSR1 to rotate), whose
lines are the same text, with the timestamp string kept for the second it
names. See docs/performance.md.
"""

import math
from typing import Optional

from twisted.logger import formatEventAsClassicLogText, formatTime

__all__ = ["format_event", "log_through_us", "twistd_observer"]

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
