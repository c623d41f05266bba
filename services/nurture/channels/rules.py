"""Pure decisions of the channels: what an inbound SMS asks for, whether a delivery report
moves a message forward. No I/O, no clock reads."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

# CTIA / Twilio's standard keywords, matched as the whole message (one word, any case).
OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})


class InboundIntent(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    REPLY = "reply"
    """Anything else: a person answered, which is engagement."""


def inbound_intent(body: str) -> InboundIntent:
    """A keyword counts only as the entire message ("stop" yes, "please stop" no): a
    sentence that merely contains one is a reply a person should read."""
    word = body.strip().upper()
    if word in OPT_OUT_KEYWORDS:
        return InboundIntent.OPT_OUT
    if word in OPT_IN_KEYWORDS:
        return InboundIntent.OPT_IN
    if word in HELP_KEYWORDS:
        return InboundIntent.HELP
    return InboundIntent.REPLY


MessageStatus = Literal["queued", "sent", "delivered", "undelivered", "failed"]

# Twilio's statuses of an outbound message, as the one we publish and its rank: a report
# never moves a message to a lower rank, and the first final status (rank 2) stays.
_TWILIO_STATUS: dict[str, tuple[MessageStatus, int]] = {
    "accepted": ("queued", 0),
    "scheduled": ("queued", 0),
    "queued": ("queued", 0),
    "sending": ("queued", 0),
    "sent": ("sent", 1),
    "delivered": ("delivered", 2),
    "read": ("delivered", 2),
    "undelivered": ("undelivered", 2),
    "failed": ("failed", 2),
    "canceled": ("failed", 2),
}
KNOWN_SMS_STATUSES = tuple(_TWILIO_STATUS)
FINAL_RANK = 2


def sms_status(twilio_status: str) -> tuple[MessageStatus, int] | None:
    """The status we publish for one of Twilio's and its rank; None if unknown."""
    return _TWILIO_STATUS.get(twilio_status.strip().lower())


def moves_forward(current_rank: int | None, new_rank: int) -> bool:
    """Whether a report of rank `new_rank` changes a message now at `current_rank` (None:
    no report yet). Reports arrive out of order; an equal or lower rank is old news."""
    return current_rank is None or new_rank > current_rank


# Twilio error codes on an outbound message that mean the recipient opted out with their
# carrier or with Twilio (21610: "attempt to send to unsubscribed recipient").
CARRIER_OPT_OUT_CODES = frozenset({"21610"})
