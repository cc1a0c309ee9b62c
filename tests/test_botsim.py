"""botsim as a real process, driven over HTTP like the worker drives the Chat API."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

# Submodules, not the package: the venv's editable install may predate botsim/__init__.py.
from botsim.bots import GOODBYE, GREETING
from botsim.testing import BotsimProcess, spawn_botsim
from tests.helpers import Http, Response

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ERR_ID = re.compile(r"^err_\d{14}x[0-9A-F]{8}$")
ENC_KEY = "a-test-encryption-key-that-is-long-enough-for-hs256"


@pytest.fixture(scope="module")
def sim() -> Iterator[BotsimProcess]:
    with spawn_botsim("--slow-ms", "300", "--page-size", "3") as proc:
        yield proc


@pytest.fixture
async def client(sim: BotsimProcess) -> AsyncIterator[Http]:
    async with Http(sim.base_url, timeout_s=10.0) as c:
        yield c


async def new_user(c: Http, **body: Any) -> tuple[dict[str, Any], dict[str, str]]:
    r = await c.post("/users", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return data["user"], {"x-user-key": data["key"]}


async def new_conversation(c: Http, h: dict[str, str], conv_id: str) -> None:
    r = await c.post("/conversations/get-or-create", json={"id": conv_id}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["conversation"]["id"] == conv_id


async def say(c: Http, h: dict[str, str], conv_id: str, text: str, **extra: Any) -> dict[str, Any]:
    r = await c.post(
        "/messages",
        headers=h,
        json={"conversationId": conv_id, "payload": {"type": "text", "text": text}, **extra},
    )
    assert r.status_code == 200, r.text
    return r.json()["message"]


class Listen:
    """An open `GET /conversations/{id}/listen`, read as the SSE spec says."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines

    async def signal(self) -> dict[str, Any]:
        """The next JSON signal, skipping `data: ping` keep-alives."""
        event, data = None, []
        async for line in self._lines:
            if line == "":
                if data and data != ["ping"]:
                    assert event == "message"
                    parsed: dict[str, Any] = json.loads("\n".join(data))
                    return parsed
                event, data = None, []
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        raise AssertionError("stream ended")

    async def bot_text(self) -> str:
        while True:
            sig = await self.signal()
            if sig["type"] == "message_created" and sig["data"]["isBot"]:
                return str(sig["data"]["payload"]["text"])


async def _lines(r: aiohttp.ClientResponse) -> AsyncIterator[str]:
    async for line in r.content:  # each line with its b"\n"
        yield line.decode().rstrip("\r\n")


@asynccontextmanager
async def listen(c: Http, h: dict[str, str], conv_id: str) -> AsyncIterator[Listen]:
    async with c.stream("GET", f"/conversations/{conv_id}/listen", headers=h) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        yield Listen(_lines(r))


def assert_error(r: Response, code: int, type_: str) -> None:
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == {"id", "code", "type", "message"}
    assert body["code"] == code and body["type"] == type_
    assert ERR_ID.match(body["id"])


async def test_hello(client: Http) -> None:
    for path in ("/hello", "/hello/"):  # the official client fetches `/hello/`
        r = await client.get(path)
        assert r.status_code == 200 and r.text.startswith("Hello")


async def test_shared_mode_user_and_key(client: Http) -> None:
    user, h = await new_user(client, name="Ada")
    claims = jwt.decode(h["x-user-key"], options={"verify_signature": False})
    assert claims == {"id": user["id"]}
    assert jwt.get_unverified_header(h["x-user-key"])["alg"] == "HS256"
    assert user["name"] == "Ada" and ISO_MS_Z.match(user["createdAt"])
    me = (await client.get("/users/me", headers=h)).json()["user"]
    assert me["id"] == user["id"]
    r = await client.put("/users/me", headers=h, json={"name": "Grace"})
    assert r.json()["user"]["name"] == "Grace"
    custom, _ = await new_user(client, id="caller-CA0001")
    assert custom["id"] == "caller-CA0001"
    assert_error(await client.post("/users", json={"id": "caller-CA0001"}), 409, "AlreadyExists")
    assert (await client.delete("/users/me", headers=h)).status_code == 200


async def test_keys_do_not_cross_webhooks(sim: BotsimProcess, client: Http) -> None:
    _, h = await new_user(client)
    async with Http(sim.url_for("other-bot")) as other:
        assert_error(await other.get("/users/me", headers=h), 401, "Unauthorized")


async def test_encryption_key_mode() -> None:
    with spawn_botsim("--encryption-key", ENC_KEY) as proc:
        async with Http(proc.base_url) as c:
            key = jwt.encode({"id": "caller-14155550100"}, ENC_KEY, algorithm="HS256")
            h = {"x-user-key": key}
            for _ in range(2):  # get-or-create is idempotent
                r = await c.post("/users/get-or-create", headers=h, json={})
                assert r.status_code == 200, r.text
                assert r.json()["user"]["id"] == "caller-14155550100"
            await new_conversation(c, h, "CA-enc-1")
            bad = jwt.encode({"id": "x"}, "another-key-that-is-also-long-enough-1234", "HS256")
            r = await c.post("/users/get-or-create", headers={"x-user-key": bad}, json={})
            assert_error(r, 401, "Unauthorized")
            # Shared mode still works beside it.
            _, h2 = await new_user(c)
            assert (await c.get("/users/me", headers=h2)).status_code == 200


async def test_conversation_get_or_create(client: Http) -> None:
    _, h = await new_user(client)
    await new_conversation(client, h, "CA-goc-1")
    await new_conversation(client, h, "CA-goc-1")
    r = await client.get("/conversations/CA-goc-1", headers=h)
    assert r.json()["conversation"]["id"] == "CA-goc-1"
    r = await client.post("/conversations", headers=h, json={})
    assert r.json()["conversation"]["id"].startswith("conv_")
    listed = (await client.get("/conversations", headers=h)).json()
    assert {c["id"] for c in listed["conversations"]} >= {"CA-goc-1"}
    _, stranger = await new_user(client)
    r = await client.post("/conversations/get-or-create", json={"id": "CA-goc-1"}, headers=stranger)
    assert_error(r, 403, "Forbidden")


@pytest.mark.parametrize("bad_id", ["+14155550100", "a" * 71, "has space", "é"])
async def test_id_validation(client: Http, bad_id: str) -> None:
    _, h = await new_user(client)
    r = await client.post("/conversations/get-or-create", json={"id": bad_id}, headers=h)
    assert_error(r, 400, "InvalidPayload")
    assert_error(await client.post("/users", json={"id": bad_id}), 400, "InvalidPayload")


async def test_id_validation_accepts_allowed(client: Http) -> None:
    _, h = await new_user(client)
    for ok in ("a" * 70, "CA_0-1\\x/y"):
        await new_conversation(client, h, ok)
    # The client percent-encodes ids in paths; an id with `/` must still route.
    r = await client.get("/conversations/CA_0-1%5Cx%2Fy/messages", headers=h)
    assert r.status_code == 200, r.text


async def test_echo_conversation_on_listen(client: Http) -> None:
    _, h = await new_user(client)
    await new_conversation(client, h, "CA-echo-1")
    async with listen(client, h, "CA-echo-1") as stream:
        sent = await say(client, h, "CA-echo-1", "hi there")
        echo = await stream.signal()
        assert echo["type"] == "message_created"
        assert echo["data"]["isBot"] is False and echo["data"]["id"] == sent["id"]
        greeting = await stream.signal()
        assert greeting["data"]["isBot"] is True
        assert greeting["data"]["payload"] == {"type": "text", "text": GREETING}
        assert greeting["data"]["conversationId"] == "CA-echo-1"
        assert greeting["data"]["createdAt"] > echo["data"]["createdAt"]
        await say(client, h, "CA-echo-1", "what time is it")
        assert await stream.bot_text() == "You said: what time is it"
        await say(client, h, "CA-echo-1", "OK Bye now")
        assert await stream.bot_text() == GOODBYE


async def test_call_start_marker_and_opening_event(client: Http) -> None:
    _, h = await new_user(client)
    await new_conversation(client, h, "CA-start-1")
    async with listen(client, h, "CA-start-1") as stream:
        r = await client.post(
            "/events",
            headers=h,
            json={"conversationId": "CA-start-1", "payload": {"type": "call_start", "from": "x"}},
        )
        assert r.status_code == 200, r.text
        event = r.json()["event"]
        sig = await stream.signal()
        assert sig["type"] == "event_created" and sig["data"]["isBot"] is False
        assert sig["data"]["id"] == event["id"]
        assert await stream.bot_text() == GREETING
        got = await client.get(f"/events/{event['id']}", headers=h)
        assert got.json()["event"]["payload"]["type"] == "call_start"
        await say(client, h, "CA-start-1", "hello")  # not first any more: echoed
        assert await stream.bot_text() == "You said: hello"
        await say(
            client,
            h,
            "CA-start-1",
            "call started",
            metadata={"voicebridge": {"kind": "call_start"}},
        )
        assert await stream.bot_text() == GREETING


async def test_messages_list_newest_first_with_paging(client: Http) -> None:
    _, h = await new_user(client)
    await new_conversation(client, h, "CA-list-1")
    async with listen(client, h, "CA-list-1") as stream:
        for word in ("one", "two", "three"):
            await say(client, h, "CA-list-1", word)
            await stream.bot_text()
    seen: list[dict[str, Any]] = []
    token = None
    while True:
        params = {"nextToken": token} if token else {}
        r = await client.get("/conversations/CA-list-1/messages", headers=h, params=params)
        body = r.json()
        assert len(body["messages"]) <= 3  # --page-size 3
        seen += body["messages"]
        token = body["meta"].get("nextToken")
        if not token:
            break
    assert len(seen) == 6
    stamps = [m["createdAt"] for m in seen]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 6
    texts = [m["payload"]["text"] for m in seen]
    assert texts[0] == "You said: three" and texts[-1] == "one"
    got = await client.get(f"/messages/{seen[-1]['id']}", headers=h)
    assert got.json()["message"]["payload"]["text"] == "one"


async def test_error_shapes(client: Http) -> None:
    _, h = await new_user(client)
    await new_conversation(client, h, "CA-err-1")
    _, stranger = await new_user(client)
    msg = {"conversationId": "CA-err-1", "payload": {"type": "text", "text": "x"}}
    assert_error(await client.post("/messages", json=msg), 401, "Unauthorized")
    assert_error(
        await client.post("/messages", json=msg, headers={"x-user-key": "nope"}),
        401,
        "Unauthorized",
    )
    assert_error(await client.post("/messages", json=msg, headers=stranger), 403, "Forbidden")
    assert_error(
        await client.get("/conversations/CA-err-1/listen", headers=stranger), 403, "Forbidden"
    )
    assert_error(
        await client.post("/messages", headers=h, json={**msg, "conversationId": "no"}),
        404,
        "ResourceNotFound",
    )
    assert_error(await client.get("/conversations/nope", headers=h), 404, "ResourceNotFound")
    assert_error(await client.get("/messages/msg_nope", headers=h), 404, "ResourceNotFound")
    for payload in (
        {"type": "text", "text": ""},
        {"type": "text"},
        {"type": "bogus"},
        {"type": "choice", "text": "pick", "options": [{"label": "", "value": "a"}]},
    ):
        r = await client.post("/messages", headers=h, json={**msg, "payload": payload})
        assert_error(r, 400, "InvalidPayload")
    r = await client.post(
        "/messages", headers={**h, "content-type": "application/json"}, content=b"{not json"
    )
    assert_error(r, 400, "InvalidPayload")


async def test_participants(client: Http) -> None:
    _, h = await new_user(client)
    other, h2 = await new_user(client)
    await new_conversation(client, h, "CA-part-1")
    async with listen(client, h, "CA-part-1") as stream:
        r = await client.post(
            "/conversations/CA-part-1/participants", headers=h, json={"userId": other["id"]}
        )
        assert r.json()["participant"]["id"] == other["id"]
        sig = await stream.signal()
        assert sig == {
            "type": "participant_added",
            "data": {"conversationId": "CA-part-1", "participantId": other["id"]},
        }
    listed = (await client.get("/conversations/CA-part-1/participants", headers=h2)).json()
    assert other["id"] in {p["id"] for p in listed["participants"]}
    r = await client.get(f"/conversations/CA-part-1/participants/{other['id']}", headers=h)
    assert r.json()["participant"]["id"] == other["id"]
    r = await client.delete(f"/conversations/CA-part-1/participants/{other['id']}", headers=h)
    assert r.status_code == 200
    assert_error(
        await client.get("/conversations/CA-part-1/messages", headers=h2), 403, "Forbidden"
    )


async def test_slow_reply_is_overtaken(client: Http) -> None:
    _, h = await new_user(client)
    await new_conversation(client, h, "CA-slow-1")
    async with listen(client, h, "CA-slow-1") as stream:
        await say(client, h, "CA-slow-1", "warm up")
        assert await stream.bot_text() == GREETING
        await say(client, h, "CA-slow-1", "Slow question")
        await say(client, h, "CA-slow-1", "fast question")
        assert await stream.bot_text() == "You said: fast question"
        assert await stream.bot_text() == "You said: Slow question"


async def test_delete_conversation_ends_listen(client: Http) -> None:
    _, h = await new_user(client)
    await new_conversation(client, h, "CA-del-1")
    async with listen(client, h, "CA-del-1") as stream:
        assert (await client.delete("/conversations/CA-del-1", headers=h)).status_code == 200
        with pytest.raises(AssertionError, match="stream ended"):
            await stream.signal()
    assert_error(await client.get("/conversations/CA-del-1", headers=h), 404, "ResourceNotFound")


async def test_fault_flags() -> None:
    with spawn_botsim("--error-rate", "1") as proc:
        async with Http(proc.base_url) as c:
            assert (await c.get("/hello")).status_code == 200  # spared
            assert_error(await c.post("/users", json={}), 500, "Internal")
    with spawn_botsim("--rate-limit-rate", "1") as proc:
        async with Http(proc.base_url) as c:
            assert_error(await c.post("/users", json={}), 429, "RateLimited")


async def test_sigterm_with_open_listener_exits_cleanly() -> None:
    with spawn_botsim() as proc:
        async with Http(proc.base_url) as c:
            _, h = await new_user(c)
            await new_conversation(c, h, "CA-term-1")
            async with listen(c, h, "CA-term-1") as stream:
                assert proc.stop() == 0
                with pytest.raises(AssertionError, match="stream ended"):
                    await stream.signal()


# -- part B: payload types, streaming, scenarios, stalls ---------------------------------------

SCENARIOS = Path(__file__).parent.parent / "botsim" / "scenarios"


async def _session(c: Http, conv_id: str) -> dict[str, str]:
    _, h = await new_user(c)
    await new_conversation(c, h, conv_id)
    return h


async def test_pizza_scenario_speaks_choice_card_markdown() -> None:
    with spawn_botsim("--scenario", str(SCENARIOS / "pizza.json")) as proc:
        async with Http(proc.base_url) as c:
            h = await _session(c, "CA-pizza-1")
            async with listen(c, h, "CA-pizza-1") as stream:

                async def bot_payloads(n: int) -> list[dict[str, Any]]:
                    out = []
                    while len(out) < n:
                        sig = await stream.signal()
                        if sig["type"] == "message_created" and sig["data"]["isBot"]:
                            out.append(sig["data"]["payload"])
                    return out

                start = {"voicebridge": {"kind": "call_start"}}
                await say(c, h, "CA-pizza-1", "hi", metadata=start)
                greeting = await bot_payloads(2)
                assert [p["type"] for p in greeting] == ["markdown", "choice"]
                assert [o["value"] for o in greeting[1]["options"]] == ["small", "medium", "large"]
                await say(c, h, "CA-pizza-1", "A large one please")
                size = await bot_payloads(2)
                assert size[0] == {"type": "text", "text": "A large pizza, great choice."}
                assert size[1]["type"] == "dropdown"
                await say(c, h, "CA-pizza-1", "pepperoni")
                card, md = await bot_payloads(2)
                assert card["type"] == "card" and card["title"] == "Your pepperoni pizza"
                assert md["type"] == "markdown"
                await say(c, h, "CA-pizza-1", "confirm")
                location, thanks = await bot_payloads(2)
                assert location["type"] == "location"
                assert thanks["text"].endswith("<hangup/>")


async def test_showcase_sends_every_payload_type() -> None:
    kinds = [
        "text",
        "markdown",
        "image",
        "audio",
        "video",
        "file",
        "location",
        "card",
        "choice",
        "dropdown",
        "carousel",
        "bloc",
    ]
    with spawn_botsim("--scenario", str(SCENARIOS / "showcase.yaml")) as proc:
        async with Http(proc.base_url) as c:
            h = await _session(c, "CA-show-1")
            async with listen(c, h, "CA-show-1") as stream:
                await say(c, h, "CA-show-1", "hello")
                await stream.bot_text()
                got = []
                for kind in kinds:
                    await say(c, h, "CA-show-1", kind)
                    while True:
                        sig = await stream.signal()
                        if sig["type"] == "message_created" and sig["data"]["isBot"]:
                            got.append(sig["data"]["payload"]["type"])
                            break
                assert got == kinds
                # `silence` stalls; the next instant answer proves nothing came for it.
                await say(c, h, "CA-show-1", "silence")
                await say(c, h, "CA-show-1", "text")
                assert await stream.bot_text() == "Plain text."


async def test_streamed_reply_and_abort() -> None:
    with spawn_botsim("--scenario", str(SCENARIOS / "showcase.yaml")) as proc:
        async with Http(proc.base_url) as c:
            h = await _session(c, "CA-stream-1")
            async with listen(c, h, "CA-stream-1") as stream:
                await say(c, h, "CA-stream-1", "hello")
                await stream.bot_text()
                await say(c, h, "CA-stream-1", "stream please")
                sigs = []
                while (
                    not sigs
                    or sigs[-1]["type"] != "message_created"
                    or not sigs[-1]["data"]["isBot"]
                ):
                    sigs.append(await stream.signal())
                deltas = [s["data"] for s in sigs if s["type"] == "message_stream_delta"]
                complete = [s["data"] for s in sigs if s["type"] == "message_stream_complete"]
                final = sigs[-1]["data"]
                assert len(deltas) > 1
                assert [d["sequence"] for d in deltas] == list(range(len(deltas)))
                assert len({d["streamId"] for d in deltas}) == 1
                assert "".join(d["delta"] for d in deltas) == final["payload"]["text"]
                assert complete and complete[0]["streamId"] == deltas[0]["streamId"]
                assert complete[0]["message"]["id"] == final["id"]
                assert final["metadata"] == {"streamId": deltas[0]["streamId"]}
                await say(c, h, "CA-stream-1", "abort it")
                while True:
                    sig = await stream.signal()
                    if sig["type"] == "message_stream_abort":
                        break
                    assert sig["type"] in ("message_created", "message_stream_delta")
                    assert not sig["data"].get("isBot")
                await say(c, h, "CA-stream-1", "text")
                assert await stream.bot_text() == "Plain text."


async def test_default_bot_can_stream() -> None:
    with spawn_botsim("--stream") as proc:
        async with Http(proc.base_url) as c:
            h = await _session(c, "CA-stream-2")
            async with listen(c, h, "CA-stream-2") as stream:
                await say(c, h, "CA-stream-2", "hello")
                types = []
                while not types or types[-1] != "message_created/bot":
                    sig = await stream.signal()
                    bot = sig["type"] == "message_created" and sig["data"]["isBot"]
                    types.append(sig["type"] + ("/bot" if bot else ""))
                assert types[0] == "message_created"
                assert "message_stream_delta" in types
                assert types[-2:] == ["message_stream_complete", "message_created/bot"]


async def test_stall_rate_accepts_but_never_answers() -> None:
    with spawn_botsim("--stall-rate", "1", "--latency-ms", "0") as proc:
        async with Http(proc.base_url) as c:
            h = await _session(c, "CA-stall-1")
            await say(c, h, "CA-stall-1", "anyone there?")
            # An instant reply is posted before the server reads the next request.
            r = await c.get("/conversations/CA-stall-1/messages", headers=h)
            assert [m["payload"]["text"] for m in r.json()["messages"]] == ["anyone there?"]


async def test_latency_jitter_flags_still_answer() -> None:
    with spawn_botsim("--latency-ms", "20", "--latency-jitter-ms", "5", "--seed", "7") as proc:
        async with Http(proc.base_url) as c:
            h = await _session(c, "CA-lat-1")
            async with listen(c, h, "CA-lat-1") as stream:
                await say(c, h, "CA-lat-1", "hello")
                assert await stream.bot_text() == GREETING


async def test_in_process_server_with_custom_bot() -> None:
    from botsim.bots import Outgoing, Reply, Turn
    from botsim.config import BotsimConfig
    from botsim.server import BotsimServer

    class Shouter:
        def respond(self, turn: Turn) -> Reply | None:
            return Reply([Outgoing({"type": "text", "text": turn.text.upper() or "HI"})])

    async with BotsimServer(BotsimConfig(port=0), bot=Shouter()) as sim:
        async with Http(sim.base_url) as c:
            h = await _session(c, "CA-inproc-1")
            async with listen(c, h, "CA-inproc-1") as stream:
                await say(c, h, "CA-inproc-1", "quiet please")
                assert await stream.bot_text() == "QUIET PLEASE"
                await sim.stop()  # with the stream still open
                with pytest.raises(AssertionError, match="stream ended"):
                    await stream.signal()
