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
        timeout=420,  # about 3 min on an idle 2-core box, relay parts included
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    latest = json.loads((out / "latest.json").read_text())
    assert len(list(out.glob("bench-*.json"))) == 1
    parts = {"floors", "pipeline", "botmix", "holding", "scaling", "deadline", "overload"}
    relay_parts = {"relay_floors", "relay_pipeline", "relay_mix", "relay_holding"}
    assert {"meta", "targets"} | parts | relay_parts <= set(latest)
    assert {"hops", "http"} <= set(latest["floors"])
    assert {"redis", "grpc", "bot"} <= set(latest["floors"]["hops"])
    assert {"latency", "throughput", "window_0"} <= set(latest["pipeline"])
    # Default settings everywhere, window 0 (BOT_QUIET_MS=0) only where labelled so.
    assert latest["pipeline"]["settings"] == "default"
    assert latest["pipeline"]["window_0"]["worker_env"] == {"BOT_QUIET_MS": "0"}
    for part in (parts | relay_parts) - {"floors", "relay_floors"}:
        assert "BOT_QUIET_MS" not in latest[part]["worker_env"], part
    # Relay mode: each relay stack's edge sets VOICE_MODE and nothing else.
    assert {"round_trip_ms", "back_to_back_ms"} <= set(latest["relay_floors"]["ws"])
    assert "hops" not in latest["relay_floors"]  # the floors part's hops are shared
    rmix = latest["relay_mix"]
    for relay_part in (
        latest["relay_pipeline"],
        latest["relay_holding"],
        rmix["relay"],
        rmix["interrupt"],
    ):
        assert relay_part["edge_env"] == {"VOICE_MODE": "relay"}
    assert "VOICE_MODE" not in latest["holding"]["edge_env"]
    assert latest["relay_pipeline"]["turns"] > 0
    assert latest["relay_pipeline"]["first_token_ms"]["count"] > 0
    assert {"first_token_ms", "first_turns"} <= set(rmix["relay"])
    assert {"answer_ms", "two_messages"} <= set(rmix["gather"])
    assert rmix["interrupt"]["interrupts"] > 0  # the barge-ins cut replies off
    assert rmix["interrupt"]["tokens_after_interrupt"] is not None
    assert latest["relay_holding"]["steps"][0]["relay"]["cycles"] > 0
    assert {"one", "two", "question"} <= set(latest["botmix"]["bots"])
    two = latest["botmix"]["bots"]["two"]["two_messages"]
    assert {"first_turns", "learned", "second_messages_lost"} <= set(two)
    assert two["first_messages_said"] > 0  # the markers were found in the answers
    steps = latest["overload"]["steps"]
    assert [s["factor"] for s in steps] == [1.0, 2.0]
    assert all(
        {"offered_turns_per_s", "goodput_turns_per_s", "hold_share_pct"} <= set(s) for s in steps
    )
    assert {"steps", "largest_clean"} <= set(latest["holding"])
    assert "capacity" in latest["scaling"]
    assert "over_deadline_ms" in latest["deadline"]
    names = [t["name"] for t in latest["targets"]]
    assert len(names) == 16
    assert sum(name.startswith("relay") for name in names) == 6
    for target in latest["targets"]:
        assert {"figure", "limit", "ratio", "verdict"} <= set(target)
        assert target["verdict"] in ("PASS", "MISS", "n/a")
    assert "TARGET" in done.stdout
