"""Relay mode (VOICE_MODE=relay, Twilio ConversationRelay) measured beside gather mode, in the
same run and at the same default settings: each relay stack sets the edge's VOICE_MODE and
nothing else (bench.scenarios' stacks otherwise).

- relay_pipeline: time to first token at 1 caller, instant bot (the floor target's relay side);
- relay_mix: a bot that answers in two messages 500 ms apart (two_messages_500ms.json): relay's
  first token against gather's answer (gather on a stack of its own, same bot); then the same
  bot with callers who cut in after the first token (`barge:1:...`), counting the interrupted
  replies' tokens sent after the interrupt (callsim's ping fence: callsim.relay);
- relay_holding: bench.scenarios.holding with relay sessions.

Talk cycles are timed by callsim from their trigger's scheduled time (the prompt, the setup).
The 1-caller runs (and relay stacks' warm-up) drive calls through callsim's place_call in this
process, which hands every talk cycle over (its trigger, first token, end and text); the loads
go through bench.loadgen like gather's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import loadgen
from bench.scenarios import (
    MARKERS,
    SCENARIOS,
    WINDOW_SYNC_PAUSE_S,
    bad,
    holding,
    load_on,
    logged_windows,
    pcts,
    running,
    settings,
    summary,
    two_message_figures,
)
from bench.sizes import Sizes
from callsim import Script, TalkCycle, place_call
from devstack.stack import Stack, StackConfig

RELAY = {"VOICE_MODE": "relay"}
#: The edge's REPLY_DEADLINE_MS default (edge/settings.py): a relay turn whose first token
#: comes this late is the hold phrase, a missed deadline.
DEADLINE_MS = 6000.0
TWO_500 = "two_messages_500ms.json"  # "Part one: ...", then "Part two: ..." 500 ms later
#: Each caller says "hello", then talks over the first token of the reply to it.
INTERRUPT_SCRIPT = ("hello", "barge:1:stop that")


def relay_settings(worker_env: dict[str, str]) -> dict[str, Any]:
    return {**settings(worker_env), "voice_mode": "relay", "edge_env": dict(RELAY)}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass
class Cycle:
    trigger: str
    first_ms: float | None
    end_ms: float | None
    text: str
    interrupted: bool


@dataclass
class CallsRun:
    """What calls() saw: every talk cycle in order, and the protocol's health."""

    cycles: list[Cycle] = field(default_factory=list)
    protocol_errors: int = 0
    tokens_after_interrupt: int = 0
    tokens_after_interrupt_texts: list[str] = field(default_factory=list)  # the first few
    session_ends: Counter[str] = field(default_factory=Counter)  # relay_end events by status
    outcomes: Counter[str] = field(default_factory=Counter)  # calls that ended before the cut

    def health(self) -> dict[str, Any]:
        return {
            "protocol_errors": self.protocol_errors,
            "tokens_after_interrupt": self.tokens_after_interrupt,
            "tokens_after_interrupt_texts": self.tokens_after_interrupt_texts,
            "session_ends": dict(self.session_ends),
            "outcomes_before_the_cut": dict(self.outcomes),
        }


def calls(
    stack: Stack, n: int, script: tuple[str, ...], think_s: float, duration_s: float
) -> CallsRun:
    """n relay calls through the edge at once, `script` cycled, for duration_s.

    Then the callers hang up at once (the calls are cancelled): a callsim caller who hangs up
    first hears out every reply Twilio would still be speaking (callsim.relay), and at a 0.1 s
    think time it queues replies far faster than they are spoken (1.2 s for "You said: hello"),
    so that wait would outlast the run."""
    run = CallsRun()

    def on_cycle(c: TalkCycle) -> None:
        run.cycles.append(Cycle(c.trigger, c.first_token_ms, c.complete_ms, c.text, c.interrupted))

    def on_event(event: tuple[str, ...]) -> None:
        kind = event[0]
        if kind == "protocol_error":
            run.protocol_errors += 1
        elif kind == "token_after_interrupt":
            run.tokens_after_interrupt += 1
            if len(run.tokens_after_interrupt_texts) < 20:
                run.tokens_after_interrupt_texts.append(event[1] if len(event) > 1 else "")
        elif kind == "relay_end":
            run.session_ends[event[1] if len(event) > 1 else ""] += 1

    async def go() -> None:
        steps = [script[i % len(script)] for i in range(10_000)]
        async with aiohttp.ClientSession(trust_env=False) as client:
            tasks = [
                asyncio.create_task(
                    place_call(
                        client,
                        f"{stack.edge_url}/twilio/voice",
                        account_sid=stack.config.account_sid,
                        auth_token=stack.config.auth_token,
                        caller=Script(steps),
                        from_number=f"+1555{i:07d}",
                        signing_base=stack.public_url,
                        status_url=f"{stack.edge_url}/twilio/status",
                        think_time_s=think_s,
                        on_event=on_event,
                        on_cycle=on_cycle,
                    )
                )
                for i in range(n)
            ]
            await asyncio.wait(tasks, timeout=duration_s)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is None:
                    run.outcomes[task.result().outcome] += 1
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(go())
    return run


def warm_up_relay(stack: Stack, sizes: Sizes) -> None:
    """As bench.scenarios.warm_up, with relay calls; not measured."""
    if sizes.warm_up_s:
        calls(stack, 10, ("hello",), 0.05, max(sizes.warm_up_s, 3.0))
        time.sleep(WINDOW_SYNC_PAUSE_S)


def _cycle_figures(cycles: list[Cycle]) -> dict[str, Any]:
    return {
        "first_token_ms": pcts([c.first_ms for c in cycles if c.first_ms is not None]),
        "cycle_end_ms": pcts([c.end_ms for c in cycles if c.end_ms is not None]),
    }


# -- relay_pipeline: instant bot, 1 caller ------------------------------------------------------
def pipeline(sizes: Sizes, edge_workers: int, workers: int) -> dict[str, Any]:
    config = StackConfig(edge_workers=edge_workers, workers=workers, edge_env=dict(RELAY))
    think = sizes.one_caller_think_s
    with running(config) as stack:
        warm_up_relay(stack, sizes)
        run = calls(stack, 1, ("hello",), think, sizes.latency_duration_s)
        # For reference (where the time goes): the same caller with no think time, so that
        # no process of the stack falls idle between turns.
        hot = calls(stack, 1, ("hello",), 0.0, sizes.latency_duration_s / 2)
    prompts = [c for c in run.cycles if c.trigger == "prompt"]
    hot_prompts = [c for c in hot.cycles if c.trigger == "prompt"]
    return {
        **relay_settings(config.worker_env),
        "callers": 1,
        "think_time_s": think,
        "bot": "echo (botsim's default bot), instant",
        "turns": len(prompts),
        **_cycle_figures(prompts),  # the greeting (setup) cycle is not a turn's answer
        "echoed": sum("hello" in _norm(c.text) for c in prompts),
        "call": run.health(),
        "no_think_reference": {
            "think_time_s": 0.0,
            "turns": len(hot_prompts),
            **_cycle_figures(hot_prompts),
            "call": hot.health(),
        },
    }


# -- relay_mix: two messages 500 ms apart, relay vs gather; then interrupts ---------------------
def mix(sizes: Sizes, edge_workers: int, workers: int) -> dict[str, Any]:
    args = ("--scenario", str(SCENARIOS / TWO_500))
    n, think, duration = sizes.mix_learn_turns, sizes.mix_think_s, sizes.mix_two_duration_s
    out: dict[str, Any] = {
        **settings({}),
        "bot": TWO_500,
        "callers": 1,
        "think_time_s": think,
        "duration_s": duration,
        "learn_turns": n,
    }
    # Relay: no warm-up, like the bot mix (the first turns are the learning ones, apart).
    relay_config = StackConfig(
        edge_workers=edge_workers, workers=workers, botsim_args=args, edge_env=dict(RELAY)
    )
    with running(relay_config) as stack:
        run = calls(stack, 1, ("hello",), think, duration)
        windows = logged_windows(stack)
    prompts = [c for c in run.cycles if c.trigger == "prompt"]
    learned = prompts[n:]
    out["relay"] = {
        **relay_settings(relay_config.worker_env),
        "turns": len(prompts),
        **_cycle_figures(learned),
        "first_turns": _cycle_figures(prompts[:n]),
        # what the caller heard first: the turn's own first message, or a late one of an
        # earlier turn spoken ahead of it (its first token is then not this turn's)
        "led_by_own_first_message": sum(_norm(c.text).startswith("part one") for c in learned),
        "both_messages_in_cycle": sum(
            "part one" in _norm(c.text) and "part two" in _norm(c.text) for c in learned
        ),
        "quiet_window_logged": windows,
        "call": run.health(),
    }
    gather_config = StackConfig(edge_workers=edge_workers, workers=workers, botsim_args=args)
    with running(gather_config) as stack:
        result = loadgen.run(load_on(stack, 1, think, duration, markers=MARKERS))
        windows = logged_windows(stack)
    ms = [m for _, m, _ in sorted(result.samples)]
    out["gather"] = {
        **settings(gather_config.worker_env),
        "answer_ms": pcts(ms[n:]),
        "first_turns_answer_ms": pcts(ms[:n]),
        "two_messages": two_message_figures(result, n),
        "quiet_window_logged": windows,
        "run": summary(result, misses=bad(result)),
    }
    out["interrupt"] = interrupts(sizes, edge_workers, workers, args)
    return out


def interrupts(
    sizes: Sizes, edge_workers: int, workers: int, botsim_args: tuple[str, ...]
) -> dict[str, Any]:
    """Callers who talk over each second reply after its first token: nothing more of that
    reply may reach them (the bot's second message comes 500 ms later, so there is more). The
    callers think interrupt_think_s, about as long as Twilio takes to speak the reply they hear
    out, so that replies do not queue up for callsim's caller to hear out when hanging up."""
    config = StackConfig(
        edge_workers=edge_workers, workers=workers, botsim_args=botsim_args, edge_env=dict(RELAY)
    )
    with running(config) as stack:
        load = load_on(
            stack,
            sizes.interrupt_callers,
            sizes.interrupt_think_s,
            sizes.interrupt_duration_s,
            ramp_up_s=1.0,
        )
        result = loadgen.run(dataclasses.replace(load, script=INTERRUPT_SCRIPT))
    relay = result.relay or {}
    return {
        **relay_settings(config.worker_env),
        "bot": TWO_500,
        "script": list(INTERRUPT_SCRIPT),
        "callers": sizes.interrupt_callers,
        "think_time_s": sizes.interrupt_think_s,
        "interrupts": relay.get("interrupts", 0),
        "barge_ins_missed": relay.get("barge_ins_missed", 0),
        "tokens_after_interrupt": relay.get("tokens_after_interrupt"),
        "tokens_in_flight_at_interrupt": relay.get("tokens_in_flight_at_interrupt"),
        "protocol_errors": relay.get("protocol_errors"),
        "run": summary(result, misses=relay_misses(result)),
    }


# -- relay_holding: sessions held by one edge process -------------------------------------------
def relay_misses(result: loadgen.LoadResult) -> int:
    """A relay session's missed deadlines and failures: turns answered by the hold phrase
    (first token at the deadline or later), turns with no reply at all, protocol errors, tokens
    after an interrupt, failed sessions, and the webhooks' and calls' own failures."""
    relay = result.relay
    if relay is None:
        return bad(result) + result.calls  # no call reached a relay session
    late = sum(1 for _, first_ms, _, _ in result.relay_samples if first_ms >= DEADLINE_MS)
    return (
        bad(result)
        + late
        + sum(relay["errors"].values())
        + relay["protocol_errors"]
        + relay["tokens_after_interrupt"]
        + relay["sessions"].get("failed", 0)
    )


def relay_holding(
    sizes: Sizes, turns_per_s: float, edge_workers: int, workers: int
) -> dict[str, Any]:
    """The gather holding part's steps (the same turns/s unit), with relay sessions."""
    out = holding(sizes, turns_per_s, edge_workers, workers, dict(RELAY), relay_misses)
    return {**out, "voice_mode": "relay", "deadline_ms": DEADLINE_MS}
