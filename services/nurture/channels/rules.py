"""Pure decisions of the channels: what an inbound SMS asks for, whether a delivery report
moves a message forward. No I/O, no clock reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from services.nurture.channels.bounces import email_key
from shared.events import Channel

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


MessageStatus = Literal["queued", "sent", "delivered", "undelivered", "failed", "bounced"]

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


# --- what the channels remember ----------------------------------------------------------

EngagementKind = Literal["open", "click", "reply"]


@dataclass(frozen=True, slots=True)
class OptOut:
    """Whether a lead (or, for SMS, a phone number) may be messaged on a channel.

    SMS opt-outs are kept for the number as well as for the lead: STOP is a property of the
    handset (carriers and Twilio apply it to the number), and a text from a number no lead
    is known by must still stop messages to it. A hard-bounced email address is likewise
    kept for itself (`email`), so no lead with that address is emailed again."""

    channel: Channel
    opted_out: bool
    reason: str
    changed_at: datetime
    lead_id: str | None = None
    phone: str | None = None
    email: str | None = None
    """An email address suppressed for itself (a hard bounce), whichever lead has it."""

    @property
    def key(self) -> str:
        if self.lead_id:
            return lead_opt_out_key(self.lead_id, self.channel)
        if self.email:
            return email_key(self.email)
        return phone_key(self.phone or "")


def lead_opt_out_key(lead_id: str, channel: Channel) -> str:
    return f"lead:{lead_id}:{channel}"


def phone_key(phone: str) -> str:
    return f"phone:{phone}"


def opt_out_change(current: OptOut | None, wanted: OptOut) -> OptOut | None:
    """The state to store, or None when `wanted` changes nothing (a second STOP)."""
    was_out = current is not None and current.opted_out
    if was_out == wanted.opted_out and current is not None:
        return None
    if current is None and not wanted.opted_out:
        return None  # opting in someone who never opted out changes nothing
    return wanted


@dataclass(frozen=True, slots=True)
class MessageStatusRecord:
    message_id: str
    lead_id: str
    channel: Channel
    status: MessageStatus
    rank: int
    updated_at: datetime
    provider_id: str | None = None
    error_code: str | None = None
    sequence_id: str | None = None
    step: int | None = None


@dataclass(frozen=True, slots=True)
class Engagement:
    key: str
    """Unique per engagement worth counting: the first open of a message, the first click
    of each of its links, each inbound text (by the provider's id, so a redelivered webhook
    counts once)."""
    lead_id: str
    kind: EngagementKind
    at: datetime
    message_id: str | None = None
    channel: Channel | None = None
    sequence_id: str | None = None
    step: int | None = None
    url: str | None = None


def open_key(message_id: str | None, lead_id: str) -> str:
    return f"open:{message_id or lead_id}"


def click_key(message_id: str | None, lead_id: str, url: str) -> str:
    return f"click:{message_id or lead_id}:{url}"


def reply_key(inbound_id: str) -> str:
    return f"reply:{inbound_id}"


@dataclass(frozen=True, slots=True)
class SmsRecipient:
    """The lead last texted at a number: who an inbound text from it is from."""

    phone: str
    lead_id: str
    at: datetime
    message_id: str | None = None
