"""What a sender raises when a provider does not take a message.

The send loop retries a `RetryableSendError` with back-off, gives up at once on a
`PermanentSendError`, and on `RecipientOptedOutError` (a kind of permanent error) also
records the channel opt-out.
"""

from __future__ import annotations

from shared.events import Channel


class SendError(Exception):
    def __init__(self, channel: Channel, reason: str, *, code: str | None = None) -> None:
        super().__init__(f"{channel}: {reason}" + (f" (code {code})" if code else ""))
        self.channel = channel
        self.reason = reason
        self.code = code


class RetryableSendError(SendError):
    """The provider may take it later: 5xx, 429, timeouts, connection failures."""


class PermanentSendError(SendError):
    """Sending it again will fail again: the provider refused the message (4xx)."""


class RecipientOptedOutError(PermanentSendError):
    """The recipient opted out at the carrier or provider (Twilio 21610): mark the channel
    opted out for this lead."""
