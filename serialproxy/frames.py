"""The websocket frames this proxy reads and writes itself, on the byte path (see docs/performance.md).

Console output goes out as final, unmasked frames whose header is built
here (``frame_header``); a console client's plain binary frames (and text
ones outside the base64 subprotocol), and its close frame, are read by
``ClientFrames``. Everything else (the handshake, other control frames,
fragments, base64 text) is autobahn's, in :mod:`serialproxy.websocket`.
"""

import struct
from typing import Callable, Optional

try:  # websockets' C unmasking (SSE2); without it autobahn reads every frame
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets ships it in its wheels
    apply_mask = None

__all__ = ["BINARY", "CLOSE", "TEXT", "ClientFrames", "apply_mask", "frame_header"]

BINARY, TEXT, CLOSE = 0x82, 0x81, 0x88  # the first byte of a final binary / text / close frame
_EXTENDED_LENGTH = {126: 2, 127: 8}  # bytes of extended payload length after these 7-bit lengths


def frame_header(first: int, length: int) -> bytes:
    """The header of a final, unmasked frame of ``length`` bytes (RFC 6455, 5.2); ``first`` is BINARY or TEXT."""
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


class ClientFrames:
    """Reads the plain binary (and text) frames a console client sends, faster than autobahn (see docs/performance.md).

    A final, masked, binary frame without extension bits and with a payload of
    at most ``max_payload`` bytes is unmasked (websockets' C ``apply_mask``)
    and its payload handed on as reads bring it: ``deliver(*pieces)`` once
    per read, with the unmasked pieces of every frame that read carried (one
    write to the VM), and no copy of the buffer per frame. With ``text``
    (a console outside the base64 subprotocol, whose text is its UTF-8
    bytes), a final, masked text frame likewise, if the read carries it
    whole and its payload is valid UTF-8 (it is a whole message, so that is
    RFC 6455's check). At the first frame of any other kind (control
    frames, fragments, a text frame cut across reads or not UTF-8, anything
    unusual or invalid) ``feed`` stops and returns the bytes from that frame
    on, for autobahn to read.

    A whole, masked close frame in one read, with no payload or a code
    (two bytes or more, at most 125), is unmasked and handed to
    ``on_close(code, reason)`` as autobahn's reading of it hands it to its
    ``onCloseFrame`` (code and reason None when absent, the reason as raw
    bytes, checked there), after the payloads before it; ``feed`` returns
    what follows it.
    """

    __slots__ = ("_deliver", "_max", "_on_close", "text", "_head", "_left", "_mask")

    def __init__(self, deliver: Callable[..., None], max_payload: int,
                 on_close: Optional[Callable[[Optional[int], Optional[bytes]], object]] = None, text: bool = False):
        self._deliver = deliver
        self._max = max_payload
        self._on_close = on_close
        self.text = text  # text frames are read too (their payload is what goes to the VM)
        self._head = b""  # the start of a frame header a read cut short
        self._left = 0  # payload bytes of the current frame still to come
        self._mask = b""  # its mask, turned to where the next byte falls

    @property
    def idle(self) -> bool:
        """Between frames, nothing held: autobahn may read next."""
        return not self._left and not self._head

    def feed(self, data: bytes) -> bytes:
        """Read what it can; the rest, from the first frame it leaves to autobahn (``b""``: none).

        The payload pieces of one read are delivered together (one write to the VM).
        """
        if self._head:
            data, self._head = self._head + data, b""
        pieces = []
        rest = self._read(data, pieces)
        if pieces:
            self._deliver(*pieces)
        return rest

    def _read(self, data: bytes, pieces: list) -> bytes:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                pieces.append(apply_mask(view[pos:pos + take], self._mask))
                self._left -= take
                pos += take
                turn = take % 4
                self._mask = self._mask[turn:] + self._mask[:turn]
                continue
            if end - pos < 2:
                self._head = data[pos:]
                return b""
            first, second = data[pos], data[pos + 1]
            if first == CLOSE and second & 0x80 and self._on_close is not None:
                return self._read_close(data, view, pos, pieces)
            text = first == TEXT and self.text
            if not (first == BINARY or text) or not second & 0x80:  # not a final binary (or text) frame, or not masked
                return data[pos:]
            length = second & 0x7F
            size = 2 + _EXTENDED_LENGTH.get(length, 0)
            if end - pos < size + 4:
                self._head = data[pos:]
                return b""
            if length >= 126:
                length = int.from_bytes(view[pos + 2:pos + size], "big")
                if length < (126 if size == 4 else 65536) or length > self._max:  # not minimal, or too big
                    return data[pos:]
            if text:
                after = self._read_text(data, view, pos + size, length, pieces)
                if after is None:
                    return data[pos:]
                pos = after
                continue
            self._mask = data[pos + size:pos + size + 4]
            self._left = length
            pos += size + 4
        return b""

    @staticmethod
    def _read_text(data: bytes, view: memoryview, at: int, length: int, pieces: list) -> Optional[int]:
        """A text frame's payload, its mask at ``at``: taken if whole in this read and UTF-8; where the frame ends, or None.

        Whole, or autobahn's: holding a text frame back for more reads would
        copy it again at each; and autobahn closes text that is not UTF-8
        with 1007.
        """
        stop = at + 4 + length
        if stop > len(data):
            return None
        payload = apply_mask(view[at + 4:stop], data[at:at + 4])
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if payload:
            pieces.append(payload)
        return stop

    def _read_close(self, data: bytes, view: memoryview, pos: int, pieces: list) -> bytes:
        """A close frame at ``pos``: if whole and plain, the payloads before it delivered, then ``on_close``.

        Returns what follows it, or, for autobahn, the frame and what follows.
        """
        length = data[pos + 1] & 0x7F
        after = pos + 6 + length
        if length == 1 or length > 125 or after > len(data):
            return data[pos:]
        payload = apply_mask(view[pos + 6:after], data[pos + 2:pos + 6])
        if pieces:
            self._deliver(*pieces)
            pieces.clear()
        self._on_close(struct.unpack("!H", payload[:2])[0] if length else None, payload[2:] if length > 2 else None)
        return data[after:]
