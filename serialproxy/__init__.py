"""serialproxy: interactive web-based serial consoles for libvirt/QEMU VMs."""

__all__ = ["__version__"]

__version__ = "0.1.0"
