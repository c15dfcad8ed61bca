"""The benchmark suite runs end to end: ``bench/run --quick`` (a smoke run: its figures are not judged)."""

import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from ..daemon import ROOT


class BenchSmokeTests(SynchronousTestCase):
    def test_quick_run(self):
        """bench/run --quick starts raw TCP, websockify, the daemon (and the floor and a lingering daemon), runs every phase, writes its report."""
        report = os.path.abspath(self.mktemp())
        result = subprocess.run([os.path.join(ROOT, "bench", "run"), "--quick", "--output", report],
                                capture_output=True, text=True, timeout=600)
        self.assertEqual(result.returncode, 0, result.stdout[-4000:] + result.stderr[-4000:])
        with open(report) as f:
            text = f.read()
        self.assertIn("## Targets (issue 7)", text)
        self.assertNotIn("The run failed", text)
        self.assertIn("For scale, the floor", text)
        self.assertIn("With `console_linger = 5`", text)
        self.assertRegex(text, r"\| serialproxy \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d,]+ \|")  # phases, one after another
