"""What a sender raises when a provider does not take a message.

The send loop retries a `RetryableSendError` with back-off, gives up at once on a
`PermanentSendError`, and on `RecipientOptedOutError` (a kind of permanent error) also
records the channel opt-out; on `HardBounceError` (also permanent) it tells the channels,
which suppress the address and mark the message bounced.
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


class HardBounceError(PermanentSendError):
    """The receiving server refused the recipient's address for good (SMTP 5xx at RCPT TO,
    e.g. 550 5.1.1 user unknown): suppress the address, never email it again."""

    def __init__(
        self, channel: Channel, reason: str, *, address: str, code: str, status: str
    ) -> None:
        super().__init__(channel, reason, code=code)
        self.address = address
        self.status = status
        """The enhanced status code (5.1.1) when the server gave one, else `code`."""
