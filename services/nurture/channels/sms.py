"""SMS through Twilio's Programmable Messaging REST API (httpx, no SDK on the send path):
`POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded, HTTP basic
auth with the account SID and auth token. The base URL is a setting, so the same code talks
to Twilio or to the local fake provider (`leadflow.sinks.FakeTwilio`).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import structlog

from services.nurture.channels.errors import (
    PermanentSendError,
    RecipientOptedOutError,
    RetryableSendError,
)
from services.nurture.channels.rules import CARRIER_OPT_OUT_CODES
from services.nurture.channels.tokens import LinkBuilder, LinkClaims, TokenKind

log = structlog.get_logger(__name__)

TOO_MANY_REQUESTS = 429


@dataclass(frozen=True, slots=True)
class OutboundSms:
    message_id: str
    """Ours, unique per send; carried back by the status callbacks."""
    lead_id: str
    to: str
    """E.164."""
    body: str
    sequence_id: str | None = None
    step: int | None = None

    def claims(self) -> LinkClaims:
        return LinkClaims(
            kind=TokenKind.SMS_STATUS,
            lead_id=self.lead_id,
            message_id=self.message_id,
            channel="sms",
            sequence_id=self.sequence_id,
            step=self.step,
        )


@dataclass(frozen=True, slots=True)
class TwilioConfig:
    base_url: str
    account_sid: str
    auth_token: str
    from_number: str | None = None
    messaging_service_sid: str | None = None
    """Takes precedence over `from_number` (the service picks the sender)."""
    timeout_s: float = 10.0


def messages_url(base_url: str, account_sid: str) -> str:
    return f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"


class TwilioSmsSender:
    """Returns Twilio's message SID. Raises RetryableSendError (5xx, 429, timeouts,
    connection failures), RecipientOptedOutError (21610) or PermanentSendError (other 4xx)."""

    def __init__(
        self,
        config: TwilioConfig,
        links: LinkBuilder,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not (config.from_number or config.messaging_service_sid):
            raise ValueError("Twilio needs a From number or a Messaging Service SID")
        self._config = config
        self._links = links
        self._url = messages_url(config.base_url, config.account_sid)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=config.timeout_s,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )

    def form(self, sms: OutboundSms) -> dict[str, str]:
        form = {
            "To": sms.to,
            "Body": sms.body,
            "StatusCallback": self._links.sms_status_callback_url(sms.claims()),
        }
        if self._config.messaging_service_sid:
            form["MessagingServiceSid"] = self._config.messaging_service_sid
        else:
            form["From"] = self._config.from_number or ""
        return form

    async def send(self, sms: OutboundSms) -> str:
        try:
            response = await self._client.post(
                self._url,
                data=self.form(sms),
                auth=(self._config.account_sid, self._config.auth_token),
            )
        except httpx.TransportError as error:  # timeouts, refused or dropped connections
            raise RetryableSendError("sms", f"Twilio unreachable: {error!r}") from error
        if response.is_success:
            sid = _json(response).get("sid")
            if not isinstance(sid, str) or not sid:
                raise RetryableSendError("sms", f"Twilio answered without a sid: {response.text}")
            return sid
        body = _json(response)
        code = str(body["code"]) if body.get("code") is not None else None
        reason = f"Twilio {response.status_code}: {body.get('message') or response.text[:200]}"
        if response.status_code >= 500 or response.status_code == TOO_MANY_REQUESTS:
            raise RetryableSendError("sms", reason, code=code)
        if code in CARRIER_OPT_OUT_CODES:
            raise RecipientOptedOutError("sms", reason, code=code)
        raise PermanentSendError("sms", reason, code=code)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
