"""The twistd plugin: ``twistd serialproxy``. No __init__.py may live beside it."""

from twisted.application.service import ServiceMaker

serialproxy = ServiceMaker(
    "serialproxy",
    "serialproxy.tap",
    "Interactive web serial consoles for libvirt/QEMU virtual machines",
    "serialproxy",
)
