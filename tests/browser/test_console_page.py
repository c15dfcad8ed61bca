"""The console page as a person uses it: real headless Chromium on the real daemon (twistd on port 0).

The "VM" is a TCP echo server (or a shell on a pty for the screenshot); the
page is the http:// form of a console URL the API minted.
"""

import os
import shutil
import struct
import time
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from ..daemon import ROOT, DaemonMixin, start_echo
from .support import ConsolePage, open_browser, start_shell

# The Content-Security-Policy the console page is built to run under. xterm.js
# sets styles on its elements and writes <style> elements, hence 'unsafe-inline'
# for styles only; scripts are files of the page's own origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class _ConsoleMixin(DaemonMixin):
    """A daemon with one server whose serial port is a TCP listener, a console URL for it, a browser."""

    def setUp(self):
        super().setUp()
        self.admin = self.manage("create-key", "--tenant", "ops", "--admin")
        self.configure()
        _, base = self.start("serialproxy", "--config", self.config)
        self.api = base.replace("ws://", "http://").rstrip("/")

    def configure(self):
        """Change the configuration before the daemon starts."""

    def add_server(self, port: int, name: str = "vm1") -> str:
        code, body = self.http("POST", f"{self.api}/v3/servers", self.admin, {"server": {
            "name": name, "tenant_id": "acme", "serial_ports": [{"host": "127.0.0.1", "port": port}]}})
        self.assertEqual(code, 201, body)
        return body["server"]["id"]

    def console_url(self, server: str) -> str:
        """A fresh console URL, in its http:// form: what a person opens in a browser."""
        code, body = self.http("POST", f"{self.api}/v3/servers/{server}/get-serial-console", self.admin)
        self.assertEqual(code, 202, body)
        url = body["serial_console"]["url"]
        self.assertTrue(url.startswith("ws://"), url)
        return "http://" + url[len("ws://"):]

    def sessions(self, server: str) -> list:
        code, body = self.http("GET", f"{self.api}/v3/servers/{server}/serial-sessions", self.admin)
        self.assertEqual(code, 200, body)
        return body["serial_sessions"]

    def wait_sessions(self, server: str, modes: list) -> list:
        """Wait (bounded) until the server's sessions have these modes: attaching goes on after the websocket opens."""
        deadline = time.monotonic() + 10
        while True:
            sessions = self.sessions(server)
            if sorted(session["mode"] for session in sessions) == sorted(modes):
                return sessions
            if time.monotonic() > deadline:
                self.fail(f"sessions {sessions}, not of modes {modes}")
            time.sleep(0.05)


class ConsolePageTests(_ConsoleMixin, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.add_server(start_echo(self))
        self.browser = open_browser(self)

    def test_type_and_read_echo(self):
        """Keys typed in the page reach the VM as UTF-8, its bytes show in the terminal, the bar names the console."""
        page = ConsolePage(self, self.browser, self.console_url(self.server))
        page.wait_connected()
        page.type("hello browser ✓ é\r")
        page.wait_for_screen("hello browser ✓ é")
        page.wait("() => document.getElementById('server').textContent === 'vm1'", what="the server name")
        self.assertEqual(page.text("#port"), "serial port 0")
        self.assertEqual(page.text("#mode").lower(), "read-write")
        self.assertEqual(page.text("#state"), "connected")
        self.assertIn("vm1", page.page.title())
        socket = page.page.evaluate("() => { const s = window.serialproxyConsole.socket;"
                                    " return [s.url, s.protocol, s.binaryType]; }")
        self.assertEqual(socket, [page.page.url.replace("http://", "ws://"), "binary", "arraybuffer"])
        self.assertEqual(page.errors, [])

    def test_fills_window_and_refits(self):
        """The terminal fills the window and gets more columns and rows when the window grows."""
        page = ConsolePage(self, self.browser, self.console_url(self.server))
        page.wait_connected()
        size = "() => [window.serialproxyConsole.term.cols, window.serialproxyConsole.term.rows]"
        cols, rows = page.page.evaluate(size)
        self.assertGreater(cols, 100)  # 1000 px of 14 px DejaVu Sans Mono: ~115 columns
        page.page.set_viewport_size({"width": 1400, "height": 800})
        page.wait(f"() => window.serialproxyConsole.term.cols > {cols + 30}"
                  f" && window.serialproxyConsole.term.rows > {rows + 10}", what="a refit")
        box = page.page.eval_on_selector(".xterm-screen", "e => e.getBoundingClientRect().toJSON()")
        self.assertGreater(box["width"], 1400 - 40)
        self.assertGreater(box["height"], 800 - 30 - 40)
        self.assertIn("cols", page.page.get_attribute("#size", "title"))

    def test_busy_offers_watch_read_only(self):
        """A second writer is told the console is busy and by whom, and can watch read-only instead."""
        url = self.console_url(self.server)
        writer = ConsolePage(self, self.browser, url)
        writer.wait_connected()
        [holder] = self.wait_sessions(self.server, ["write"])
        second = ConsolePage(self, self.browser, url)
        second.wait_for_notice(4009)
        notice = second.text("#notice")
        self.assertIn("busy", notice)
        self.assertIn(holder["peer"], notice)
        self.assertTrue(second.page.is_visible("#watch"))
        second.page.click("#watch")
        second.wait_connected()
        self.assertEqual(second.text("#mode").lower(), "read-only")
        self.assertIn("mode=read", second.page.url)
        self.assertFalse(second.page.is_visible("#notice"))
        writer.type("seen by the spectator\r")
        second.wait_for_screen("seen by the spectator")
        second.type("dropped")  # a spectator's keys are not sent
        writer.type("second line\r")
        second.wait_for_screen("second line")
        self.assertNotIn("dropped", writer.screen())
        self.wait_sessions(self.server, ["read", "write"])

    def test_kick_then_reconnect(self):
        """A kick through the API shows who kicked and why; Reconnect attaches again."""
        page = ConsolePage(self, self.browser, self.console_url(self.server))
        page.wait_connected()
        [session] = self.wait_sessions(self.server, ["write"])
        code, _ = self.http("DELETE", f"{self.api}/v3/servers/{self.server}/serial-sessions/{session['id']}",
                            self.admin, {"reason": "maintenance"})
        self.assertEqual(code, 204)
        page.wait_for_notice(4010)
        self.assertIn("maintenance", page.text("#notice"))
        self.assertIn("disconnected", page.text("#notice"))
        self.assertEqual(page.text("#state"), "disconnected")
        self.assertTrue(page.page.is_visible("#reconnect"))
        page.page.click("#reconnect")
        page.wait_connected()
        page.type("back again\r")
        page.wait_for_screen("back again")
        self.wait_sessions(self.server, ["write"])

    def test_switch_modes(self):
        """The bar's mode switch reconnects read-only, freeing the writer's seat, and back to writing."""
        page = ConsolePage(self, self.browser, self.console_url(self.server))
        page.wait_connected()
        self.wait_sessions(self.server, ["write"])
        self.assertEqual(page.text("#switch-mode"), "Switch to read-only")
        page.page.click("#switch-mode")
        page.wait("() => document.getElementById('mode').textContent === 'read-only'"
                  " && window.serialproxyConsole.state === 'connected'", what="a read-only session")
        self.wait_sessions(self.server, ["read"])
        page.page.click("#switch-mode")
        page.wait("() => document.getElementById('mode').textContent === 'read-write'"
                  " && window.serialproxyConsole.state === 'connected'", what="a writer session")
        self.assertNotIn("mode=read", page.page.url)
        page.type("writing again\r")
        page.wait_for_screen("writing again")
        self.wait_sessions(self.server, ["write"])

    def test_made_up_token_is_expired(self):
        """A console link with a made-up token says it expired and to get a new one, without Reconnect."""
        page = ConsolePage(self, self.browser, f"{self.api}/?token=made-up-token-{os.getpid()}")
        page.wait_for_notice(4001)
        page.wait("() => document.getElementById('server').textContent === 'console link not valid'",
                  what="console-info's answer")
        notice = page.text("#notice")
        self.assertIn("expired", notice)
        self.assertIn("get a new one", notice)
        self.assertFalse(page.page.is_visible("#reconnect"))
        self.assertFalse(page.page.is_visible("#watch"))

    def test_copy_and_paste(self):
        """Selecting text copies it to the clipboard; Ctrl+Shift+V pastes the clipboard into the console."""
        self.browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.api)
        page = ConsolePage(self, self.browser, self.console_url(self.server))
        page.wait_connected()
        page.type("copy me please\r")
        page.wait_for_screen("copy me please")
        # Drag across the first line's text with the mouse, as a person would.
        cell = page.page.evaluate("() => { const r = document.querySelector('.xterm-screen').getBoundingClientRect();"
                                  " const t = window.serialproxyConsole.term;"
                                  " return [r.left, r.top, r.width / t.cols, r.height / t.rows]; }")
        left, top, width, height = cell
        page.page.mouse.move(left + width * 0.2, top + height / 2)
        page.page.mouse.down()
        page.page.mouse.move(left + width * 7.5, top + height / 2, steps=5)
        page.page.mouse.up()
        page.wait("() => navigator.clipboard.readText().then(t => t === 'copy me')", what="'copy me' in the clipboard")
        page.page.evaluate("() => navigator.clipboard.writeText('pasted text')")
        page.page.keyboard.press("Control+Shift+V")
        page.wait_for_screen("pasted text")
        self.assertIn("copied", page.text("#bar"))

    def test_send_break_is_disabled_and_explained(self):
        """Send break is shown disabled, saying why: a raw TCP serial port cannot carry a break."""
        page = ConsolePage(self, self.browser, self.console_url(self.server))
        page.wait_connected()
        self.assertTrue(page.page.is_disabled("#send-break"))
        why = page.page.eval_on_selector("#send-break", "b => b.parentElement.title")
        self.assertIn("cannot carry a serial break", why)


class StrictCspTests(_ConsoleMixin, SynchronousTestCase):
    def configure(self):
        """Serve a copy of static/ whose page declares CSP in a <meta> element (all of it but frame-ancestors)."""
        web = os.path.join(self.dir, "web")
        shutil.copytree(os.path.join(ROOT, "static"), web)
        index = os.path.join(web, "index.html")
        policy = CSP.replace("; frame-ancestors 'none'", "")
        with open(index) as f:
            page = f.read().replace('<meta charset="utf-8">',
                                    f'<meta charset="utf-8">\n<meta http-equiv="Content-Security-Policy" content="{policy}">')
        with open(index, "w") as f:
            f.write(page)
        with open(self.config, "a") as f:
            f.write(f"web = {web}\n")

    def test_runs_under_strict_csp(self):
        """The page works with no inline script and nothing from another origin, under the CSP the proxy should send."""
        server = self.add_server(start_echo(self))
        page = ConsolePage(self, open_browser(self), self.console_url(server))
        page.wait_connected()
        self.assertIn("Content-Security-Policy", page.page.content())
        page.type("under csp\r")
        page.wait_for_screen("under csp")
        page.wait("() => document.getElementById('server').textContent === 'vm1'", what="the server name")
        violations = [text for text in page.console if "Content Security Policy" in text]
        self.assertEqual((violations, page.errors), ([], []))

    def test_proxy_sends_the_policy(self):
        """The proxy serves the console page with exactly this Content-Security-Policy header."""
        with urllib.request.urlopen(f"{self.api}/?token=x", timeout=10) as page:
            self.assertEqual(page.headers["Content-Security-Policy"], CSP)


class ScreenshotTests(_ConsoleMixin, SynchronousTestCase):
    def test_screenshot(self):
        """A live console with a shell on it, photographed for docs/console.png."""
        server = self.add_server(start_shell(self), name="web-01")
        browser = open_browser(self, viewport=(900, 280))
        page = ConsolePage(self, browser, self.console_url(server))
        page.wait_connected()
        page.wait("() => document.getElementById('server').textContent === 'web-01'", what="the server name")
        page.type("\r")
        page.wait_for_screen("root@guest:/# ")
        page.type("uname -sm\r")
        page.wait_for_screen("Linux x86_64")
        page.type("echo hello from the serial console\r")
        page.wait_for_screen("hello from the serial console\n")
        page.type("printf '\\033[1;32mcolours\\033[0m, UTF-8 ✓, and_underscores\\n'\r")
        page.wait_for_screen("colours, UTF-8 ✓, and_underscores")
        page.page.mouse.move(0, 0)
        path = os.path.join(self.dir, "console.png")
        page.page.screenshot(path=path)
        with open(path, "rb") as f:
            header = f.read(24)
        self.assertEqual(header[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(struct.unpack(">II", header[16:24]), (900, 280))
        copy_to = os.environ.get("SERIALPROXY_SCREENSHOT")
        if copy_to:  # SERIALPROXY_SCREENSHOT=docs/console.png refreshes the README's picture
            shutil.copyfile(path, os.path.join(ROOT, copy_to))
