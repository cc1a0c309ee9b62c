"""The edge's metrics (multiprocess mode: every gunicorn process writes, /metrics sums)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS_S

WEBHOOKS = Counter("voicebridge_webhooks_total", "Twilio webhooks answered", ["route", "status"])
TURN_LATENCY = Histogram(
    "voicebridge_turn_latency_seconds",
    "Webhook in to TwiML out, for turns sent to the bot",
    ["outcome"],
    buckets=LATENCY_BUCKETS_S,
)
DEADLINE_MISSES = Counter(
    "voicebridge_deadline_misses_total", "Turns answered with hold TwiML because the reply was late"
)
REPROMPTS = Counter("voicebridge_reprompts_total", "Reprompts spoken", ["reason"])
IN_FLIGHT = Gauge(
    "voicebridge_turns_in_flight", "Webhooks waiting for a reply", multiprocess_mode="livesum"
)
RELAY_SESSIONS = Gauge(
    "voicebridge_relay_sessions",
    "ConversationRelay sockets open (relay voice mode)",
    multiprocess_mode="livesum",
)
TRANSFERS = Counter(
    "voicebridge_transfers_total",
    "Bot transfer markers: dialled (a listed target) or refused (anything else)",
    ["outcome"],
)
REDIS_ERRORS = Counter("voicebridge_edge_redis_errors_total", "Turns not written: Redis failed")
OUTBOUND_REQUESTS = Counter(
    "voicebridge_outbound_requests_total",
    "Outbound calls API answers (POST /v1/calls, GET /v1/calls/{callSid}) by HTTP status",
    ["status"],
)

# Label children bound once: the webhook path does no label lookups.
ANSWERED = TURN_LATENCY.labels("answered")
LATE = TURN_LATENCY.labels("late")
REPROMPT_SILENCE = REPROMPTS.labels("silence")
REPROMPT_LATE = REPROMPTS.labels("late")
ROUTE_WEBHOOKS = Counter(
    "voicebridge_route_webhooks_total",
    "Twilio webhooks by the ROUTES_FILE route of the call's number ('none': no route, unavailable)",
    ["route"],
)
