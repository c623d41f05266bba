"""`POST /v1/email/inbound`: the emails that come back to us (replies and bounces), posted by
an inbound mail relay (an MTA's pipe to curl, an email provider's inbound route).

The body is the raw RFC 5322 message, either as is (`Content-Type: message/rfc822`) or as
the file field `message` of a `multipart/form-data` upload. `X-Leadflow-Signature:
sha256=<hex>` is HMAC-SHA256 of the exact request body (the whole multipart body, for an
upload) under the shared secret; it is checked, in constant time, before anything is
parsed or stored: a wrong or missing one is a 403 and nothing changes. No API key: like
Twilio's webhooks, the signature says who may call. Repeats are harmless (a reply counts
once by its Message-ID, a bounce marks a message once).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import structlog
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from starlette.formparsers import MultiPartException, MultiPartParser

from leadflow.chassis.batching import GroupCommit
from leadflow.chassis.http import unprocessable
from services.nurture.channels.inbound_email import (
    SIGNATURE_HEADER,
    BadInboundMailError,
    InboundMail,
    read_inbound,
    signature_valid,
)
from services.nurture.channels.usecases import InboundEmailOutcome, InboundEmails

log = structlog.get_logger(__name__)

MESSAGE_FIELD = "message"
RAW_TYPE = "message/rfc822"
FORM_TYPE = "multipart/form-data"
NO_STORE = {"Cache-Control": "no-store, private"}

InboundBatches = GroupCommit[InboundMail, InboundEmailOutcome]
"""Inbound emails arriving together are stored in one transaction (bounces come in bursts
after a campaign)."""


def inbound_batches(inbound: InboundEmails, *, max_batch: int = 200) -> InboundBatches:
    return GroupCommit(inbound.record, max_batch=max_batch, name="inbound-email")


def inbound_email_routes(
    batches: InboundBatches,
    *,
    secrets: list[str],
    message_id_domain: str,
    max_bytes: int,
) -> APIRouter:
    router = APIRouter(tags=["channel webhooks"])

    @router.post(
        "/v1/email/inbound",
        summary="Inbound email (signed): a reply or a bounce (RFC 3464 DSN) to our email",
        description=(
            f"The raw RFC 5322 message as the body (`Content-Type: {RAW_TYPE}`) or as the "
            f"file field `{MESSAGE_FIELD}` of a `{FORM_TYPE}` upload. `{SIGNATURE_HEADER}: "
            "sha256=<hex>` is HMAC-SHA256 of the exact request body under the shared secret "
            "(`LEADFLOW_NURTURE_EMAIL_INBOUND_SECRET`). A reply to one of our emails (named "
            "by In-Reply-To/References) is recorded as a `reply` engagement; a DSN with "
            "`Action: failed` and a permanent status suppresses the address and marks the "
            "message `bounced`; auto-replies and other reports change nothing."
        ),
        responses={
            200: {"description": "read; `kind`, the lead and message it was about, `changed`"},
            403: {"description": f"bad or missing {SIGNATURE_HEADER}; nothing changed"},
            413: {"description": "larger than the configured limit; nothing changed"},
            415: {"description": f"neither {RAW_TYPE} nor {FORM_TYPE}"},
            422: {"description": "no message in the body, or not an RFC 5322 message"},
        },
    )
    async def email_inbound(request: Request) -> JSONResponse:
        body = await _bounded_body(request, max_bytes)
        if not signature_valid(secrets, body, request.headers.get(SIGNATURE_HEADER)):
            log.warning("refused an inbound email with a bad signature", size=len(body))
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"{SIGNATURE_HEADER} does not match this body; nothing was changed",
            )
        raw = await _raw_message(request, body, max_bytes)
        try:
            mail = read_inbound(raw, message_id_domain=message_id_domain)
        except BadInboundMailError as error:
            raise unprocessable((("body", MESSAGE_FIELD), str(error))) from error
        outcome = await batches.submit(mail)
        log.info(
            "inbound email",
            kind=outcome.kind.value,
            lead_id=outcome.lead_id,
            message_id=outcome.message_id,
            changed=outcome.changed,
            why=mail.why,
        )
        return JSONResponse(
            {
                "kind": outcome.kind.value,
                "lead_id": outcome.lead_id,
                "message_id": outcome.message_id,
                "changed": outcome.changed,
            },
            headers=NO_STORE,
        )

    return router


async def _bounded_body(request: Request, max_bytes: int) -> bytes:
    too_large = HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        detail=f"an inbound email may be at most {max_bytes} bytes; nothing was changed",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:  # a chunked body that says no length up front
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _raw_message(request: Request, body: bytes, max_bytes: int) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == RAW_TYPE:
        return body
    if content_type != FORM_TYPE:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"send the raw message as {RAW_TYPE}, or as the file field "
            f"'{MESSAGE_FIELD}' of {FORM_TYPE}; not {content_type or 'no content type'}",
        )

    async def once() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, once(), max_part_size=max_bytes).parse()
    except MultiPartException as error:
        raise unprocessable((("body",), f"not a multipart body: {error.message}")) from error
    try:
        field = form.get(MESSAGE_FIELD)
        if field is None:
            raise unprocessable((("body", MESSAGE_FIELD), "required: the raw RFC 5322 message"))
        return field.encode() if isinstance(field, str) else await field.read()
    finally:
        await form.close()
