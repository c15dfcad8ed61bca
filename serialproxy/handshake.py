"""A plain websocket upgrade request, read in one pass (see docs/performance.md).

Browsers, the CLI and websocket libraries send the same plain request;
``read_plain_upgrade`` reads it to what autobahn's reading of it gives
(header names in lower case, values stripped), and leaves anything else
to autobahn (``ConsoleProtocol.processHandshake``).
"""

from typing import Dict, List, Optional
from urllib.parse import parse_qs

from attrs import frozen

__all__ = ["PlainUpgrade", "query_params", "read_plain_upgrade"]

_KEY_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


@frozen
class PlainUpgrade:
    """A plain upgrade request, as autobahn's reading gives its parts."""

    end: int  # where the head ends (after its blank line)
    status: str  # the request line
    uri: str  # "/" or "/?query"
    headers: Dict[str, str]
    host: str  # without its port
    port: Optional[int]
    key: str  # Sec-WebSocket-Key
    protocols: List[str]  # the subprotocols offered, in order


def read_plain_upgrade(data: bytes) -> Optional[PlainUpgrade]:
    """The plain upgrade request at the start of ``data``, or None for anything else (autobahn's to read).

    Plain: ``GET /`` or ``GET /?query`` over HTTP/1.1; every header once;
    a Host, with a port that is a number if it has one; an Upgrade naming
    websocket and a Connection naming upgrade; Sec-WebSocket-Version 13; a
    Sec-WebSocket-Key of 16 bytes in base64; no subprotocol offered twice.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("iso-8859-1").splitlines()  # as autobahn's parseHttpHeader
    status = lines[0].strip()
    parts = status.split()
    if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1" or "#" in parts[1]:
        return None
    uri = parts[1]
    headers = _headers(lines[1:])
    if (uri != "/" and not uri.startswith("/?")) or headers is None or not _is_upgrade(headers):
        return None
    host, port = _host_and_port(headers["host"])
    offered = headers.get("sec-websocket-protocol")
    protocols = [protocol.strip() for protocol in offered.split(",")] if offered is not None else []
    if host is None or len(set(protocols)) != len(protocols):
        return None
    return PlainUpgrade(end + 4, status, uri, headers, host, port, headers["sec-websocket-key"], protocols)


def _headers(lines: List[str]) -> Optional[Dict[str, str]]:
    """``{name in lower case: value stripped}``, or None if a line is not a header or a name comes twice."""
    headers = {}
    for line in lines:
        colon = line.find(":")
        if colon <= 0:
            return None
        name = line[:colon].strip().lower()
        if name in headers:
            return None
        headers[name] = line[colon + 1:].strip()
    return headers


def _is_upgrade(headers: Dict[str, str]) -> bool:
    """A Host, Upgrade: websocket, Connection: upgrade, version 13 and a well-formed key?"""
    key = headers.get("sec-websocket-key")
    return ("host" in headers and key is not None and headers.get("sec-websocket-version") == "13"
            and "websocket" in [token.strip().lower() for token in headers.get("upgrade", "").split(",")]
            and "upgrade" in [token.strip().lower() for token in headers.get("connection", "").split(",")]
            and len(key) == 24 and key[-2:] == "==" and _KEY_ALPHABET.issuperset(key[:-2]))


def _host_and_port(host: str) -> tuple:
    """``(host, port or None)`` as autobahn splits a Host header; ``(None, None)`` if its port is not a number."""
    if ":" not in host or host.endswith("]"):
        return host, None
    host, _, digits = host.rpartition(":")
    try:
        return host, int(digits)
    except ValueError:
        return None, None


def query_params(uri: str) -> Dict[str, List[str]]:
    """``parse_qs`` of a ``/`` or ``/?query`` URI's query, which is how autobahn reads it.

    A console URL's query (``token=...&mode=...``) has nothing escaped in
    it; such a query is split here, to what ``parse_qs`` gives it (blank
    values and names without ``=`` left out), without urllib's decoding
    machinery: 18 function calls fewer a new session (801 → 783,
    ``bench/callcount.py``). Anything with ``%`` or ``+`` in it takes
    ``parse_qs``; a Hypothesis test compares the two on any query.
    """
    query = uri[2:]
    if "%" in query or "+" in query:
        return parse_qs(query)
    params = {}
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and value:
            params.setdefault(name, []).append(value)
    return params
