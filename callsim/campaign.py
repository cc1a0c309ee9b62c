"""`python -m callsim campaign`: N outbound calls at a rate through voicebridge's own API.

Call i is requested at start + i / rate (an open model: a slow API does not slow the campaign
down, and each call's time counts from when it was due, not from when it went out), as
``POST {api}`` with ``Authorization: Bearer {token}`` and ``{"to", "from", "context"}``. The
numbers come from ``to_pattern`` (``{i}`` is the call's index), so with callsim's stand-in the
last digit picks who answers (callsim.callee). The outcomes and the moment the callee first
heard the bot are read from the stand-in's ``GET /_callsim/calls``; both run on one machine,
so their wall clocks agree. Reported: the API's refusals by status, the calls by outcome
(answered, voicemail, fax, busy, no-answer, failed, unfinished), and the time from the API
request to the bot's first words as HDR percentiles, apart for people and for machines.
Over the API's OUTBOUND_MAX_CPS (429) the calls queue in order, as a client queueing its calls
would: the first asks again after each Retry-After (same Idempotency-Key) while the others
wait behind it; a call's time still counts from when it was due.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp
from hdrh.histogram import HdrHistogram

from callsim.stats import PERCENTILES, new_histogram, percentiles_ms

CAMPAIGN_OUTCOMES = ("answered", "voicemail", "fax", "busy", "no-answer", "failed", "unfinished")
_BY_KIND = {"person": "answered", "machine": "voicemail"}
POLL_INTERVAL_S = 0.25
MAX_CALLS = 100_000


@dataclass(frozen=True)
class CampaignConfig:
    api_url: str  # .../v1/calls
    token: str
    stand_in_url: str  # callsim twilio-api's base URL
    calls: int = 10
    rate_per_s: float = 5.0
    to_pattern: str = "+1415555{i:04d}"
    from_number: str | None = None  # None: the API's OUTBOUND_FROM
    context: dict[str, Any] = field(default_factory=dict)
    finish_timeout_s: float = 120.0  # after the last request, for every call to end
    throttle_retries: int = 60  # a queued call asks again after each 429 this many times
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.calls <= MAX_CALLS:
            raise ValueError(f"calls must be 1..{MAX_CALLS}, got {self.calls}")
        if self.rate_per_s <= 0:
            raise ValueError("rate must be > 0")
        self.number(0)  # a bad pattern fails here, not mid-run

    def number(self, index: int) -> str:
        try:
            return self.to_pattern.format(i=index)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"to-pattern {self.to_pattern!r}: {exc}") from None


@dataclass
class CampaignReport:
    requested: int = 0
    accepted: int = 0
    throttled: int = 0  # 429s that were retried
    refused: Counter[str] = field(default_factory=Counter)  # "429 rate_limited": n
    outcomes: Counter[str] = field(default_factory=Counter)
    call_errors: Counter[str] = field(default_factory=Counter)
    # From the request's due time ("answered", "voicemail"), and from our API's 202 (the
    # same with "_after_202"): the difference is time spent queued behind OUTBOUND_MAX_CPS.
    first_words: dict[str, HdrHistogram] = field(
        default_factory=lambda: {
            name: new_histogram()
            for name in ("answered", "voicemail", "answered_after_202", "voicemail_after_202")
        }
    )
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "accepted": self.accepted,
            "throttled": self.throttled,
            "refused": dict(self.refused),
            "outcomes": {name: self.outcomes.get(name, 0) for name in CAMPAIGN_OUTCOMES},
            "call_errors": dict(self.call_errors.most_common(10)),
            "first_words_ms": {k: percentiles_ms(h) for k, h in self.first_words.items()},
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def table(self) -> str:
        names = [*PERCENTILES, "max"]
        rows = [
            f"{'API requests':<26}{self.requested:>8}   {self.accepted} accepted, "
            f"{self.throttled} retries after 429",
            *(f"  refused {reason:<16}{count:>8}" for reason, count in self.refused.items()),
            f"{'calls':<26}{self.accepted:>8}   over {self.elapsed_s:.1f} s",
            *(f"  {name:<24}{self.outcomes.get(name, 0):>8}" for name in CAMPAIGN_OUTCOMES),
            *(f"  error x{n}: {message}" for message, n in self.call_errors.most_common(10)),
            "",
            f"{'request to first words':<26}"
            + "".join(f"{n.replace('_', '.'):>10}" for n in [*names, "count"]),
        ]
        for label, histogram in self.first_words.items():
            figures = percentiles_ms(histogram)
            rows.append(
                f"  {label.replace('_', ' ') + ' (ms)':<24}"
                + "".join(f"{figures[n]:>10.1f}" for n in names)
                + f"{figures['count']:>10}"
            )
        return "\n".join(rows)


def _seconds(retry_after: str | None) -> float:
    try:
        return min(max(float(retry_after or 1.0), 0.05), 30.0)
    except ValueError:
        return 1.0


def _outcome(call: dict[str, Any]) -> str:
    if not call.get("done"):
        return "unfinished"
    kind = str(call.get("kind"))
    return _BY_KIND.get(kind, kind)


async def run_campaign(config: CampaignConfig, progress: TextIO | None = None) -> CampaignReport:
    report = CampaignReport()
    due: dict[str, float] = {}  # callSid -> wall-clock time its request was due
    accepted_at: dict[str, float] = {}  # callSid -> when our API answered 202
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as client:
        started_wall, started = time.time(), time.monotonic()

        run_id = secrets.token_hex(4)
        # Over OUTBOUND_MAX_CPS the calls queue, first come first served: one of them at a time
        # asks again after each Retry-After while the rest wait their turn behind this lock (a
        # crowd retrying at once would mostly collide, and starve some calls).
        throttle = asyncio.Lock()

        async def place(index: int) -> None:
            at = index / config.rate_per_s
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            body: dict[str, Any] = {"to": config.number(index), "context": config.context}
            if config.from_number:
                body["from"] = config.from_number
            headers = {
                "Authorization": f"Bearer {config.token}",
                # A retried request is the same call, never a second one.
                "Idempotency-Key": f"campaign-{run_id}-{index}",
            }
            report.requested += 1

            async def post() -> tuple[int, Any, str | None] | None:
                try:
                    async with client.post(config.api_url, json=body, headers=headers) as resp:
                        answer = await resp.json(content_type=None) if resp.status < 500 else {}
                        return resp.status, answer, resp.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    report.refused[type(exc).__name__] += 1
                    return None

            async def queued(first: tuple[int, Any, str | None] | None) -> Any:
                result = first
                for _ in range(config.throttle_retries + 1):
                    if result is None:
                        result = await post()
                    if result is None or result[0] != 429:
                        return result
                    # Its time still counts from when it was due.
                    report.throttled += 1
                    await asyncio.sleep(_seconds(result[2]))
                    result = None
                return result

            if throttle.locked():
                async with throttle:
                    result = await queued(None)
            else:
                result = await post()
                if result is not None and result[0] == 429:
                    async with throttle:
                        result = await queued(result)
            if result is None:
                return
            status, answer, _ = result
            sid = answer.get("callSid") if isinstance(answer, dict) else None
            if status != 202 or not isinstance(sid, str):
                # Our API's refusal: {"error": {"message", "code"?}} (code: Twilio's, on 502).
                error = answer.get("error") if isinstance(answer, dict) else None
                code = error.get("code") if isinstance(error, dict) else None
                scalar = isinstance(code, str | int) and not isinstance(code, bool)
                report.refused[f"{status} {code}" if scalar else str(status)] += 1
                return
            report.accepted += 1
            due[sid], accepted_at[sid] = started_wall + at, time.time()

        await asyncio.gather(*(place(i) for i in range(config.calls)))
        calls = await _wait_until_done(client, config, set(due), progress)
        report.elapsed_s = time.monotonic() - started
    for sid in due:
        call = calls.get(sid, {})
        outcome = _outcome(call) if call else "unfinished"
        report.outcomes[outcome] += 1
        if call.get("error"):
            report.call_errors[str(call["error"])[:200]] += 1
        heard_at = call.get("first_words_at")
        if heard_at is not None and outcome in report.first_words:
            for name, since in ((outcome, due), (f"{outcome}_after_202", accepted_at)):
                ms = max(0.001, (float(heard_at) - since[sid]) * 1000.0)
                report.first_words[name].record_value(int(ms * 1000))
    return report


async def _wait_until_done(
    client: aiohttp.ClientSession,
    config: CampaignConfig,
    sids: set[str],
    progress: TextIO | None,
) -> dict[str, dict[str, Any]]:
    """The stand-in's record of our calls, once all have ended (or the timeout passed)."""
    deadline = time.monotonic() + config.finish_timeout_s
    url = config.stand_in_url.rstrip("/") + "/_callsim/calls"
    seen: dict[str, dict[str, Any]] = {}
    while True:
        async with client.get(url) as resp:
            resp.raise_for_status()
            listed = (await resp.json())["calls"]
        seen = {c["sid"]: c for c in listed if c["sid"] in sids}
        done = sum(1 for c in seen.values() if c["done"])
        if progress is not None:
            print(f"\r{done}/{len(sids)} calls ended", end="", file=progress, flush=True)
        if done == len(sids) or time.monotonic() > deadline:
            if progress is not None:
                print(file=progress)
            return seen
        await asyncio.sleep(POLL_INTERVAL_S)  # polling the stand-in's state, not a stand-in wait


def write_json(report: CampaignReport, path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
