"""The wiring's own logic: the open-file limit, and the options of twistd serialproxy."""

import resource

from twisted.trial.unittest import SynchronousTestCase

from serialproxy.config import OPTIONS
from serialproxy.tap import Options, raise_file_limit


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
