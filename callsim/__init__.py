"""callsim: a stand-in for Twilio Voice and its callers (signing, TwiML, one call, load),
in gather mode and in ConversationRelay mode (callsim.relay)."""

from typing import Any

from callsim.call import (
    CallResult,
    Event,
    WebhookRecord,
    WebhookRetry,
    new_call_sid,
    place_call,
)
from callsim.relay import RelayState, TalkCycle, validate_frame
from callsim.script import HANG_UP, BargeIn, Dtmf, Script, load_script
from callsim.signing import sign

__all__ = [
    "HANG_UP",
    "BargeIn",
    "CallResult",
    "Dtmf",
    "Event",
    "LoadConfig",
    "LoadReport",
    "RelayState",
    "Script",
    "TalkCycle",
    "WebhookRecord",
    "WebhookRetry",
    "load_script",
    "new_call_sid",
    "place_call",
    "run_load",
    "sign",
    "validate_frame",
]


def __getattr__(name: str) -> Any:
    # Load mode needs hdrhistogram (a dev dependency): import it only when asked for.
    if name in ("LoadConfig", "LoadReport", "run_load"):
        from callsim import load

        return getattr(load, name)
    raise AttributeError(f"module 'callsim' has no attribute {name!r}")
