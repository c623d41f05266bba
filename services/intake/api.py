"""Intake's HTTP routes for leads: parse, authorise, call a use case, shape the reply.

Forms live in `forms_api`, configuration (campaigns, sources, fit profile, forms) in
`config_api`; the ad-platform webhooks and CSV import in `webhooks/` and `imports/`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import uuid4

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.batching import GroupCommit
from leadflow.chassis.clock import Clock
from leadflow.chassis.http import RETRY_AFTER_S, unprocessable
from services.intake.models import ConsentIn, ProfileIn, Submission, Text
from services.intake.rules import (
    Acceptance,
    ContactKind,
    FieldError,
    LeadRejected,
    NewLead,
    clean_submission,
    normalise_contact,
    normalise_email,
    normalise_phone,
    region_for,
)
from services.intake.settings import Settings
from services.intake.store import ContactKeyTaken, IntakeStore
from services.intake.usecases import (
    MAX_BATCH,
    AcceptSubmissions,
    Answer,
    Configuration,
    IdempotencyKeyReused,
    IdempotentRequests,
    ItemResult,
    RequestInProgress,
    accept_documents,
    register_at_desk,
)
from shared.events import Attribution, Consent, Contact, FitScore, InquiryChannel, Profile

router = APIRouter(prefix="/v1", tags=["leads"])


def from_app(attribute: str) -> Callable[[Request], Awaitable[Any]]:
    """`app.state.<attribute>` as a dependency. Async on purpose: FastAPI runs a plain
    function dependency on a worker thread, a hop per dependency per request."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    dependency.__name__ = f"app_state_{attribute}"
    return dependency


Ingest = Annotated[Principal, Depends(require(Role.INGEST))]
Reader = Annotated[Principal, Depends(require(Role.MANAGER, Role.REP, Role.INGEST, Role.MARKETING))]
Desk = Annotated[Principal, Depends(require(Role.MANAGER, Role.REP, Role.INGEST))]
Manager = Annotated[Principal, Depends(require(Role.MANAGER))]

LeadAcceptor = GroupCommit[NewLead, Acceptance]
"""Accepts each posted lead together with the others posted meanwhile (see `AcceptLeads`)."""

StoreDep = Annotated[IntakeStore, Depends(from_app("store"))]
SettingsDep = Annotated[Settings, Depends(from_app("settings"))]
ClockDep = Annotated[Clock, Depends(from_app("clock"))]
AcceptorDep = Annotated[LeadAcceptor, Depends(from_app("lead_acceptor"))]
SubmissionsDep = Annotated[AcceptSubmissions, Depends(from_app("accept_submissions"))]
ConfigurationDep = Annotated[Configuration, Depends(from_app("configuration"))]
IdempotencyDep = Annotated[IdempotentRequests, Depends(from_app("idempotent_requests"))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Send a retried request with the same key: it gets the first answer "
        "instead of adding a second inquiry (kept 24 h, per API key).",
    ),
]

LeadCreate = Submission
"""A lead as a form, an import or a desk posts it (the one submission model)."""


class LeadAccepted(BaseModel):
    lead_id: str
    status: Literal["received", "merged", "duplicate"]
    matched_on: Literal["phone", "email"] | None = None


class InquiryOut(BaseModel):
    at: datetime
    channel: str
    source: str
    campaign: str | None = None
    form_id: str | None = None
    message: str | None = None


class LeadPublic(BaseModel):
    lead_id: str
    status: Literal["lead", "customer", "erased"] = "lead"
    contact: Contact
    attribution: Attribution
    consent: Consent
    profile: Profile
    message: str | None = None
    received_at: datetime
    last_inquiry_at: datetime
    inquiries: int
    history: list[InquiryOut] = []
    fit: FitScore | None = None
    is_test: bool = False
    customer_id: str | None = None
    converted_at: datetime | None = None

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> LeadPublic:
        return cls.model_validate({**doc, "lead_id": doc["_id"]})


class HistorySummary(BaseModel):
    inquiries: int
    first_at: datetime
    last_at: datetime
    channels: dict[str, int]
    """Inquiries per channel (of the history kept)."""
    sources: dict[str, int]


class ContactFound(LeadPublic):
    """A lead or customer found by phone or email, with a summary of its inquiries."""

    kind: Literal["lead", "customer"]
    summary: HistorySummary

    @classmethod
    def from_lead(cls, doc: dict[str, Any]) -> ContactFound:
        lead = LeadPublic.from_document(doc)
        channels: dict[str, int] = {}
        sources: dict[str, int] = {}
        for inquiry in lead.history:
            channels[inquiry.channel] = channels.get(inquiry.channel, 0) + 1
            sources[inquiry.source] = sources.get(inquiry.source, 0) + 1
        return cls(
            **lead.model_dump(),
            kind="customer" if lead.status == "customer" else "lead",
            summary=HistorySummary(
                inquiries=lead.inquiries,
                first_at=lead.received_at,
                last_at=lead.last_inquiry_at,
                channels=channels,
                sources=sources,
            ),
        )


def contact_of(body: Mapping[str, Any], default_region: str) -> Contact | list[FieldError]:
    """The normalised contact of a lead body, or what is wrong with its phone and email."""

    def text(name: str) -> str | None:
        value = body.get(name)
        return value if isinstance(value, str) else None

    region = text("default_region")
    return normalise_contact(
        name=text("name"),
        phone=text("phone"),
        email=text("email"),
        timezone=text("timezone"),
        locale=text("locale"),
        default_region=region if region and len(region) == 2 else default_region,
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


def request_external_id(principal: Principal, key: str | None) -> str | None:
    """The external id of what a request with an `Idempotency-Key` accepts: stored in the
    accept's own transaction, so a retry after a crash (answer never stored) is a duplicate."""
    return None if key is None else f"request:{principal.key_id}:{key}"


async def idempotently(
    request: Request,
    principal: Principal,
    requests: IdempotentRequests,
    key: str | None,
    handle: Callable[[], Awaitable[Answer]],
) -> JSONResponse:
    """`handle` once per `Idempotency-Key` (per API key); a repeat gets the first answer."""
    if key is None:
        answer = await handle()
    else:
        digest = hashlib.sha256(request.method.encode() + request.url.path.encode())
        digest.update(await request.body())
        try:
            answer = await requests.run(f"{principal.key_id}:{key}", digest.hexdigest(), handle)
        except IdempotencyKeyReused as error:
            raise unprocessable(
                (("header", "Idempotency-Key"), "this key was used for a different request")
            ) from error
        except RequestInProgress as error:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail="a request with this Idempotency-Key is still being handled; "
                "send it again shortly for its answer",
                headers={"Retry-After": "1"},
            ) from error
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)


async def accept_one(accept: LeadAcceptor, lead: NewLead) -> Acceptance:
    try:
        return await accept.submit(lead)
    except LeadRejected as rejected:
        raise unprocessable((("body", rejected.field), rejected.reason)) from rejected
    except ContactKeyTaken as error:
        raise contact_race(error) from error


def contact_race(error: ContactKeyTaken) -> HTTPException:
    """Concurrent accepts kept taking this batch's contacts; nothing was stored."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail="too many simultaneous inquiries from these contacts; try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def cleaned(lead: NewLead | list[FieldError]) -> NewLead:
    if isinstance(lead, list):
        raise unprocessable(*((("body", e.field), e.reason) for e in lead))
    return lead


async def post_lead(
    payload: LeadCreate,
    *,
    request: Request,
    principal: Ingest,
    accept: AcceptorDep,
    settings: SettingsDep,
    clock: ClockDep,
    requests: IdempotencyDep,
    configuration: ConfigurationDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Store the lead durably and publish it. A phone or email that is already known
    merges the inquiry into that lead (200) instead of creating another (201)."""

    async def handle() -> Answer:
        sources = await configuration.sources()
        region = region_for(payload, sources, settings.default_region)
        submission = payload
        request_id = request_external_id(principal, idempotency_key)
        if request_id is not None and payload.external_id is None:
            submission = payload.model_copy(update={"external_id": request_id})
        lead = cleaned(
            clean_submission(submission, lead_id=uuid4().hex, now=clock(), default_region=region)
        )
        accepted = await accept_one(accept, lead)
        body = LeadAccepted(
            lead_id=accepted.lead_id, status=accepted.outcome, matched_on=accepted.matched_on
        )
        code = status.HTTP_201_CREATED if accepted.outcome == "received" else status.HTTP_200_OK
        return Answer(code, body.model_dump(mode="json"))

    return await idempotently(request, principal, requests, idempotency_key, handle)


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
            "description": "a repeat inquiry, merged into the lead it matched (or a "
            "submission whose external_id was accepted before: `duplicate`)",
            "model": LeadAccepted,
        },
        409: {"description": "a request with the same Idempotency-Key is still running"},
        422: {"description": "fields are missing or invalid; the body names each one and why"},
    },
)


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    leads: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_BATCH)]
    """Submissions (the body of `POST /v1/leads`); each is checked on its own."""
    default_region: Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")] | None = None


class ItemError(BaseModel):
    field: str
    reason: str


class BatchItem(BaseModel):
    index: int
    outcome: Literal["created", "merged", "duplicate", "rejected"]
    lead_id: str | None = None
    matched_on: Literal["phone", "email"] | None = None
    errors: list[ItemError] = []

    @classmethod
    def of(cls, result: ItemResult) -> BatchItem:
        return cls(
            index=result.index,
            outcome=result.outcome,
            lead_id=result.lead_id,
            matched_on=result.matched_on,
            errors=[ItemError(field=e.field, reason=e.reason) for e in result.errors],
        )


class BatchOut(BaseModel):
    created: int
    merged: int
    duplicate: int
    rejected: int
    results: list[BatchItem]


@router.post(
    "/leads/batch",
    response_model=BatchOut,
    summary="Accept up to 1,000 leads in one request (one transaction)",
    responses={
        409: {"description": "a request with the same Idempotency-Key is still running"},
        422: {"description": "the envelope is wrong (a bad lead is a `rejected` item instead)"},
    },
)
async def post_lead_batch(
    payload: BatchIn,
    *,
    request: Request,
    principal: Ingest,
    accept: SubmissionsDep,
    requests: IdempotencyDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Each lead is created, merged into a known lead, a duplicate of an `external_id`
    accepted before, or rejected naming every bad field; the others are accepted anyway."""

    async def handle() -> Answer:
        try:
            results = await accept_documents(
                accept,
                payload.leads,
                default_region=payload.default_region,
                request_id=request_external_id(principal, idempotency_key),
            )
        except ContactKeyTaken as error:
            raise contact_race(error) from error
        counts = {o: sum(r.outcome == o for r in results) for o in ("created", "merged")}
        out = BatchOut(
            created=counts["created"],
            merged=counts["merged"],
            duplicate=sum(r.outcome == "duplicate" for r in results),
            rejected=sum(r.outcome == "rejected" for r in results),
            results=[BatchItem.of(r) for r in results],
        )
        return Answer(status.HTTP_200_OK, out.model_dump(mode="json"))

    return await idempotently(request, principal, requests, idempotency_key, handle)


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


@router.delete(
    "/leads/{lead_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Erase a lead's personal data (right to erasure); publishes lead-erased",
    responses={404: {"description": "no such lead, or erased already"}},
)
async def erase_lead(lead_id: str, principal: Manager, store: StoreDep, clock: ClockDep) -> None:
    """Contact details, profile, messages and consent are removed, its phone and email are
    freed (a new inquiry from them is a new lead); counts and dates stay."""
    if not await store.erase(lead_id, f"{principal.role}:{principal.key_id}", clock()):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"lead '{lead_id}' not found")


@router.get(
    "/contacts/lookup",
    response_model=ContactFound,
    summary="Who is this caller? The lead or customer with this phone or email",
    responses={404: {"description": "nobody with that phone or email"}, 422: {}},
)
async def lookup_contact(
    _: Reader,
    store: StoreDep,
    settings: SettingsDep,
    phone: Annotated[str | None, Query(max_length=40)] = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
) -> ContactFound:
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
    return ContactFound.from_lead(doc)


class DeskRegistration(BaseModel):
    """A caller or walk-in registered at the front desk (seed 000: phone first)."""

    model_config = ConfigDict(extra="forbid")

    phone: Annotated[str, Field(min_length=1, max_length=40)]
    channel: Literal["phone", "walk_in", "referral"] = "phone"
    note: Annotated[str, Field(max_length=4000)] | None = None
    """The consultation note."""
    source: Text = "desk"
    """How they heard of us (유입경로): a built-in or custom source."""
    name: Text | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    campaign: Text | None = None
    consent: ConsentIn = ConsentIn()
    profile: ProfileIn = ProfileIn()

    def submission(self) -> Submission:
        channel: InquiryChannel = self.channel
        return Submission(
            name=self.name,
            phone=self.phone,
            email=self.email,
            source=self.source,
            channel=channel,
            campaign=self.campaign,
            consent=self.consent,
            profile=self.profile,
            message=self.note,
        )


class DeskRegistered(BaseModel):
    lead_id: str
    status: Literal["received", "merged", "duplicate"]
    known_before: ContactFound | None
    """The lead or customer this phone (or email) already belonged to, as it was."""


async def register_caller(
    payload: DeskRegistration,
    *,
    response: Response,
    _: Desk,
    store: StoreDep,
    accept: AcceptorDep,
    settings: SettingsDep,
    clock: ClockDep,
    configuration: ConfigurationDep,
) -> DeskRegistered:
    """Looks the phone up first: a known lead or customer gets this inquiry and note added
    (and is shown as it was); otherwise a new lead is created."""
    submission = payload.submission()
    region = region_for(submission, await configuration.sources(), settings.default_region)
    lead = cleaned(
        clean_submission(submission, lead_id=uuid4().hex, now=clock(), default_region=region)
    )
    known, accepted = await register_at_desk(store, lambda new: accept_one(accept, new), lead)
    if accepted.outcome != "received":
        response.status_code = status.HTTP_200_OK
    return DeskRegistered(
        lead_id=accepted.lead_id,
        status=accepted.outcome,
        known_before=None if known is None else ContactFound.from_lead(known),
    )


router.add_api_route(
    "/desk/registrations",
    register_caller,
    methods=["POST"],
    route_class_override=EveryBadFieldRoute,
    response_model=DeskRegistered,
    status_code=status.HTTP_201_CREATED,
    summary="Register a caller or walk-in by phone, with a consultation note",
    tags=["desk"],
    responses={
        200: {"description": "a known lead or customer: the inquiry was added to it"},
        422: {"description": "bad fields, each named"},
    },
)
