"""The libvirt driver: domains on hypervisors, through libvirt-python, off the reactor.

libvirt calls block, so every call runs in a thread pool that this service
starts and stops (``deferToThreadPool``); the reactor never waits on a
hypervisor. One connection per URI is kept and reopened once if it breaks.
"""

import threading
from typing import ClassVar, Dict

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .domain import NAMESPACE
from .errors import SerialProxyError
from .interfaces import IHypervisorDriver

__all__ = ["LibvirtDriver", "HypervisorError"]


class HypervisorError(SerialProxyError):
    """libvirt refused or failed; the message says which hypervisor and why."""

    http_status = 502


def _libvirt():
    import libvirt  # imported late: a proxy without hypervisors needs no libvirt

    return libvirt


@implementer(IHypervisorDriver)
class LibvirtDriver(Service):
    """:class:`IHypervisorDriver` on libvirt-python."""

    name = "libvirt"
    _log: ClassVar[Logger] = Logger()

    def __init__(self, reactor, threadpool=None, max_threads: int = 4):
        self._reactor = reactor
        self._pool = threadpool or ThreadPool(minthreads=0, maxthreads=max_threads, name="serialproxy-libvirt")
        self._connections: Dict[str, object] = {}
        self._lock = threading.Lock()

    def startService(self):
        super().startService()
        self._pool.start()

    def stopService(self):
        super().stopService()
        self._pool.stop()
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            try:
                connection.close()
            except Exception:
                pass

    # the blocking side, run in the pool

    def _run(self, fn, uri, *args):
        return deferToThreadPool(self._reactor, self._pool, self._call, fn, uri, *args)

    def _call(self, fn, uri, *args):
        libvirt = _libvirt()
        try:
            try:
                return fn(libvirt, self._connection(uri), *args)
            except libvirt.libvirtError as e:
                if e.get_error_code() not in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR,
                                              libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_INVALID_CONN):
                    raise
                self._forget(uri)  # the connection broke: one retry on a new one
                return fn(libvirt, self._connection(uri), *args)
        except libvirt.libvirtError as e:
            raise HypervisorError(f"libvirt at {uri}: {(e.get_error_message() or str(e)).strip()}") from None

    def _connection(self, uri):
        with self._lock:
            connection = self._connections.get(uri)
            if connection is None or not connection.isAlive():
                connection = _libvirt().open(uri)
                self._connections[uri] = connection
            return connection

    def _forget(self, uri):
        with self._lock:
            self._connections.pop(uri, None)

    # IHypervisorDriver

    def boot(self, uri, xml):
        return self._run(_boot, uri, xml)

    def destroy(self, uri, name):
        return self._run(_destroy, uri, name)

    def state(self, uri, name):
        return self._run(_state, uri, name)

    def domain_xml(self, uri, name):
        return self._run(_xml, uri, name)

    def domains(self, uri):
        return self._run(_domains, uri)

    def set_owner(self, uri, name, server_id, tenant_id):
        return self._run(_set_owner, uri, name, server_id, tenant_id)


def _lookup(libvirt, connection, name):
    try:
        return connection.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _boot(libvirt, connection, xml):
    domain = connection.defineXML(xml)
    try:
        domain.create()
    except libvirt.libvirtError:
        domain.undefine()  # a domain that cannot start is not left behind
        raise
    return domain.name()


def _destroy(libvirt, connection, name):
    domain = _lookup(libvirt, connection, name)
    if domain is None:
        return False
    if domain.isActive():
        domain.destroy()
    domain.undefine()
    return True


_STATES = {
    "VIR_DOMAIN_RUNNING": "active", "VIR_DOMAIN_BLOCKED": "active", "VIR_DOMAIN_PAUSED": "paused",
    "VIR_DOMAIN_PMSUSPENDED": "paused", "VIR_DOMAIN_SHUTDOWN": "shutoff", "VIR_DOMAIN_SHUTOFF": "shutoff",
    "VIR_DOMAIN_CRASHED": "error", "VIR_DOMAIN_NOSTATE": "building",
}


def _state(libvirt, connection, name):
    domain = _lookup(libvirt, connection, name)
    if domain is None:
        return None
    code = domain.state()[0]
    return next((v for k, v in _STATES.items() if getattr(libvirt, k) == code), "error")


def _xml(libvirt, connection, name):
    domain = _lookup(libvirt, connection, name)
    return None if domain is None else domain.XMLDesc()


def _domains(libvirt, connection):
    return [(d.name(), d.XMLDesc()) for d in connection.listAllDomains()]


def _set_owner(libvirt, connection, name, server_id, tenant_id):
    from xml.sax.saxutils import quoteattr, escape

    domain = _lookup(libvirt, connection, name)
    if domain is None:
        raise libvirt.libvirtError(f"no domain {name!r}")
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if domain.isActive() else 0)
    metadata = f"<server id={quoteattr(server_id)}><tenant>{escape(tenant_id)}</tenant></server>"
    domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata, "serialproxy", NAMESPACE, flags)
