"""Phase "outbound": calls placed through `POST /v1/calls` while an edge process and a worker die.

The stack is the relay phase's (relay mode, two gunicorn edge processes, two workers, botsim's
echo bot with latency) plus callsim's Twilio REST stand-in as TWILIO_API_BASE_URL, which plays
each callee by the number's last digit (callsim.callee): people who say PERSON_SAYS, and
machines. The suite is the API's client: calls are requested in bursts of BURST at once (a
campaign's batch: it keeps requests in flight long enough for the kill to strike them), each
with its own Idempotency-Key, one connection per request (faultsuite.transport). A request
that got no answer (the kill cut its connection, or it timed out) is sent again with the same
key, as a client must; so are a 429 (after its Retry-After), a 409 (the key's first request
still in progress) and a 503 (Redis away). Meanwhile the schedule kills -9 the edge process
serving some of those requests ("kill_edge_api", faults.kill_edge_serving; it holds calls'
relay sockets too), in the full run also the one holding the most relay sockets ("kill_edge"),
and workers holding turns.

What must hold, else the run fails:
- every call got its callSid, and `GET /v1/calls/{callSid}` gives it a final status;
- no call was placed twice: the stand-in saw one call per number (each index has its own),
  and it is the call the API named;
- every person heard the bot's first words (the greeting) and completed its script: each line
  echoed, the last one answered with "Goodbye!" and then the call ended (the bot hangs up; a
  person whose socket died with the goodbye already heard hangs up itself); the API says
  completed, human;
- every machine heard VOICEMAIL_MESSAGE (the echo bot says nothing to the `voicemail`
  event), nothing of a conversation, and the call ended; the API says completed, machine_*.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from botsim.bots import GREETING
from callsim.call import DEFAULT_HOLD_PHRASE
from callsim.callee import FINAL_STATUSES
from devstack.processes import free_port
from devstack.stack import Stack
from faultsuite.faults import FaultInjector, FaultRecord
from faultsuite.redis_server import PersistentRedis
from faultsuite.run import PhaseSpec, run_schedule, stack_config
from faultsuite.transport import ConnectRetry

OUR_NUMBER = "+14155550199"
PERSON_SAYS = ("Hello, who is this?", "Yes, that works for me.", "Thank you, goodbye.")
VOICEMAIL = "This is the fault suite's voicemail message. Please call us back."
EDGE_WORKERS = 2
MACHINE_EVERY = 4  # every 4th call reaches an answering machine, the others a person
MAX_CALLS = 1000  # the numbers: +1415556 + three digits of the index + the callee's digit
RAMP = 0.8  # calls are requested over this part of the phase; faults land among them
BURST = 4
API_LATENCY_S = 0.25  # the stand-in's create request in transit (Twilio's API takes ~0.1-0.3 s)
REQUEST_TIMEOUT_S = 20.0  # above the API's own REPLAY_WAIT_S (11 s)
PLACE_BUDGET_S = 60.0  # a call's requests, retries included, give up after this
RETRY_PAUSE_S = 0.2  # after a cut connection: the master forks the killed process again
FINISH_S = 90.0  # after the last request, for every call to end at the stand-in
STATUS_S = 30.0  # then, for the API to show every call's final status
POLL_S = 0.25
ENDED = ("hangup_by_app", "caller_hung_up")


@dataclass
class OutboundSpec:
    name: str
    calls: int
    duration_s: float
    schedule: list[tuple[float, str]]  # (fraction of duration_s, fault kind in run.FAULTS)
    seed: int = 1

    def phase(self) -> PhaseSpec:
        """The stack and the fault schedule, as the relay phase has them."""
        return PhaseSpec(
            self.name,
            self.calls,
            len(PERSON_SAYS),
            self.duration_s,
            self.schedule,
            seed=self.seed,
            voice_mode="relay",
            edge_workers=EDGE_WORKERS,
        )


@dataclass
class Placement:
    """One call as its client saw it."""

    index: int
    to: str
    kind: str  # "person" or "machine"
    key: str  # its Idempotency-Key
    due_at: float = 0.0  # wall clock, when it was requested first
    sid: str | None = None
    attempts: int = 0
    cut: int = 0  # requests that got no answer (connection cut by the kill, or a timeout)
    statuses: list[int] = field(default_factory=list)  # every answer's HTTP status
    replayed: bool = False  # the 202 was the key's earlier call (Idempotent-Replayed)
    failure: str | None = None


@dataclass
class OutboundResult:
    name: str
    calls: int = 0
    placed: int = 0
    resent: int = 0  # requests sent again after a cut connection or a timeout
    replayed: int = 0  # of which the API answered with the key's earlier call
    throttled: int = 0  # 429 answers (OUTBOUND_MAX_CPS), waited out and sent again
    in_progress: int = 0  # 409 answers (the key's first request still running)
    twice: int = 0  # numbers the stand-in saw called more than once
    unknown: int = 0  # calls without a final status at GET /v1/calls/{sid}
    persons: int = 0
    persons_ok: int = 0
    machines: int = 0
    machines_ok: int = 0
    first_words_ms: dict[str, float] = field(default_factory=dict)  # persons, from the request
    faults: list[FaultRecord] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    log_dir: str = ""

    @property
    def ok(self) -> bool:
        return not (self.problems or self.errors) and self.placed == self.calls > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "calls": self.calls,
            "placed": self.placed,
            "resent": self.resent,
            "replayed": self.replayed,
            "throttled": self.throttled,
            "in_progress": self.in_progress,
            "twice": self.twice,
            "unknown": self.unknown,
            "persons": self.persons,
            "persons_ok": self.persons_ok,
            "machines": self.machines,
            "machines_ok": self.machines_ok,
            "first_words_ms": self.first_words_ms,
            "faults": [f.as_dict() for f in self.faults],
            "problems": self.problems,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 1),
            "log_dir": self.log_dir,
        }


def placements(calls: int, run_id: str) -> list[Placement]:
    """Call i's number ends in the callee's digit (0-4 person, 5 machine) after the index."""
    if not 0 < calls <= MAX_CALLS:
        raise ValueError(f"the outbound phase places 1..{MAX_CALLS} calls, not {calls}")
    made = []
    for i in range(calls):
        machine = i % MACHINE_EVERY == MACHINE_EVERY - 1
        digit = 5 if machine else i % 5
        to = f"+1415556{i:03d}{digit}"
        made.append(
            Placement(i, to, "machine" if machine else "person", f"faultsuite-{run_id}-{i}")
        )
    return made


def run_outbound(spec: OutboundSpec) -> OutboundResult:
    port = free_port()
    token = secrets.token_hex(16)
    base = stack_config(spec.phase(), f"redis://127.0.0.1:{port}/0")
    config = replace(
        base,
        twilio_api=True,
        api_token=token,
        # Requests that take Twilio's own time to arrive stay in flight long enough for the
        # edge kill to strike some (an instant stand-in left it to luck: a CI run missed).
        twilio_api_args=(
            *(arg for line in PERSON_SAYS for arg in ("--say", line)),
            "--api-latency-s",
            str(API_LATENCY_S),
        ),
        edge_env={
            **base.edge_env,
            "OUTBOUND_FROM": OUR_NUMBER,
            # Twilio's per-account limit is not under test here: the kills are.
            "OUTBOUND_MAX_CPS": "50",
            "VOICEMAIL_MESSAGE": VOICEMAIL,
            # The stand-in's callees wait on through callsim's hold phrase (a late answer).
            "HOLD_PHRASE": DEFAULT_HOLD_PHRASE,
        },
    )
    stack = Stack(config)
    redis_server = PersistentRedis(stack.launcher, port)
    started = time.monotonic()
    result = OutboundResult(spec.name, calls=spec.calls, log_dir=stack.launcher.log_dir)
    try:
        redis_server.start()
        stack.start()
        asyncio.run(_drive(spec, stack, redis_server, token, result))
    except Exception as exc:  # the report says what broke; the exit code fails the run
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        result.elapsed_s = time.monotonic() - started
        if not result.ok:
            print(stack.logs())
            print(f"--- redis ---\n{redis_server.log_tail()}")
        stack.stop()
        redis_server.stop()
    return result


async def _drive(
    spec: OutboundSpec,
    stack: Stack,
    redis_server: PersistentRedis,
    token: str,
    result: OutboundResult,
) -> None:
    started = time.monotonic()
    injector = FaultInjector(stack, redis_server, started)
    calls = placements(spec.calls, secrets.token_hex(4))
    api = f"{stack.edge_url}/v1/calls"
    auth = {"Authorization": f"Bearer {token}"}
    ramp_s = spec.duration_s * RAMP
    limit_s = spec.duration_s + PLACE_BUDGET_S + 30
    # One connection per request: the edge fault finds the process serving one by its socket.
    async with ConnectRetry().session(REQUEST_TIMEOUT_S) as client:
        bursts = -(-len(calls) // BURST)
        tasks = [
            asyncio.create_task(
                _place(client, api, auth, p, started + ramp_s * (p.index // BURST) / bursts)
            )
            for p in calls
        ]
        faults = asyncio.create_task(run_schedule(spec.phase(), injector, started, result.errors))
        try:
            async with asyncio.timeout(limit_s):
                await asyncio.gather(*tasks)
                await faults
        finally:
            for task in [*tasks, faults]:
                task.cancel()
        result.faults = injector.records
        played = await _played_to_the_end(client, stack.twilio_api_url)
        sids = [p.sid for p in calls if p.sid]
        states = await _final_states(client, api, auth, sids)
    check(calls, played, states, result)


async def _place(
    client: aiohttp.ClientSession,
    api: str,
    auth: dict[str, str],
    call: Placement,
    start_at: float,
) -> None:
    """Request the call until the API answers 202 or refuses it; never two keys for one call."""
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    call.due_at = time.time()
    give_up = time.monotonic() + PLACE_BUDGET_S
    body = {"to": call.to, "context": {"faultsuite": call.index, "kind": call.kind}}
    headers = {**auth, "Idempotency-Key": call.key}
    while True:
        call.attempts += 1
        pause = RETRY_PAUSE_S
        try:
            async with client.post(api, json=body, headers=headers) as resp:
                status = resp.status
                answer = await resp.json(content_type=None) if resp.content_length != 0 else {}
                retry_after = resp.headers.get("Retry-After")
                replayed = resp.headers.get("Idempotent-Replayed") == "true"
        except (aiohttp.ClientConnectionError, TimeoutError, ValueError) as exc:
            # No answer: the request may or may not have placed the call; the key tells.
            call.cut += 1
            call.failure = f"no answer: {type(exc).__name__}: {exc}"
        else:
            call.statuses.append(status)
            if status == 202:
                call.sid, call.replayed, call.failure = str(answer["callSid"]), replayed, None
                return
            call.failure = f"HTTP {status}: {answer}"
            if status not in (409, 429, 503):
                return  # a refusal: sending it again would be refused again
            if retry_after is not None:
                pause = min(max(float(retry_after), RETRY_PAUSE_S), 5.0)
        if time.monotonic() + pause > give_up:
            call.failure = f"gave up after {call.attempts} requests; last: {call.failure}"
            return
        await asyncio.sleep(pause)


async def _played_to_the_end(client: aiohttp.ClientSession, stand_in: str) -> list[dict[str, Any]]:
    """Every call the stand-in saw, once all have ended (or FINISH_S passed)."""
    give_up = time.monotonic() + FINISH_S
    while True:
        async with client.get(f"{stand_in}/_callsim/calls", raise_for_status=True) as resp:
            seen: list[dict[str, Any]] = (await resp.json())["calls"]
        if all(c["done"] for c in seen) or time.monotonic() > give_up:
            return seen
        await asyncio.sleep(POLL_S)


async def _final_states(
    client: aiohttp.ClientSession, api: str, auth: dict[str, str], sids: list[str]
) -> dict[str, dict[str, Any]]:
    """GET /v1/calls/{sid} for each call, once every one has a final status (or STATUS_S)."""
    give_up = time.monotonic() + STATUS_S
    states: dict[str, dict[str, Any]] = {}
    while True:
        for sid in [s for s in sids if states.get(s, {}).get("status") not in FINAL_STATUSES]:
            async with client.get(f"{api}/{sid}", headers=auth) as resp:
                states[sid] = await resp.json() if resp.status == 200 else {"http": resp.status}
        final = all(states[s].get("status") in FINAL_STATUSES for s in sids)
        if final or time.monotonic() > give_up:
            return states
        await asyncio.sleep(POLL_S)


def expected_heard(line: str) -> str:
    return "Goodbye!" if "goodbye" in line.lower() else f"You said: {line}"


def _person_problem(seen: dict[str, Any], state: dict[str, Any]) -> str | None:
    heard: list[str] = seen["heard"]
    if not any(GREETING in h for h in heard):
        return "never heard the bot's first words"
    missing = [line for line in PERSON_SAYS if not any(expected_heard(line) in h for h in heard)]
    if missing:
        return f"lines never answered: {missing}"
    if seen["outcome"] not in ENDED or not heard[-1].startswith("Goodbye!"):
        return f"did not end with the bot's goodbye (outcome {seen['outcome']})"
    if (state.get("status"), state.get("answeredBy")) != ("completed", "human"):
        return f"the API says {state}"
    return None


def _machine_problem(seen: dict[str, Any], state: dict[str, Any]) -> str | None:
    heard: list[str] = seen["heard"]
    if VOICEMAIL not in heard:
        return "never heard the voicemail message"
    if any(GREETING in h or "You said:" in h for h in heard):
        return "a conversation with a machine"
    if seen["outcome"] != "hangup_by_app":
        return f"the call did not end after the message (outcome {seen['outcome']})"
    answered_by = str(state.get("answeredBy") or "")
    if state.get("status") != "completed" or not answered_by.startswith("machine_"):
        return f"the API says {state}"
    return None


def check(
    calls: list[Placement],
    played: list[dict[str, Any]],
    states: dict[str, dict[str, Any]],
    result: OutboundResult,
) -> None:
    """What must hold (the module's docstring); each breach is a problem in the report."""
    by_number: dict[str, list[dict[str, Any]]] = {}
    for seen in played:
        by_number.setdefault(seen["to"], []).append(seen)
    first_words: list[float] = []
    for call in calls:
        result.resent += call.cut
        result.replayed += call.replayed
        result.throttled += call.statuses.count(429)
        result.in_progress += call.statuses.count(409)
        if call.kind == "person":
            result.persons += 1
        else:
            result.machines += 1
        at_stand_in = by_number.get(call.to, [])
        if len(at_stand_in) > 1:
            result.twice += 1
        problem = _call_problem(call, at_stand_in, states.get(call.sid or "", {}))
        if call.sid is not None:
            result.placed += 1
        if problem is None and call.kind == "person":
            result.persons_ok += 1
            heard_at = at_stand_in[0].get("first_words_at")
            if heard_at is not None:
                first_words.append((float(heard_at) - call.due_at) * 1000.0)
        elif problem is None:
            result.machines_ok += 1
        else:
            result.problems.append(
                {
                    "call": call.index,
                    "to": call.to,
                    "kind": call.kind,
                    "sid": call.sid,
                    "problem": problem,
                    "requests": call.attempts,
                    "statuses": call.statuses,
                    # What the stand-in saw of the call, to tell the bridge's fault from its own.
                    **{
                        name: at_stand_in[0].get(name)
                        for name in ("heard", "outcome", "error", "webhooks", "status")
                        if at_stand_in
                    },
                    "callbacks": [c.get("event") for c in at_stand_in[0]["callbacks"]]
                    if at_stand_in
                    else None,
                }
            )
        if call.sid is not None and states.get(call.sid, {}).get("status") not in FINAL_STATUSES:
            result.unknown += 1
    if first_words:
        result.first_words_ms = {
            "p50": round(statistics.median(first_words), 1),
            "max": round(max(first_words), 1),
        }


def _call_problem(
    call: Placement, at_stand_in: list[dict[str, Any]], state: dict[str, Any]
) -> str | None:
    if call.sid is None:
        placed = f" (the stand-in saw {len(at_stand_in)} call(s) to it)" if at_stand_in else ""
        return f"never got its callSid: {call.failure}{placed}"
    if len(at_stand_in) != 1:
        return f"the stand-in saw {len(at_stand_in)} calls to {call.to}, not 1"
    seen = at_stand_in[0]
    if seen["sid"] != call.sid:
        return f"the API named {call.sid}, the stand-in placed {seen['sid']}"
    if state.get("status") not in FINAL_STATUSES:
        return f"no final status at GET /v1/calls/{call.sid}: {state}"
    if not seen["done"]:
        return "still going at the stand-in"
    if call.kind == "person":
        return _person_problem(seen, state)
    return _machine_problem(seen, state)


COLUMNS = (
    ("phase", 11), ("calls", 5), ("placed", 6), ("resent", 6), ("replayed", 8), ("429", 4),
    ("409", 4), ("twice", 5), ("unknown", 7), ("persons ok", 10), ("machines ok", 11),
    ("words p50/max ms", 16), ("faults", 6),
)  # fmt: skip


def table(results: list[OutboundResult]) -> str:
    head = " ".join(name.rjust(width) for name, width in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in results:
        words = r.first_words_ms
        cells = (
            r.name, r.calls, r.placed, r.resent, r.replayed, r.throttled, r.in_progress,
            r.twice, r.unknown, f"{r.persons_ok}/{r.persons}", f"{r.machines_ok}/{r.machines}",
            f"{words.get('p50', 0):.0f}/{words.get('max', 0):.0f}", len(r.faults),
        )  # fmt: skip
        lines.append(" ".join(str(c).rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)
