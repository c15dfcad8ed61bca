"""The wiring's own logic: the open-file limit, garbage collection, and the options of twistd serialproxy."""

import gc
import resource

from twisted.trial.unittest import SynchronousTestCase

from serialproxy.config import OPTIONS
from serialproxy.tap import GC_YOUNG_THRESHOLD, Options, raise_file_limit, tune_gc


class TapTests(SynchronousTestCase):
    def test_file_limit_raised_to_hard(self):
        """The soft open-file limit is raised to the hard one, and reported."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if soft == hard and soft > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        limit = raise_file_limit()
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], limit)
        self.assertEqual(limit, hard if hard != resource.RLIM_INFINITY else limit)

    def test_gc_tuned(self):
        """Young collections wait for GC_YOUNG_THRESHOLD new objects; what exists at start is frozen out."""
        before = gc.get_threshold()
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.set_threshold, *before)
        tune_gc()
        self.assertEqual(gc.get_threshold(), (GC_YOUNG_THRESHOLD, *before[1:]))
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_flags_become_config(self):
        """Flags parse into the frozen Config, overriding defaults."""
        options = Options()
        options.parseOptions(["--enabled=true", "--token-ttl=30", "--port-range=100:200"])
        self.assertEqual((options.config.enabled, options.config.token_ttl, options.config.port_range), (True, 30, (100, 200)))
        self.assertEqual(len(Options.optParameters), len(OPTIONS) + 1)

    def test_bad_flag_exits_with_one_line(self):
        """A bad flag stops option parsing with one line naming the option."""
        error = self.assertRaises(SystemExit, Options().parseOptions, ["--serialproxy-port=99999"])
        self.assertIn("serial_console.serialproxy_port", str(error.code))
        self.assertEqual(len(str(error.code).splitlines()), 1)
