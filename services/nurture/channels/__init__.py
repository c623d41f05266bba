"""How nurture reaches people and hears back: email over SMTP, SMS through Twilio, the
signed links in those messages, and the webhooks (unsubscribe, tracking, Twilio).

The send loop (services/nurture/usecases.py) uses a `Sender` per channel: `send` returns
the provider's message id (email: the Message-ID header we chose; SMS: Twilio's SID) or
raises one of `channels.errors` (retryable, permanent, or recipient opted out). What the
webhooks change (opt-outs per channel, message statuses, engagements) is kept by
`channels.store`, which the send loop reads in batches.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from services.nurture.channels.email import OutboundEmail
from services.nurture.channels.sms import OutboundSms

M_contra = TypeVar("M_contra", OutboundEmail, OutboundSms, contravariant=True)


class Sender(Protocol[M_contra]):
    async def send(self, message: M_contra, /) -> str:
        """The provider's id of the accepted message. Raises RetryableSendError,
        PermanentSendError or RecipientOptedOutError (services.nurture.channels.errors)."""
        ...

    async def close(self) -> None: ...


EmailSender = Sender[OutboundEmail]
SmsSender = Sender[OutboundSms]
