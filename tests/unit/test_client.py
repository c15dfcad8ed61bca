"""serialproxy-client's pure parts: flags and environment, name resolution, escapes, newlines, the session's decisions."""

import fcntl
import json
import os
import termios

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from treq.testing import StubTreq

from serialproxy.client import format_table, with_mode
from serialproxy.client_options import build_parser, load_settings
from serialproxy.client_api import APIClient, ClientError, UsageError, api_url, console_path, resolve_server, resolve_session
from serialproxy.client_console import CLOSE_WORDS, ConsoleSession, Outcome, describe_close, redact
from serialproxy.client_terminal import EscapeFilter, NewlineTranslator, StdioState, escape_name, parse_escape
from serialproxy.errors import CloseCode

ID1 = "0b6c1a2b-0000-4000-8000-000000000001"
ID2 = "0b6c1a2b-0000-4000-8000-000000000002"
ID3 = "5f0c9d8e-0000-4000-8000-000000000003"
SERVERS = [
    {"id": ID1, "name": "vm1", "tenant_id": "acme", "status": "active", "serial_ports": [{"index": 0}]},
    {"id": ID2, "name": "web", "tenant_id": "acme", "status": "active", "serial_ports": [{"index": 0}]},
    {"id": ID3, "name": "web", "tenant_id": "other", "status": "active", "serial_ports": [{"index": 0}]},
]
ENV = {"SERIALPROXY_URL": "http://proxy:6083", "SERIALPROXY_TOKEN": "spk_env"}


def parse(*argv, environ=ENV):
    args = build_parser().parse_args(list(argv))
    return args, load_settings(args, environ)


class SettingsTests(SynchronousTestCase):
    def test_environment(self):
        """SERIALPROXY_URL, _TOKEN and _TENANT configure the client."""
        _, settings = parse("list", environ={**ENV, "SERIALPROXY_TENANT": "acme"})
        self.assertEqual((settings.url, settings.token, settings.tenant), ("http://proxy:6083", "spk_env", "acme"))

    def test_flags_override_environment(self):
        """--url, --token and --tenant win over the environment, before or after the command."""
        _, before = parse("--url", "http://a:1/", "--token", "t1", "--tenant", "x", "list")
        _, after = parse("list", "--url", "http://a:1/", "--token", "t1", "--tenant", "x")
        self.assertEqual(before, after)
        self.assertEqual((after.url, after.token, after.tenant), ("http://a:1", "t1", "x"))

    def test_empty_tenant_flag_means_v3(self):
        """--tenant '' switches a tenant from the environment off."""
        _, settings = parse("list", "--tenant", "", environ={**ENV, "SERIALPROXY_TENANT": "acme"})
        self.assertIsNone(settings.tenant)

    def test_missing_url_names_variable_and_flag(self):
        """Without a URL the error says to set SERIALPROXY_URL or pass --url."""
        e = self.assertRaises(UsageError, parse, "list", environ={"SERIALPROXY_TOKEN": "t"})
        self.assertIn("SERIALPROXY_URL", str(e))
        self.assertIn("--url", str(e))

    def test_missing_token_names_variable_and_flag(self):
        """Without a key the error says to set SERIALPROXY_TOKEN or pass --token."""
        e = self.assertRaises(UsageError, parse, "list", environ={"SERIALPROXY_URL": "http://p:1"})
        self.assertIn("SERIALPROXY_TOKEN", str(e))
        self.assertIn("--token", str(e))

    def test_url_forms(self):
        """The ws:// form a console URL has is taken for http://; other schemes are refused."""
        self.assertEqual(api_url("ws://p:6083/", "--url"), "http://p:6083")
        self.assertEqual(api_url("wss://p/prefix/", "--url"), "https://p/prefix")
        e = self.assertRaises(UsageError, api_url, "ftp://p", "$SERIALPROXY_URL")
        self.assertIn("$SERIALPROXY_URL", str(e))

    def test_command_flags_after_arguments(self):
        """A command's flags may follow its arguments."""
        args, _ = parse("get-serial-console", "vm1", "serial", "--port", "2", "--json")
        self.assertEqual((args.server, args.console_type, args.port, args.json), ("vm1", "serial", 2, True))

    def test_console_defaults(self):
        """console: escape ~, 2 s linger, bare newlines sent as CR, read-write."""
        args, _ = parse("console", "vm1")
        self.assertEqual((args.escape, args.linger, args.newline, args.read_only, args.port), (ord("~"), 2.0, "cr", False, 0))

    def test_console_flags(self):
        """--escape none, --linger inf, --newline lf and --read-only are taken."""
        args, _ = parse("console", "vm1", "--escape", "none", "--linger", "inf", "--newline", "lf", "--read-only")
        self.assertEqual((args.escape, args.linger, args.newline, args.read_only), (None, float("inf"), "lf", True))

    def test_bad_values_are_one_line(self):
        """A bad flag value is a one-line usage error naming the flag."""
        for argv, flag in ((["console", "vm1", "--port", "-1"], "--port"), (["console", "vm1", "--linger", "soon"], "--linger"),
                           (["console", "vm1", "--escape", "ab"], "--escape"), (["console", "vm1", "--newline", "x"], "--newline")):
            e = self.assertRaises(UsageError, parse, *argv)
            self.assertIn(flag, str(e))
            self.assertNotIn("\n", str(e))

    def test_missing_argument(self):
        """A missing argument is a usage error pointing at the command's help."""
        e = self.assertRaises(UsageError, parse, "get-serial-console", "vm1")
        self.assertIn("console-type", str(e))
        self.assertIn("get-serial-console --help", str(e))


class ResolveTests(SynchronousTestCase):
    def test_by_name(self):
        """A unique name resolves to its server."""
        self.assertEqual(resolve_server(SERVERS, "vm1")["id"], ID1)

    def test_by_id(self):
        """An id resolves to its server, even when another server is named like it."""
        self.assertEqual(resolve_server(SERVERS + [{"id": "x", "name": ID2}], ID2)["id"], ID2)

    def test_ambiguous_name(self):
        """A name two servers share is refused, listing their ids."""
        e = self.assertRaises(ClientError, resolve_server, SERVERS, "web")
        self.assertIn(ID2, str(e))
        self.assertIn(ID3, str(e))

    def test_tenant_narrows(self):
        """With a tenant, only its servers count: the name is unique again."""
        self.assertEqual(resolve_server(SERVERS, "web", "other")["id"], ID3)

    def test_unknown(self):
        """An unknown name says so and how many servers the key sees."""
        e = self.assertRaises(ClientError, resolve_server, SERVERS, "nope")
        self.assertIn("'nope'", str(e))
        self.assertIn("3 servers", str(e))

    def test_session_prefix(self):
        """A session is found by its id or by a unique prefix, like the 8 characters of a busy reason."""
        sessions = [{"id": ID1}, {"id": ID3}]
        self.assertEqual(resolve_session(sessions, ID3, "vm1")["id"], ID3)
        self.assertEqual(resolve_session(sessions, ID1[:8], "vm1")["id"], ID1)

    def test_session_ambiguous_or_unknown(self):
        """A prefix of two sessions, or of none, is refused."""
        sessions = [{"id": ID1}, {"id": ID2}]
        self.assertIn("2 sessions", str(self.assertRaises(ClientError, resolve_session, sessions, "0b6c", "vm1")))
        self.assertIn("no live session", str(self.assertRaises(ClientError, resolve_session, sessions, "ffff", "vm1")))

    def test_console_path(self):
        """A tenant selects Nova's v2 path; without one, v3."""
        self.assertEqual(console_path(ID1, "acme"), f"/v2/acme/servers/{ID1}/get-serial-console")
        self.assertEqual(console_path(ID1, None), f"/v3/servers/{ID1}/get-serial-console")


class _CannedAPI(Resource):
    """Answers every request with one canned status and body, and remembers the requests."""

    isLeaf = True

    def __init__(self, status=200, body=None, raw=None):
        super().__init__()
        self.status, self.body, self.raw, self.requests = status, body, raw, []

    def render(self, request):
        self.requests.append((request.method.decode(), request.path.decode(), request.getHeader("x-auth-token"),
                              request.content.read()))
        request.setResponseCode(self.status)
        return self.raw if self.raw is not None else json.dumps(self.body).encode()


class APIClientTests(SynchronousTestCase):
    def client(self, api, tenant=None):
        return APIClient("http://proxy:6083", "spk_key", tenant, StubTreq(api), Clock())

    def result_of(self, coroutine):
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def fail_with(self, coroutine) -> str:
        return str(self.failureResultOf(Deferred.fromCoroutine(coroutine), ClientError).value)

    def test_find_server_by_name(self):
        """find_server lists the servers with the key and picks the named one."""
        api = _CannedAPI(body={"servers": SERVERS})
        self.assertEqual(self.result_of(self.client(api).find_server("vm1"))["id"], ID1)
        self.assertEqual(api.requests[0][:3], ("GET", "/v3/servers", "spk_key"))

    def test_console_v2_with_tenant(self):
        """With a tenant the console URL is asked for on the v2 path, with the port."""
        api = _CannedAPI(body={"serial_console": {"type": "serial", "port": 1, "url": "ws://p/?token=t"}})
        self.result_of(self.client(api, "acme").console(ID1, "serial", 1))
        method, path, _, body = api.requests[0]
        self.assertEqual((method, path), ("POST", f"/v2/acme/servers/{ID1}/get-serial-console"))
        self.assertEqual(json.loads(body), {"get_serial_console": {"type": "serial", "port": 1}})

    def test_api_error(self):
        """An API error becomes its message with the HTTP status."""
        api = _CannedAPI(404, {"error": {"code": 404, "message": f"no server '{ID1}'"}})
        self.assertEqual(self.fail_with(self.client(api).sessions(ID1)), f"no server '{ID1}' (HTTP 404 Not Found)")

    def test_unauthorized_hint(self):
        """A 401 also says where the key comes from."""
        api = _CannedAPI(401, {"error": {"code": 401, "message": "invalid API key in X-Auth-Token"}})
        message = self.fail_with(self.client(api).servers())
        self.assertIn("invalid API key in X-Auth-Token (HTTP 401 Unauthorized)", message)
        self.assertIn("SERIALPROXY_TOKEN", message)

    def test_not_json(self):
        """An answer that is not the API's JSON is reported with how it starts."""
        api = _CannedAPI(502, raw=b"<html>Bad Gateway</html>\n")
        self.assertIn("unlike serialproxy's API: '<html>Bad Gateway</html>'; is the URL right? (HTTP 502", self.fail_with(self.client(api).servers()))
        self.assertIn("no list 'servers'", self.fail_with(self.client(_CannedAPI(body={"servers": 3})).servers()))


class EscapeFilterTests(SynchronousTestCase):
    def test_leave_at_start(self):
        """~. as the first thing typed leaves."""
        self.assertEqual(EscapeFilter(ord("~")).feed(b"~."), (b"", True))

    def test_leave_after_newline(self):
        """~. right after Enter (CR) or LF leaves; what came before is sent, what follows dropped."""
        self.assertEqual(EscapeFilter(ord("~")).feed(b"ls\r~.junk"), (b"ls\r", True))
        self.assertEqual(EscapeFilter(ord("~")).feed(b"ls\n~."), (b"ls\n", True))

    def test_mid_line_passes(self):
        """~. in the middle of a line is sent as typed."""
        self.assertEqual(EscapeFilter(ord("~")).feed(b"cd ~.ssh"), (b"cd ~.ssh", False))

    def test_double_sends_one(self):
        """~~ at the start of a line sends one ~, and the line goes on (a following . is plain)."""
        self.assertEqual(EscapeFilter(ord("~")).feed(b"~~."), (b"~.", False))

    def test_other_char_passes(self):
        """~ followed by anything else sends both."""
        self.assertEqual(EscapeFilter(ord("~")).feed(b"~x"), (b"~x", False))

    def test_split_across_reads(self):
        """The escape is found when its bytes come in separate reads."""
        escape = EscapeFilter(ord("~"))
        self.assertEqual(escape.feed(b"echo\r"), (b"echo\r", False))
        self.assertEqual(escape.feed(b"~"), (b"", False))
        self.assertEqual(escape.feed(b"."), (b"", True))

    def test_disabled(self):
        """With no escape character everything passes."""
        self.assertEqual(EscapeFilter(None).feed(b"~."), (b"~.", False))

    def test_other_escape_character(self):
        """Another escape character works the same way, and ~ is then plain."""
        escape = EscapeFilter(parse_escape("^]"))
        self.assertEqual(escape.feed(b"~."), (b"~.", False))
        self.assertEqual(escape.feed(b"\r\x1d."), (b"\r", True))

    def test_parse_escape(self):
        """--escape takes one character, ^X, or none; it refuses words and '.'."""
        self.assertEqual([parse_escape(t) for t in ("~", "^]", "^a", "none", "NONE")], [0x7E, 0x1D, 0x01, None, None])
        for text in ("ab", ".", "é", "", "^1"):
            self.assertRaises(ValueError, parse_escape, text)
        self.assertEqual([escape_name(0x7E), escape_name(0x1D)], ["~", "^]"])


class NewlineTranslatorTests(SynchronousTestCase):
    def test_bare_newline_becomes_cr(self):
        """Each bare LF is sent as CR by default."""
        self.assertEqual(NewlineTranslator().feed(b"ls\n\nuname\n"), b"ls\r\runame\r")

    def test_crlf_kept(self):
        """CR LF is not a bare newline: it passes unchanged, even split across reads."""
        newline = NewlineTranslator()
        self.assertEqual(newline.feed(b"a\r\nb\r"), b"a\r\nb\r")
        self.assertEqual(newline.feed(b"\nc\n"), b"\nc\r")

    def test_modes(self):
        """--newline crlf sends CR LF; lf leaves the input as it is."""
        self.assertEqual(NewlineTranslator(b"\r\n").feed(b"a\nb"), b"a\r\nb")
        self.assertEqual(NewlineTranslator(b"\n").feed(b"a\nb\r\n"), b"a\nb\r\n")


class _FakeState:
    def __init__(self, terminal):
        self.is_terminal, self.raw, self.restored = terminal, False, False

    def make_raw(self):
        self.raw = True

    def restore(self):
        self.restored = True


class _FakeWebSocket:
    STATE_OPEN, STATE_CLOSING = 3, 4

    def __init__(self):
        self.transport = StringTransport()
        self.state = self.STATE_OPEN
        self.sent, self.closes = [], []

    def sendMessage(self, data, isBinary):
        self.sent.append((data, isBinary))

    def sendClose(self, code=None, reason=None):
        self.closes.append(code)
        self.state = self.STATE_CLOSING


class _FakeStdio(StringTransport):
    disconnected = False

    def __init__(self, protocol, reactor):
        super().__init__()
        self.protocol = protocol
        protocol.makeConnection(self)

    def loseConnection(self):
        self.disconnected = True
        self.protocol.connectionLost(None)


class ConsoleSessionTests(SynchronousTestCase):
    def session(self, terminal=False, **kwargs):
        self.clock, self.state, self.ws = Clock(), _FakeState(terminal), _FakeWebSocket()
        stdios = []
        session = ConsoleSession(self.clock, self.state, EscapeFilter(ord("~")), NewlineTranslator(),
                                 stdio_factory=lambda p, reactor: stdios.append(_FakeStdio(p, reactor)) or stdios[-1],
                                 **kwargs)
        session.opened(self.ws)
        self.stdio = stdios[0]
        return session

    def test_piped_input_sent_as_binary_with_cr(self):
        """Piped input goes out as binary frames, bare newlines as CR; the escape is not looked for."""
        self.session()
        self.stdio.protocol.dataReceived(b"~.\nls\n")
        self.assertEqual(self.ws.sent, [(b"~.\rls\r", True)])

    def test_linger_then_close(self):
        """After the end of piped input the output is read for --linger seconds, then the console closes: exit 0."""
        session = self.session(linger=2.0)
        self.stdio.protocol.readConnectionLost()
        self.clock.advance(1.9)
        session.from_console(b"late output")
        self.assertEqual(self.ws.closes, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ws.closes, [1000])
        session.closed(1000, None)
        self.assertEqual(self.successResultOf(session.done), Outcome(0, None))
        self.assertEqual(self.stdio.value(), b"late output")

    def test_proxy_close_is_an_error(self):
        """A close the proxy starts ends with its reason and code, exit 1."""
        session = self.session()
        session.closed(4009, "busy: held by 127.0.0.1:5 since 2026-01-01T00:00:00Z")
        outcome = self.successResultOf(session.done)
        self.assertEqual(outcome.code, 1)
        self.assertEqual(outcome.message, "console closed: busy: held by 127.0.0.1:5 since 2026-01-01T00:00:00Z (4009)")

    def test_terminal_escape_leaves(self):
        """On a terminal: raw mode, and ~. after Enter leaves with exit 0."""
        session = self.session(terminal=True)
        self.assertTrue(self.state.raw)
        self.stdio.protocol.dataReceived(b"ls\r~.")
        self.assertEqual((self.ws.sent, self.ws.closes), ([(b"ls\r", True)], [1000]))
        session.closed(1000, None)
        self.assertEqual(self.successResultOf(session.done).code, 0)

    def test_read_only_sends_nothing(self):
        """A read-only session never sends what is typed."""
        self.session(read_only=True)
        self.stdio.protocol.dataReceived(b"rm -rf /\n")
        self.assertEqual(self.ws.sent, [])

    def test_describe_close(self):
        """A close in words: the proxy's reason, else what the code means, then the code."""
        self.assertEqual(describe_close(4010, "kicked by admin: bye"), "kicked by admin: bye (4010)")
        self.assertEqual(describe_close(4009, ""), "console busy (4009)")
        for code in CloseCode:
            self.assertIn(int(code), CLOSE_WORDS)

    def test_redact(self):
        """Console URLs in messages lose their token."""
        self.assertEqual(redact("ws://p:6083/?token=secret&mode=read"), "ws://p:6083/")


class OutputTests(SynchronousTestCase):
    def test_table(self):
        """Columns are aligned and headed."""
        self.assertEqual(format_table(("ID", "NAME"), [("1", "vm1"), ("22", "x")]), "ID  NAME\n1   vm1\n22  x")

    def test_with_mode(self):
        """--read-only adds mode=read to the console URL, keeping the token."""
        self.assertEqual(with_mode("ws://p/?token=t", "read"), "ws://p/?token=t&mode=read")


class StdioStateTests(SynchronousTestCase):
    def test_raw_and_restore(self):
        """Raw mode on a pseudo-terminal is undone, with the descriptor flags, by restore (once)."""
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        before = termios.tcgetattr(slave)
        flags = fcntl.fcntl(slave, fcntl.F_GETFL)
        state = StdioState.save((slave,))
        state.make_raw()
        fcntl.fcntl(slave, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.assertNotEqual(termios.tcgetattr(slave), before)
        state.restore()
        state.restore()
        self.assertEqual(termios.tcgetattr(slave), before)
        self.assertEqual(fcntl.fcntl(slave, fcntl.F_GETFL), flags)

    def test_not_a_terminal(self):
        """A pipe is no terminal: no raw mode, but its flags are still put back."""
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        state = StdioState.save((r, w))
        self.assertFalse(state.is_terminal)
        state.make_raw()
        fcntl.fcntl(r, fcntl.F_SETFL, os.O_NONBLOCK)
        state.restore()
        self.assertFalse(fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK)

    def test_closed_descriptor(self):
        """A closed standard descriptor is refused up front, naming it, and nothing is left open."""
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        closed = os.dup2(r, 900)  # far above the lowest free number, which os.dup() hands out
        os.close(closed)
        open_before = len(os.listdir("/proc/self/fd"))
        e = self.assertRaises(OSError, StdioState.save, (r, closed))
        self.assertIn(f"file descriptor {closed} is closed", str(e))
        self.assertEqual(len(os.listdir("/proc/self/fd")), open_before)
