"""The benchmark suite runs end to end: ``bench/run --quick`` (a smoke run: its figures are not judged)."""

import os
import re
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
        self.assertRegex(text, r"\n- load: .*; the host withheld (nothing|[\d.]+ cores)")  # steal, told apart from other work
        self.assertRegex(text, r"\n- other work by phase .*new-sessions [\d.]+ \([\d.]+\)")
        self.assertIn("For scale, the floor", text)
        self.assertIn("With `console_linger = 5`", text)
        self.assertRegex(text, r"\| serialproxy \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d,]+ \|")  # phases, one after another
        # The lean client (bench/leanclient.py) ran against every target, and its sessions got through.
        self.assertRegex(text, r"\| one after another, lean client \| [\d,]+ \([\d,]+; proxy CPU [\d.]+ ms each\) \| [\d,]+ \([\d,]+\) \| [\d,]+ \(")
        self.assertIn("| one after another, the lean client |", text)
        self.assertRegex(text, r"new sessions/s sequential, lean client \(bench/leanclient.py\), × websockify's \| [\d,]+ vs [\d,]+ /s")

    def test_callcount(self):
        """bench/callcount.py profiles two daemons and prints one new session's cost in function calls."""
        result = subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), os.path.join(ROOT, "bench", "callcount.py"),
                                 "--sessions", "100", "--top", "3"], capture_output=True, text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stdout[-4000:] + result.stderr[-4000:])
        calls = int(re.search(r"per session: ([\d,]+) function calls", result.stdout).group(1).replace(",", ""))
        self.assertTrue(300 < calls < 10000, result.stdout)  # about 1,400 in 2026-11
        # The second column is profiled time, a difference of two runs: with so few sessions it may come out negative.
        ours = int(re.search(r"\n *([\d,]+) +-?[\d,]+  serialproxy\n", result.stdout).group(1).replace(",", ""))
        self.assertTrue(20 < ours < 1000, result.stdout)  # set-up cancelled out: about 110 calls of ours a session
