"""Checks of what clients send: each refusal names the field, the value and what is allowed.

Pure functions from parsed JSON to clean values, raising
:class:`~serialproxy.errors.BadRequest`.
"""

import ipaddress
import re
import uuid

from .errors import BadRequest

__all__ = ["server_body", "console_body", "is_id", "tenant_id", "MAX_SERIAL_PORTS"]

MAX_SERIAL_PORTS = 32
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_id(value: str) -> bool:
    """Is ``value`` shaped like one of our ids (a UUID)?"""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _object(body, name: str) -> dict:
    inner = body.get(name)
    if not isinstance(inner, dict):
        raise BadRequest(f"expected a JSON object {{\"{name}\": {{...}}}}, got {_show(inner)} for {name!r}")
    return inner


def tenant_id(value, field: str = "tenant_id") -> str:
    if not isinstance(value, str) or not _TENANT.match(value):
        raise BadRequest(f"{field}: {_show(value)} is not allowed: expected 1-64 letters, digits or _.@- starting with a letter or digit")
    return value


def _name(value, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadRequest(f"{field}: {_show(value)} is not allowed: expected 1-255 printable characters")
    return value


def _host(value, field: str) -> str:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            if _HOSTNAME.match(value):
                return value.lower()
    raise BadRequest(f"{field}: {_show(value)} is not allowed: expected an IPv4 or IPv6 address or a host name")


def _int(value, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{field}: {_show(value)} is not allowed: expected a whole number from {low} to {high}")
    return value


def server_body(body: dict) -> dict:
    """``{"server": {"name", "tenant_id", "serial_ports": [{"host", "port"}]}}``."""
    server = _object(body, "server")
    if "image" in server or "hypervisor" in server:
        raise BadRequest("server.image/server.hypervisor: booting servers through libvirt is not available "
                         "on this version; register a running VM with server.serial_ports instead")
    unknown = sorted(set(server) - {"name", "tenant_id", "serial_ports"})
    if unknown:
        raise BadRequest(f"server: unknown field(s) {', '.join(unknown)}; allowed: name, tenant_id, serial_ports")
    ports = server.get("serial_ports")
    if not isinstance(ports, list) or not 1 <= len(ports) <= MAX_SERIAL_PORTS:
        raise BadRequest(f"server.serial_ports: {_show(ports)} is not allowed: expected a list of 1 to {MAX_SERIAL_PORTS} {{\"host\", \"port\"}} objects")
    clean = []
    for i, port in enumerate(ports):
        field = f"server.serial_ports[{i}]"
        if not isinstance(port, dict) or set(port) - {"host", "port"}:
            raise BadRequest(f"{field}: {_show(port)} is not allowed: expected {{\"host\": ADDRESS, \"port\": 1-65535}}")
        clean.append({"host": _host(port.get("host"), f"{field}.host"), "port": _int(port.get("port"), f"{field}.port", 1, 65535)})
    if len({(p["host"], p["port"]) for p in clean}) != len(clean):
        raise BadRequest("server.serial_ports: the same host and port are listed twice")
    return {"name": _name(server.get("name"), "server.name"),
            "tenant_id": tenant_id(server.get("tenant_id"), "server.tenant_id"),
            "serial_ports": clean}


def console_body(body: dict) -> tuple:
    """``{"get_serial_console": {"type": "serial", "port": 0}}`` (all optional) -> (type, port)."""
    if not body:
        return "serial", 0
    name = next((n for n in ("get_serial_console", "os-getSerialConsole") if n in body), None)
    if name is None:
        raise BadRequest(f"unknown field(s) {', '.join(sorted(body))}: expected "
                         "{\"get_serial_console\": {\"type\": \"serial\", \"port\": 0}} (alias os-getSerialConsole), or no body")
    inner = _object(body, name)
    kind = inner.get("type", "serial")
    if kind != "serial":
        raise BadRequest(f"{name}.type: {_show(kind)} is not a console type this proxy serves: only 'serial'")
    return kind, _int(inner.get("port", 0), f"{name}.port", 0, MAX_SERIAL_PORTS - 1)
