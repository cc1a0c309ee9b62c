"""The official @botpress/chat client (node) against a botsim process.

Skipped only when `node` is absent; with node present, a failing `npm install` fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from botsim.testing import spawn_botsim

HERE = Path(__file__).parent / "conformance"
ENC_KEY = "conformance-encryption-key-long-enough-0123456789"


def _ensure_npm_install(npm: str) -> None:
    if (HERE / "node_modules" / "@botpress" / "chat" / "package.json").exists():
        return
    subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=240)


def test_official_client_against_botsim() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the conformance run needs node + npm")
    npm = shutil.which("npm")
    assert npm is not None, "node is installed but npm is not"
    _ensure_npm_install(npm)
    with spawn_botsim("--encryption-key", ENC_KEY) as sim:
        done = subprocess.run(
            [node, "run.mjs", sim.url_for("conformance"), ENC_KEY],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "conformance: all checks passed" in done.stdout
