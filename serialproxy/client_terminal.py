"""The local end of ``serialproxy-client console``: what is typed, and the terminal it is typed on.

:class:`EscapeFilter` finds ssh-style escapes in typed input (``~.`` after a
newline leaves, ``~~`` sends one ``~``); :class:`NewlineTranslator` turns the
bare ``\\n`` of piped input into the ``\\r`` a serial console expects;
:class:`StdioState` puts the terminal in raw mode and puts it back, with the
blocking flags of standard input and output, exactly once. The first two are
pure; the third is the only place that touches termios.
"""

import fcntl
import os
import termios
import tty
from typing import Optional

from attrs import define, field

__all__ = ["EscapeFilter", "NewlineTranslator", "StdioState", "parse_escape", "NEWLINE_MODES", "escape_name"]

_LINE_ENDS = (ord("\r"), ord("\n"))
_LEAVE = ord(".")
NEWLINE_MODES = {"cr": b"\r", "crlf": b"\r\n", "lf": b"\n"}


def parse_escape(text: str) -> Optional[int]:
    """``--escape`` -> the escape byte: one ASCII character, ``^X`` for a control character, or ``none`` (None)."""
    if text.lower() == "none":
        return None
    if len(text) == 2 and text[0] == "^" and 0x3F <= ord(text[1].upper()) <= 0x5F:
        return ord(text[1].upper()) ^ 0x40
    if len(text) == 1 and ord(text) < 0x80 and text != ".":
        return ord(text)
    raise ValueError(f"{text!r} is not an escape character: give one ASCII character other than '.', "
                     "^X for a control character, or none")


def escape_name(escape: int) -> str:
    """How to show the escape byte to a person: ``~``, ``^]``."""
    return f"^{chr(escape ^ 0x40)}" if escape < 0x20 or escape == 0x7F else chr(escape)


@define
class EscapeFilter:
    """ssh's escapes on typed input: right after a newline (or at the very start),
    ESC ``.`` leaves and ESC ESC sends one ESC; anything else passes unchanged."""

    _escape: Optional[int]
    _line_start: bool = True
    _held: bool = False

    def feed(self, data: bytes) -> tuple:
        """``(bytes to send, leave?)``; after a leave the rest of ``data`` is dropped."""
        if self._escape is None:
            return data, False
        out = bytearray()
        for byte in data:
            if self._held:
                self._held = False
                if byte == _LEAVE:
                    return bytes(out), True
                out.append(self._escape)
                if byte == self._escape:
                    self._line_start = False
                    continue
            elif self._line_start and byte == self._escape:
                self._held = True
                continue
            out.append(byte)
            self._line_start = byte in _LINE_ENDS
        return bytes(out), False


@define
class NewlineTranslator:
    """Rewrites each bare ``\\n`` (one not after ``\\r``) of a byte stream as ``newline``."""

    _newline: bytes = b"\r"
    _after_cr: bool = False

    def feed(self, data: bytes) -> bytes:
        """``data`` with its bare newlines rewritten; a ``\\r\\n`` split across calls is still seen."""
        if self._newline == b"\n" or not data:
            return data
        parts = data.split(b"\n")
        out = bytearray(parts[0])
        for i in range(1, len(parts)):
            before = parts[i - 1]
            after_cr = before.endswith(b"\r") if before else (i == 1 and self._after_cr)
            out += (b"\n" if after_cr else self._newline) + parts[i]
        self._after_cr = data.endswith(b"\r")
        return bytes(out)


@define
class StdioState:
    """Standard input and output as they were before the console: put back once, whatever happens.

    Works on duplicates of the descriptors, so it still works after the
    console closed them. Twisted's standard I/O makes both non-blocking, which
    would leak into the shell that shares them; that is undone too.
    """

    _fds: list
    _flags: list
    _termios: Optional[list] = None
    _restored: bool = field(default=False)

    @classmethod
    def save(cls, fds=(0, 1)) -> "StdioState":
        """Remember the flags of ``fds`` and, when the first is a terminal, its settings."""
        dups = []
        try:
            for fd in fds:
                dups.append(os.dup(fd))
        except OSError:
            for dup in dups:
                os.close(dup)
            raise OSError(f"file descriptor {fd} is closed: give the console an input and an output") from None
        flags = [fcntl.fcntl(d, fcntl.F_GETFL) for d in dups]
        return cls(dups, flags, termios.tcgetattr(dups[0]) if os.isatty(dups[0]) else None)

    @property
    def is_terminal(self) -> bool:
        """Is standard input a terminal?"""
        return self._termios is not None

    def make_raw(self) -> None:
        """Raw mode: every key goes to the console as typed; no echo, no signals, no output processing."""
        if self._termios is not None:
            tty.setraw(self._fds[0], termios.TCSANOW)

    def restore(self) -> None:
        """Put the settings and flags back (once; errors of a terminal that went away are ignored)."""
        if self._restored:
            return
        self._restored = True
        if self._termios is not None:
            _quietly(termios.tcsetattr, self._fds[0], termios.TCSANOW, self._termios)
        for fd, flags in zip(self._fds, self._flags):
            _quietly(fcntl.fcntl, fd, fcntl.F_SETFL, flags)
        for fd in self._fds:
            _quietly(os.close, fd)


def _quietly(function, *args) -> None:
    try:
        function(*args)
    except (OSError, termios.error):
        pass
