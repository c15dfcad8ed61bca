"""Session recordings: asciicast v2 files, clock times, rotation, retention, a full queue, disk errors."""

import json
import os

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.recording import Recorder, cast_name
from serialproxy.testing import InlineReactor, InlineThreadPool

START = 1700000000.0  # 2023-11-14T22:13:20Z


def read_cast(path):
    """A cast file's header and events, checking each line is one JSON value."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "", "a cast file ends with a newline"
    header, *events = [json.loads(line) for line in lines[:-1]]
    return header, events


def replay(events, kind="o"):
    return "".join(text for _, k, text in events if k == kind)


class HeldThreadPool(InlineThreadPool):
    """A thread pool whose jobs wait until :meth:`run` (a writer thread held up by a slow disk)."""

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, on_result, fn, *args, **kwargs):
        self.jobs.append((on_result, fn, args, kwargs))

    def run(self):
        while self.jobs:
            super().callInThreadWithCallback(*self.jobs.pop(0)[:2])


class RecorderMixin:
    max_bytes = 1 << 20
    keep = 1000

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.directory = self.mktemp()
        self.pool = InlineThreadPool()
        self.recorder = self.make_recorder()

    def make_recorder(self, **kwargs):
        kwargs.setdefault("threadpool", self.pool)
        recorder = Recorder(self.directory, self.max_bytes, self.keep, self.clock, reactor=InlineReactor(), **kwargs)
        recorder.startService()
        self.addCleanup(lambda: recorder.running and recorder.stopService())
        return recorder

    def open(self, session="sess-1", mode="write", **kwargs):
        return self.recorder.open("srv-1", 0, session, mode, **kwargs)

    def casts(self):
        return sorted(name for name in os.listdir(self.directory) if name.endswith(".cast"))


class RecordingFileTests(RecorderMixin, SynchronousTestCase):
    """What one recording writes."""

    def test_valid_asciicast(self):
        """The file is asciicast v2: a header line, then time-ordered events whose "o" texts replay the output."""
        recording = self.open(width=100, height=30, title="vm console")
        recording.output(b"login: \xe2\x82")  # the euro sign, split across two chunks
        self.clock.advance(0.5)
        recording.output(b"\xac ok\r\n\xff\xfe bad \xc3(")
        recording.close()
        header, events = read_cast(recording.path)
        self.assertEqual((header["version"], header["width"], header["height"]), (2, 100, 30))
        self.assertEqual((header["timestamp"], header["title"]), (int(START), "vm console"))
        self.assertEqual(header["env"], {"TERM": "xterm-256color"})
        self.assertEqual(header["serialproxy"], {"server_id": "srv-1", "port": 0, "session_id": "sess-1",
                                                 "mode": "write", "part": 1, "offset": 0.0})
        self.assertEqual([e[0] for e in events], sorted(e[0] for e in events))
        self.assertEqual({e[1] for e in events}, {"o"})
        expected = b"login: \xe2\x82\xac ok\r\n\xff\xfe bad \xc3(".decode("utf-8", "replace")
        self.assertEqual(replay(events), expected)
        self.assertIn("\u20ac", replay(events))

    def test_file_name(self):
        """A recording is named by server, port, session and its UTC start, in the recordings directory."""
        recording = self.recorder.open("srv/../1", 2, "sess-9", "read")
        self.assertEqual(recording.path, os.path.join(self.directory, "srv_.._1-2-sess-9-20231114T221320Z.cast"))
        self.assertEqual(cast_name("s", 0, "x", START, part=3), "s-0-x-20231114T221320Z-part3.cast")
        self.assertTrue(os.path.exists(recording.path))

    def test_times_from_clock(self):
        """Event times are the injected clock's seconds since the session started."""
        recording = self.open()
        self.clock.advance(1.25)
        recording.output(b"a")
        self.clock.advance(2.5)
        recording.input(b"b")
        self.clock.advance(0.000001)
        recording.output(b"c")
        recording.close()
        self.assertEqual(read_cast(recording.path)[1], [[1.25, "o", "a"], [3.75, "i", "b"], [3.750001, "o", "c"]])

    def test_times_never_go_back(self):
        """A clock that steps backwards still gives non-decreasing times."""
        recording = self.open()
        self.clock.advance(5)
        recording.output(b"a")
        self.clock.rightNow -= 3
        recording.output(b"b")
        recording.close()
        self.assertEqual([e[0] for e in read_cast(recording.path)[1]], [5.0, 5.0])

    def test_input_only_when_called(self):
        """Input events appear only for what input() was given, decoded on their own stream."""
        spectator = self.open(session="sess-2", mode="read")
        spectator.output(b"hello")
        spectator.close()
        self.assertEqual({e[1] for e in read_cast(spectator.path)[1]}, {"o"})
        writer = self.open()
        writer.output(b"\xe2\x82")
        writer.input(b"ls\r")
        writer.output(b"\xac")
        writer.close()
        events = read_cast(writer.path)[1]
        self.assertEqual((replay(events, "i"), replay(events, "o")), ("ls\r", "\u20ac"))

    def test_close_ends_a_partial_character(self):
        """A character cut short at the end becomes U+FFFD when the recording closes."""
        recording = self.open()
        recording.output(b"x\xe2\x82")
        recording.close()
        self.assertEqual(replay(read_cast(recording.path)[1]), "x\ufffd")

    def test_nothing_after_close(self):
        """Bytes after close() are ignored, and closing twice is harmless."""
        recording = self.open()
        recording.output(b"a")
        recording.close()
        recording.output(b"b")
        recording.input(b"c")
        recording.close()
        self.assertEqual(read_cast(recording.path)[1], [[0.0, "o", "a"]])

    def test_stop_closes_recordings(self):
        """Stopping the recorder finishes every open recording; later bytes are ignored."""
        recording = self.open()
        recording.output(b"\xe2")
        self.successResultOf(self.recorder.stopService())
        recording.output(b"more")
        self.assertEqual(replay(read_cast(recording.path)[1]), "\ufffd")
        self.assertRaises(RuntimeError, self.open)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=40), max_size=20))
    def test_replay_equals_decoded_output(self, chunks):
        """Any output chunks, replayed, equal the UTF-8 decoding (with replacement) of all the bytes."""
        recording = self.open(session=f"h{len(os.listdir(self.directory))}")
        for chunk in chunks:
            recording.output(chunk)
        recording.close()
        header, events = read_cast(recording.path)
        self.assertEqual(replay(events), b"".join(chunks).decode("utf-8", "replace"))


class RotationTests(RecorderMixin, SynchronousTestCase):
    """Parts at max_bytes."""

    max_bytes = 2048

    def test_parts(self):
        """A recording goes on in -part2, -part3... each a playable file within max_bytes, times from 0."""
        recording = self.open()
        chunks = [(b"line %03d \xe2\x82\xac\r\n" % i) * 4 for i in range(60)]
        for chunk in chunks:
            self.clock.advance(0.5)
            recording.output(chunk[:5])
            recording.output(chunk[5:])
        recording.close()
        names = self.casts()
        self.assertGreater(len(names), 3)
        base = "srv-1-0-sess-1-20231114T221320Z"
        self.assertEqual(set(names), {f"{base}.cast"} | {f"{base}-part{n}.cast" for n in range(2, len(names) + 1)})
        texts, offset = [], 0.0
        for part in range(1, len(names) + 1):
            path = os.path.join(self.directory, f"{base}-part{part}.cast" if part > 1 else f"{base}.cast")
            self.assertLessEqual(os.path.getsize(path), self.max_bytes)
            header, events = read_cast(path)
            self.assertEqual((header["version"], header["serialproxy"]["part"]), (2, part))
            self.assertGreaterEqual(header["serialproxy"]["offset"], offset)
            offset = header["serialproxy"]["offset"]
            self.assertEqual(header["timestamp"], int(START + offset))
            if part > 1:
                self.assertEqual(events[0][0], 0.0)
            self.assertEqual([e[0] for e in events], sorted(e[0] for e in events))
            texts.append(replay(events))
        self.assertEqual("".join(texts), b"".join(chunks).decode("utf-8"))

    def test_long_output_is_split(self):
        """One chunk bigger than a part is cut into events that each fit in a part."""
        recording = self.open()
        recording.output(b"\x1b" * 10000)
        recording.close()
        text = ""
        for name in self.casts():
            self.assertLessEqual(os.path.getsize(os.path.join(self.directory, name)), self.max_bytes)
            text += replay(read_cast(os.path.join(self.directory, name))[1])
        self.assertEqual(text, "\x1b" * 10000)


class RetentionTests(RecorderMixin, SynchronousTestCase):
    """At most ``keep`` files."""

    max_bytes = 4096
    keep = 3

    def old_file(self, name, mtime):
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write("{}\n")
        os.utime(path, (mtime, mtime))

    def test_oldest_go_first(self):
        """Opening a recording deletes the oldest *.cast files, by mtime then name; other files stay."""
        self.old_file("b.cast", 100)
        self.old_file("a.cast", 200)
        self.old_file("c.cast", 200)
        self.old_file("d.cast", 300)
        self.old_file("notes.txt", 1)
        recording = self.open()
        self.assertEqual(self.casts(), ["c.cast", "d.cast", os.path.basename(recording.path)])
        self.assertTrue(os.path.exists(os.path.join(self.directory, "notes.txt")))

    def test_open_files_stay(self):
        """Files still being written are never deleted, even past ``keep``."""
        recordings = [self.open(session=f"s{i}") for i in range(5)]
        for recording in recordings:
            recording.output(b"x")
        self.assertEqual(len(self.casts()), 5)
        for recording in recordings[:4]:
            self.clock.advance(1)
            recording.close()
        last = self.open(session="s9")
        self.assertEqual(len(self.casts()), 3)
        self.assertTrue(os.path.exists(recordings[4].path))
        self.assertTrue(os.path.exists(last.path))

    def test_rotation_keeps_the_current_part(self):
        """A long session keeps its newest parts, within ``keep``."""
        recording = self.open()
        for i in range(100):
            recording.output(b"y" * 500)
        self.assertEqual(len(self.casts()), 3)
        self.assertIn(os.path.basename(recording.path), self.casts())
        self.assertGreater(recording.part, 5)


class QueueTests(RecorderMixin, SynchronousTestCase):
    """A writer that falls behind loses events, never the byte path."""

    def setUp(self):
        super().setUp()
        self.pool = HeldThreadPool()
        self.recorder = self.make_recorder(queue_bytes=400)

    def test_full_queue_drops_and_marks(self):
        """Events past the queue's bytes are dropped and counted; one marker event notes the gap."""
        recording = self.open()
        with capturedLogs() as events:
            for i in range(20):
                self.clock.advance(1)
                recording.output(b"%02d-" % i + b"z" * 47)  # 50 bytes each, ~75 a line
            self.assertEqual(len(self.pool.jobs), 1)  # nothing written yet, and output() returned
            self.pool.run()
            self.clock.advance(1)
            recording.output(b"after")
            recording.close()
            self.pool.run()
        warnings = [e for e in events if "dropping" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        header, cast = read_cast(recording.path)
        markers = [e for e in cast if e[1] == "m"]
        self.assertEqual(len(markers), 1)
        kept = len([e for e in cast if e[1] == "o"]) - 1
        self.assertEqual(markers[0][0], 21.0)
        self.assertEqual(markers[0][2], f"serialproxy: {(20 - kept) * 50} bytes of output not recorded "
                                        f"from {kept + 1:.6f}s on (the disk was too slow)")
        self.assertEqual(replay(cast), "".join("%02d-" % i + "z" * 47 for i in range(kept)) + "after")
        self.assertEqual([e[0] for e in cast], sorted(e[0] for e in cast))

    def test_gap_at_close(self):
        """A gap still open when the recording closes is marked before the end."""
        recording = self.open()
        recording.input(b"i" * 500)
        recording.close()
        self.pool.run()
        marker = "serialproxy: 500 bytes of input not recorded from 0.000000s on (the disk was too slow)"
        self.assertEqual([e[1:] for e in read_cast(recording.path)[1]], [["m", marker]])

    def test_stop_waits_for_the_writer(self):
        """stopService's Deferred fires only once the writer has written everything."""
        recording = self.open()
        recording.output(b"last words")
        stopped = self.recorder.stopService()
        self.assertNoResult(stopped)
        self.pool.run()
        self.successResultOf(stopped)
        self.assertEqual(replay(read_cast(recording.path)[1]), "last words")


class DiskErrorTests(RecorderMixin, SynchronousTestCase):
    """Disk errors are logged once and stop that recording only."""

    def test_unwritable_directory(self):
        """A directory under a regular file is logged; output() does not raise."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("not a directory")
        self.directory = os.path.join(blocker, "recordings")
        with capturedLogs() as events:
            recorder = self.make_recorder()
            recording = recorder.open("srv-1", 0, "sess-1", "write")
            for _ in range(3):
                recording.output(b"hello")
                recording.input(b"x")
            recording.close()
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 2)  # the directory at start, the recording once
        self.assertIn("recordings directory", errors[0]["log_format"])
        self.assertEqual(errors[1]["path"], recording.path)
        self.assertIsInstance(errors[1]["error"], NotADirectoryError)

    def test_disk_full(self):
        """A full disk stops that recording, logged once; other recordings go on."""
        self.assertTrue(os.path.exists("/dev/full"), "Linux's /dev/full gives ENOSPC on every write")
        broken, fine = self.open(), self.open(session="sess-2")
        broken._file.close()
        broken._file = open("/dev/full", "wb", buffering=0)  # the writer thread's file: ENOSPC from now on
        with capturedLogs() as events:
            for _ in range(3):
                broken.output(b"lost")
                fine.output(b"kept")
            broken.close()
            fine.close()
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["error"].errno, 28)
        self.assertEqual(replay(read_cast(fine.path)[1]), "kept" * 3)
