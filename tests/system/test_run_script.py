"""The README's first command, ``scripts/run``, as a new user runs it: the daemon, the demo guest, URLs that work.

scripts/test starts libvirtd and builds the guest (it names it in
$SERIALPROXY_TEST_GUEST); this test hands that guest to scripts/run in a
state directory of its own (so it is not fetched again), asks for any free
port, types into the guest through the first URL the script prints, and
deletes the guest through the API before it stops the script. Without a
built guest or libvirtd it fails; it never skips.
"""

import os
import re
import shutil
import signal
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from ..daemon import ROOT, http_json
from .test_real_guest import built_guest, destroy_domain, type_and_read

READY_TIMEOUT = 300  # the script checks Debian packages and the venv before it starts anything
STOP_TIMEOUT = 30


class RunScriptTests(SynchronousTestCase):
    def setUp(self):
        guest = built_guest(self)
        self.state = os.path.abspath(self.mktemp())
        shutil.copytree(os.path.dirname(guest), os.path.join(self.state, "guest"))  # with its stamp: not built again

    def start(self, *args):
        """scripts/run in a session of its own, its output in a file; the process."""
        self.output = os.path.join(self.state, "run.out")
        with open(self.output, "wb") as out:
            process = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "run"), *args], cwd=self.state,
                                       env={**os.environ, "SERIALPROXY_STATE": self.state}, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.addCleanup(self.stop, process)
        return process

    def stop(self, process):
        """Ctrl-C, as a user stops it (the daemon with it); then whatever is left of its session, by force."""
        for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "libvirt-services"), "stop", os.path.join(self.state, "libvirt")],
                       capture_output=True, timeout=60)  # stops only what the script started (nothing when libvirtd ran)

    def wait_until_ready(self, process) -> str:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            text = open(self.output, encoding="utf-8", errors="replace").read()
            if "Ctrl-C stops the daemon." in text:
                return text
            if process.poll() is not None:
                self.fail(f"scripts/run exited ({process.returncode}) before it was ready:\n{text[-3000:]}")
            time.sleep(0.2)
        self.fail(f"scripts/run was not ready within {READY_TIMEOUT} s:\n{text[-3000:]}")

    def test_any_free_port_demo_guest_and_its_urls(self):
        """--serialproxy-port=0: the URLs and the API address printed name the port the daemon got, and work."""
        process = self.start("--serialproxy-port=0")
        text = self.wait_until_ready(process)
        booted = re.search(r"^demo guest: server (\S+) \(2 serial ports", text, re.M)
        self.assertIsNotNone(booted, text)
        server_id = booted.group(1)
        self.addCleanup(destroy_domain, f"serialproxy-{server_id}")  # should deleting it through the API fail
        base = re.search(r"^serialproxy: (http://127\.0\.0\.1:(\d+))/ ", text, re.M)
        self.assertIsNotNone(base, text)
        port = int(base.group(2))
        self.assertNotEqual(port, 0)
        self.assertIn(f"listening on 127.0.0.1:{port} ", open(os.path.join(self.state, "run.log")).read())
        urls = re.findall(r"^  ttyS(\d): (ws://\S+)$", text, re.M)
        self.assertEqual([index for index, _ in urls], ["0", "1"], text)
        self.assertTrue(all(url.startswith(f"ws://127.0.0.1:{port}/?token=") for _, url in urls), urls)

        key = open(os.path.join(self.state, "admin.key")).read().strip()
        delete = f"{base.group(1)}/v3/servers/{server_id}"
        self.addCleanup(lambda: self.assertEqual(http_json("DELETE", delete, key)[0], 204))  # before the script stops
        self.assertIn(f"http://127.0.0.1:{port}/v3/servers", text)
        status, answer = http_json("GET", f"{base.group(1)}/v3/servers", key)
        self.assertEqual((status, [s["id"] for s in answer["servers"]]), (200, [server_id]))
        self.assertIn("42-/dev/ttyS0", type_and_read(urls[0][1], "42-/dev/ttyS0"))
