"""`python -m devstack` (what `make run` runs): the whole stack on this machine until Ctrl-C.

Redis (REDIS_URL, or a private redis-server), botsim as the bot (unless BOTPRESS_WEBHOOK_ID or
BOTPRESS_CHAT_URL is set), the edge under gunicorn on EDGE_PORT (8080), two workers
(DEVSTACK_WORKERS), and callsim's Twilio REST stand-in for outbound calls (unless
TWILIO_API_BASE_URL is set; API_TOKEN defaults to devstack's demo token). Every other
variable the edge and workers read (found in their settings code by shared/settings_vars.py) is
passed on from this environment; devstack.stack.SET_BY_DEVSTACK lists the ones it sets itself.
"""

from __future__ import annotations

import signal
import sys
import threading

from devstack.processes import StartupError
from devstack.stack import Stack, stack_from_env
from shared.config import ConfigError


def main() -> int:
    try:
        config = stack_from_env()
    except ConfigError as exc:
        print(f"devstack: configuration error: {exc}", file=sys.stderr)
        return 2
    stack = Stack(config)
    print("devstack: starting redis, botsim, workers and the edge ...", flush=True)
    try:
        stack.start()
    except StartupError as exc:
        print(f"devstack: {exc}\n{stack.logs()}", file=sys.stderr)
        return 1
    pieces = [
        p for p in [stack.redis, stack.botsim, stack.twilio_api, *stack.workers, stack.edge] if p
    ]
    print(
        f"""
voicebridge is running.
  Redis:        {stack.redis_url}
  Bot:          {stack.chat_url}{"  (botsim)" if stack.botsim else ""}
  Edge:         {stack.edge_url}  ({len(stack.workers)} workers)
  Logs:         {stack.launcher.log_dir}

Twilio console -> your number -> Voice -> "A call comes in": Webhook, HTTP POST:
  {stack.public_url}/twilio/voice
  Call status changes (status callback):  {stack.public_url}/twilio/status
  Primary handler fails (fallback):       {stack.public_url}/twilio/fallback
  (Twilio must reach PUBLIC_URL: set PUBLIC_URL to your tunnel/ingress and TWILIO_ACCOUNT_SID /
   TWILIO_AUTH_TOKEN to your account's before `make run`.)

Call it from this terminal (another shell):
  .venv/bin/python -m callsim call --interactive --url {stack.edge_url}/twilio/voice \\
      --public-url {stack.public_url} --status-url {stack.edge_url}/twilio/status \\
      --account-sid {config.account_sid} --auth-token {config.auth_token}

{_outbound_help(stack)}
Ctrl-C stops everything.
""",
        flush=True,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    while not stopped.wait(1.0):
        dead = [p for p in pieces if not p.alive()]
        if dead:
            print(
                f"devstack: {dead[0].name} exited ({dead[0].proc.returncode}); stopping.\n"
                f"{dead[0].log_tail()}",
                file=sys.stderr,
            )
            break
    print("devstack: stopping ...", flush=True)
    stack.stop()
    return 0


def _outbound_help(stack: Stack) -> str:
    """How to make the bot call someone: through callsim's stand-in, or the user's Twilio."""
    token = stack.config.api_token
    if stack.twilio_api is None:
        where = "Twilio at TWILIO_API_BASE_URL"
    else:
        where = f"callsim's Twilio stand-in, {stack.twilio_api_url}"
    cps = stack.config.edge_env.get("OUTBOUND_MAX_CPS", "1")
    return f"""
Make the bot call someone (through {where}; API_TOKEN={token}):
  curl -s -X POST {stack.edge_url}/v1/calls -H 'Authorization: Bearer {token}' \\
      -H 'Content-Type: application/json' \\
      -d '{{"to": "+14155550100", "from": "+14155550199", "context": {{"reason": "demo"}}}}'
  The stand-in picks the callee by the number's last digit: 0-4 a person, 5 a machine,
  6 a fax, 7 busy, 8 no answer, 9 failed. What each call heard:
  curl -s {stack.twilio_api_url or "(stand-in URL)"}/_callsim/calls
A campaign (OUTBOUND_MAX_CPS={cps}: faster requests wait for their turn):
  .venv/bin/python -m callsim campaign --api {stack.edge_url}/v1/calls --token {token} \\
      --twilio-api {stack.twilio_api_url or "URL"} --from +14155550199 -n 200 --rate 5
"""


if __name__ == "__main__":
    sys.exit(main())
