"""A TCP relay between one process and RabbitMQ that can stop forwarding without closing
anything: a network partition as the process sees it (sockets open, nothing arrives),
while everything else (the database, other workers) stays reachable."""

from __future__ import annotations

import selectors
import socket
import threading
from types import TracebackType

from tests.support import free_port_block


class Relay:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.port = free_port_block(1)
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._listener = socket.create_server((host, self.port))
        self._listener.settimeout(0.2)
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def url_for(self, broker_url: str) -> str:
        """The broker URL with the relay's port in place of the broker's."""
        return broker_url.replace(f":{self.upstream[1]}/", f":{self.port}/")

    def freeze(self) -> None:
        """Stop forwarding in both directions; every socket stays open."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), name="relay-pump", daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while not self._closed.is_set():
                # While frozen nothing is read, so the kernel's buffers fill and TCP's
                # window closes: the peers see silence, not an error.
                self._flowing.wait()
                for key, _ in selector.select(timeout=0.2):
                    if not self._flowing.is_set():
                        break
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    try:
                        data = source.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        for sock in peers:
                            sock.close()
                        return
                    peers[source].setblocking(True)
                    try:
                        peers[source].sendall(data)
                    except OSError:
                        for sock in peers:
                            sock.close()
                        return
                    finally:
                        if peers[source].fileno() >= 0:
                            peers[source].setblocking(False)
