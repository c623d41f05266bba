"""Email over SMTP: an RFC 5322 message with a text and an HTML part, one-click unsubscribe
headers (RFC 2369 / RFC 8058), an optional DKIM signature covering them, and a Message-ID
we choose, so that opens, clicks and bounces map back to the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import email.utils
import html as html_lib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.contentmanager import raw_data_manager
from email.message import EmailMessage

import aiosmtplib
import dkim  # type: ignore[import-untyped]  # dkimpy ships no type information
import structlog

from services.nurture.channels.bounces import enhanced_status, smtp_refusal_is_hard_bounce
from services.nurture.channels.errors import (
    HardBounceError,
    PermanentSendError,
    RetryableSendError,
)
from services.nurture.channels.tokens import LinkBuilder, LinkClaims, TokenKind

log = structlog.get_logger(__name__)

# 7bit: every part is quoted-printable or base64, so any relay takes it (no 8BITMIME
# needed). 998: headers are not folded below the RFC 5322 hard limit; a folded
# List-Unsubscribe would otherwise be rewritten into RFC 2047 encoded-words, which no
# mailbox provider reads as a URL.
MESSAGE_POLICY = email.policy.SMTP.clone(cte_type="7bit", max_line_length=998)

ONE_CLICK = "List-Unsubscribe=One-Click"

DKIM_SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
"""RFC 8058 section 4: the DKIM signature must cover both unsubscribe headers."""


@dataclass(frozen=True, slots=True)
class OutboundEmail:
    """One rendered email to one lead."""

    message_id: str
    """Ours, unique per send (e.g. the send key); becomes `<message_id@domain>`."""
    lead_id: str
    to: str
    subject: str
    html: str
    text: str
    sequence_id: str | None = None
    step: int | None = None

    def claims(self) -> LinkClaims:
        return LinkClaims(
            kind=TokenKind.UNSUBSCRIBE,
            lead_id=self.lead_id,
            message_id=self.message_id,
            channel="email",
            sequence_id=self.sequence_id,
            step=self.step,
        )


@dataclass(frozen=True, slots=True)
class DkimKey:
    selector: str
    domain: str
    private_key_pem: bytes


@dataclass(frozen=True, slots=True)
class EmailIdentity:
    sender: str
    """The From header, e.g. `Acme Fitness <hello@acme.example>`."""
    message_id_domain: str
    unsubscribe_mailto: str | None = None
    """An address for mail-based unsubscribes, listed after the one-click URL."""
    track_opens: bool = True
    track_clicks: bool = True


def message_id_header(message_id: str, domain: str) -> str:
    return f"<{message_id}@{domain}>"


FAST_POLICY = email.policy.compat32.clone(linesep="\r\n", cte_type="7bit", max_line_length=998)
"""The same wire form as MESSAGE_POLICY for the messages we build, without parsing every
header we set into an object and folding it back (a third of the send loop's CPU): header
values stay the strings we give; a non-ASCII subject becomes RFC 2047 encoded-words and the
From's display name is encoded by `formataddr`. Used only when no value needs more (see
`_plain_enough`)."""


def _plain_enough(outbound: OutboundEmail) -> bool:
    """Whether FAST_POLICY writes this message's headers right: an ASCII recipient (a
    non-ASCII address is not an encoded-word) and no line breaks in any value (the full
    policy refuses those)."""
    return outbound.to.isascii() and not any(
        c in value for value in (outbound.to, outbound.subject) for c in "\r\n"
    )


def build_email(
    outbound: OutboundEmail, identity: EmailIdentity, links: LinkBuilder, now: datetime
) -> EmailMessage:
    """The message as it will be sent: tracked links and open pixel in the HTML part,
    unsubscribe headers, our Message-ID. (`email_bytes` writes it in its own policy.)"""
    claims = outbound.claims()
    fast = _plain_enough(outbound)
    message = EmailMessage(policy=FAST_POLICY if fast else MESSAGE_POLICY)
    # With FAST_POLICY the content helpers are named, as compat32 has none of its own.
    content = {"content_manager": raw_data_manager} if fast else {}
    message["From"] = (
        email.utils.formataddr(email.utils.parseaddr(identity.sender), charset="utf-8")
        if fast
        else identity.sender
    )
    message["To"] = outbound.to
    message["Subject"] = outbound.subject
    message["Date"] = email.utils.format_datetime(now)
    message["Message-ID"] = message_id_header(outbound.message_id, identity.message_id_domain)
    unsubscribe = f"<{links.unsubscribe_url(claims)}>"
    if identity.unsubscribe_mailto:
        unsubscribe += f", <mailto:{identity.unsubscribe_mailto}?subject=unsubscribe>"
    message["List-Unsubscribe"] = unsubscribe
    message["List-Unsubscribe-Post"] = ONE_CLICK
    message.set_content(outbound.text, **content)
    html = outbound.html
    if identity.track_clicks:
        html = links.track_links(html, claims)
    if identity.track_opens:
        pixel = html_lib.escape(links.open_pixel_url(claims))
        html = _before_body_end(
            html, f'<img src="{pixel}" width="1" height="1" alt="" style="display:none">'
        )
    message.add_alternative(html, subtype="html", **content)
    return message


def _before_body_end(html: str, tag: str) -> str:
    at = html.lower().rfind("</body>")
    return html + tag if at < 0 else html[:at] + tag + html[at:]


def dkim_sign(message: bytes, key: DkimKey) -> bytes:
    """`message` with a DKIM-Signature header (relaxed/relaxed) prepended."""
    signature: bytes = dkim.sign(
        message,
        key.selector.encode(),
        key.domain.encode(),
        key.private_key_pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[h.lower().encode() for h in DKIM_SIGNED_HEADERS],
    )
    return signature + message


def email_bytes(message: EmailMessage, dkim_key: DkimKey | None) -> bytes:
    raw = message.as_bytes(policy=FAST_POLICY if message.policy is FAST_POLICY else MESSAGE_POLICY)
    return raw if dkim_key is None else dkim_sign(raw, dkim_key)


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    use_tls: bool = False
    start_tls: bool | None = None
    """None: upgrade when the server offers STARTTLS."""
    timeout_s: float = 10.0
    connections: int = 4
    """Connections kept open to the server; one message at a time on each."""


class SmtpEmailSender:
    """Sends over a few kept-open SMTP connections; returns the Message-ID header.

    Raises RetryableSendError for 4xx replies, timeouts and connection failures,
    HardBounceError for a 5xx refusing the address itself (channels.bounces), and
    PermanentSendError for other 5xx replies (the message is refused)."""

    def __init__(
        self,
        config: SmtpConfig,
        identity: EmailIdentity,
        links: LinkBuilder,
        *,
        clock: Callable[[], datetime],
        dkim_key: DkimKey | None = None,
    ) -> None:
        self._config = config
        self._identity = identity
        self._links = links
        self._clock = clock
        self._dkim = dkim_key
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max(1, config.connections))
        self._envelope_from = email.utils.parseaddr(identity.sender)[1]

    def build(self, outbound: OutboundEmail) -> EmailMessage:
        return build_email(outbound, self._identity, self._links, self._clock())

    async def send(self, outbound: OutboundEmail) -> str:
        message = self.build(outbound)
        raw = email_bytes(message, self._dkim)
        async with self._slots:
            client = await self._client()
            try:
                await client.sendmail(self._envelope_from, [outbound.to], raw)
            except aiosmtplib.SMTPRecipientsRefused as refused:
                self._idle.put_nowait(client)
                first = refused.recipients[0]
                raise _by_code(
                    first.code, first.message, to=outbound.to, at_recipient=True
                ) from refused
            except aiosmtplib.SMTPResponseException as error:
                self._idle.put_nowait(client)
                raise _by_code(error.code, error.message, to=outbound.to) from error
            except (aiosmtplib.SMTPException, OSError) as error:
                client.close()  # the connection is in an unknown state: a fresh one next time
                raise RetryableSendError("email", f"SMTP connection failed: {error!r}") from error
            self._idle.put_nowait(client)
        return str(message["Message-ID"])

    async def _client(self) -> aiosmtplib.SMTP:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                return client
        config = self._config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            username=config.username or None,
            password=config.password or None,
            use_tls=config.use_tls,
            start_tls=config.start_tls,
            timeout=config.timeout_s,
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError) as error:
            raise RetryableSendError(
                "email", f"cannot reach the SMTP server {config.host}:{config.port}: {error!r}"
            ) from error
        return client

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):  # closing anyway
                await client.quit()


def _by_code(
    code: int, reply: str, *, to: str, at_recipient: bool = False
) -> RetryableSendError | PermanentSendError:
    """`at_recipient`: the reply refused RCPT TO (the address) rather than MAIL FROM or
    DATA (the message, the sender, or, rarely and with a 5.1.x code, the address)."""
    if 400 <= code < 500:
        return RetryableSendError("email", f"SMTP {code} {reply}", code=str(code))
    if smtp_refusal_is_hard_bounce(code, reply, at_recipient=at_recipient):
        return HardBounceError(
            "email",
            f"SMTP {code} {reply}",
            address=to,
            code=str(code),
            status=enhanced_status(reply) or str(code),
        )
    return PermanentSendError("email", f"SMTP {code} {reply}", code=str(code))
