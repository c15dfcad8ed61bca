"""polling.lean_poll: a fresh epoll reactor, driven by hand, on real sockets and pipes.

Each case runs on Twisted's own poll loop and on lean_poll's, and both
must come out the same (and as expected): what is read and written, how
each connection ends, and how an error in a handler is logged.
"""

import os
import socket

from twisted.internet import abstract, epollreactor, pollreactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python import log
from twisted.trial.unittest import TestCase

from serialproxy.polling import lean_poll

ITERATIONS = 400  # reactor turns a case may take (each waits at most 10 ms)


def _fresh(lean: bool) -> epollreactor.EPollReactor:
    reactor = epollreactor.EPollReactor()
    if lean:
        assert lean_poll(reactor)
    return reactor


def _dispose(reactor) -> None:
    """Close what a case left open (nothing, when it passes), the reactor's waker and its epoll descriptor."""
    for selectable in reactor.removeAll():
        os.close(selectable.fileno())
    if reactor.waker is not None:
        reactor.waker.connectionLost(None)
    reactor._poller.close()


def _run_until(reactor, done) -> bool:
    for _ in range(ITERATIONS):
        if done():
            return True
        reactor.iterate(0.01)
    return done()


def _listen(reactor, protocol):
    """A loopback listener on ``reactor`` for ``protocol``: (its factory, whose ``lost`` gathers the ends; its port)."""
    factory = Factory.forProtocol(protocol)
    factory.lost = []
    return factory, reactor.listenTCP(0, factory, interface="127.0.0.1")


def _close(reactor, port) -> None:
    port.stopListening()
    _run_until(reactor, lambda: not port.connected)


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self, reason):
        self.factory.lost.append(reason)


class _Failing(Protocol):
    def dataReceived(self, data):
        raise ZeroDivisionError("a bug in a handler")

    def connectionLost(self, reason):
        self.factory.lost.append(reason)


class _Client(Protocol):
    def __init__(self):
        self.received = b""
        self.lost = None

    def connectionMade(self):
        self.transport.write(b"hello")

    def dataReceived(self, data):
        self.received += data
        if self.received == b"hello":
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.lost = reason


class _PipeEnd(abstract.FileDescriptor):
    """One end of a pipe as a Twisted selectable: reads what comes, writes what it is given."""

    def __init__(self, reactor, fd: int):
        super().__init__(reactor)
        self.fd = fd
        self.received = b""
        self.lost = None
        self.connected = 1

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return f"pipe end {self.fd}"

    def doRead(self):
        data = os.read(self.fd, 4096)
        if not data:
            return CONNECTION_DONE
        self.received += data
        return None

    def writeSomeData(self, data):
        try:
            return os.write(self.fd, data)
        except BrokenPipeError:
            return ConnectionLost("the reader went")

    def connectionLost(self, reason):
        super().connectionLost(reason)
        os.close(self.fd)
        self.lost = reason


class LeanPollTests(TestCase):
    def _both(self, case):
        """``case(reactor)`` on Twisted's loop and on lean_poll's: the two results."""
        results = []
        for lean in (False, True):
            reactor = _fresh(lean)
            try:
                results.append(case(reactor))
            finally:
                _dispose(reactor)
        return results

    def test_only_twisteds_epoll_reactor(self):
        """Twisted's epoll reactor gets the loop; any other reactor keeps its own."""
        epoll = epollreactor.EPollReactor()
        self.addCleanup(_dispose, epoll)
        self.assertTrue(lean_poll(epoll))
        self.assertEqual(epoll.doIteration.__func__.__module__, "serialproxy.polling")
        other = pollreactor.PollReactor()
        self.addCleanup(other.waker.connectionLost, None)
        self.assertFalse(lean_poll(other))
        self.assertNotIn("doIteration", vars(other))

    def test_tcp_round_trip_and_clean_close(self):
        """A client's bytes come back through a listener, and both ends see a clean close."""
        def case(reactor):
            server, port = _listen(reactor, _Echo)
            client = _Client()
            reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(lambda: client))
            self.assertTrue(_run_until(reactor, lambda: client.lost is not None and server.lost))
            _close(reactor, port)
            return client.received, type(client.lost.value), [type(reason.value) for reason in server.lost]

        twisted, lean = self._both(case)
        self.assertEqual(lean, (b"hello", ConnectionDone, [ConnectionDone]))
        self.assertEqual(lean, twisted)

    def test_hang_up_while_reading_is_a_clean_end(self):
        """A pipe's reader whose writer closed, nothing left unread (a hang-up alone), ends cleanly."""
        def case(reactor):
            read_fd, write_fd = os.pipe()
            reader = _PipeEnd(reactor, read_fd)
            reader.startReading()
            os.write(write_fd, b"last words")
            self.assertTrue(_run_until(reactor, lambda: reader.received == b"last words"))
            os.close(write_fd)
            self.assertTrue(_run_until(reactor, lambda: reader.lost is not None))
            return reader.received, type(reader.lost.value)

        twisted, lean = self._both(case)
        self.assertEqual(lean, (b"last words", ConnectionDone))
        self.assertEqual(lean, twisted)

    def test_error_while_writing_is_a_lost_connection(self):
        """A pipe's writer whose reader closed, with bytes still to write, ends as a lost connection."""
        def case(reactor):
            read_fd, write_fd = os.pipe()
            writer = _PipeEnd(reactor, write_fd)
            os.close(read_fd)
            writer.write(b"x" * 100)  # queued: written when the loop finds the pipe writable (or broken)
            self.assertTrue(_run_until(reactor, lambda: writer.lost is not None))
            return type(writer.lost.value)

        twisted, lean = self._both(case)
        self.assertEqual(lean, ConnectionLost)
        self.assertEqual(lean, twisted)

    def test_an_error_in_a_handler_ends_its_connection_and_is_logged_with_its_name(self):
        """A handler that raises: its connection ends with the error, logged under the connection's name."""
        def case(reactor):
            events = []
            log.addObserver(events.append)
            self.addCleanup(log.removeObserver, events.append)
            server, port = _listen(reactor, _Failing)
            peer = socket.create_connection(("127.0.0.1", port.getHost().port))
            self.addCleanup(peer.close)
            peer.sendall(b"boom")
            self.assertTrue(_run_until(reactor, lambda: server.lost))
            _close(reactor, port)
            errors = [(e["system"], e["failure"].type) for e in events if e.get("isError")]
            return errors, [type(reason.value) for reason in server.lost]

        twisted, lean = self._both(case)
        self.flushLoggedErrors(ZeroDivisionError)
        errors, lost = lean
        self.assertEqual(lost, [ZeroDivisionError])
        self.assertEqual(len(errors), 1)
        system, kind = errors[0]
        self.assertTrue(system.startswith("_Failing,"), system)
        self.assertIs(kind, ZeroDivisionError)
        self.assertEqual(lean, twisted)

    def test_socket_events_on_the_lean_loop(self):
        """Many connections at once on the lean loop: every byte comes back, every end is clean."""
        reactor = _fresh(True)
        self.addCleanup(_dispose, reactor)
        server, port = _listen(reactor, _Echo)
        clients = [_Client() for _ in range(50)]
        for client in clients:
            reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(lambda c=client: c))
        self.assertTrue(_run_until(reactor, lambda: len(server.lost) == 50 and all(c.lost for c in clients)))
        self.assertEqual({c.received for c in clients}, {b"hello"})
        self.assertEqual({type(r.value) for r in server.lost}, {ConnectionDone})
        _close(reactor, port)
