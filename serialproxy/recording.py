"""Session recordings: asciicast v2 files written off the byte path.

A :class:`Recording` lives on the reactor thread. ``output()`` and
``input()`` decode the bytes (one incremental UTF-8 decoder per stream, so a
character split across chunks survives), stamp them with the injected clock,
decide rotation, and hand ready-made lines to the :class:`Recorder`'s queue.
They never touch the disk, never block and never raise.

The :class:`Recorder` owns one writer thread (a single thread keeps every
file's lines in order) that drains the queue: it opens, writes, flushes and
closes the files, and enforces the retention limit. The queue is bounded in
bytes: when the disk cannot keep up, events are dropped and counted, and the
gap becomes one marker event ``[t, "m", "serialproxy: N bytes ... not
recorded ..."]`` so that playback output stays exact wherever nothing was
lost. A disk error stops that one recording, logged once.

Each part of a recording is a complete asciicast v2 file whose times start
at 0 when the part starts; its header says where the part begins in the
session (``serialproxy.offset``, seconds), so parts play on their own and can
be joined again exactly.
"""

import codecs
import json
import os
import re
import threading
import time
from collections import deque
from typing import ClassVar, Optional

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

__all__ = ["Recorder", "Recording", "cast_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_HEADER_ROOM = 1024  # bytes kept for a header and an event's framing when splitting long texts


def cast_name(server_id: str, port_index: int, session_id: str, started: float, part: int = 1) -> str:
    """The file name of one part: ``{server}-{port}-{session}-{UTC time}[-partN].cast``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    suffix = "" if part == 1 else f"-part{part}"
    return "-".join(_UNSAFE.sub("_", str(x)) for x in (server_id, port_index, session_id, stamp)) + suffix + ".cast"


def _event(t: float, kind: str, text: str) -> bytes:
    return ('[%.6f, "%s", %s]\n' % (t, kind, json.dumps(text, ensure_ascii=False))).encode("utf-8")


def _decoder():
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


@define(eq=False)
class Recording:
    """One session's recording: reactor-side state; only the writer thread touches ``_file*`` and sets ``_failed``."""

    _recorder: "Recorder"
    _meta: dict  # server_id, port, session_id, mode
    _size: tuple  # width, height
    _title: str
    _started: float
    path: str = ""
    part: int = 0
    _origin: float = 0.0  # clock time at which the current part starts
    _last: float = 0.0
    _part_bytes: int = 0
    _part_events: int = 0
    _decoders: dict = field(factory=lambda: {"o": _decoder(), "i": _decoder()})
    _dropped: dict = field(factory=lambda: {"o": 0, "i": 0})
    _gap_since: Optional[float] = None
    _warned: bool = False
    _closed: bool = False
    _failed: bool = False
    _file: object = None  # the part open in the writer thread, and its path
    _file_path: str = ""

    def output(self, data: bytes) -> None:
        """Record bytes the VM wrote (an ``"o"`` event); never blocks, never raises."""
        self._record("o", data)

    def input(self, data: bytes) -> None:
        """Record bytes the client typed (an ``"i"`` event); never blocks, never raises."""
        self._record("i", data)

    def close(self) -> None:
        """Finish the file: flush the decoders, note any gap, close it (written by the writer thread)."""
        if self._closed:
            return
        ops = []
        try:
            if not self._failed:
                events = [(kind, d.decode(b"", final=True)) for kind, d in self._decoders.items()]
                ops = self._ops(self._with_gap([e for e in events if e[1]]), self._now())
        except Exception:
            self._recorder._log.failure("recording {path}: could not finish", path=self.path)
        self._finish(ops)

    # the reactor side

    def _record(self, kind: str, data: bytes) -> None:
        if self._closed or self._failed or not data:
            return
        try:
            text = self._decoders[kind].decode(data)
            if not text:
                return
            now = self._now()
            events = self._with_gap([(kind, piece) for piece in self._pieces(text)])
            size = sum(len(_event(now - self._origin, *event)) for event in events)
            if self._recorder._has_room(size):
                self._recorder._enqueue(self._ops(events, now))
            else:
                self._drop(kind, len(data), now)
        except Exception:
            self._recorder._log.failure("recording {path}: stopped", path=self.path)
            self._finish([])

    def _finish(self, ops: list) -> None:
        self._closed = True
        self._recorder._recordings.discard(self)
        self._recorder._enqueue(ops + [("close", self, b"", "")])

    def _now(self) -> float:
        self._last = max(self._last, self._recorder._clock.seconds())  # never backwards, even if the clock is
        return self._last

    def _pieces(self, text: str) -> list:
        """``text`` cut so that one event fits in a part (a JSON-escaped character takes at most 6 bytes)."""
        step = max(64, (self._recorder.max_bytes - _HEADER_ROOM) // 6)
        return [text[i:i + step] for i in range(0, len(text), step)]

    def _with_gap(self, events: list) -> list:
        """``events``, after a marker for what was dropped since the last event queued, if anything was."""
        if self._gap_since is None:
            return events
        dropped = " and ".join(f"{n} bytes of {name}" for name, n in
                               (("output", self._dropped["o"]), ("input", self._dropped["i"])) if n)
        since = self._gap_since - self._started
        return [("m", f"serialproxy: {dropped} not recorded from {since:.6f}s on (the disk was too slow)")] + events

    def _drop(self, kind: str, count: int, now: float) -> None:
        self._dropped[kind] += count
        if self._gap_since is None:
            self._gap_since = now
        if not self._warned:
            self._warned = True
            self._recorder._log.warn("recording {path}: the disk is behind, dropping events "
                                     "(queue of {limit} bytes full)", path=self.path, limit=self._recorder.queue_bytes)

    def _ops(self, events: list, now: float) -> list:
        """Writer operations for ``events``; a new part first whenever the current one would grow past max_bytes."""
        ops = []
        for kind, text in events:
            line = _event(now - self._origin, kind, text)
            if self._part_events and self._part_bytes + len(line) > self._recorder.max_bytes:
                ops += [("close", self, b"", "")] + self._next_part(now)
                line = _event(now - self._origin, kind, text)
            ops.append(("write", self, line, ""))
            self._part_bytes += len(line)
            self._part_events += 1
        if events and self._gap_since is not None:
            self._gap_since, self._dropped = None, {"o": 0, "i": 0}
        return ops

    def _next_part(self, now: float) -> list:
        self.part += 1
        self._origin = now
        self.path = os.path.join(self._recorder.directory, cast_name(
            self._meta["server_id"], self._meta["port"], self._meta["session_id"], self._started, self.part))
        header = {"version": 2, "width": self._size[0], "height": self._size[1], "timestamp": int(now),
                  "title": self._title, "env": {"TERM": "xterm-256color"},
                  "serialproxy": dict(self._meta, part=self.part, offset=round(now - self._started, 6))}
        line = (json.dumps(header, ensure_ascii=False) + "\n").encode("utf-8")
        self._part_bytes, self._part_events = len(line), 0
        return [("open", self, line, self.path)]


class Recorder(Service):
    """Opens recordings and writes them from one thread; bounds disk use by rotation and retention."""

    name = "recorder"
    _log: ClassVar[Logger] = Logger()

    def __init__(self, directory: str, max_bytes: int, keep: int, clock, threadpool=None, reactor=None,
                 queue_bytes: int = 1 << 20):
        if reactor is None:
            from twisted.internet import reactor
        self.directory = directory
        self.max_bytes = max_bytes
        self.keep = keep
        self.queue_bytes = queue_bytes
        self._clock = clock
        self._reactor = reactor
        self._pool = threadpool or ThreadPool(minthreads=0, maxthreads=1, name="serialproxy-recorder")
        self._recordings = set()  # open, reactor thread only
        self._lock = threading.Lock()  # guards the four below
        self._ops = deque()
        self._queued = 0
        self._draining = False
        self._waiters = []
        self._open_paths = set()  # writer thread only

    def startService(self):
        super().startService()
        try:
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
        except OSError as e:
            self._log.error("recordings directory {directory}: {error}; sessions will not be recorded",
                            directory=self.directory, error=e)
        self._pool.start()

    def stopService(self):
        """Close every recording; the Deferred fires once all is written and the thread stopped."""
        super().stopService()
        for recording in list(self._recordings):
            recording.close()
        return self._flushed().addBoth(lambda _: self._pool.stop())

    def open(self, server_id: str, port_index: int, session_id: str, mode: str, width: int = 80, height: int = 24,
             title: str = "") -> Recording:
        """Start recording a session; its first part is created by the writer thread."""
        if not self.running:
            raise RuntimeError("the recorder is not running")
        now = self._clock.seconds()
        meta = {"server_id": server_id, "port": port_index, "session_id": session_id, "mode": mode}
        recording = Recording(self, meta, (width, height), title or f"{server_id} serial port {port_index} ({mode})",
                              now, origin=now, last=now)
        self._enqueue(recording._next_part(now))
        self._recordings.add(recording)
        return recording

    # the queue, from the reactor thread

    def _has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes fit in the queue (only the writer empties it, so room stays)."""
        with self._lock:
            return self._queued + size <= self.queue_bytes

    def _enqueue(self, ops: list) -> None:
        """Hand ``ops`` to the writer thread, starting a drain if none is running."""
        with self._lock:
            self._ops.extend(ops)
            self._queued += sum(len(op[2]) for op in ops)
            start, self._draining = not self._draining, True
        if start:
            d = deferToThreadPool(self._reactor, self._pool, self._drain)
            d.addCallbacks(self._drained, lambda f: self._log.failure("recording writer failed", f))

    def _flushed(self) -> Deferred:
        with self._lock:
            if self._draining:
                waiter = Deferred()
                self._waiters.append(waiter)
                return waiter
        return succeed(None)

    def _drained(self, problems: list) -> None:
        for message, fields in problems:
            self._log.error(message, **fields)
        with self._lock:
            waiters, self._waiters = ([], self._waiters) if self._draining else (self._waiters, [])
        for waiter in waiters:
            waiter.callback(None)

    # the writer thread

    def _drain(self) -> list:
        """Run queued operations until none is left; the problems met, for the reactor thread to log."""
        problems, dirty = [], set()
        while True:
            with self._lock:
                batch, self._ops = self._ops, deque()
            if not batch:
                self._flush(dirty, problems)
                with self._lock:
                    if not self._ops:
                        self._draining = False
                        return problems
                continue
            for op in batch:
                self._run(*op, problems)
                dirty.add(op[1])
            with self._lock:
                self._queued -= sum(len(op[2]) for op in batch)

    def _run(self, op: str, recording: Recording, payload: bytes, path: str, problems: list) -> None:
        if recording._failed:
            return
        try:
            getattr(self, "_do_" + op)(recording, payload, path, problems)
        except Exception as e:
            self._fail(recording, e, problems)

    def _flush(self, dirty: set, problems: list) -> None:
        for recording in dirty:
            try:
                if recording._file is not None:
                    recording._file.flush()
            except Exception as e:
                self._fail(recording, e, problems)
        dirty.clear()

    def _do_open(self, recording: Recording, header: bytes, path: str, problems: list) -> None:
        recording._file_path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o640)
        recording._file = os.fdopen(fd, "wb")
        self._open_paths.add(path)
        recording._file.write(header)
        self._retain(problems)

    def _do_write(self, recording: Recording, line: bytes, _: str, problems: list) -> None:
        recording._file.write(line)

    def _do_close(self, recording: Recording, *_) -> None:
        file, recording._file = recording._file, None
        self._open_paths.discard(recording._file_path)
        if file is not None:
            file.close()

    def _fail(self, recording: Recording, error: Exception, problems: list) -> None:
        recording._failed = True
        file, recording._file = recording._file, None
        self._open_paths.discard(recording._file_path)
        try:
            if file is not None:
                file.close()
        except Exception:
            pass
        problems.append(("recording {path} stopped: {error}", {"path": recording._file_path, "error": error}))

    def _retain(self, problems: list) -> None:
        """Delete the oldest closed ``*.cast`` files (by mtime, then name) so at most ``keep`` remain."""
        try:
            with os.scandir(self.directory) as entries:
                casts = [(e.stat().st_mtime, e.name) for e in entries if e.name.endswith(".cast") and e.is_file()]
        except OSError as e:
            problems.append(("recordings directory {directory}: {error}", {"directory": self.directory, "error": e}))
            return
        excess = len(casts) - self.keep
        closed = sorted(c for c in casts if os.path.join(self.directory, c[1]) not in self._open_paths)
        for _, name in closed[:max(0, excess)]:
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass
            except OSError as e:
                problems.append(("could not delete old recording {name}: {error}", {"name": name, "error": e}))
