"""JSON log lines with call and turn ids, one configuration call per process."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

#: The ROUTES_FILE route of the call being handled (set once per request, relay session or
#: turn; tasks inherit it): every log line of that call carries it.
ROUTE: ContextVar[str | None] = ContextVar("route", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("call_sid", "turn_id", "kind", "status", "error"):
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        route = record.__dict__.get("route") or ROUTE.get()
        if route is not None:
            line["route"] = route
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
