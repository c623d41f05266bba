"""HTTP routes of the ad-platform webhooks (Meta Lead Ads, Google Ads lead forms).

Both are public endpoints (the platforms send no API key) authenticated by the platform's
own proof: Meta's `X-Hub-Signature-256` over the raw body, Google's per-form `google_key`.
Nothing is stored before that proof checks out. A delivery is answered 200 as soon as its
leads are stored; fetching and accepting them happens in the background.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import PlainTextResponse
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.http import from_state, unprocessable
from services.intake.settings import Settings
from services.intake.webhooks.composition import AdWebhooks, ad_webhooks_lifespan
from services.intake.webhooks.rules import (
    PayloadError,
    google_key_valid,
    google_lead,
    key_digest,
    meta_lead_notices,
    meta_signature_valid,
    platform_id,
)
from services.intake.webhooks.store import Platform, ad_lead_key
from services.intake.webhooks.usecases import google_delivery, meta_delivery

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1/webhooks", tags=["ad webhooks"], lifespan=ad_webhooks_lifespan)

MAX_DELIVERY_BYTES = 1_000_000
"""Meta batches up to a few hundred changes per POST and Google sends one lead: far below."""

REFUSED_DELIVERIES = Counter(
    "leadflow_intake_webhook_refused_total",
    "Webhook deliveries refused before anything was stored",
    ["platform", "reason"],
)

WebhooksDep = Annotated[AdWebhooks, Depends(from_state("ad_webhooks"))]
SettingsDep = Annotated[Settings, Depends(from_state("settings"))]
FormAdmin = Annotated[Principal, Depends(require(Role.MANAGER, Role.MARKETING))]
Reader = Annotated[Principal, Depends(require(Role.MANAGER, Role.MARKETING, Role.INGEST))]


class DeliveryAccepted(BaseModel):
    leads: int
    """Leads the delivery announced."""
    new: int
    """Of those, the ones not delivered before (a platform's retry adds none)."""


async def _raw_body(request: Request, platform: str) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_DELIVERY_BYTES:
        REFUSED_DELIVERIES.labels(platform, "too_large").inc()
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "delivery too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_DELIVERY_BYTES:
            REFUSED_DELIVERIES.labels(platform, "too_large").inc()
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "delivery too large")
    return bytes(body)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise unprocessable((("body",), f"not JSON: {error}")) from error


def _payload_problem(error: PayloadError) -> HTTPException:
    return unprocessable((("body", *error.location), error.reason))


# --- Meta ---------------------------------------------------------------------------------


@router.get(
    "/meta",
    response_class=PlainTextResponse,
    summary="Meta webhook verification: echo hub.challenge when hub.verify_token matches",
    responses={403: {"description": "wrong verify token or mode"}},
)
async def verify_meta_subscription(
    settings: SettingsDep,
    mode: Annotated[str, Query(alias="hub.mode")] = "",
    verify_token: Annotated[str, Query(alias="hub.verify_token")] = "",
    challenge: Annotated[str, Query(alias="hub.challenge", max_length=1000)] = "",
) -> PlainTextResponse:
    expected = settings.meta_verify_token.get_secret_value()
    if mode != "subscribe" or not expected or not _same(verify_token, expected):
        REFUSED_DELIVERIES.labels("meta", "verify_token").inc()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong hub.verify_token or hub.mode")
    return PlainTextResponse(challenge)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@router.post(
    "/meta",
    response_model=DeliveryAccepted,
    summary="Meta Lead Ads webhook (signed with X-Hub-Signature-256)",
    responses={
        401: {"description": "no X-Hub-Signature-256: nothing stored"},
        403: {"description": "the signature does not match the body: nothing stored"},
        413: {"description": "delivery too large"},
        422: {"description": "signed, but not shaped as Meta documents it"},
    },
)
async def receive_meta_leads(
    request: Request, webhooks: WebhooksDep, settings: SettingsDep
) -> DeliveryAccepted:
    raw = await _raw_body(request, "meta")
    signature = request.headers.get("x-hub-signature-256")
    if not signature:
        REFUSED_DELIVERIES.labels("meta", "unsigned").inc()
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing X-Hub-Signature-256: nothing was stored"
        )
    if not meta_signature_valid(raw, signature, settings.meta_app_secret.get_secret_value()):
        REFUSED_DELIVERIES.labels("meta", "bad_signature").inc()
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "X-Hub-Signature-256 does not match the body: nothing was stored",
        )
    try:
        notices = meta_lead_notices(_json(raw))
    except PayloadError as error:
        raise _payload_problem(error) from error
    received_at = webhooks.clock()
    new = await webhooks.record([meta_delivery(n, received_at) for n in notices])
    return DeliveryAccepted(leads=len(notices), new=len(new))


# --- Google -------------------------------------------------------------------------------


@router.post(
    "/google",
    response_model=DeliveryAccepted,
    summary="Google Ads lead-form webhook (checked with the form's google_key)",
    responses={
        403: {"description": "unknown form or wrong google_key: nothing stored"},
        413: {"description": "delivery too large"},
        422: {"description": "the right key, but not shaped as Google documents it"},
    },
)
async def receive_google_lead(request: Request, webhooks: WebhooksDep) -> DeliveryAccepted:
    raw = await _raw_body(request, "google")
    payload = _json(raw)
    # The key is checked before anything else is read, so a stranger learns nothing.
    form_id: str | None = None
    given_key: object = None
    if isinstance(payload, Mapping):
        given_key = payload.get("google_key")
        try:
            form_id = platform_id(payload.get("form_id"), ("form_id",))
        except PayloadError:
            form_id = None
    digest = await webhooks.google_key_digest(form_id) if form_id is not None else None
    if not google_key_valid(given_key if isinstance(given_key, str) else None, digest):
        REFUSED_DELIVERIES.labels("google", "bad_key").inc()
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "unknown form_id or wrong google_key: nothing was stored",
        )
    try:
        lead = google_lead(payload)
    except PayloadError as error:
        raise _payload_problem(error) from error
    new = await webhooks.record([google_delivery(lead, webhooks.clock())])
    return DeliveryAccepted(leads=1, new=len(new))


class GoogleFormSave(BaseModel):
    model_config = ConfigDict(extra="forbid")

    google_key: Annotated[str, Field(min_length=8, max_length=200)]
    """The key set on the form in Google Ads (Lead form > Webhook integration)."""
    source: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class GoogleFormPublic(BaseModel):
    form_id: str
    source: str | None = None
    configured_in: str
    updated_at: datetime | None = None


@router.put(
    "/google/forms/{form_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Register a Google Ads lead form and its google_key",
)
async def save_google_form(
    form_id: Annotated[str, Field(min_length=1, max_length=64)],
    form: GoogleFormSave,
    _: FormAdmin,
    webhooks: WebhooksDep,
) -> None:
    await webhooks.save_google_form(form_id, key_digest(form.google_key), form.source)


@router.get(
    "/google/forms",
    response_model=list[GoogleFormPublic],
    summary="Google Ads lead forms whose deliveries are accepted (never their keys)",
)
async def list_google_forms(
    _: FormAdmin, webhooks: WebhooksDep, settings: SettingsDep
) -> list[GoogleFormPublic]:
    stored = await webhooks.store.google_forms()
    listed = [
        GoogleFormPublic(
            form_id=form_id,
            source=doc.get("source"),
            configured_in="api",
            updated_at=doc.get("updated_at"),
        )
        for form_id, doc in sorted(stored.items())
    ]
    listed += [
        GoogleFormPublic(form_id=form_id, configured_in="settings")
        for form_id in sorted(settings.google_lead_form_keys)
        if form_id not in stored
    ]
    return listed


# --- what became of a delivered lead --------------------------------------------------------


class AdLeadPublic(BaseModel):
    platform: Platform
    external_id: str
    status: str
    """pending (stored, not yet through intake), accepted or rejected."""
    received_at: datetime
    is_test: bool = False
    outcome: str | None = None
    lead_id: str | None = None
    reasons: list[list[str]] = Field(default_factory=list)
    attempts: int = 0
    last_error: str | None = None


@router.get(
    "/{platform}/leads/{external_id}",
    response_model=AdLeadPublic,
    summary="What became of a lead an ad platform delivered",
    responses={404: {"description": "never delivered"}},
)
async def get_ad_lead(
    platform: Platform, external_id: str, _: Reader, webhooks: WebhooksDep
) -> AdLeadPublic:
    doc = await webhooks.store.get(ad_lead_key(platform, external_id))
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {platform} lead {external_id}")
    return AdLeadPublic.model_validate(doc)
