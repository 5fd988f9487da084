"""A TCP proxy to the Docker engine's unix socket, to simulate "the engine is lost".

The system dockerd serves everyone on the machine (other test sessions, CI), so the tests
never stop or restart it. A worker started with ``DOCKER_HOST=tcp://127.0.0.1:<port>``
reaches the engine only through this proxy; :meth:`EngineProxy.cut` closes every open
connection and refuses new ones, which that worker sees exactly as an engine that went away
(connections reset, streams broken mid-read). :meth:`EngineProxy.restore` brings it back.
Containers keep running on the real engine meanwhile, as they do when only the daemon's API
is unreachable (a dockerd restart with ``live-restore``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from urllib.parse import urlparse

__all__ = ["EngineProxy", "engine_socket"]


def engine_socket() -> str:
    """The path of the real engine's unix socket (``DOCKER_HOST`` or the default)."""
    url = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    parsed = urlparse(url)
    if parsed.scheme not in ("unix", ""):
        raise RuntimeError(f"the engine proxy needs a unix-socket DOCKER_HOST, not {url}")
    return parsed.path


class EngineProxy:
    """Forwards ``127.0.0.1:<port>`` to the engine's unix socket until cut."""

    def __init__(self, target: str | None = None) -> None:
        self.target = target or engine_socket()
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0
        self.is_cut = False

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> EngineProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return  # closed
            if self.is_cut:  # the engine is gone: reset the connection at once
                _reset(downstream)
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                _reset(downstream)
                continue
            with self._lock:
                self._open |= {downstream, upstream}
                self.connections += 1
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """The engine is gone: break every open connection and reset new ones.

        The listener stays bound (a port given up could not always be bound again while
        the broken connections linger), so the address survives the outage.
        """
        with self._lock:
            self.is_cut = True
            sockets, self._open = self._open, set()
        for sock in sockets:
            _reset(sock)

    def restore(self) -> None:
        """The engine is back, on the same address."""
        self.is_cut = False

    def close(self) -> None:
        self.cut()
        if self._listener is not None:
            self._listener.close()
            self._listener = None


def _reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a dead peer's kernel would answer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
