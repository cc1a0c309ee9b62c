"""A private redis-server whose stream survives a restart: AOF with an fsync on every write.

Started through devstack's Launcher (its log lands next to the stack's), stopped with SIGTERM
(Redis flushes the AOF and exits) and started again on the same port and directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from devstack.processes import Launcher, Managed, find_redis_server, free_port, wait_until

START_TIMEOUT_S = 20.0


class PersistentRedis:
    def __init__(self, launcher: Launcher, port: int | None = None) -> None:
        self._launcher = launcher
        self.port = port or free_port()
        self.data_dir = tempfile.mkdtemp(prefix="redis-aof-", dir=launcher.log_dir)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.managed: Managed | None = None

    def start(self) -> None:
        argv = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", self.data_dir,
            "--protected-mode", "no",
        ]  # fmt: skip
        self.managed = self._launcher.spawn("redis", argv, {})
        wait_until(self._pong, START_TIMEOUT_S, "redis-server", self.managed.proc)

    def stop(self) -> None:
        if self.managed is not None:
            self.managed.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self) -> None:
        """While stopped: forget everything, as a Redis without persistence restarts (or a
        failover to a replica that had not caught up)."""
        for name in os.listdir(self.data_dir):
            path = os.path.join(self.data_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    def log_tail(self, lines: int = 40) -> str:
        return self.managed.log_tail(lines) if self.managed is not None else ""

    def _pong(self) -> bool:
        # Still loading the AOF answers -LOADING: not ready yet.
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
