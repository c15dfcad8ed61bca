"""Checks of what clients send: each refusal names the field, the value and what is allowed.

Pure functions from parsed JSON to clean values, raising
:class:`~serialproxy.errors.BadRequest`.
"""

import ipaddress
import re
import uuid

from .errors import BadRequest

__all__ = [
    "server_body", "boot_body", "console_body", "hypervisor_body", "image_body", "image_serial_ports",
    "kick_body", "is_id", "HOSTNAME", "tenant_id", "MAX_SERIAL_PORTS", "MACHINE_SERIAL_PORTS",
]

MAX_SERIAL_PORTS = 32
# An x86 'pc' machine has four ISA serial ports (ttyS0-ttyS3): QEMU refuses a fifth.
MACHINE_SERIAL_PORTS = 4
LIBVIRT_SCHEMES = ("qemu", "qemu+ssh", "qemu+tcp", "qemu+tls", "qemu+unix", "qemu+libssh", "qemu+libssh2", "test")
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() takes '²' and '١' too
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


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
            if HOSTNAME.match(value):
                return value.lower()
    raise BadRequest(f"{field}: {_show(value)} is not allowed: expected an IPv4 or IPv6 address or a host name")


def _int(value, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{field}: {_show(value)} is not allowed: expected a whole number from {low} to {high}")
    return value


def _known(obj: dict, where: str, allowed: tuple) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise BadRequest(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def boot_body(body: dict, with_tenant: bool) -> dict:
    """``{"server": {"name", ["tenant_id",] "image", "hypervisor", "memory_mb"}}``: a VM to boot."""
    server = _object(body, "server")
    fields = ("name", "tenant_id", "image", "hypervisor", "memory_mb") if with_tenant else ("name", "image", "hypervisor", "memory_mb")
    _known(server, "server", fields)
    clean = {"name": _name(server.get("name"), "server.name"),
             "image": _name(server.get("image"), "server.image"),
             "hypervisor": _name(server.get("hypervisor"), "server.hypervisor"),
             "memory_mb": _int(server.get("memory_mb", 256), "server.memory_mb", 64, 65536)}
    if with_tenant:
        clean["tenant_id"] = tenant_id(server.get("tenant_id"), "server.tenant_id")
    return clean


def hypervisor_body(body: dict, default_range: tuple, default_address: str) -> dict:
    """``{"hypervisor": {"name", "libvirt_uri", "proxyclient_address", "port_range", "virt_type"}}``."""
    hypervisor = _object(body, "hypervisor")
    _known(hypervisor, "hypervisor", ("name", "libvirt_uri", "proxyclient_address", "port_range", "virt_type"))
    uri = hypervisor.get("libvirt_uri")
    if not isinstance(uri, str) or uri.split(":", 1)[0] not in LIBVIRT_SCHEMES or "://" not in uri or len(uri) > 500:
        raise BadRequest(f"hypervisor.libvirt_uri: {_show(uri)} is not allowed: expected a libvirt URI such as "
                         "qemu:///system, qemu+ssh://root@host/system or test:///default")
    port_range = hypervisor.get("port_range", f"{default_range[0]}:{default_range[1]}")
    low, _, high = str(port_range).partition(":")
    if not (_DIGITS.fullmatch(low) and _DIGITS.fullmatch(high) and 1 <= int(low) <= int(high) <= 65535):
        raise BadRequest(f"hypervisor.port_range: {_show(port_range)} is not allowed: expected \"LOW:HIGH\" with 1 <= LOW <= HIGH <= 65535")
    virt_type = hypervisor.get("virt_type", "qemu")
    if virt_type not in ("qemu", "kvm"):
        raise BadRequest(f"hypervisor.virt_type: {_show(virt_type)} is not allowed: expected \"qemu\" (TCG, works everywhere) or \"kvm\"")
    return {"name": _name(hypervisor.get("name"), "hypervisor.name"), "libvirt_uri": uri,
            "proxyclient_address": _host(hypervisor.get("proxyclient_address", default_address or "127.0.0.1"),
                                         "hypervisor.proxyclient_address"),
            "port_range": (int(low), int(high)), "virt_type": virt_type}


def image_serial_ports(metadata: dict, field: str = "image.metadata.serial_ports") -> int:
    """The ``serial_ports`` image property: how many serial ports each VM gets (default 1)."""
    value = metadata.get("serial_ports", "1")
    text = str(value).strip() if not isinstance(value, bool) else "x"
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MACHINE_SERIAL_PORTS:
        raise BadRequest(f"{field}: {_show(value)} is not allowed: expected a whole number from 1 to "
                         f"{MACHINE_SERIAL_PORTS} (the serial ports of an x86 'pc' machine)")
    return int(text)


def _path(value, field: str) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 1024 or "\0" in value:
        raise BadRequest(f"{field}: {_show(value)} is not allowed: expected an absolute path on the hypervisor")
    return value


def image_body(body: dict) -> dict:
    """``{"image": {"name", "kernel", "initrd", "cmdline" | "disk", "metadata": {...}}}``."""
    image = _object(body, "image")
    _known(image, "image", ("name", "kernel", "initrd", "cmdline", "disk", "metadata"))
    metadata = image.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool)
                                                 for k, v in metadata.items()) or len(metadata) > 64:
        raise BadRequest(f"image.metadata: {_show(metadata)} is not allowed: expected an object of up to 64 string properties")
    image_serial_ports(metadata)
    clean = {"name": _name(image.get("name"), "image.name"), "kernel": _path(image.get("kernel"), "image.kernel"),
             "initrd": _path(image.get("initrd"), "image.initrd"), "disk": _path(image.get("disk"), "image.disk"),
             "metadata": {k: str(v) for k, v in metadata.items()}}
    cmdline = image.get("cmdline", "")
    if not isinstance(cmdline, str) or len(cmdline) > 2048 or any(ord(c) < 32 for c in cmdline):
        raise BadRequest(f"image.cmdline: {_show(cmdline)} is not allowed: expected up to 2048 printable characters")
    clean["cmdline"] = cmdline
    if bool(clean["kernel"]) == bool(clean["disk"]):
        raise BadRequest("image: give either kernel (with initrd and cmdline) or disk, not both and not neither")
    return clean


def server_body(body: dict) -> dict:
    """``{"server": {"name", "tenant_id", "serial_ports": [{"host", "port"}]}}``."""
    server = _object(body, "server")
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


def kick_body(body: dict) -> str:
    """``{"reason": "..."}`` (optional) -> the reason a kicked session is told."""
    _known(body, "body", ("reason",))
    reason = body.get("reason", "no reason given")
    if not isinstance(reason, str) or len(reason) > 200 or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in reason):
        raise BadRequest(f"reason: {_show(reason)} is not allowed: expected up to 200 printable characters")
    return reason or "no reason given"
