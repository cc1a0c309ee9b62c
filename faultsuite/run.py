"""One phase of the suite: a private stack, many concurrent calls, faults on a schedule.

Phase "process": kill -9 workers mid-turn (a replacement starts each time), restart Redis
(quickly, and once with 3 s down so webhooks meet it gone), restart the edge. Phase "bot":
botsim answers 5 % of requests with a 500 and never answers 2 % of turns. Both use a 300 ms
bot, so faults land while turns are in flight.

Phase "relay": the same faults against relay mode (VOICE_MODE=relay, ConversationRelay sockets,
two gunicorn processes): kill -9 of the edge process holding the most sockets (the master forks
another; the calls it held reconnect through the <Connect action> to the survivor), kill -9
workers, a Redis restart. Every call must complete its script, every line answered.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import redis

from botsim.bots import GREETING
from callsim.call import CallResult, WebhookRetry, place_call
from devstack.processes import free_port
from devstack.stack import Stack, StackConfig
from faultsuite.analysis import Phrases, Tally, analyse_call, count_duplicates, relay_turn_ids
from faultsuite.caller import Caller
from faultsuite.faults import FaultInjector, FaultRecord, redis_outage
from faultsuite.redis_server import PersistentRedis
from faultsuite.transport import ConnectRetry
from shared import keys
from shared.pb import voicebridge_pb2 as pb

PHRASES = Phrases(
    hold="Please hold on, the assistant is thinking.",
    trouble="Sorry, I am having trouble right now. Please say that again.",
    fallback="Sorry, the assistant cannot answer right now.",
)
REPLY_DEADLINE_MS = 1500
BOT_TIMEOUT_MS = 4000
BOT_LATENCY_MS = 300
WEBHOOK_TIMEOUT_S = 15.0
DRAIN_S = 30.0
SETTLE_S = 2.0  # after the last call, before reading botsim's view
RECONNECT_WINDOW_S = 5.0  # a session failing this soon after an edge kill was the kill's
# FaultRecord.at_s is rounded to 10 ms, up by as much as 5 ms: a session whose socket closed a
# few ms after the kill can carry a time before it (a CI run counted no call hit so).
AT_S_ROUNDING_S = 0.01
# Shorter than the bot's latency, so a retried webhook is sent while its turn is in flight.
RETRY_AFTER_S = 0.2

Fault = Callable[[FaultInjector], Awaitable[FaultRecord]]


@dataclass
class PhaseSpec:
    name: str
    calls: int
    turns: int
    duration_s: float
    schedule: list[tuple[float, str]]  # (fraction of duration_s, fault kind)
    botsim_args: tuple[str, ...] = ()
    seed: int = 1
    # A Redis that restarts empty forgets what it held: turns written and not yet read, late
    # replies stored and not yet spoken. Such a phase reports its lost turns without failing.
    data_loss_expected: bool = False
    voice_mode: str = "gather"
    edge_workers: int = 1
    # Every call must say all its lines and hear every answer (relay: through reconnects).
    require_complete: bool = False
    # Every Nth call (gather mode) has its Gather webhooks retried as Twilio does when an answer
    # is slow (RETRY_AFTER_S, half of them with the first connection cut); 0 = none. The bot
    # must still see each line once, the caller hear each answer once.
    retry_every: int = 0


@dataclass
class PhaseResult:
    name: str
    tally: Tally
    faults: list[FaultRecord]
    elapsed_s: float
    connect_retries: int
    log_dir: str
    errors: list[str] = field(default_factory=list)
    data_loss_expected: bool = False
    require_complete: bool = False

    @property
    def incomplete(self) -> int:
        return self.tally.calls - self.tally.completed if self.require_complete else 0

    @property
    def ok(self) -> bool:
        t = self.tally
        lost = t.lost and not self.data_loss_expected
        twice = t.heard_twice
        return not (lost or t.duplicated or t.non_twiml or twice or self.incomplete or self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            **self.tally.as_dict(),
            "faults": [f.as_dict() for f in self.faults],
            "elapsed_s": round(self.elapsed_s, 1),
            "connect_retries": self.connect_retries,
            "log_dir": self.log_dir,
            "errors": self.errors,
        }


FAULTS: dict[str, Fault] = {
    "kill_worker": FaultInjector.kill_worker,
    "restart_redis": FaultInjector.restart_redis,
    "restart_edge": FaultInjector.restart_edge,
    "restart_redis_empty": FaultInjector.restart_redis_empty,
    "redis_outage": redis_outage,
    "kill_edge": FaultInjector.kill_edge_worker,
    # The outbound phase: the edge process serving one of the suite's own API requests.
    "kill_edge_api": lambda injector: injector.kill_edge_serving(os.getpid()),
}


def stack_config(spec: PhaseSpec, redis_url: str) -> StackConfig:
    relay_env = {}
    if spec.voice_mode != "gather":
        # A relay session waits REPLY_DEADLINE_MS + BOT_TIMEOUT_MS + 2 s for a turn: the edge
        # must know the workers' bot timeout.
        relay_env = {"VOICE_MODE": spec.voice_mode, "BOT_TIMEOUT_MS": str(BOT_TIMEOUT_MS)}
    return StackConfig(
        workers=2,
        edge_workers=spec.edge_workers,
        redis_url=redis_url,
        botsim_args=(
            "--latency-ms",
            str(BOT_LATENCY_MS),
            "--latency-jitter-ms",
            "100",
            "--seed",
            str(spec.seed),
            *spec.botsim_args,
        ),  # fmt: skip
        edge_env={
            "REPLY_DEADLINE_MS": str(REPLY_DEADLINE_MS),
            "MAX_SILENT_TURNS": "20",
            "HOLD_PHRASE": PHRASES.hold,
            "TROUBLE_PHRASE": PHRASES.trouble,
            "REPROMPT_PHRASE": PHRASES.reprompt,
            "GRACEFUL_TIMEOUT_S": "10",
            **relay_env,
        },
        worker_env={
            "BOT_TIMEOUT_MS": str(BOT_TIMEOUT_MS),
            "BOT_QUIET_MS": "100",
            "FALLBACK_PHRASE": PHRASES.fallback,
            "SHUTDOWN_GRACE_S": "5",
            "LOG_LEVEL": "INFO",
        },
    )


def run_phase(spec: PhaseSpec) -> PhaseResult:
    port = free_port()
    stack = Stack(stack_config(spec, f"redis://127.0.0.1:{port}/0"))
    redis_server = PersistentRedis(stack.launcher, port)
    started = time.monotonic()
    result = PhaseResult(
        spec.name,
        Tally(),
        [],
        0.0,
        0,
        stack.launcher.log_dir,
        data_loss_expected=spec.data_loss_expected,
        require_complete=spec.require_complete,
    )
    try:
        redis_server.start()
        stack.start()
        asyncio.run(_drive(spec, stack, redis_server, result))
    except Exception as exc:  # the report says what broke; the exit code fails the run
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        result.elapsed_s = time.monotonic() - started
        if result.errors or not result.ok:
            print(stack.logs())
            print(f"--- redis ---\n{redis_server.log_tail()}")
        stack.stop()
        redis_server.stop()
    return result


async def _drive(
    spec: PhaseSpec, stack: Stack, redis_server: PersistentRedis, result: PhaseResult
) -> None:
    rng = random.Random(spec.seed)
    loop_started = time.monotonic()
    injector = FaultInjector(stack, redis_server, loop_started)
    retry = ConnectRetry()
    callers = [Caller.make(i, spec.turns, rng, PHRASES.trouble, DRAIN_S) for i in range(spec.calls)]
    relay = spec.voice_mode == "relay"
    events: list[list[TimedEvent]] = [[] for _ in callers]
    for caller in callers:
        caller.track_said = relay
        caller.reprompt_phrase = PHRASES.reprompt if relay else None
    ramp_s = spec.duration_s * 0.8
    limit_s = spec.duration_s + DRAIN_S + spec.turns * (WEBHOOK_TIMEOUT_S + 2) + 60
    async with retry.session(WEBHOOK_TIMEOUT_S) as client:

        async def one_call(caller: Caller) -> CallResult:
            return await place_call(
                client,
                f"{stack.edge_url}/twilio/voice",
                account_sid=stack.config.account_sid,
                auth_token=stack.config.auth_token,
                caller=caller,
                from_number=caller.from_number,
                status_url=f"{stack.edge_url}/twilio/status",
                think_time_s=rng.uniform(0.5, 1.5),
                start_at=loop_started + ramp_s * caller.index / max(spec.calls, 1),
                max_webhooks=3 * spec.turns + 40,
                webhook_timeout_s=WEBHOOK_TIMEOUT_S,
                on_event=_recorder(caller, events[caller.index]) if relay else None,
                hold_phrase=PHRASES.hold,
                retry=_retry_of(spec, caller.index),
            )

        calls = [asyncio.create_task(one_call(c)) for c in callers]
        faults = asyncio.create_task(run_schedule(spec, injector, loop_started, result.errors))
        try:
            async with asyncio.timeout(limit_s):
                results = await asyncio.gather(*calls)
                await faults
        finally:
            for task in [*calls, faults]:
                task.cancel()
        result.faults = injector.records
        result.connect_retries = retry.connect_retries
        await asyncio.sleep(SETTLE_S)  # a reply still travelling after its caller hung up
        async with client.get(
            f"{stack.chat_url}/_botsim/turns",
            timeout=aiohttp.ClientTimeout(total=10),
            raise_for_status=True,
        ) as resp:
            bot_turns: dict[str, Any] = (await resp.json())["conversations"]
    stream = await asyncio.to_thread(_stream_turns, stack.redis_url) if relay else []
    relay_ids = relay_turn_ids(stream)
    for caller, call in zip(callers, results, strict=True):
        bot_view = bot_turns.get(call.call_sid)
        ids = relay_ids.get(call.call_sid)
        analyse_call(caller, call, PHRASES, bot_view, result.tally, ids)
    count_duplicates(bot_turns, result.tally)
    if relay:
        _attach_timelines(result.tally, callers, results, events, loop_started)
        for record in result.faults:
            if record.kind == "kill -9 edge process":
                _edge_recovery(record, loop_started, events)


TimedEvent = tuple[float, tuple[str, ...]]


def _retry_of(spec: PhaseSpec, index: int) -> WebhookRetry | None:
    if not spec.retry_every or spec.voice_mode != "gather" or index % spec.retry_every:
        return None
    # Alternate: the first attempt cut (Twilio's read timeout) or left waiting unanswered.
    return WebhookRetry(after_s=RETRY_AFTER_S, cut_first=(index // spec.retry_every) % 2 == 0)


def _recorder(caller: Caller, into: list[TimedEvent]) -> Callable[[tuple[str, ...]], None]:
    def on_event(event: tuple[str, ...]) -> None:
        into.append((time.monotonic(), event))
        caller.on_event(event)

    return on_event


def _attach_timelines(
    tally: Tally,
    callers: list[Caller],
    results: list[CallResult],
    events: list[list[TimedEvent]],
    started: float,
) -> None:
    """A relay call's problem carries what callsim saw of it (seconds since the phase began):
    enough to tell a prompt the killed process took with it from a reply the edge dropped."""
    by_sid = {
        call.call_sid: events[caller.index] for caller, call in zip(callers, results, strict=True)
    }
    for problem in tally.problems:
        timeline = by_sid.get(problem.get("call_sid", ""))
        if timeline is not None and "timeline" not in problem:
            problem["timeline"] = [
                (round(t - started, 3), *(str(x)[:80] for x in e))
                for t, e in timeline
                if e[0] not in ("bot_token",)
            ]


def _stream_turns(redis_url: str) -> list[tuple[str, str, str]]:
    """(call_sid, text, turn_id) of every speech turn still in the stream."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5.0)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.TURN_STREAM))
    finally:
        client.close()
    turns = (pb.TurnRequest.FromString(fields[keys.TURN_FIELD]) for _, fields in entries)
    return [(t.call_sid, t.text, t.turn_id) for t in turns if t.kind == pb.TurnRequest.SPEECH]


def _is_answer(text: str) -> bool:
    return "You said: " in text or GREETING in text


def _edge_recovery(
    record: FaultRecord, loop_started: float, events: list[list[TimedEvent]]
) -> None:
    """calls_hit: calls whose session failed within RECONNECT_WINDOW_S of the kill;
    answered_s: from the kill until the last of them that still had a turn to go heard an
    answer in its new session (a call hit while hanging up has none: a line it never got an
    answer to is counted lost anyway)."""
    killed_at = loop_started + record.at_s
    hit, worst = 0, None
    for timeline in events:
        failed = next(
            (
                i
                for i, (t, e) in enumerate(timeline)
                if e[:2] == ("relay_end", "failed")
                and -AT_S_ROUNDING_S <= t - killed_at <= RECONNECT_WINDOW_S
            ),
            None,
        )
        if failed is None:
            continue
        hit += 1
        answered = next(
            (
                t
                for t, e in timeline[failed + 1 :]
                if e[0] == "bot_reply" and len(e) > 1 and _is_answer(e[1])
            ),
            None,
        )
        if answered is not None:
            worst = max(worst or 0.0, answered - killed_at)
    record.calls_hit = hit
    record.answered_s = None if worst is None else round(worst, 2)


async def run_schedule(
    spec: PhaseSpec, injector: FaultInjector, started: float, errors: list[str]
) -> None:
    for fraction, kind in sorted(spec.schedule):
        delay = started + fraction * spec.duration_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            record = await FAULTS[kind](injector)
        except Exception as exc:
            errors.append(f"fault {kind} failed: {type(exc).__name__}: {exc}")
            continue
        print(
            f"[{record.at_s:6.1f}s] {record.kind}: pending {record.pending}"
            f"{'' if record.mid_turn else ' (nothing in flight)'}, back in {record.took_s:.1f}s"
            + (
                f", a turn answered {record.answered_s:.1f}s after it"
                if record.answered_s is not None
                else ""
            ),
            flush=True,
        )
