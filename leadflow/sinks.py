"""Local stand-ins for the mail and SMS providers, for `leadflow up`, the tests and the
benchmarks. Both listen on 127.0.0.1 only and keep what arrived.

- `MailSink`: a real SMTP server (aiosmtpd) that stores every message it is given.
- `FakeTwilio`: Twilio's `Messages.json` endpoint (basic auth, Twilio's parameter checks
  and error codes, Twilio-shaped JSON with a `sid`), which then reports queued -> sent ->
  delivered to the message's `StatusCallback`, signed with `X-Twilio-Signature` as Twilio
  signs it. It can be told to fail: numbers that answer 21610 (opted out at the carrier),
  numbers that are undeliverable, or the next N requests failing with a 5xx. It can also
  play a lead texting back (`POST /sink/sms/inbound`), signed, to the inbound webhook.
- Either can play the far end of an email (`POST /sink/mail/{i}/reply` and `/bounce`): a
  reply to the email, or its recipient's server returning a DSN (RFC 3464), posted raw and
  signed (`X-Leadflow-Signature`) to nurture's inbound-mail webhook.
- The same HTTP server shows a page listing every email and SMS "sent" (`GET /`), and the
  same as JSON (`GET /sink/mail`, `GET /sink/sms`) for tests, and for benchmarks a light
  list of arrivals (`GET /sink/arrivals`, `?count=1`), `POST /sink/clear` and
  `POST /sink/sms/callbacks` (`{"enabled": false}`: no status callbacks).

`python -m leadflow.sinks` runs both until stopped; `leadflow up` starts it so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import html
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import httpx
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from leadflow.localinfra import LOOPBACK, free_port
from services.nurture.channels.inbound_email import SIGNATURE_HEADER, sign_body
from services.nurture.channels.segments import count_segments

log = structlog.get_logger(__name__)

DEV_ACCOUNT_SID = "AC" + "0" * 31 + "1"
DEV_AUTH_TOKEN = "leadflow-fake-twilio-token"  # noqa: S105 - the local fake's, not a secret
DEV_EMAIL_INBOUND_SECRET = "leadflow-dev-inbound-email-change-me"  # noqa: S105 - nurture's dev default
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_BODY = 1600
OPTED_OUT = 21610
UNDELIVERED = "30003"  # Twilio: unreachable destination handset
SMS_INBOUND = "/v1/sms/inbound"
_HEADERS_ONLY = BytesParser(policy=email.policy.compat32)


def _now() -> datetime:
    return datetime.now(UTC)


# --- mail ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    received_at: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes

    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    def header(self, name: str) -> str | None:
        value = self.message()[name]
        return None if value is None else str(value)

    def part(self, content_type: str) -> str | None:
        body = self.message().get_body((content_type.split("/")[1],))
        return None if body is None else str(body.get_content())

    def reply(self, text: str) -> bytes:
        """The recipient's answer to this email, as their mail client would write it."""
        original = self.message()
        answer = EmailMessage(policy=email.policy.SMTP)
        answer["From"] = self.rcpt_tos[0] if self.rcpt_tos else "lead@example.com"
        answer["To"] = str(original["From"] or self.mail_from)
        answer["Subject"] = f"Re: {original['Subject'] or ''}"
        answer["Date"] = format_datetime(_now())
        answer["Message-ID"] = make_msgid(domain="sink.leadflow.test")
        if original["Message-ID"]:
            answer["In-Reply-To"] = answer["References"] = str(original["Message-ID"])
        answer.set_content(text)
        return answer.as_bytes()

    def bounce(self, status: str = "5.1.1") -> bytes:
        """The DSN (RFC 3464) the recipient's server would return: `Action: failed`, this
        status, and the original's headers."""
        address = self.rcpt_tos[0] if self.rcpt_tos else ""
        headers = "".join(f"{name}: {value}\r\n" for name, value in self.message().items())
        return (
            "From: Mail Delivery System <MAILER-DAEMON@sink.leadflow.test>\r\n"
            f"To: {self.mail_from}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            f"Date: {format_datetime(_now())}\r\n"
            f"Message-ID: {make_msgid(domain='sink.leadflow.test')}\r\n"
            "Auto-Submitted: auto-replied\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="DSN"\r\n'
            "\r\n--DSN\r\nContent-Type: text/plain\r\n\r\n"
            f"Your message to {address} could not be delivered.\r\n"
            "--DSN\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; sink.leadflow.test\r\n\r\n"
            f"Final-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: {status}\r\n"
            f"Diagnostic-Code: smtp; 550 {status} <{address}>: no such user\r\n"
            f"\r\n--DSN\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}"
            "\r\n--DSN--\r\n"
        ).encode()

    def message_id(self) -> str | None:
        """The Message-ID header, from the header block alone (no MIME parsing: a listing of
        every arrival stays cheap with 100,000 of them)."""
        headers = _HEADERS_ONLY.parsebytes(self.data, headersonly=True)
        value = headers["Message-ID"]
        return None if value is None else str(value).strip()

    def summary(self) -> dict[str, Any]:
        message = self.message()  # parsed once for every field below

        def header(name: str) -> str | None:
            value = message[name]
            return None if value is None else str(value)

        text = message.get_body(("plain",))
        return {
            "received_at": self.received_at,
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "subject": header("Subject"),
            "message_id": header("Message-ID"),
            "list_unsubscribe": header("List-Unsubscribe"),
            "list_unsubscribe_post": header("List-Unsubscribe-Post"),
            "dkim_signed": header("DKIM-Signature") is not None,
            "text": None if text is None else str(text.get_content()),
        }


class _MailHandler:
    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        code = self._sink.refused.get(address.lower())
        if code is not None:
            return f"{code} {'5.1.1 no such user' if code >= 500 else '4.2.1 try later'}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        content = envelope.original_content or envelope.content
        self._sink.keep(
            ReceivedMail(
                received_at=_now().isoformat(),
                mail_from=str(envelope.mail_from),
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=bytes(content),
            )
        )
        return "250 Message accepted for delivery"


class MailSink:
    """An SMTP server on loopback keeping every message (and appending it, as JSON lines,
    to `record_to` when given, read back at the next start)."""

    def __init__(
        self, *, port: int = 0, host: str = LOOPBACK, record_to: Path | None = None
    ) -> None:
        from aiosmtpd.controller import Controller  # noqa: PLC0415 - a dev/local dependency

        self.host = host
        self.port = port or free_port()
        self.refused: dict[str, int] = {}
        """Recipient (lower case) -> the SMTP code RCPT TO answers, e.g. 550 or 451."""
        self._lock = threading.Lock()
        self._messages: list[ReceivedMail] = []
        self._record_to = record_to
        self._controller = Controller(
            _MailHandler(self), hostname=host, port=self.port, decode_data=False
        )

    def start(self) -> None:
        if self._record_to is not None and self._record_to.exists():
            with self._record_to.open() as lines:
                for line in lines:
                    doc = json.loads(line)
                    doc["rcpt_tos"] = tuple(doc["rcpt_tos"])
                    doc["data"] = base64.b64decode(doc["data"])
                    self._messages.append(ReceivedMail(**doc))
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def keep(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._messages.append(mail)
            if self._record_to is not None:
                doc = {**asdict(mail), "data": base64.b64encode(mail.data).decode()}
                doc["rcpt_tos"] = list(mail.rcpt_tos)
                with self._record_to.open("a") as out:
                    out.write(json.dumps(doc) + "\n")

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def __enter__(self) -> MailSink:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# --- SMS ----------------------------------------------------------------------------------


@dataclass
class FakeSms:
    sid: str
    direction: str
    """outbound-api (we sent it), inbound (a lead texted), reply (our TwiML answer)."""
    to: str
    from_: str
    body: str
    status: str
    created_at: str
    segments: int
    encoding: str
    status_callback: str | None = None
    error_code: str | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    """Each status callback posted: status and the HTTP status it got."""

    def public(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["from"] = doc.pop("from_")
        return doc


@dataclass(frozen=True)
class Failure:
    http_status: int
    code: int
    message: str


class FakeTwilio:
    """Twilio's Messages API on loopback, in a thread of its own (usable from any loop).

    `base_url` goes where Twilio's would (`https://api.twilio.com`)."""

    def __init__(
        self,
        *,
        account_sid: str = DEV_ACCOUNT_SID,
        auth_token: str = DEV_AUTH_TOKEN,
        port: int = 0,
        host: str = LOOPBACK,
        mail_sink: MailSink | None = None,
        inbound_url: str | None = None,
        callback_delay_s: float = 0.02,
        record_to: Path | None = None,
        email_inbound_url: str | None = None,
        email_inbound_secret: str = DEV_EMAIL_INBOUND_SECRET,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = port or free_port()
        self.mail_sink = mail_sink
        self.inbound_url = inbound_url
        """Where `POST /sink/sms/inbound` delivers a lead's text (nurture's /v1/sms/inbound)."""
        self.email_inbound_url = email_inbound_url
        """Where replies and bounces to emails go (nurture's /v1/email/inbound)."""
        self.email_inbound_secret = email_inbound_secret
        self.callback_delay_s = callback_delay_s
        self.opted_out: set[str] = set()
        """Numbers that answer 21610, as Twilio does after the recipient texted STOP."""
        self.undeliverable: set[str] = set()
        """Numbers whose messages end `undelivered` (error 30003) instead of `delivered`."""
        self.failing: dict[str, int] = {}
        """Numbers the API refuses with this Twilio error code (HTTP 400), e.g. 21614."""
        self.send_callbacks = True
        self._fail_next: list[Failure] = []
        self._validator = RequestValidator(auth_token)
        self._lock = threading.Lock()
        self._messages: list[FakeSms] = []
        self._record_to = record_to
        self._serial = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.app = Starlette(
            routes=[
                Route(
                    "/2010-04-01/Accounts/{account_sid}/Messages.json",
                    self._create_message,
                    methods=["POST"],
                ),
                Route("/", self._page, methods=["GET"]),
                Route("/sink/sms", self._list_sms, methods=["GET"]),
                Route("/sink/mail", self._list_mail, methods=["GET"]),
                Route("/sink/mail/{index:int}.eml", self._raw_mail, methods=["GET"]),
                Route("/sink/mail/{index:int}/{answer:str}", self._answer_mail, methods=["POST"]),
                Route("/sink/sms/inbound", self._simulate_inbound, methods=["POST"]),
                Route("/sink/sms/failures", self._set_failures, methods=["POST"]),
                Route("/sink/sms/callbacks", self._set_callbacks, methods=["POST"]),
                Route("/sink/arrivals", self._arrivals, methods=["GET"]),
                Route("/sink/clear", self._clear, methods=["POST"]),
            ]
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        if self._record_to is not None and self._record_to.exists():
            with self._record_to.open() as lines:
                self._messages = [FakeSms(**json.loads(line)) for line in lines]
        config = uvicorn.Config(
            self.app, host=self.host, port=self.port, log_config=None, access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="fake-twilio", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the fake Twilio did not start on {self.base_url}")
            time.sleep(0.01)

    def _run(self) -> None:
        assert self._server is not None
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        assert self._server is not None
        self._loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(timeout=10.0) as client:
            self._client = client
            await self._server.serve()
            if self._pending:  # callbacks still on their way get to finish
                await asyncio.wait(self._pending, timeout=5.0)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def __enter__(self) -> FakeTwilio:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- what tests look at and set -------------------------------------------------------

    @property
    def messages(self) -> list[FakeSms]:
        """Messages sent through the API (not inbound texts or replies), oldest first."""
        with self._lock:
            return [m for m in self._messages if m.direction == "outbound-api"]

    @property
    def conversation(self) -> list[FakeSms]:
        with self._lock:
            return list(self._messages)

    def fail_next(self, count: int, *, http_status: int = 500, code: int = 20500) -> None:
        """The next `count` message requests fail (Twilio's 20500 is its internal error)."""
        with self._lock:
            self._fail_next.extend([Failure(http_status, code, "Internal Server Error")] * count)

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """The `X-Twilio-Signature` Twilio would send with `params` posted to `url`."""
        signature: str = self._validator.compute_signature(url, dict(params))
        return signature

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    # --- the API --------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return (
            secrets.compare_digest(user, self.account_sid)
            and secrets.compare_digest(password, self.auth_token)
            and request.path_params["account_sid"] == self.account_sid
        )

    async def _create_message(self, request: Request) -> Response:
        if not self._authorised(request):
            return _twilio_error(401, 20003, "Authentication Error - invalid username")
        form = await request.form()
        params = {key: str(value) for key, value in form.items()}
        with self._lock:
            failure = self._fail_next.pop(0) if self._fail_next else None
        if failure is not None:
            return _twilio_error(failure.http_status, failure.code, failure.message)
        to, body = params.get("To", ""), params.get("Body", "")
        sender = params.get("From") or params.get("MessagingServiceSid") or ""
        if not _E164.match(to):
            return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not sender:
            return _twilio_error(400, 21603, "A 'From' phone number is required.")
        if "From" in params and not _E164.match(params["From"]):
            return _twilio_error(400, 21212, f"The 'From' number {params['From']} is not valid.")
        if not body:
            return _twilio_error(400, 21602, "Message body is required.")
        if len(body) > MAX_BODY:
            return _twilio_error(400, 21617, "The concatenated message body exceeds 1600.")
        if to in self.opted_out:
            return _twilio_error(400, OPTED_OUT, "Attempt to send to unsubscribed recipient")
        if to in self.failing:
            return _twilio_error(400, self.failing[to], f"refused as told for {to}")
        count = count_segments(body)
        created = _now()
        sms = FakeSms(
            sid=f"SM{next(self._serial):032x}",
            direction="outbound-api",
            to=to,
            from_=params.get("From", ""),
            body=body,
            status="queued",
            created_at=created.isoformat(),
            segments=count.segments,
            encoding=count.encoding,
            status_callback=params.get("StatusCallback"),
        )
        self._keep(sms)
        if sms.status_callback and self.send_callbacks:
            task = asyncio.create_task(self._report(sms, params))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return JSONResponse(self._resource(sms, params, created), status_code=201)

    def _resource(self, sms: FakeSms, params: dict[str, str], created: datetime) -> dict[str, Any]:
        stamp = format_datetime(created, usegmt=True)
        return {
            "sid": sms.sid,
            "account_sid": self.account_sid,
            "messaging_service_sid": params.get("MessagingServiceSid"),
            "to": sms.to,
            "from": sms.from_ or None,
            "body": sms.body,
            "status": sms.status,
            "num_segments": str(sms.segments),
            "num_media": "0",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "price": None,
            "price_unit": "USD",
            "error_code": None,
            "error_message": None,
            "date_created": stamp,
            "date_updated": stamp,
            "date_sent": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sms.sid}.json",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sms.sid}/Media.json"
            },
        }

    async def _report(self, sms: FakeSms, params: dict[str, str]) -> None:
        last = "undelivered" if sms.to in self.undeliverable else "delivered"
        for status in ("queued", "sent", last):
            await asyncio.sleep(self.callback_delay_s)
            with self._lock:
                sms.status = status
                if status == "undelivered":
                    sms.error_code = UNDELIVERED
            await self._post_status(sms, params, status)

    async def _post_status(self, sms: FakeSms, params: dict[str, str], status: str) -> None:
        """One status callback, as Twilio posts it."""
        assert sms.status_callback is not None and self._client is not None
        form = {
            "MessageSid": sms.sid,
            "SmsSid": sms.sid,
            "AccountSid": self.account_sid,
            "From": sms.from_,
            "To": sms.to,
            "MessageStatus": status,
            "SmsStatus": status,
            "ApiVersion": "2010-04-01",
        }
        if params.get("MessagingServiceSid"):
            form["MessagingServiceSid"] = params["MessagingServiceSid"]
        if status == "undelivered":
            form["ErrorCode"] = UNDELIVERED
        headers = {"X-Twilio-Signature": self.sign(sms.status_callback, form)}
        try:
            response = await self._client.post(sms.status_callback, data=form, headers=headers)
            answer: int | str = response.status_code
        except httpx.HTTPError as error:
            # Twilio does not retry status callbacks either; the page shows what happened.
            log.warning("status callback failed", url=sms.status_callback, error=repr(error))
            answer = repr(error)
        with self._lock:
            sms.callbacks.append({"status": status, "answer": answer})
        self._rewrite_record()

    async def _simulate_inbound(self, request: Request) -> Response:
        """A lead texts back: posted to `inbound_url` signed; nurture's TwiML reply is kept."""
        form = await request.form()
        sender, body = str(form.get("From", "")), str(form.get("Body", ""))
        to = str(form.get("To", "")) or self._last_sender_to(sender)
        if not _E164.match(sender) or not body:
            return JSONResponse({"detail": "From (E.164) and Body are required"}, status_code=422)
        if not self.inbound_url:
            return JSONResponse({"detail": "no inbound URL is configured"}, status_code=409)
        assert self._client is not None
        sid = f"SM{next(self._serial):032x}"
        count = count_segments(body)
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "SmsMessageSid": sid,
            "AccountSid": self.account_sid,
            "From": sender,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": str(count.segments),
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }
        self._keep(
            FakeSms(
                sid,
                "inbound",
                to,
                sender,
                body,
                "received",
                _now().isoformat(),
                count.segments,
                count.encoding,
            )
        )
        headers = {"X-Twilio-Signature": self.sign(self.inbound_url, params)}
        try:
            response = await self._client.post(self.inbound_url, data=params, headers=headers)
        except httpx.HTTPError as error:
            log.warning("inbound webhook unreachable", url=self.inbound_url, error=repr(error))
            return JSONResponse(
                {"detail": f"the inbound webhook {self.inbound_url} did not answer: {error!r}"},
                status_code=502,
            )
        replies = re.findall(r"<Message>(.*?)</Message>", response.text, flags=re.DOTALL)
        for reply in replies:
            text = html.unescape(reply)
            reply_count = count_segments(text)
            self._keep(
                FakeSms(
                    f"SM{next(self._serial):032x}",
                    "reply",
                    sender,
                    to,
                    text,
                    "delivered",
                    _now().isoformat(),
                    reply_count.segments,
                    reply_count.encoding,
                )
            )
        if "text/html" in request.headers.get("accept", ""):
            return Response(status_code=303, headers={"Location": "/"})
        return JSONResponse(
            {"sid": sid, "webhook_status": response.status_code, "replies": replies}
        )

    def _last_sender_to(self, number: str) -> str:
        """The number that last texted `number` (the lead replies to it)."""
        with self._lock:
            for sms in reversed(self._messages):
                if sms.direction == "outbound-api" and sms.to == number and sms.from_:
                    return sms.from_
        return "+15005550006"

    async def _set_failures(self, request: Request) -> Response:
        """`{"opted_out": [...], "undeliverable": [...], "failing": {number: code},
        "fail_next": n}` (each optional)."""
        try:
            body = await request.json()
            self.opted_out.update(str(n) for n in body.get("opted_out", []))
            self.undeliverable.update(str(n) for n in body.get("undeliverable", []))
            self.failing.update({str(n): int(c) for n, c in body.get("failing", {}).items()})
            if body.get("fail_next"):
                self.fail_next(int(body["fail_next"]))
        except (ValueError, TypeError, AttributeError) as error:
            return JSONResponse({"detail": f"bad request: {error}"}, status_code=422)
        return JSONResponse(
            {
                "opted_out": sorted(self.opted_out),
                "undeliverable": sorted(self.undeliverable),
                "failing": self.failing,
            }
        )

    def _keep(self, sms: FakeSms) -> None:
        with self._lock:
            self._messages.append(sms)
            if self._record_to is not None:
                with self._record_to.open("a") as out:
                    out.write(json.dumps(asdict(sms)) + "\n")

    def _rewrite_record(self) -> None:
        """Statuses change after the first write: keep the file in step (a dev tool's
        volumes; rewritten whole)."""
        if self._record_to is None:
            return
        with self._lock:
            text = "".join(json.dumps(asdict(m)) + "\n" for m in self._messages)
        self._record_to.write_text(text)

    async def _set_callbacks(self, request: Request) -> Response:
        """`{"enabled": false}`: sent messages get no status callbacks (a benchmark with no
        webhook to receive them); `true` again restores them."""
        try:
            self.send_callbacks = bool((await request.json())["enabled"])
        except (ValueError, TypeError, KeyError) as error:
            return JSONResponse(
                {"detail": f"expected {{'enabled': bool}}: {error}"}, status_code=422
            )
        return JSONResponse({"enabled": self.send_callbacks})

    async def _clear(self, _: Request) -> Response:
        """Forget every email and SMS kept so far (not the recorded files)."""
        self.clear()
        if self.mail_sink is not None:
            self.mail_sink.clear()
        return JSONResponse({"cleared": True})

    # --- listings -------------------------------------------------------------------------

    async def _arrivals(self, request: Request) -> Response:
        """What arrived, light enough for 100,000 messages: `{"mail": [[message_id,
        received_at], ...], "sms": [[status_callback, created_at], ...]}` (sent SMS only),
        oldest first; with `?count=1` only how many: `{"mail": n, "sms": n}`."""
        mails = self.mail_sink.messages if self.mail_sink else []
        texts = self.messages
        if request.query_params.get("count"):
            return JSONResponse({"mail": len(mails), "sms": len(texts)})
        return JSONResponse(
            {
                "mail": [[m.message_id(), m.received_at] for m in mails],
                "sms": [[t.status_callback, t.created_at] for t in texts],
            }
        )

    async def _list_sms(self, _: Request) -> Response:
        return JSONResponse([m.public() for m in self.conversation])

    async def _list_mail(self, _: Request) -> Response:
        mails = self.mail_sink.messages if self.mail_sink else []
        return JSONResponse([m.summary() for m in mails])

    async def _raw_mail(self, request: Request) -> Response:
        mails = self.mail_sink.messages if self.mail_sink else []
        index = int(request.path_params["index"])
        if not 0 <= index < len(mails):
            return PlainTextResponse("no such message", status_code=404)
        return PlainTextResponse(mails[index].data.decode("utf-8", "replace"))

    async def _answer_mail(self, request: Request) -> Response:
        """The email's recipient answers (`reply`, form field `Body`) or its server bounces
        it (`bounce`): the raw message, signed, to `email_inbound_url`."""
        mails = self.mail_sink.messages if self.mail_sink else []
        index, answer = int(request.path_params["index"]), request.path_params["answer"]
        if not 0 <= index < len(mails) or answer not in ("reply", "bounce"):
            return JSONResponse({"detail": "no such message or answer"}, status_code=404)
        if not self.email_inbound_url:
            return JSONResponse({"detail": "no inbound email URL is configured"}, status_code=409)
        form = await request.form()
        raw = (
            mails[index].reply(str(form.get("Body") or "Yes, tell me more."))
            if answer == "reply"
            else mails[index].bounce()
        )
        assert self._client is not None
        headers = {
            "Content-Type": "message/rfc822",
            SIGNATURE_HEADER: sign_body(self.email_inbound_secret, raw),
        }
        try:
            response = await self._client.post(self.email_inbound_url, content=raw, headers=headers)
        except httpx.HTTPError as error:
            log.warning(
                "inbound email webhook unreachable", url=self.email_inbound_url, error=repr(error)
            )
            return JSONResponse(
                {"detail": f"{self.email_inbound_url} did not answer: {error!r}"}, status_code=502
            )
        if "text/html" in request.headers.get("accept", ""):
            return Response(status_code=303, headers={"Location": "/"})
        json_answer = response.headers.get("content-type", "").startswith("application/json")
        return JSONResponse(
            {
                "webhook_status": response.status_code,
                "webhook": response.json() if json_answer else response.text,
            }
        )

    async def _page(self, _: Request) -> Response:
        return HTMLResponse(
            render_page(
                self.mail_sink.messages if self.mail_sink else [],
                self.conversation,
                answering=self.email_inbound_url is not None,
            )
        )


def _twilio_error(http_status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": http_status,
        },
        status_code=http_status,
    )


ANSWER_HINT = "<p>Reply to an email as its recipient, or bounce it as their server would.</p>"


def render_page(mails: list[ReceivedMail], texts: list[FakeSms], *, answering: bool = False) -> str:
    """The page a new user opens to see what leadflow "sent"; with `answering`, each email
    can be replied to or bounced as its recipient would."""
    esc = html.escape

    def answers(i: int) -> str:
        if not answering:
            return ""
        return (
            f"<form method='post' action='/sink/mail/{i}/reply'>"
            "<input name='Body' placeholder='reply as the lead' required>"
            "<button>reply</button></form>"
            f"<form method='post' action='/sink/mail/{i}/bounce'><button>bounce</button></form>"
        )

    mail_rows = "".join(
        f"<tr><td>{esc(s['received_at'][:19])}</td><td>{esc(', '.join(s['rcpt_tos']))}</td>"
        f"<td>{esc(s['subject'] or '')}</td>"
        f"<td><pre>{esc((s['text'] or '')[:600])}</pre></td>"
        f"<td>{'yes' if s['dkim_signed'] else 'no'}</td>"
        f"<td><a href='/sink/mail/{i}.eml'>source</a>{answers(i)}</td></tr>"
        for i, s in reversed(list(enumerate(m.summary() for m in mails)))
    )
    sms_rows = "".join(
        f"<tr><td>{esc(m.created_at[:19])}</td><td>{esc(m.direction)}</td><td>{esc(m.from_)}</td>"
        f"<td>{esc(m.to)}</td><td>{esc(m.body)}</td><td>{m.segments} ({esc(m.encoding)})</td>"
        f"<td>{esc(m.status)}{' ' + esc(m.error_code) if m.error_code else ''}</td></tr>"
        for m in reversed(texts)
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>leadflow: messages sent</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}}
pre{{white-space:pre-wrap;margin:0}}</style></head><body>
<h1>Messages leadflow "sent"</h1>
<p>Nothing here reached a real inbox or phone: the local mail sink and fake SMS provider
kept them. This page refreshes every 5 seconds. JSON: <a href="/sink/mail">/sink/mail</a>,
<a href="/sink/sms">/sink/sms</a>.</p>
<h2>Email ({len(mails)})</h2>
{ANSWER_HINT if answering else ""}
<table><tr><th>received</th><th>to</th><th>subject</th><th>text</th><th>DKIM</th><th></th></tr>
{mail_rows}</table>
<h2>SMS ({len(texts)})</h2>
<form method="post" action="/sink/sms/inbound">Text back as a lead: from
<input name="From" placeholder="+821012345678" required>
<input name="Body" placeholder="STOP" required> <button>send</button></form>
<table><tr><th>at</th><th>direction</th><th>from</th><th>to</th><th>body</th><th>segments</th>
<th>status</th></tr>{sms_rows}</table>
</body></html>"""


@contextlib.contextmanager
def running_sinks(
    *,
    smtp_port: int = 0,
    http_port: int = 0,
    inbound_url: str | None = None,
    record_dir: Path | None = None,
    account_sid: str = DEV_ACCOUNT_SID,
    auth_token: str = DEV_AUTH_TOKEN,
    email_inbound_url: str | None = None,
    email_inbound_secret: str = DEV_EMAIL_INBOUND_SECRET,
) -> Iterator[tuple[MailSink, FakeTwilio]]:
    """Both sinks, the page on the fake Twilio's port."""
    if record_dir is not None:
        record_dir.mkdir(parents=True, exist_ok=True)
    mail = MailSink(port=smtp_port, record_to=record_dir / "mail.jsonl" if record_dir else None)
    sms = FakeTwilio(
        port=http_port,
        mail_sink=mail,
        inbound_url=inbound_url,
        account_sid=account_sid,
        auth_token=auth_token,
        record_to=record_dir / "sms.jsonl" if record_dir else None,
        email_inbound_url=email_inbound_url,
        email_inbound_secret=email_inbound_secret,
    )
    with mail, sms:
        yield mail, sms


def main(argv: list[str] | None = None) -> None:
    """Run both sinks until SIGTERM or SIGINT (what `leadflow up` starts)."""
    import argparse  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from shared.logging import configure_logging  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--inbound-url", default=None)
    parser.add_argument("--record-dir", type=Path, default=None)
    parser.add_argument("--account-sid", default=DEV_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=DEV_AUTH_TOKEN)
    parser.add_argument(
        "--email-inbound-url",
        default=None,
        help="nurture's /v1/email/inbound (default: beside --inbound-url's /v1/sms/inbound)",
    )
    parser.add_argument("--email-inbound-secret", default=DEV_EMAIL_INBOUND_SECRET)
    args = parser.parse_args(argv)
    email_inbound_url = args.email_inbound_url
    if email_inbound_url is None and args.inbound_url and args.inbound_url.endswith(SMS_INBOUND):
        email_inbound_url = args.inbound_url.removesuffix(SMS_INBOUND) + "/v1/email/inbound"
    configure_logging("leadflow-sinks", json=False)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with running_sinks(
        smtp_port=args.smtp_port,
        http_port=args.http_port,
        inbound_url=args.inbound_url,
        record_dir=args.record_dir,
        account_sid=args.account_sid,
        auth_token=args.auth_token,
        email_inbound_url=email_inbound_url,
        email_inbound_secret=args.email_inbound_secret,
    ) as (mail, sms):
        log.info("sinks up", smtp=f"{mail.host}:{mail.port}", page=f"{sms.base_url}/")
        stop.wait()


if __name__ == "__main__":
    main()
