"""The docs name every option and every close code, so they stay true as code changes."""

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from serialproxy.config import OPTIONS
from serialproxy.errors import CloseCode

DOCS = Path(__file__).resolve().parents[2] / "docs"


class DocsTests(SynchronousTestCase):
    def test_every_option_documented(self):
        """docs/configuration.md has a row for each option, with its flag and default."""
        text = (DOCS / "configuration.md").read_text()
        for option in OPTIONS:
            self.assertIn(f"| `{option.name}` | `--{option.flag}` |", text)
            if option.default:
                self.assertIn(f"`{option.default}`", text)

    def test_every_close_code_documented(self):
        """docs/close-codes.md has a row for each close code the proxy sends."""
        text = (DOCS / "close-codes.md").read_text()
        for code in CloseCode:
            self.assertIn(f"| {int(code)} |", text)
