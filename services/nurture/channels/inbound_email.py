"""Reading an email that came back to us (a person's reply, an auto-reply, a delivery
status notification) and checking that our inbound relay sent it. Pure: no I/O, no clock.

**Which lead.** Every email we send has a Message-ID we chose, `<enrollment.step@domain>`
(`sending.message_id_of`, `channels.email.message_id_header`). A reply names it in
`In-Reply-To` / `References` (RFC 5322 3.6.4); a DSN (RFC 3464) returns the original's
headers, Message-ID included. Only ids in our Message-ID domain count; the enrollment id
in them is random (128 bits), so nobody names a message they were not sent.

**What kind.**
- A DSN: `multipart/report; report-type=delivery-status`. A recipient block with
  `Action: failed` and a permanent `Status` blaming the address (`channels.bounces`) is
  a hard bounce; `delayed`, soft and policy failures are only logged.
- Automated mail is never a reply: `Auto-Submitted` other than `no` (RFC 3834, what
  vacation responders and mail systems set), `X-Autoreply` / `X-Autorespond`,
  `Precedence: auto_reply|bulk|junk|list`, mailing-list headers, a null return path or a
  MAILER-DAEMON / postmaster sender (a bounce that is not RFC 3464), and subjects that
  announce an automatic answer ("Automatic reply:", "Out of Office", "자동 회신", "自动回复").
- Anything else is a person answering: a reply.

**Who sent it.** `X-Leadflow-Signature: sha256=<hex>`: HMAC-SHA256 of the exact request body
under the shared secret (`LEADFLOW_NURTURE_EMAIL_INBOUND_SECRET`), compared in constant time.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import getaddresses
from enum import StrEnum

from services.nurture.channels.bounces import dsn_is_hard_bounce, normalize_address
from services.nurture.rules import send_key

SIGNATURE_HEADER = "X-Leadflow-Signature"
_SCHEME = "sha256="


def sign_body(secret: str, body: bytes) -> str:
    """The `X-Leadflow-Signature` value for `body` (what the relay computes)."""
    return _SCHEME + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(secrets: Sequence[str], body: bytes, header: str | None) -> bool:
    """Whether `header` signs `body` under one of `secrets` (the current one, then those
    still accepted during a rotation)."""
    if not header:
        return False
    given = header.strip().lower().encode()
    # Every secret is tried (no early exit), each compare in constant time.
    matches = [hmac.compare_digest(sign_body(s, body).encode(), given) for s in secrets if s]
    return any(matches)


class MailKind(StrEnum):
    REPLY = "reply"
    HARD_BOUNCE = "hard_bounce"
    DELIVERY_REPORT = "delivery_report"
    """A DSN with no hard bounce in it (delayed, delivered, a soft or policy failure)."""
    AUTOMATED = "automated"
    """An auto-reply, a list mailing or a mail system's message: no person answered."""


class BadInboundMailError(ValueError):
    """Not something we can read as an RFC 5322 message."""


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One per-recipient block of a delivery status notification."""

    address: str
    action: str
    status: str
    diagnostic: str | None = None

    @property
    def hard_bounce(self) -> bool:
        return bool(self.address) and dsn_is_hard_bounce(self.action, self.status)


@dataclass(frozen=True, slots=True)
class InboundMail:
    inbound_id: str
    """Its own Message-ID, or `sha256:<digest of the bytes>` when it has none: the same
    email posted twice counts once."""
    kind: MailKind
    our_message_ids: tuple[str, ...]
    """Our message ids (`enrollment.step`) it refers to, the most direct first."""
    sender: str | None = None
    recipients: tuple[DsnRecipient, ...] = ()
    """A DSN's recipient blocks."""
    why: str = ""
    """What decided the kind (for the log)."""

    @property
    def hard_bounced(self) -> tuple[DsnRecipient, ...]:
        return tuple(r for r in self.recipients if r.hard_bounce)


_MESSAGE_ID = re.compile(r"<\s*([^<>@\s]+)@([^<>\s]+?)\s*>")


def our_message_ids(values: Iterable[str], domain: str) -> tuple[str, ...]:
    """The left parts of the `<id@domain>` in `values` whose domain is ours, in order,
    each once."""
    wanted = domain.lower()
    found: dict[str, None] = {}
    for value in values:
        for left, right in _MESSAGE_ID.findall(value or ""):
            if right.lower() == wanted:
                found.setdefault(left, None)
    return tuple(found)


def send_key_of(message_id: str) -> str | None:
    """The send record key of one of our message ids (`sending.message_id_of` reversed:
    `<enrollment>.<step>` -> `send:<enrollment>:<step>`); None if it is not one."""
    enrollment_id, dot, step = message_id.rpartition(".")
    if not dot or not enrollment_id or not step.isdigit():
        return None
    return send_key(enrollment_id, int(step))


_AUTO_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto[- ]?reply|autoreply|auto:|out of (the )?office|"
    r"abwesenheitsnotiz|réponse automatique|"
    r"자동\s*(회신|응답)|부재\s*중|自动回复|自動回覆|自動回復)",
    re.IGNORECASE,
)
_BULK_PRECEDENCE = frozenset({"auto_reply", "bulk", "junk", "list"})
_SYSTEM_SENDERS = frozenset({"mailer-daemon", "postmaster"})


def read_inbound(raw: bytes, *, message_id_domain: str) -> InboundMail:
    """What an inbound email is and which of our messages it is about. Raises
    BadInboundMailError for bytes with no header at all."""
    if not raw.strip():
        raise BadInboundMailError("the message is empty")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(message, EmailMessage) or not message.keys():
        raise BadInboundMailError("no RFC 5322 header fields found")
    own_id = _header(message, "Message-ID").strip()
    inbound_id = own_id or f"sha256:{hashlib.sha256(raw).hexdigest()}"
    sender = _first_address(_header(message, "From"))
    if _is_dsn(message):
        recipients, returned = _dsn_parts(message)
        ours = our_message_ids(
            [*returned, _header(message, "In-Reply-To"), _header(message, "References")],
            message_id_domain,
        )
        hard = any(r.hard_bounce for r in recipients)
        kind = MailKind.HARD_BOUNCE if hard else MailKind.DELIVERY_REPORT
        why = "; ".join(f"{r.address} {r.action} {r.status}" for r in recipients)
        return InboundMail(inbound_id, kind, ours, sender, recipients, why or "empty DSN")
    ours = our_message_ids(
        [_header(message, "In-Reply-To"), *reversed(_header(message, "References").split())],
        message_id_domain,
    )
    automated = _automated(message, sender)
    if automated is not None:
        return InboundMail(inbound_id, MailKind.AUTOMATED, ours, sender, why=automated)
    return InboundMail(inbound_id, MailKind.REPLY, ours, sender, why="a person's reply")


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    return "" if value is None else str(value)


def _first_address(value: str) -> str | None:
    addresses = [address for _, address in getaddresses([value]) if address]
    return addresses[0] if addresses else None


def _is_dsn(message: EmailMessage) -> bool:
    return (
        message.get_content_type() == "multipart/report"
        and str(message.get_param("report-type", "")).lower() == "delivery-status"
    )


def _dsn_parts(report: EmailMessage) -> tuple[tuple[DsnRecipient, ...], list[str]]:
    """The recipient blocks, and the Message-ID(s) of the returned original."""
    recipients: list[DsnRecipient] = []
    returned: list[str] = []
    for part in report.iter_parts():
        content_type = part.get_content_type()
        if content_type == "message/delivery-status":
            blocks = part.get_payload()
            # The first block is about the message (Reporting-MTA ...), the rest one each
            # per recipient; a block naming a recipient is one either way.
            for block in blocks if isinstance(blocks, list) else []:
                recipient = _recipient(block) if isinstance(block, Message) else None
                if recipient is not None:
                    recipients.append(recipient)
        elif content_type == "message/rfc822":
            for original in part.iter_parts():
                returned.append(_header(original, "Message-ID"))
        elif content_type == "text/rfc822-headers":
            headers = email.message_from_string(
                str(part.get_content()), policy=email.policy.default
            )
            returned.append(_header(headers, "Message-ID"))
    return tuple(recipients), returned


def _recipient(block: Message) -> DsnRecipient | None:
    named = _header(block, "Final-Recipient") or _header(block, "Original-Recipient")
    if not named:
        return None
    # "rfc822; dana@example.com": the address type, then the address.
    address = normalize_address(named.partition(";")[2] or named)
    diagnostic = _header(block, "Diagnostic-Code").partition(";")[2].strip() or None
    return DsnRecipient(
        address=address,
        action=_header(block, "Action").strip().lower(),
        status=_header(block, "Status").strip(),
        diagnostic=diagnostic,
    )


def _automated(message: EmailMessage, sender: str | None) -> str | None:
    """Why this is no person's answer, or None if it is one."""
    auto_submitted = _header(message, "Auto-Submitted").split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return f"Auto-Submitted: {auto_submitted}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if message.get(name) is not None:
            return f"{name} header"
    for name in ("Precedence", "X-Precedence"):
        precedence = _header(message, name).strip().lower()
        if precedence in _BULK_PRECEDENCE:
            return f"{name}: {precedence}"
    if message.get("List-Id") is not None or message.get("List-Unsubscribe") is not None:
        return "a mailing list's message"
    if _header(message, "Return-Path").strip() == "<>":
        return "null return path (a mail system's message)"
    if sender is not None and sender.split("@")[0].lower() in _SYSTEM_SENDERS:
        return f"sent by {sender}"
    if _AUTO_SUBJECT.match(_header(message, "Subject")):
        return "an automatic-reply subject"
    return None
