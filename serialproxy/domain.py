"""Libvirt domain XML: what serialproxy writes into a domain and reads back from it.

Pure functions over ElementTree. A domain we boot carries one
``<serial type='tcp'>`` per serial port (bind mode, host = the hypervisor's
proxyclient_address, raw protocol) and our metadata (server id, tenant) in
``<metadata>`` under our own namespace, so a restarted proxy can find its
domains again.
"""

import xml.etree.ElementTree as ET
from typing import Optional

from attrs import frozen

from .interfaces import SerialPort

__all__ = ["NAMESPACE", "DomainSpec", "Owner", "build_domain_xml", "serial_ports", "owner", "domain_name"]

NAMESPACE = "https://serialproxy.dev/xmlns/domain/1"
ET.register_namespace("serialproxy", NAMESPACE)


@frozen
class DomainSpec:
    """Everything needed to write the XML of one VM."""

    name: str
    server_id: str
    tenant_id: str
    memory_mb: int
    serial_ports: tuple  # of SerialPort
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    disk: str = ""
    virt_type: str = "qemu"  # "kvm" only where KVM is usable


@frozen
class Owner:
    """Our metadata found in a domain."""

    server_id: str
    tenant_id: str


def domain_name(server_id: str) -> str:
    """The libvirt name of the domain of a server: unique, and ours at a glance."""
    return f"serialproxy-{server_id}"


def _sub(parent, tag, text=None, **attrs):
    element = ET.SubElement(parent, tag, {k.rstrip("_"): str(v) for k, v in attrs.items()})
    if text is not None:
        element.text = str(text)
    return element


def build_domain_xml(spec: DomainSpec) -> str:
    """The domain XML for ``spec``."""
    domain = ET.Element("domain", type=spec.virt_type)
    _sub(domain, "name", spec.name)
    _sub(domain, "title", f"serialproxy server {spec.server_id}")
    metadata = _sub(domain, "metadata")
    ours = ET.SubElement(metadata, f"{{{NAMESPACE}}}server", id=spec.server_id)
    ET.SubElement(ours, f"{{{NAMESPACE}}}tenant").text = spec.tenant_id
    _sub(domain, "memory", spec.memory_mb, unit="MiB")
    _sub(domain, "vcpu", 1)
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel:
        _sub(os_, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_, "initrd", spec.initrd)
        _sub(os_, "cmdline", spec.cmdline)
    else:
        _sub(os_, "boot", dev="hd")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "destroy" if spec.kernel else "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    if spec.disk:
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2" if spec.disk.endswith(".qcow2") else "raw")
        _sub(disk, "source", file=spec.disk)
        _sub(disk, "target", dev="vda", bus="virtio")
    for port in spec.serial_ports:
        serial = _sub(devices, "serial", type="tcp")
        _sub(serial, "source", mode="bind", host=port.host, service=port.port)
        _sub(serial, "protocol", type="raw")
        _sub(serial, "target", port=port.index)
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def serial_ports(xml: str) -> tuple:
    """The TCP serial ports of a domain, from its XML, in target-port order.

    Only ``<serial type='tcp'>`` devices in bind mode with a raw or telnet
    protocol count: those are sockets the proxy can connect to.
    """
    found = []
    for serial in ET.fromstring(xml).findall("./devices/serial"):
        source = serial.find("source")
        if serial.get("type") != "tcp" or source is None or source.get("mode", "bind") != "bind":
            continue
        target = serial.find("target")
        index = int(target.get("port", len(found))) if target is not None else len(found)
        try:
            found.append(SerialPort(index, source.get("host") or "0.0.0.0", int(source.get("service"))))
        except (TypeError, ValueError):
            continue
    return tuple(sorted(found, key=lambda p: p.index))


def owner(xml: str) -> Optional[Owner]:
    """Our metadata in a domain's XML, or None for a domain that is not ours."""
    server = ET.fromstring(xml).find(f"./metadata/{{{NAMESPACE}}}server")
    if server is None or not server.get("id"):
        return None
    tenant = server.find(f"{{{NAMESPACE}}}tenant")
    return Owner(server.get("id"), tenant.text if tenant is not None and tenant.text else "")
