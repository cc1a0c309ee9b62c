"""Calls survive faults: a killed worker, Redis down, graceful shutdowns, dead letters."""

from __future__ import annotations

import signal
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from urllib.parse import urlencode

import grpc
import pytest
import redis

from callsim.signing import sign
from devstack.processes import Managed
from devstack.stack import Stack
from edge.replies import ReplyWaiters, create_grpc_server
from edge.settings import DEFAULT_TROUBLE
from shared import keys
from shared.pb import voicebridge_pb2 as pb
from shared.pb import voicebridge_pb2_grpc as pb_grpc
from shared.rpc import TOKEN_METADATA_KEY
from tests.helpers import Response, call, fetch, wait_for
from worker.settings import DEFAULT_FALLBACK


def _bot_messages_with_turn(
    stack: Stack, rdb: redis.Redis, from_number: str, sid: str, turn_id: str
) -> int:
    """How many user messages carrying this turnId Botpress (botsim) received."""
    key = rdb.get(keys.caller_key("tel-" + from_number.lstrip("+")))
    if not key:
        return 0
    resp = fetch(
        f"{stack.chat_url}/conversations/{sid}/messages",
        headers={"x-user-key": key.decode()},
        timeout_s=5,
    )
    if resp.status_code != 200:
        return 0
    return sum(
        1
        for m in resp.json()["messages"]
        if ((m.get("metadata") or {}).get("voicebridge") or {}).get("turnId") == turn_id
    )


async def test_a_turn_reclaimed_from_a_killed_worker_reaches_the_bot_once(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack = new_stack(
        workers=1,
        botsim_args=("--latency-ms", "1500"),
        edge_env={"REPLY_DEADLINE_MS": "1000"},
        worker_env={"VISIBILITY_TIMEOUT_MS": "1000", "BOT_QUIET_MS": "50"},
    )
    rdb = redis_for(stack)
    sid, number = "CA" + "8" * 32, "+14155550808"
    turn_id = f"{sid}:1"

    def kill_mid_turn() -> None:
        wait_for(lambda: _bot_messages_with_turn(stack, rdb, number, sid, turn_id) == 1)
        stack.workers[0].kill()  # SIGKILL: no chance to finish or ack
        stack.start_worker()

    killer = threading.Thread(target=kill_mid_turn)
    heard_all: list[str] = []

    def caller(heard: Sequence[str]) -> str | None:
        heard_all.extend(heard)
        if not killer.ident:
            killer.start()
            return "hello"
        if "You said: hello" in " ".join(heard_all):
            return "bye"
        # Late (bot 1.5 s > deadline 1 s, plus the reclaim): stay silent until a reply is kept.
        wait_for(lambda: rdb.exists(keys.late_replies(sid)) == 1)
        return None

    result = await call(stack, caller, call_sid=sid, from_number=number)
    killer.join(5)
    said = " ".join(result.bot_said())
    assert said.count("You said: hello") == 1  # finished by the second worker
    assert result.transcript[-1] == ("hangup",)
    assert _bot_messages_with_turn(stack, rdb, number, sid, turn_id) == 1


def test_a_turn_delivered_too_often_is_dead_lettered_with_an_apology(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack = new_stack(
        workers=0, worker_env={"VISIBILITY_TIMEOUT_MS": "1000", "MAX_DELIVERIES": "1"}
    )
    rdb = redis_for(stack)
    rdb.xgroup_create(keys.TURN_STREAM, keys.WORKER_GROUP, id="0", mkstream=True)
    sid = "CA" + "9" * 32
    turn = pb.TurnRequest(
        turn_id=f"{sid}:0",
        call_sid=sid,
        seq=0,
        kind=pb.TurnRequest.CALL_START,
        from_number="+14155550909",
    )
    rdb.xadd(keys.TURN_STREAM, {keys.TURN_FIELD: turn.SerializeToString()})
    # A consumer that dies right after reading: the entry stays pending, delivered once.
    rdb.xreadgroup(keys.WORKER_GROUP, "ghost", {keys.TURN_STREAM: ">"}, count=1)
    stack.start_worker()
    wait_for(lambda: rdb.xlen(keys.DEAD_LETTER_STREAM) == 1)
    wait_for(lambda: rdb.xpending(keys.TURN_STREAM, keys.WORKER_GROUP)["pending"] == 0)
    ((_, fields),) = rdb.xrange(keys.DEAD_LETTER_STREAM)
    assert pb.TurnRequest.FromString(fields[keys.TURN_FIELD]).turn_id == turn.turn_id
    # Nobody waits for it, so the apology is kept for the call's next webhook.
    late = [pb.TurnReply.FromString(r) for r in rdb.lrange(keys.late_replies(sid), 0, -1)]
    assert [r.say for r in late] == [[DEFAULT_FALLBACK]]


def _post_voice(stack: Stack, sid: str) -> Response:
    form = {
        "CallSid": sid,
        "AccountSid": stack.config.account_sid,
        "From": "+14155550100",
        "To": "+14155550199",
        "CallStatus": "ringing",
    }
    url = f"{stack.public_url}/twilio/voice"
    return fetch(
        f"{stack.edge_url}/twilio/voice",
        method="POST",
        body=urlencode(form).encode(),
        timeout_s=20,
        headers={
            "X-Twilio-Signature": sign(url, form, stack.config.auth_token),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


async def test_redis_down_is_spoken_and_everything_recovers(
    new_stack: Callable[..., Stack],
) -> None:
    stack = new_stack(workers=1, worker_env={"BOT_QUIET_MS": "50"})
    answers: list[Response] = []
    stack.restart_redis(down=lambda: answers.append(_post_voice(stack, "CA" + "a1" * 16)))
    resp = answers[0]
    assert resp.status_code == 200
    root = ET.fromstring(resp.text)
    assert root.find("Say").text == DEFAULT_TROUBLE
    assert root.find("Redirect").text == f"{stack.public_url}/twilio/voice"
    # Same processes, no restart: edge and worker reconnect on their own.
    result = await call(stack, ["back again", "bye"])
    assert result.bot_said()[1:] == ["You said: back again", "Goodbye!"]


def _in_flight(rdb: redis.Redis) -> bool:
    try:
        return rdb.xpending(keys.TURN_STREAM, keys.WORKER_GROUP)["pending"] >= 1
    except redis.ResponseError:  # the worker has not created the group yet
        return False


def _sigterm_mid_turn(
    new_stack: Callable[..., Stack],
    redis_for: Callable[[Stack], redis.Redis],
    pick: Callable[[Stack], Managed],
    sid: str,
) -> tuple[Stack, Managed, Response]:
    """A call's first turn with a 1.5 s bot; SIGTERM `pick(stack)` while the turn is in flight."""
    stack = new_stack(
        workers=1,
        botsim_args=("--latency-ms", "1500"),
        edge_env={"REPLY_DEADLINE_MS": "8000"},
        worker_env={"BOT_QUIET_MS": "50"},
    )
    rdb = redis_for(stack)
    target = pick(stack)

    def stop_mid_turn() -> None:
        wait_for(lambda: _in_flight(rdb))
        target.proc.send_signal(signal.SIGTERM)

    stopper = threading.Thread(target=stop_mid_turn)
    stopper.start()
    resp = _post_voice(stack, sid)
    stopper.join(10)
    return stack, target, resp


def test_worker_sigterm_finishes_the_turn_in_flight(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    stack, worker, resp = _sigterm_mid_turn(
        new_stack, redis_for, lambda s: s.workers[0], "CA" + "b2" * 16
    )
    assert resp.status_code == 200
    assert "Hello! I am the echo bot" in resp.text  # the reply, not a hold phrase
    assert worker.proc.wait(30) == 0
    rdb = redis_for(stack)
    assert rdb.xpending(keys.TURN_STREAM, keys.WORKER_GROUP)["pending"] == 0


def _edge(stack: Stack) -> Managed:
    assert stack.edge is not None
    return stack.edge


def test_edge_sigterm_answers_the_waiting_webhook_before_exiting(
    new_stack: Callable[..., Stack], redis_for: Callable[[Stack], redis.Redis]
) -> None:
    _, edge, resp = _sigterm_mid_turn(new_stack, redis_for, _edge, "CA" + "c3" * 16)
    assert resp.status_code == 200
    assert ET.fromstring(resp.text).find("Gather") is not None
    assert edge.proc.wait(30) == 0


async def test_grpc_reply_port_refuses_callers_without_the_token() -> None:
    waiters = ReplyWaiters()
    server, port = await create_grpc_server(waiters, "127.0.0.1", "the-token")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EdgeRepliesStub(channel)
            fut = waiters.expect("CA1:1")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Deliver(pb.TurnReply(turn_id="CA1:1"), timeout=5)
            ack = await stub.Deliver(
                pb.TurnReply(turn_id="CA1:1"),
                timeout=5,
                metadata=((TOKEN_METADATA_KEY, "the-token"),),
            )
            assert fut.done() and fut.result().turn_id == "CA1:1"
    finally:
        await server.stop(0)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ack.accepted
