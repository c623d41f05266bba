"""Intake's HTTP routes: parse, authorise, call the store, shape the reply."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import uuid4

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.http import from_state, unprocessable
from services.intake.rules import normalise_contact, normalise_email, normalise_phone
from services.intake.settings import Settings
from services.intake.store import IntakeStore, NewLead
from shared.events import Attribution, Consent, Contact, Profile

router = APIRouter(prefix="/v1", tags=["leads"])

Ingest = Annotated[Principal, Depends(require(Role.INGEST))]
Reader = Annotated[Principal, Depends(require(Role.MANAGER, Role.REP, Role.INGEST, Role.MARKETING))]


StoreDep = Annotated[IntakeStore, Depends(from_state("store"))]
SettingsDep = Annotated[Settings, Depends(from_state("settings"))]

Text = Annotated[str, Field(min_length=1, max_length=200)]


class Utm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Text | None = None
    medium: Text | None = None
    campaign: Text | None = None
    term: Text | None = None
    content: Text | None = None


class LeadCreate(BaseModel):
    """A lead as a form, an import or a desk posts it. Phone or email is required."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Dana Kim",
                    "phone": "+1 415 555 0100",
                    "email": "dana@example.com",
                    "source": "website",
                    "channel": "web_form",
                    "campaign": "spring-trial",
                    "utm": {"source": "google", "medium": "cpc"},
                    "consent": {"email": True, "sms": False},
                    "profile": {"industry": "fitness", "region": "west"},
                }
            ]
        },
    )

    name: Text | None = None
    phone: Annotated[str, Field(max_length=40)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    source: Text = "website"
    channel: Text = "web_form"
    campaign: Text | None = None
    utm: Utm = Utm()
    consent: Consent = Consent()
    profile: Profile = Profile()
    timezone: Annotated[str, Field(max_length=64)] | None = None
    locale: Annotated[str, Field(max_length=16)] | None = None
    message: Annotated[str, Field(max_length=4000)] | None = None


class LeadAccepted(BaseModel):
    lead_id: str
    status: Literal["received", "merged"]
    matched_on: Literal["phone", "email"] | None = None


class LeadPublic(BaseModel):
    lead_id: str
    contact: Contact
    attribution: Attribution
    consent: Consent
    profile: Profile
    message: str | None
    received_at: datetime
    last_inquiry_at: datetime
    inquiries: int

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> LeadPublic:
        return cls.model_validate({**doc, "lead_id": doc["_id"]})


@router.post(
    "/leads",
    response_model=LeadAccepted,
    status_code=status.HTTP_201_CREATED,
    summary="Accept a lead",
    responses={
        200: {
            "description": "a repeat inquiry, merged into the lead it matched",
            "model": LeadAccepted,
        },
        422: {"description": "a field is missing or invalid; the body names it and why"},
    },
)
async def post_lead(
    payload: LeadCreate, response: Response, _: Ingest, store: StoreDep, settings: SettingsDep
) -> LeadAccepted:
    """Store the lead durably and publish it. A phone or email that is already known
    merges the inquiry into that lead (200) instead of creating another (201)."""
    contact = normalise_contact(
        name=payload.name,
        phone=payload.phone,
        email=payload.email,
        timezone=payload.timezone,
        locale=payload.locale,
        default_region=settings.default_region,
    )
    if isinstance(contact, list):
        raise unprocessable(*((("body", e.field), e.reason) for e in contact))
    lead = NewLead(
        lead_id=uuid4().hex,
        contact=contact,
        attribution=Attribution(
            source=payload.source,
            channel=payload.channel,
            campaign=payload.campaign or payload.utm.campaign,
            utm_source=payload.utm.source,
            utm_medium=payload.utm.medium,
            utm_campaign=payload.utm.campaign,
            utm_term=payload.utm.term,
            utm_content=payload.utm.content,
        ),
        consent=payload.consent,
        profile=payload.profile,
        message=payload.message,
        received_at=datetime.now(UTC),
    )
    accepted = await store.accept(lead)
    if accepted.outcome == "merged":
        response.status_code = status.HTTP_200_OK
    return LeadAccepted(
        lead_id=accepted.lead_id, status=accepted.outcome, matched_on=accepted.matched_on
    )


@router.get(
    "/leads/{lead_id}",
    response_model=LeadPublic,
    summary="A lead as intake received it",
    responses={404: {"description": "no such lead"}},
)
async def get_lead(lead_id: str, _: Reader, store: StoreDep) -> LeadPublic:
    doc = await store.get(lead_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"lead '{lead_id}' not found")
    return LeadPublic.from_document(doc)


@router.get(
    "/contacts/lookup",
    response_model=LeadPublic,
    summary="Who is this caller? Find the lead by phone or email",
    responses={404: {"description": "nobody with that phone or email"}, 422: {}},
)
async def lookup_contact(
    _: Reader,
    store: StoreDep,
    settings: SettingsDep,
    phone: Annotated[str | None, Query(max_length=40)] = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
) -> LeadPublic:
    if (phone is None) == (email is None):
        raise unprocessable((("query", "phone"), "give exactly one of phone or email"))
    try:
        kind, value = (
            ("phone", normalise_phone(phone, settings.default_region))
            if phone is not None
            else ("email", normalise_email(email or ""))
        )
    except ValueError as error:
        field = "phone" if phone is not None else "email"
        raise unprocessable((("query", field), str(error))) from error
    doc = await store.find_by_contact(kind, value)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no lead with {kind} {value}")
    return LeadPublic.from_document(doc)
