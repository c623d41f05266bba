"""Pure decisions about email addresses that cannot be delivered to (hard bounces). No I/O,
no clock reads.

A hard bounce comes either at send time (the receiving server refuses the recipient with
a 5xx SMTP reply) or later, as a delivery status notification (RFC 3464) with `Action:
failed` and a permanent `Status: 5.x.x`. Either way the address is suppressed for good
(an email opt-out with reason `hard_bounce`, for the lead and for the address), the
message's status becomes `bounced` and nurture's consumer blocks the lead's email channel.

Not every permanent refusal is the address's fault. The enhanced status code's subject
(RFC 3463, the middle number) says whose it is: x.3 (the receiving system), x.5
(protocol), x.6 (content) and x.7 (security or policy: our message or our IP refused, e.g.
as spam) are about the message or the sender, and suppressing the lead's address for them
would silently drop a reachable person. Those remain plain permanent failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HARD_BOUNCE_REASON = "hard_bounce"
"""The reason stored with the suppression (and the `error_code` prefix we never invent)."""

BOUNCED_RANK = 3
"""A bounce is the last word on an email: it outranks every delivery report (rank 2 is
the final one, `channels.rules.FINAL_RANK`), since a relay's acceptance was no delivery."""

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_NOT_THE_ADDRESS = frozenset({3, 5, 6, 7})
"""Enhanced-status subjects that blame the message or the sender, not the recipient."""
_RECIPIENT_UNKNOWN_CODES = frozenset({550, 551, 553})
"""Basic SMTP replies to RCPT TO that refuse the mailbox itself (RFC 5321 4.2.3). 552 at
RCPT is to be treated as temporary, and 554 is too vague to blame the address."""


@dataclass(frozen=True, slots=True)
class HardBounce:
    """An address that will never take our mail."""

    address: str
    lead_id: str | None = None
    """None when a notification names no message we know (the address is still suppressed)."""
    message_id: str | None = None
    """Ours (`<enrollment>.<step>`), when the bounce names the message it is about."""
    sequence_id: str | None = None
    step: int | None = None
    status: str | None = None
    """The enhanced status code (5.1.1) or, lacking one, the SMTP reply code (550)."""
    diagnostic: str | None = None


def enhanced_status(text: str) -> str | None:
    """The RFC 3463 enhanced status code a reply or `Status:` field starts with."""
    match = _ENHANCED.match(text)
    return None if match is None else ".".join(match.groups())


def is_permanent_failure_of_address(status: str) -> bool:
    """A `5.x.x` status whose subject blames the recipient's address or mailbox (or
    nothing in particular: `5.0.0` is what many servers say for "user unknown")."""
    match = _ENHANCED.match(status)
    if match is None or match.group(1) != "5":
        return False
    return int(match.group(2)) not in _NOT_THE_ADDRESS


def smtp_refusal_is_hard_bounce(code: int, reply: str, *, at_recipient: bool) -> bool:
    """Whether an SMTP refusal at send time means the address is undeliverable.

    At RCPT TO, a 550/551/553 (or a 5xx whose enhanced code blames the address) is; after
    DATA or at MAIL FROM only an enhanced code naming the address (5.1.x) is, since those
    replies are usually about the message (size, content, spam) or about us."""
    if not 500 <= code < 600:
        return False
    status = enhanced_status(reply)
    if status is not None:
        if at_recipient:
            return is_permanent_failure_of_address(status)
        return status.startswith("5.1.")
    return at_recipient and code in _RECIPIENT_UNKNOWN_CODES


def dsn_is_hard_bounce(action: str, status: str) -> bool:
    """A DSN recipient block with `Action: failed` and a permanent status blaming the
    address. `delayed` (still trying), `delivered`, `relayed` and `expanded` never are."""
    return action.strip().lower() == "failed" and is_permanent_failure_of_address(status)


def normalize_address(address: str) -> str:
    """The form suppressions are kept and compared in. Local parts are case-sensitive in
    theory (RFC 5321) but not at any mailbox provider, and a bounce for Dana@Example.com
    must stop mail to dana@example.com."""
    return address.strip().strip("<>").strip().lower()


def email_key(address: str) -> str:
    """The `_id` of an address's suppression (beside the lead's `lead:<id>:email`)."""
    return f"email:{normalize_address(address)}"
