"""Run botsim as a real process from tests: `with spawn_botsim() as sim: sim.base_url`.

Waits on `GET /hello` (never a fixed sleep) and stops the process with SIGTERM.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .server import DEFAULT_WEBHOOK_ID

_LISTENING_RE = re.compile(r"botsim listening on (http://\S+?:\d+)/")
# The local process, never through an environment proxy.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class BotsimProcess:
    proc: subprocess.Popen[str]
    root_url: str

    def url_for(self, webhook_id: str = DEFAULT_WEBHOOK_ID) -> str:
        return f"{self.root_url}/{webhook_id}"

    @property
    def base_url(self) -> str:
        return self.url_for(DEFAULT_WEBHOOK_ID)

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_botsim(*args: str, startup_timeout_s: float = 20.0) -> BotsimProcess:
    """Start `python -m botsim --port 0 ARGS...` and wait until it answers /hello."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "botsim", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first line is the listening line, or EOF on failure
    match = _LISTENING_RE.search(line)
    if not match:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"botsim did not start (exit {proc.returncode}): {line!r}")
    sim = BotsimProcess(proc, match.group(1))
    deadline = time.monotonic() + startup_timeout_s
    while True:
        try:
            with _direct.open(f"{sim.base_url}/hello", timeout=1.0) as resp:
                if resp.status == 200:
                    return sim
        except (OSError, http.client.HTTPException):  # not up yet (urllib's errors are OSErrors)
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sim.stop()
            raise RuntimeError("botsim did not answer /hello")
        time.sleep(0.02)


@contextmanager
def spawn_botsim(*args: str) -> Iterator[BotsimProcess]:
    sim = start_botsim(*args)
    try:
        yield sim
    finally:
        sim.stop()
