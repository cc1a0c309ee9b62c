"""Scripted bots from a small JSON/YAML file (format: botsim/README.md, examples in
botsim/scenarios/). Rules are tried in order; the first whose regex matches the user's words
answers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bots import Outgoing, Reply, Turn, text
from .payloads import validate_payload

HANGUP = "<hangup/>"


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    messages: tuple[Outgoing, ...]
    delay_ms: float = 0.0
    hangup: bool = False
    stall: bool = False


class ScenarioBot:
    def __init__(
        self,
        name: str,
        greeting: tuple[Outgoing, ...],
        rules: tuple[Rule, ...],
        fallback: tuple[Outgoing, ...],
        events: dict[str, tuple[Outgoing, ...]] | None = None,
    ) -> None:
        self.events = events or {}
        self.name = name
        self.greeting = greeting
        self.rules = rules
        self.fallback = fallback

    def respond(self, turn: Turn) -> Reply | None:
        if turn.is_call_start or (turn.first and turn.kind == "message"):
            return Reply(list(self.greeting), greeted=True) if self.greeting else None
        if turn.kind == "event":
            # `events: {type: reply}`: the reply to a POST /events of that payload type, with
            # {field} filled from the event's payload.
            reply = self.events.get(str(turn.payload.get("type", "")))
            if not reply:
                return None
            values = {k: str(v) for k, v in turn.payload.items() if isinstance(v, str | int)}
            return Reply([Outgoing(_subst(m.payload, values), m.delay_ms, m.stream) for m in reply])
        for rule in self.rules:
            match = rule.pattern.search(turn.text)
            if match is None:
                continue
            if rule.stall:
                return None
            out = [_fill(m, turn.text, match) for m in rule.messages]
            if rule.hangup:
                out = _with_hangup(out)
            return Reply(out, delay_ms=rule.delay_ms)
        return Reply([_fill(m, turn.text, None) for m in self.fallback])


def load_scenario(path: str | Path, slow_ms: float = 0.0) -> ScenarioBot:
    p = Path(path)
    raw = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml  # only YAML scenarios need PyYAML

        data = yaml.safe_load(raw)
    else:
        data = json.loads(raw)
    return parse_scenario(data, default_name=p.stem)


def parse_scenario(data: Any, default_name: str = "scenario") -> ScenarioBot:
    if not isinstance(data, dict):
        raise ScenarioError("a scenario is a mapping with greeting / rules / fallback")
    stream = bool(data.get("stream", False))
    greeting = _messages(data.get("greeting", []), stream, "greeting")
    fallback = _messages(data.get("fallback", ["You said: {text}"]), stream, "fallback")
    rules = []
    for i, r in enumerate(data.get("rules", [])):
        where = f"rules[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("when"), str):
            raise ScenarioError(f"{where}: needs a `when` regex")
        try:
            pattern = re.compile(r["when"], re.IGNORECASE)
        except re.error as ex:
            raise ScenarioError(f"{where}.when: {ex}") from None
        rules.append(
            Rule(
                pattern=pattern,
                messages=_messages(r.get("reply", []), bool(r.get("stream", stream)), where),
                delay_ms=float(r.get("delay_ms", 0)),
                hangup=bool(r.get("hangup", False)),
                stall=bool(r.get("stall", False)),
            )
        )
    raw_events = data.get("events", {})
    if not isinstance(raw_events, dict):
        raise ScenarioError("events: a mapping of event type -> reply")
    events = {str(k): _messages(v, stream, f"events.{k}") for k, v in raw_events.items()}
    return ScenarioBot(
        str(data.get("name", default_name)), greeting, tuple(rules), fallback, events
    )


def _messages(items: Any, stream: bool, where: str) -> tuple[Outgoing, ...]:
    if not isinstance(items, list):
        items = [items]
    out = []
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        if isinstance(item, str):
            out.append(Outgoing(text(item), stream=stream))
        elif isinstance(item, dict) and "payload" in item:
            out.append(
                Outgoing(
                    validate_payload(item["payload"], w),
                    delay_ms=float(item.get("delay_ms", 0)),
                    stream=bool(item.get("stream", stream)),
                    abort=bool(item.get("abort", False)),
                )
            )
        elif isinstance(item, dict) and "type" in item:
            out.append(Outgoing(validate_payload(item, w), stream=stream))
        else:
            raise ScenarioError(f"{w}: a string, a payload, or {{payload, delay_ms, stream}}")
    return tuple(out)


def _fill(out: Outgoing, said: str, match: re.Match[str] | None) -> Outgoing:
    values = {"text": said, "match": match.group(0) if match else ""}
    if match:
        values.update({k: v or "" for k, v in match.groupdict().items()})
    return Outgoing(_subst(out.payload, values), out.delay_ms, out.stream, out.abort)


def _subst(value: Any, values: dict[str, str]) -> Any:
    # Plain replace, not str.format: payloads may hold other braces.
    if isinstance(value, str):
        for key, repl in values.items():
            value = value.replace("{" + key + "}", repl)
        return value or " "
    if isinstance(value, dict):
        return {k: _subst(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(v, values) for v in value]
    return value


def _with_hangup(out: list[Outgoing]) -> list[Outgoing]:
    last = out[-1] if out else None
    if last is not None and last.payload.get("type") in ("text", "markdown"):
        key = "text" if last.payload["type"] == "text" else "markdown"
        payload = {**last.payload, key: f"{last.payload[key]} {HANGUP}"}
        return [*out[:-1], Outgoing(payload, last.delay_ms, last.stream, last.abort)]
    return [*out, Outgoing(text(HANGUP))]
