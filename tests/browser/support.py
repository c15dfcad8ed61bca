"""Driving the console page in a real browser: Debian's Chromium through Playwright, and a shell "VM".

Nothing here downloads a browser: Playwright drives /usr/bin/chromium, which
scripts/test installs. Without it (or without the playwright package) the
tests fail, telling to run scripts/test; they are never skipped.
"""

import os
import pty
import socket
import subprocess
import threading

__all__ = ["CHROMIUM", "open_browser", "ConsolePage", "start_shell"]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 15_000

_SCREEN_BODY = """
  const buffer = window.serialproxyConsole.term.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
  return lines.join("\\n");
"""
_SCREEN = "() => {" + _SCREEN_BODY + "}"


def open_browser(testcase, viewport=(1000, 560)):
    """A headless Chromium with a fresh profile, closed when the test ends; its browser context."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        testcase.fail("the playwright package is missing: run the tests with scripts/test, which installs it")
    if not os.access(CHROMIUM, os.X_OK):
        testcase.fail(f"{CHROMIUM} is missing: run the tests with scripts/test, which installs Debian's chromium")
    playwright = sync_playwright().start()
    testcase.addCleanup(playwright.stop)
    context = playwright.chromium.launch_persistent_context(
        os.path.abspath(testcase.mktemp()), executable_path=CHROMIUM, headless=True, args=ARGS,
        viewport={"width": viewport[0], "height": viewport[1]})
    testcase.addCleanup(context.close)
    context.set_default_timeout(TIMEOUT_MS)
    return context


class ConsolePage:
    """One console page in a browser tab, with bounded waits that fail with what the page shows."""

    def __init__(self, testcase, context, url):
        self.testcase = testcase
        self.page = context.new_page()
        self.errors = []
        self.console = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda message: self.console.append(message.text))
        self.page.goto(url)

    def screen(self) -> str:
        """The terminal's text, line by line, read from xterm.js's buffer."""
        try:
            return self.page.evaluate(_SCREEN)
        except Exception as e:  # a page without a terminal: say so in the failure, do not hide it
            return f"<no terminal: {e}>"

    def wait(self, expression: str, arg=None, what: str = ""):
        """Wait (bounded) until the JS expression, a function of arg, is true."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(expression, arg=arg, timeout=TIMEOUT_MS)
        except PlaywrightTimeout:
            self.testcase.fail(f"timed out waiting for {what or expression}; page errors {self.errors}; "
                               f"console {self.console}; bar {self.text('#bar')!r}; notice {self.text('#notice')!r}; "
                               f"screen:\n{self.screen()}")

    def wait_connected(self):
        self.wait("() => window.serialproxyConsole && window.serialproxyConsole.state === 'connected'",
                  what="the console to connect")

    def wait_for_screen(self, text: str):
        self.wait("(text) => (() => {" + _SCREEN_BODY + "})().includes(text)", text, what=f"{text!r} on the terminal")

    def wait_for_notice(self, code: int):
        self.wait("(code) => { const n = document.getElementById('notice');"
                  " return !n.hidden && n.dataset.code === String(code); }", code, what=f"the notice for close {code}")

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector) if self.page.is_visible(selector) else ""

    def type(self, text: str):
        self.page.click("#terminal")
        self.page.keyboard.type(text)


def start_shell(testcase) -> int:
    """A TCP port on 127.0.0.1 whose first connection gets /bin/sh on a pty: a VM's serial port with a shell."""
    listener = socket.create_server(("127.0.0.1", 0))
    master, child = pty.openpty()
    shell = subprocess.Popen(
        # setsid -c: a session whose controlling terminal is the pty, so the shell has job control.
        ["setsid", "-c", "/bin/sh", "-i"], stdin=child, stdout=child, stderr=child, cwd="/",
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "TERM": "xterm", "PS1": "root@guest:/# "})
    os.close(child)
    connections = []
    testcase.addCleanup(_end_shell, listener, shell, master, connections)

    def serve():
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        connections.append(connection)
        threading.Thread(target=_pump, args=(connection.recv, lambda data: os.write(master, data)), daemon=True).start()
        _pump(lambda n: os.read(master, n), connection.sendall)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def _pump(read, write):
    try:
        while data := read(65536):
            write(data)
    except OSError:
        pass


def _end_shell(listener, shell, master, connections):
    listener.close()
    shell.kill()
    shell.wait(timeout=10)
    for connection in connections:
        connection.close()
    os.close(master)
