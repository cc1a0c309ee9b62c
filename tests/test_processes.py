"""Process-level behaviour: entry points, config errors, generated stubs, several edge processes,
ENABLED=false."""

from __future__ import annotations

import asyncio
import filecmp
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp

from callsim.call import place_call
from devstack.stack import Stack, StackConfig
from edge.settings import DEFAULT_UNAVAILABLE
from tests.helpers import Http, call, start_stack

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    for name in ["voicebridge_pb2.py", "voicebridge_pb2.pyi", "voicebridge_pb2_grpc.py"]:
        assert filecmp.cmp(
            tmp_path / "shared" / "pb" / name, ROOT / "shared" / "pb" / name, shallow=False
        ), f"{name} is stale: run `make protos`"


def test_bad_config_stops_with_a_message_naming_the_variable() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PUBLIC_URL": "https://v.example.com",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "t",
        "EDGE_PORT": "http",
    }
    edge = subprocess.run(
        [sys.executable, "-m", "edge"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert edge.returncode == 2
    assert "EDGE_PORT" in edge.stderr
    worker = subprocess.run(
        [sys.executable, "-m", "worker"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 2
    assert "BOTPRESS_WEBHOOK_ID" in worker.stderr


async def _calls(stack: Stack, n: int) -> list[list[str]]:
    async def one(client: aiohttp.ClientSession, i: int) -> list[str]:
        result = await place_call(
            client,
            f"{stack.edge_url}/twilio/voice",
            account_sid=stack.config.account_sid,
            auth_token=stack.config.auth_token,
            caller=[f"caller {i} turn {t}" for t in range(3)],
        )
        return result.bot_said()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        return list(await asyncio.gather(*(one(client, i) for i in range(n))))


async def test_replies_reach_the_waiting_process_with_several_edge_processes() -> None:
    stack = start_stack(StackConfig(edge_workers=3, workers=2, worker_env={"BOT_QUIET_MS": "50"}))
    try:
        results = await _calls(stack, 30)
    finally:
        stack.stop()
    for i, said in enumerate(results):
        assert said[1:] == [f"You said: caller {i} turn {t}" for t in range(3)], said


async def test_disabled_line_says_unavailable_and_hangs_up() -> None:
    stack = start_stack(StackConfig(workers=0, edge_env={"ENABLED": "false"}))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
            result = await place_call(
                client,
                f"{stack.edge_url}/twilio/voice",
                account_sid=stack.config.account_sid,
                auth_token=stack.config.auth_token,
                caller=["hello"],
            )
        body = result.webhooks[0].body
    finally:
        stack.stop()
    root = ET.fromstring(body)
    assert [el.tag for el in root] == ["Say", "Hangup"]
    assert root.find("Say").text == DEFAULT_UNAVAILABLE


async def test_metrics_and_health_endpoints(stack: Stack) -> None:
    await call(stack, ["metrics please", "bye"])
    async with Http(stack.edge_url) as edge:
        ready = await edge.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "grpc": True, "redis": True}
        assert (await edge.get("/healthz")).status_code == 200
        text = (await edge.get("/metrics")).text
    answered = [
        ln
        for ln in text.splitlines()
        if ln.startswith('voicebridge_turn_latency_seconds_count{outcome="answered"}')
    ]
    assert answered and float(answered[0].split()[-1]) >= 2
    assert 'voicebridge_webhooks_total{route="voice",status="200"}' in text
    worker_port = stack.workers[0].env["WORKER_METRICS_PORT"]
    async with Http(f"http://127.0.0.1:{worker_port}") as worker:
        worker_text = (await worker.get("/metrics")).text
    assert "voicebridge_worker_turns_total" in worker_text
    assert "voicebridge_stream_lag" in worker_text


async def test_behind_a_tls_proxy_with_a_path_prefix_signatures_use_public_url() -> None:
    # Twilio calls https://voice.example.com/vb/...; the proxy strips /vb and speaks plain HTTP
    # to the edge. Signatures and every action URL use PUBLIC_URL.
    stack = start_stack(
        StackConfig(
            workers=1, public_url="https://voice.example.com/vb", worker_env={"BOT_QUIET_MS": "50"}
        )
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
            result = await place_call(
                client,
                f"{stack.edge_url}/twilio/voice",
                account_sid=stack.config.account_sid,
                auth_token=stack.config.auth_token,
                caller=["through the proxy", "bye"],
                signing_base="https://voice.example.com/vb",
            )
        assert result.webhooks[0].url == "https://voice.example.com/vb/twilio/voice"
        gather = ET.fromstring(result.webhooks[0].body).find("Gather")
        assert gather is not None
        assert gather.get("action", "").startswith(
            "https://voice.example.com/vb/twilio/gather?turn=1"
        )
        said = result.bot_said()
    finally:
        stack.stop()
    assert said[1:] == ["You said: through the proxy", "Goodbye!"]


def test_worker_liveness_check_and_grpc_health(stack: Stack) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    worker = stack.workers[0]
    env = {"PATH": "/usr/bin:/bin", **worker.env}
    ok = subprocess.run(
        [sys.executable, "-m", "worker", "--check"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "worker", "--check"],
        env={**env, "WORKER_NAME": "never-started"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1

    # The edge's reply server also answers the standard gRPC health service.
    assert stack.edge is not None
    ready = [ln for ln in stack.edge.log_tail(400).splitlines() if "replies on gRPC" in ln]
    address = ready[-1].split("replies on gRPC ")[-1].strip().strip('"}').split('"')[0]

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="voicebridge.v1.EdgeReplies"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
