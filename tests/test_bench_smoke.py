"""The benchmark suite runs end to end at tiny sizes and writes its JSON (figures unchecked:
a benchmark is not a test: docs/architecture.md, "How fast, and how we know")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    latest = json.loads((out / "latest.json").read_text())
    assert len(list(out.glob("bench-*.json"))) == 1
    assert {"meta", "floors", "pipeline", "holding", "scaling", "deadline", "targets"} <= set(
        latest
    )
    assert {"hops", "http"} <= set(latest["floors"])
    assert {"redis", "grpc", "bot"} <= set(latest["floors"]["hops"])
    assert {"latency", "throughput"} <= set(latest["pipeline"])
    assert {"steps", "largest_clean"} <= set(latest["holding"])
    assert "capacity" in latest["scaling"]
    assert "over_deadline_ms" in latest["deadline"]
    names = [t["name"] for t in latest["targets"]]
    assert len(names) == 6
    for target in latest["targets"]:
        assert {"figure", "limit", "ratio", "verdict"} <= set(target)
        assert target["verdict"] in ("PASS", "MISS", "n/a")
    assert "TARGET" in done.stdout
