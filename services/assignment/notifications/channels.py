"""The senders: email over SMTP and signed webhooks over HTTP.

Each raises `DeliveryError` saying whether trying again could help: a mail server or a
receiver that is down or slow is temporary (the job is retried with back-off), one that
refuses the message for good (5xx SMTP reply, 4xx HTTP answer) is permanent.
"""

from __future__ import annotations

import email.message
from dataclasses import dataclass
from typing import Literal

import aiosmtplib
import httpx

from services.assignment.notifications.rules import EmailMessage, WebhookRequest

SmtpSecurity = Literal["none", "starttls", "tls"]

# HTTP answers that mean "not now" rather than "never": the job is retried.
_TEMPORARY_HTTP = frozenset({408, 425, 429})


class DeliveryError(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class SmtpServer:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    security: SmtpSecurity = "none"
    timeout_s: float = 10.0
    validate_certs: bool = True


class EmailSender:
    """Sends each message in its own SMTP session (notifications are few and urgent; a
    pooled connection would only add a failure mode)."""

    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def send(self, message: EmailMessage) -> None:
        server = self._server
        mail = email.message.EmailMessage()
        mail["From"] = server.sender
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail["Message-ID"] = message.message_id
        mail.set_content(message.body)
        try:
            await aiosmtplib.send(
                mail,
                hostname=server.host,
                port=server.port,
                username=server.username,
                password=server.password,
                use_tls=server.security == "tls",
                start_tls=server.security == "starttls",
                validate_certs=server.validate_certs,
                timeout=server.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            permanent = all(refused.code >= 500 for refused in error.recipients)
            reasons = "; ".join(f"{r.code} {r.message}" for r in error.recipients)
            raise DeliveryError(f"recipient refused: {reasons}", permanent=permanent) from error
        except aiosmtplib.SMTPAuthenticationError as error:
            # Wrong credentials are the operator's to fix: keep retrying meanwhile.
            raise DeliveryError(f"SMTP login refused: {error.code}", permanent=False) from error
        except aiosmtplib.SMTPResponseException as error:
            raise DeliveryError(
                f"SMTP {error.code} {error.message}", permanent=error.code >= 500
            ) from error
        except (aiosmtplib.SMTPException, OSError) as error:
            raise DeliveryError(f"SMTP server unreachable: {error!r}", permanent=False) from error


class WebhookSender:
    def __init__(self, client: httpx.AsyncClient, *, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def send(self, request: WebhookRequest) -> None:
        try:
            response = await self._client.post(
                request.url,
                content=request.body,
                headers=dict(request.headers),
                timeout=self._timeout_s,
            )
        except httpx.HTTPError as error:
            raise DeliveryError(f"webhook unreachable: {error!r}", permanent=False) from error
        if response.is_success:
            return
        status = response.status_code
        permanent = 400 <= status < 500 and status not in _TEMPORARY_HTTP
        raise DeliveryError(f"webhook answered {status}", permanent=permanent)
