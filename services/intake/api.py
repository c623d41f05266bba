"""Intake's HTTP routes: parse, authorise, call a use case, shape the reply."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import uuid4

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.batching import GroupCommit
from leadflow.chassis.clock import Clock
from leadflow.chassis.http import RETRY_AFTER_S, from_state, unprocessable
from services.intake.rules import (
    Acceptance,
    ContactKind,
    FieldError,
    LeadChannel,
    LeadRejected,
    NewLead,
    normalise_contact,
    normalise_email,
    normalise_phone,
)
from services.intake.settings import Settings
from services.intake.store import ContactKeyTaken, IntakeStore
from shared.events import Attribution, Consent, Contact, Profile

router = APIRouter(prefix="/v1", tags=["leads"])

Ingest = Annotated[Principal, Depends(require(Role.INGEST))]
Reader = Annotated[Principal, Depends(require(Role.MANAGER, Role.REP, Role.INGEST, Role.MARKETING))]

LeadAcceptor = GroupCommit[NewLead, Acceptance]
"""Accepts each posted lead together with the others posted meanwhile (see `AcceptLeads`)."""

StoreDep = Annotated[IntakeStore, Depends(from_state("store"))]
SettingsDep = Annotated[Settings, Depends(from_state("settings"))]
ClockDep = Annotated[Clock, Depends(from_state("clock"))]
AcceptorDep = Annotated[LeadAcceptor, Depends(from_state("lead_acceptor"))]

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
    channel: LeadChannel = "web_form"
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


def contact_of(body: Mapping[str, Any], default_region: str) -> Contact | list[FieldError]:
    """The normalised contact of a lead body, or what is wrong with its phone and email."""

    def text(name: str) -> str | None:
        value = body.get(name)
        return value if isinstance(value, str) else None

    return normalise_contact(
        name=text("name"),
        phone=text("phone"),
        email=text("email"),
        timezone=text("timezone"),
        locale=text("locale"),
        default_region=default_region,
    )


class EveryBadFieldRoute(APIRoute):
    """A route whose 422 names every bad field at once.

    Phone and email are read with the service's default region, a setting the request
    model cannot see, so they are checked after it. When the model already refused the
    body, their problems are added to its errors rather than waiting for a second attempt.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_naming_every_bad_field(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError as error:
                if not isinstance(error.body, Mapping):
                    raise
                settings: Settings = request.app.state.settings
                contact = contact_of(error.body, settings.default_region)
                if isinstance(contact, Contact):
                    raise
                reported = {tuple(e["loc"]) for e in error.errors()}
                extra = [
                    {"type": "value_error", "loc": ("body", e.field), "msg": e.reason}
                    for e in contact
                    if ("body", e.field) not in reported
                ]
                raise RequestValidationError(
                    [*error.errors(), *extra], body=error.body, endpoint_ctx=error.endpoint_ctx
                ) from error

        return handle_naming_every_bad_field


async def post_lead(
    payload: LeadCreate,
    response: Response,
    _: Ingest,
    accept: AcceptorDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> LeadAccepted:
    """Store the lead durably and publish it. A phone or email that is already known
    merges the inquiry into that lead (200) instead of creating another (201)."""
    contact = contact_of(payload.model_dump(), settings.default_region)
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
        received_at=clock(),
    )
    try:
        accepted = await accept.submit(lead)
    except LeadRejected as rejected:
        raise unprocessable((("body", rejected.field), rejected.reason)) from rejected
    except ContactKeyTaken as error:
        # Concurrent accepts kept taking this batch's contacts; nothing was stored.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="too many simultaneous inquiries from these contacts; try again shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from error
    if accepted.outcome == "merged":
        response.status_code = status.HTTP_200_OK
    return LeadAccepted(
        lead_id=accepted.lead_id, status=accepted.outcome, matched_on=accepted.matched_on
    )


router.add_api_route(
    "/leads",
    post_lead,
    methods=["POST"],
    route_class_override=EveryBadFieldRoute,
    response_model=LeadAccepted,
    status_code=status.HTTP_201_CREATED,
    summary="Accept a lead",
    responses={
        200: {
            "description": "a repeat inquiry, merged into the lead it matched",
            "model": LeadAccepted,
        },
        422: {"description": "fields are missing or invalid; the body names each one and why"},
    },
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
    kind: ContactKind = "phone" if phone is not None else "email"
    try:
        value = (
            normalise_phone(phone, settings.default_region)
            if phone is not None
            else normalise_email(email or "")
        )
    except ValueError as error:
        raise unprocessable((("query", kind), str(error))) from error
    doc = await store.find_by_contact(kind, value)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no lead with {kind} {value}")
    return LeadPublic.from_document(doc)
