"""The worker's metrics, served on WORKER_METRICS_PORT at /metrics.

With WORKER_PROCESSES > 1 the supervisor serves every process's metrics at once (prometheus
multiprocess mode); each gauge says how its processes' values add up there."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS_S

TURNS = Counter(
    "voicebridge_worker_turns_total",
    "Turns finished by this worker (route: the ROUTES_FILE route, 'default' without one)",
    ["kind", "result", "route"],
)
TURN_SECONDS = Histogram(
    "voicebridge_worker_turn_seconds",
    "Stream entry written to reply sent (queue wait included)",
    buckets=LATENCY_BUCKETS_S,
)
IN_FLIGHT = Gauge(
    "voicebridge_worker_turns_in_flight",
    "Turns this worker is working on",
    multiprocess_mode="livesum",
)
BACKLOG = Gauge(
    "voicebridge_worker_backlog",
    "Turns read and waiting for a free slot (all busy): an autoscaler's signal",
    multiprocess_mode="livesum",
)
BACKLOG_EXPIRED = Counter(
    "voicebridge_worker_backlog_expired_total",
    "Turns started after their deadline had passed (answered as late replies)",
)
BACKLOG_SHARED = Counter(
    "voicebridge_worker_backlog_shared_total",
    "Turns taken from another worker's backlog because this one had free slots",
)
STREAM_LAG = Gauge(
    "voicebridge_stream_lag",
    "Turns in the stream not yet read by the group",
    multiprocess_mode="max",
)
STREAM_PENDING = Gauge(
    "voicebridge_stream_pending", "Turns read but not yet acked", multiprocess_mode="max"
)
LISTEN_OPENED = Counter("voicebridge_bot_listen_opened", "Listen (SSE) streams opened to Botpress")
BOT_ERRORS = Counter("voicebridge_bot_errors_total", "Failed Botpress exchanges", ["kind"])
TRAILING_MESSAGES = Counter(
    "voicebridge_bot_trailing_messages_total",
    "Bot messages that came after their turn's reply went out (kept as late replies)",
)
LATE_REPLIES = Counter("voicebridge_late_replies_total", "Replies kept for the next webhook")
RECLAIMED = Counter("voicebridge_reclaimed_turns_total", "Turns taken over from a dead worker")
DEAD_LETTERS = Counter("voicebridge_dead_letters_total", "Turns given up after MAX_DELIVERIES")
