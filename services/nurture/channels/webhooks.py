"""The public endpoints people and providers call: one-click unsubscribe (RFC 8058), the
open pixel and click redirect, and Twilio's status callback and inbound SMS webhook.

None takes an API key: a signed token in the URL (ours) or `X-Twilio-Signature` (Twilio's,
checked with the twilio package's RequestValidator over every parameter received and the
public URL) says who may call, and is checked before anything is stored. No endpoint sets
a cookie; the unsubscribe POST answers 200 without a redirect, its GET only shows a button.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Collection
from dataclasses import dataclass
from xml.sax.saxutils import escape as xml_escape

import structlog
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from leadflow.chassis.batching import GroupCommit
from leadflow.chassis.http import unprocessable
from services.nurture.channels.rules import EngagementKind, InboundIntent, MessageStatusRecord
from services.nurture.channels.tokens import (
    BadTokenError,
    LinkClaims,
    TokenKind,
    TokenSigner,
    with_visit_token,
)
from services.nurture.channels.usecases import (
    ChannelFeedback,
    InboundSms,
    SmsStatusReport,
    UnknownStatusError,
)

log = structlog.get_logger(__name__)

ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, private", "Pragma": "no-cache"}


StatusReports = GroupCommit[tuple[LinkClaims, SmsStatusReport], MessageStatusRecord | None]
"""Status callbacks arriving together are stored in one transaction (three per text)."""


def status_reports(feedback: ChannelFeedback, *, max_batch: int = 500) -> StatusReports:
    return GroupCommit(feedback.record_sms_statuses, max_batch=max_batch, name="sms-status")


LinkEngagements = GroupCommit[tuple[LinkClaims, EngagementKind], bool]
"""Opens and clicks arriving together are stored in one transaction (a campaign's opens
come in bursts)."""


def link_engagements(feedback: ChannelFeedback, *, max_batch: int = 500) -> LinkEngagements:
    return GroupCommit(feedback.record_engagements, max_batch=max_batch, name="link-engagements")


@dataclass(frozen=True, slots=True)
class SmsReplies:
    """What we text back (TwiML) to HELP, START and STOP; empty: nothing."""

    help: str
    opt_in: str
    opt_out: str


def channel_webhooks(
    feedback: ChannelFeedback,
    signer: TokenSigner,
    *,
    twilio_auth_token: str,
    public_url: str,
    replies: SmsReplies,
    reports: StatusReports,
    engagements: LinkEngagements,
    site_origins: Collection[str] = (),
) -> APIRouter:
    """The router nurture's app includes: link endpoints and Twilio webhooks. A click
    landing on one of `site_origins` carries the lead's visit token (`lf`) there."""
    router = APIRouter(tags=["channel webhooks"])
    router.include_router(_link_routes(feedback, signer, engagements, site_origins))
    base = public_url.rstrip("/")
    router.include_router(
        _twilio_routes(
            feedback,
            signer,
            auth_token=twilio_auth_token,
            base=base,
            replies=replies,
            reports=reports,
        )
    )
    return router


def _verifier(signer: TokenSigner) -> Callable[[str, TokenKind], LinkClaims | None]:
    def verified(token: str, kind: TokenKind) -> LinkClaims | None:
        try:
            return signer.verify(token, kind)
        except BadTokenError as error:
            log.info("refused a link token", kind=kind.value, reason=str(error))
            return None

    return verified


def _link_routes(
    feedback: ChannelFeedback,
    signer: TokenSigner,
    engagements: LinkEngagements,
    site_origins: Collection[str],
) -> APIRouter:
    router = APIRouter()
    verified = _verifier(signer)

    @router.get(
        "/u/{token}",
        summary="Unsubscribe page (shows a button; changes nothing)",
        response_class=HTMLResponse,
        responses={404: {"description": "not a valid unsubscribe link"}},
    )
    async def unsubscribe_page(token: str) -> HTMLResponse:
        # A GET never unsubscribes: mail scanners and link previews fetch every URL.
        if verified(token, TokenKind.UNSUBSCRIBE) is None:
            return _page("Link not valid", "This unsubscribe link is not valid.", 404)
        return _page(
            "Unsubscribe",
            "Press the button to stop receiving these emails. Text messages are not affected.",
            200,
            form=(
                # No action: the form posts to this very URL, whatever prefix a proxy adds.
                '<form method="post">'
                f'<input type="hidden" name="{ONE_CLICK_FIELD}" value="{ONE_CLICK_VALUE}">'
                "<button>Unsubscribe</button></form>"
            ),
        )

    @router.post(
        "/u/{token}",
        summary="One-click unsubscribe (RFC 8058): body List-Unsubscribe=One-Click",
        response_class=HTMLResponse,
        responses={
            404: {"description": "not a valid unsubscribe link; nothing changed"},
            422: {"description": "the body is not List-Unsubscribe=One-Click"},
        },
    )
    async def unsubscribe(token: str, request: Request) -> HTMLResponse:
        claims = verified(token, TokenKind.UNSUBSCRIBE)
        if claims is None:
            return _page("Link not valid", "This unsubscribe link is not valid.", 404)
        form = await _form(request)
        if form.get(ONE_CLICK_FIELD) != ONE_CLICK_VALUE:
            raise unprocessable(
                (("body", ONE_CLICK_FIELD), f"must be '{ONE_CLICK_VALUE}' (RFC 8058 one-click)")
            )
        await feedback.unsubscribe_email(claims)
        return _page("Unsubscribed", "You will not receive these emails any more.", 200)

    @router.get(
        "/o/{token}.gif",
        summary="Open pixel: records the first open of an email",
        response_class=Response,
        responses={404: {"description": "not a valid open token; nothing recorded"}},
    )
    async def open_pixel(token: str) -> Response:
        claims = verified(token, TokenKind.OPEN)
        if claims is None:
            return Response(status_code=404, headers=NO_STORE)
        await engagements.submit((claims, "open"))
        return Response(PIXEL, media_type="image/gif", headers=NO_STORE)

    @router.get(
        "/c/{token}",
        summary="Click redirect: records the click, then redirects to the signed URL only",
        response_class=RedirectResponse,
        status_code=302,
        responses={404: {"description": "not a valid click token; no redirect"}},
    )
    async def click(token: str) -> Response:
        claims = verified(token, TokenKind.CLICK)
        if claims is None or claims.url is None:
            return _page("Link not valid", "This link is not valid.", 404)
        await engagements.submit((claims, "click"))
        # On our own site the page's beacon then knows whose visit it is, with no API key.
        visit = signer.sign(LinkClaims(TokenKind.VISIT, claims.lead_id))
        target = with_visit_token(claims.url, visit, site_origins)
        return RedirectResponse(target, status_code=302, headers=NO_STORE)

    return router


def _twilio_routes(
    feedback: ChannelFeedback,
    signer: TokenSigner,
    *,
    auth_token: str,
    base: str,
    replies: SmsReplies,
    reports: StatusReports,
) -> APIRouter:
    router = APIRouter()
    validator = RequestValidator(auth_token)
    verified = _verifier(signer)

    async def twilio_form(request: Request) -> FormData:
        """The webhook's parameters, once `X-Twilio-Signature` proved Twilio sent them."""
        form = await _form(request)
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature or not validator.validate(url, form, signature):
            log.warning("refused a Twilio webhook with a bad signature", path=request.url.path)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail="X-Twilio-Signature does not match this request; nothing was changed",
            )
        return form

    @router.post(
        "/v1/sms/status",
        summary="Twilio status callback (signed): a message's delivery status",
        responses={
            403: {"description": "bad X-Twilio-Signature; nothing changed"},
            422: {"description": "a parameter is missing or unknown"},
        },
    )
    async def sms_status(request: Request) -> JSONResponse:
        form = await twilio_form(request)
        problems = _missing(form, "MessageSid", "MessageStatus")
        claims = verified(request.query_params.get("m", ""), TokenKind.SMS_STATUS)
        if claims is None:
            problems.append((("query", "m"), "not a status-callback token of ours"))
        if problems or claims is None:
            raise unprocessable(*problems)
        report = SmsStatusReport(
            provider_id=str(form["MessageSid"]),
            status=str(form["MessageStatus"]),
            to=_optional(form, "To"),
            error_code=_optional(form, "ErrorCode"),
        )
        try:
            record = await reports.submit((claims, report))
        except UnknownStatusError as error:
            raise unprocessable(
                (("body", "MessageStatus"), f"unknown status {str(error)!r}")
            ) from error
        return JSONResponse(
            {"message_id": claims.message_id, "changed": record is not None},
            headers=NO_STORE,
        )

    @router.post(
        "/v1/sms/inbound",
        summary="Twilio inbound SMS (signed): STOP/START/HELP keywords and replies",
        response_class=Response,
        responses={
            200: {"content": {"text/xml": {}}, "description": "TwiML reply"},
            403: {"description": "bad X-Twilio-Signature; nothing changed"},
            422: {"description": "a parameter is missing"},
        },
    )
    async def sms_inbound(request: Request) -> Response:
        form = await twilio_form(request)
        problems = _missing(form, "MessageSid", "From")
        if problems:
            raise unprocessable(*problems)
        inbound = InboundSms(
            inbound_id=str(form["MessageSid"]),
            from_phone=str(form["From"]),
            body=str(form.get("Body", "")),
        )
        outcome = await feedback.inbound_sms(inbound)
        answer = {
            InboundIntent.HELP: replies.help,
            InboundIntent.OPT_IN: replies.opt_in,
            InboundIntent.OPT_OUT: replies.opt_out,
        }.get(outcome.intent, "")
        log.info(
            "inbound sms",
            intent=outcome.intent.value,
            lead_id=outcome.lead_id,
            changed=outcome.changed,
        )
        return _twiml(answer)

    return router


async def _form(request: Request) -> FormData:
    """The body as form fields (urlencoded or multipart); an unreadable body is a 422."""
    try:
        return await request.form()
    except (ValueError, KeyError, AssertionError) as error:
        raise unprocessable((("body",), f"not a form body: {error}")) from error


def _missing(form: FormData, *names: str) -> list[tuple[tuple[str, str], str]]:
    return [(("body", name), "required") for name in names if not form.get(name)]


def _optional(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return str(value) if value else None


def _twiml(message: str) -> Response:
    body = f"<Message>{xml_escape(message)}</Message>" if message else ""
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>',
        media_type="text/xml",
    )


def _page(title: str, text: str, status_code: int, *, form: str = "") -> HTMLResponse:
    esc: Callable[[str], str] = html.escape
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        "<meta name='viewport' content='width=device-width'></head>"
        f"<body style='font-family:sans-serif;margin:3em'><h1>{esc(title)}</h1>"
        f"<p>{esc(text)}</p>{form}</body></html>",
        status_code=status_code,
        headers=NO_STORE,
    )
