"""twistd's log through serialproxy.logs: the same lines, the same destinations, the timestamp formatted once a second."""

import io
import os
import signal
import sys

from hypothesis import given, strategies as st
from twisted.logger import Logger, LogLevel, formatEventAsClassicLogText, formatTime
from twisted.logger import _logger as twisted_logger_module
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from serialproxy import logs


def twistds_text(event):
    """What twistd's own text observer writes for ``event``."""
    return formatEventAsClassicLogText(event, formatTime=lambda when: formatTime(when))


def event(when, text="attach: 127.0.0.1:5000 on console s1/0"):
    return {"log_format": "{text}", "text": text, "log_time": when, "log_level": LogLevel.info,
            "log_namespace": "serialproxy.sessions.SessionManager"}


class FormatTests(SynchronousTestCase):
    @given(st.lists(st.floats(min_value=0, max_value=4e9), min_size=1, max_size=20))
    def test_same_text_as_twistd(self, times):
        """Events in any order of time (the cached second reused or replaced) read exactly as twistd writes them."""
        for when in times + sorted(times) + [times[0] + 0.5]:
            self.assertEqual(logs.format_event(event(when)), twistds_text(event(when)))

    @given(st.text(max_size=12).filter(lambda p: "{" not in p and "}" not in p),
           st.one_of(st.text(max_size=40), st.integers(), st.none()),
           st.fixed_dictionaries({}, optional={"log_level": st.sampled_from(list(LogLevel.iterconstants())),
                                               "log_namespace": st.text(max_size=10),
                                               "log_system": st.one_of(st.none(), st.text(max_size=10))}),
           st.floats(min_value=0, max_value=4e9))
    def test_plain_text_events_as_twistd_writes_them(self, prefix, text, extra, when):
        """Any prefix, text, level, namespace and system: a ``prefix{text}`` line is twistd's, byte for byte."""
        e = {"log_format": prefix + "{text}", "text": text, "log_time": when, **extra}
        self.assertEqual(logs.format_event(e), twistds_text(e))
        fast = type(text) is str and bool(prefix + text) and e.get("log_system") is None
        self.assertEqual(logs._plain_line(e) is not None, fast)

    def test_other_events_take_twisteds_path(self):
        """Other fields, a failure or a flattened event are left to twisted."""
        for e in ({"log_format": "{a} {text}", "a": 1, "text": "x"}, {"log_format": "{text!r}", "text": "x"},
                  {"log_format": "{text}", "text": "x", "log_failure": Failure(ValueError("no"))},
                  {"log_format": "{text}", "text": "x", "log_flattened": {}}):
            self.assertIsNone(logs._plain_line(e))
            self.assertEqual(logs.format_event(e), twistds_text(e))

    def test_edges(self):
        """No time, a time a hair below the next second (datetime rounds it up), before 1970."""
        for when in (None, 1.9999995, 1.9999994, 1700000000.9999996, -1.5):
            self.assertEqual(logs.format_event(event(when)), twistds_text(event(when)))


class TwistdTests(SynchronousTestCase):
    """``twistd serialproxy`` logs through serialproxy.logs unless its options say otherwise."""

    def parsed(self, *flags):
        self.addCleanup(setattr, logs, "_twistd_options", logs._twistd_options)
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))  # twistd's rotation handler
        options = ServerOptions()
        options.parseOptions([*flags, "serialproxy", "--enabled=true"])
        return options

    def test_logfile(self):
        """With --logfile the lines go to that file, as twistd's own observer writes them."""
        path = os.path.abspath(self.mktemp())
        options = self.parsed("-n", f"--logfile={path}")
        self.assertIs(options["logger"], logs.twistd_observer)
        observer = options["logger"]()
        self.assertIs(observer.formatEvent, logs.format_event)
        observer(event(1700000000.25))
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), twistds_text(event(1700000000.25)))

    def test_stdout_in_the_foreground(self):
        """In the foreground without --logfile, to standard output, as twistd does."""
        options = self.parsed("-n")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        options["logger"]()(event(1700000000.0))
        self.assertEqual(out.getvalue(), twistds_text(event(1700000000.0)))

    def test_left_alone(self):
        """--syslog and a --logger of the operator's are twistd's business."""
        self.assertIsNone(self.parsed("-n", "--syslog")["logger"])
        self.assertIs(self.parsed("-n", "--logger=serialproxy.logs.format_event")["logger"], logs.format_event)


class _Ours:
    log = logs.Logger()


class _Theirs:
    log = Logger()


class LoggerTests(SynchronousTestCase):
    def events(self, owner, emit) -> list:
        seen = []
        self.patch(owner.__dict__["log"], "observer", seen.append)
        emit(owner().log)
        return seen

    def test_the_same_events_as_twisteds(self):
        """Every level, a failure and a trace: the events of twisted's Logger, field for field (but the source: the class)."""
        self.patch(logs.time, "time", lambda: 1234.5)
        self.patch(twisted_logger_module, "time", lambda: 1234.5)

        def emit(log):
            for level in LogLevel.iterconstants():
                log.emit(level, "at {level_name}", level_name=level.name, log_trace=[])
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("it failed: {why}", why="arithmetic")

        ours, theirs = self.events(_Ours, emit), self.events(_Theirs, emit)
        self.assertEqual(len(ours), len(list(LogLevel.iterconstants())) + 1)
        for mine, twisteds in zip(ours, theirs):
            self.assertIs(mine.pop("log_source"), _Ours)
            self.assertIsInstance(twisteds.pop("log_source"), _Theirs)
            self.assertIsInstance(mine.pop("log_logger"), logs.Logger)
            self.assertIsInstance(twisteds.pop("log_logger"), Logger)
            mine_failure, twisteds_failure = mine.pop("log_failure", None), twisteds.pop("log_failure", None)
            self.assertEqual(type(mine_failure), type(twisteds_failure))
            self.assertEqual(len(mine.pop("log_trace", [])), len(twisteds.pop("log_trace", [])))
            self.assertEqual(mine["log_namespace"], "tests.unit.test_logs._Ours")
            mine["log_namespace"] = twisteds["log_namespace"]
            self.assertEqual(mine, twisteds)

    def test_an_unknown_level_is_reported_as_twisted_does(self):
        """A level that is not a LogLevel is no event of its own: twisted's critical complaint names it."""
        ours = self.events(_Ours, lambda log: log.emit("loud", "hello"))
        self.assertEqual([e["log_level"] for e in ours], [LogLevel.critical])
        self.assertEqual(ours[0]["invalidLevel"], "loud")

    def test_one_logger_per_class(self):
        """Each access gives the same logger, named for the class, with twisted's observer."""
        first, second = _Ours().log, _Ours().log
        self.assertIs(first, second)
        self.assertEqual(first.namespace, "tests.unit.test_logs._Ours")
        self.assertIs(first.observer, _Ours.__dict__["log"].observer)
        self.assertIsNot(_Theirs().log, _Theirs().log)
