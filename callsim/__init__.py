"""callsim: a stand-in for Twilio Voice and its callers (signing, TwiML, one call, load)."""

from callsim.call import CallResult, Event, WebhookRecord, new_call_sid, place_call
from callsim.script import HANG_UP, Script, load_script
from callsim.signing import sign

__all__ = [
    "HANG_UP",
    "CallResult",
    "Event",
    "Script",
    "WebhookRecord",
    "load_script",
    "new_call_sid",
    "place_call",
    "sign",
]
