"""The REST API as ``serialproxy-client`` sees it: calls, their errors, and names resolved to ids.

Every answer that is not a success becomes a :class:`ClientError` whose
text is the API's own message with the HTTP status, ready to be printed on
one line. Resolving a server name or a session id prefix is pure
(:func:`resolve_server`, :func:`resolve_session`), so it is tested on canned
answers.
"""

import json
from typing import Optional
from urllib.parse import quote, urlsplit

from attrs import define
from twisted.internet import defer, error
from twisted.web import client as web_client, http
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

__all__ = ["APIClient", "ClientError", "UsageError", "api_url", "console_path", "http_client", "resolve_server",
           "resolve_session"]

TIMEOUT = 30  # seconds any one API call may take
_UNREACHABLE = (error.ConnectError, error.DNSLookupError, error.TimeoutError, defer.CancelledError,
                web_client.ResponseNeverReceived, web_client.ResponseFailed, web_client.RequestTransmissionFailed)


class ClientError(Exception):
    """An error the user is told about in one line; ``exit_code`` is the command's."""

    exit_code = 1


class UsageError(ClientError):
    """Bad arguments or missing settings."""

    exit_code = 2


def api_url(raw: str, source: str) -> str:
    """The API base from ``--url`` or $SERIALPROXY_URL: http(s), or the ws(s) form a console URL has."""
    parts = urlsplit(raw.strip())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{source} must be the proxy's http:// or https:// address, e.g. http://127.0.0.1:6083; got {raw!r}")
    return parts._replace(scheme=scheme, query="", fragment="").geturl().rstrip("/")


def console_path(server_id: str, tenant: Optional[str]) -> str:
    """Where to ask for a console URL: Nova's v2 path with a tenant, else v3."""
    if tenant:
        return f"/v2/{quote(tenant, safe='')}/servers/{quote(server_id, safe='')}/get-serial-console"
    return f"/v3/servers/{quote(server_id, safe='')}/get-serial-console"


def resolve_server(servers: list, ref: str, tenant: Optional[str] = None) -> dict:
    """The server whose id is ``ref``, else the one named ``ref``; of ``tenant`` only, when given."""
    if tenant:
        servers = [s for s in servers if s.get("tenant_id") == tenant]
    by_id = [s for s in servers if s.get("id") == ref]
    if by_id:
        return by_id[0]
    named = [s for s in servers if s.get("name") == ref]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(s["id"] for s in named)
        raise ClientError(f"{len(named)} servers are named {ref!r} ({ids}): give the id instead")
    scope = f" of tenant {tenant}" if tenant else ""
    raise ClientError(f"no server{scope} named or with id {ref!r} ({_count(len(servers), 'server')}{scope} visible "
                      "to this API key; serialproxy-client list shows them)")


def resolve_session(sessions: list, ref: str, server: str) -> dict:
    """The session whose id is ``ref`` or starts with it (the busy reason shows 8 characters)."""
    exact = [s for s in sessions if s.get("id") == ref]
    matches = exact or [s for s in sessions if ref and str(s.get("id", "")).startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ClientError(f"{len(matches)} sessions on {server} start with {ref!r}: give more of the id")
    raise ClientError(f"no live session {ref!r} on {server} (serialproxy-client sessions {server} lists them)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _error_message(status: int, body: bytes) -> str:
    """The API's own error message, or what the body starts with when it is not the API's JSON."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip().splitlines()
        message = ("an answer unlike serialproxy's API" + (f": {text[0][:100]!r}" if text else ", with no body")
                   + "; is the URL right?")
    phrase = http.RESPONSES.get(status, b"").decode("ascii")
    hint = "; check $SERIALPROXY_TOKEN or --token" if status == 401 else ""
    return f"{message} (HTTP {' '.join(filter(None, (str(status), phrase)))}){hint}"


def http_client(reactor) -> HTTPClient:
    """A treq client that keeps no connection open after its call."""
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


@define
class APIClient:
    """Calls to one proxy with one API key; ``http`` is a treq client (``StubTreq`` in tests)."""

    _url: str
    _token: str
    _tenant: Optional[str]
    _http: object
    _reactor: object
    _timeout: float = TIMEOUT

    @property
    def tenant(self) -> Optional[str]:
        return self._tenant

    async def call(self, method: str, path: str, body: Optional[dict] = None):
        """The parsed JSON answer of a successful call (None when empty); a :class:`ClientError` otherwise."""
        kwargs = {"json": body} if body is not None else {}
        try:
            response = await self._http.request(method, self._url + path, headers={"X-Auth-Token": [self._token]},
                                                timeout=self._timeout, reactor=self._reactor, **kwargs)
            content = await response.content()
        except _UNREACHABLE as e:
            raise ClientError(f"cannot reach the proxy at {self._url}: {_reason(e, self._timeout)}") from None
        if not 200 <= response.code < 300:
            raise ClientError(_error_message(response.code, content))
        return _parse(content, response.code)

    async def servers(self) -> list:
        """Every server this key may see."""
        return _listed(await self.call("GET", "/v3/servers"), "servers")

    async def find_server(self, ref: str) -> dict:
        """The server named ``ref`` or with id ``ref``."""
        return resolve_server(await self.servers(), ref, self._tenant)

    async def console(self, server_id: str, kind: str, port: int) -> dict:
        """The API's answer to get-serial-console: ``{"serial_console": {"type", "port", "url"}}``."""
        body = {"get_serial_console": {"type": kind, "port": port}}
        return await self.call("POST", console_path(server_id, self._tenant), body)

    async def sessions(self, server_id: str) -> list:
        """The live console sessions of a server."""
        answer = await self.call("GET", f"/v3/servers/{quote(server_id, safe='')}/serial-sessions")
        return _listed(answer, "serial_sessions")

    async def kick(self, server_id: str, session_id: str, reason: Optional[str]) -> None:
        """Force-disconnect a session (it closes with 4010 and the reason)."""
        path = f"/v3/servers/{quote(server_id, safe='')}/serial-sessions/{quote(session_id, safe='')}"
        await self.call("DELETE", path, {"reason": reason} if reason else None)


def _listed(answer, key: str) -> list:
    """``answer[key]``, a list of objects, or a :class:`ClientError` saying the answer is not what the API gives."""
    items = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ClientError(f"the proxy's answer has no list {key!r}: {json.dumps(answer)[:200]}")
    return items


def _parse(content: bytes, status: int):
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except ValueError:
        raise ClientError(f"the proxy answered HTTP {status} with a body that is not JSON: {content[:100]!r}") from None


def _reason(e: Exception, timeout: float) -> str:
    """Why a call got no answer, in words."""
    if isinstance(e, (web_client.ResponseNeverReceived, web_client.ResponseFailed)) and e.reasons:
        return _reason(e.reasons[0].value, timeout)
    if isinstance(e, (defer.CancelledError, error.TimeoutError)):
        return f"no answer within {timeout:g} seconds"
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused (is serialproxy running there?)"
    return str(e) or type(e).__name__
