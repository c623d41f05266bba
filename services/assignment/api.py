"""Assignment's HTTP routes: parse, authorise, call a use case, shape the reply."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationInfo,
    field_validator,
)

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.clock import Clock
from leadflow.chassis.http import from_state, unprocessable
from services.assignment.rules import (
    AssignmentError,
    LeadStatus,
    NotFoundError,
    NotOwnerError,
    Pool,
    PoolChanges,
    PoolMatch,
    Rep,
    RepChanges,
    UnknownRepsError,
)
from services.assignment.store import LeadQuery
from services.assignment.usecases import ManageTeam, PoolView, WorkLeads
from shared.events import Attribution, Consent, Contact, LossLevel, Profile

router = APIRouter(prefix="/v1")

Manager = Annotated[Principal, Depends(require(Role.MANAGER))]
SalesStaff = Annotated[Principal, Depends(require(Role.MANAGER, Role.REP))]


TeamDep = Annotated[ManageTeam, Depends(from_state("team"))]
LeadsDep = Annotated[WorkLeads, Depends(from_state("leads"))]
ClockDep = Annotated[Clock, Depends(from_state("clock"))]


def acting_rep(principal: Principal) -> str | None:
    """The rep whose own leads bound what `principal` may see and do; None for managers."""
    if principal.role is not Role.REP:
        return None
    if principal.rep_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this rep key names no rep")
    return principal.rep_id


def refusal(error: AssignmentError) -> HTTPException:
    """The HTTP answer to a request the domain refused."""
    match error:
        case NotFoundError():
            return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error))
        case NotOwnerError():
            return HTTPException(status.HTTP_403_FORBIDDEN, detail=str(error))
        case UnknownRepsError():
            return unprocessable((("body", "rep_ids"), str(error)))
        case _:  # AlreadyExistsError, TransitionRefusedError: the state conflicts
            return HTTPException(status.HTTP_409_CONFLICT, detail=str(error))


def _known_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown IANA time zone '{value}'") from error
    return value


Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]
Text = Annotated[str, Field(min_length=1, max_length=200)]
TimeZone = Annotated[str, Field(max_length=64), AfterValidator(_known_timezone)]
Criterion = Annotated[str, Field(min_length=1, max_length=100)]
CompanySize = Annotated[int, Field(ge=0)]


# --- reps -----------------------------------------------------------------------------


class RepCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "rep_id": "jkim",
                    "name": "Jin Kim",
                    "email": "jin@example.com",
                    "timezone": "Asia/Seoul",
                }
            ]
        },
    )

    rep_id: Id
    name: Text
    email: EmailStr | None = None
    timezone: TimeZone | None = None
    active: bool = True
    away: bool = False


class RepUpdate(BaseModel):
    """Only the fields sent change; `email` and `timezone` may be set to null to clear them."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    email: EmailStr | None = None
    timezone: TimeZone | None = None
    active: bool | None = None
    away: bool | None = None

    @field_validator("name", "active", "away", mode="after")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            raise ValueError(f"'{info.field_name}' cannot be null; leave it out to keep it")
        return value


class RepPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    rep_id: str
    name: str
    email: str | None
    timezone: str | None
    active: bool
    away: bool
    available: bool


@router.post(
    "/reps",
    response_model=RepPublic,
    status_code=status.HTTP_201_CREATED,
    tags=["reps"],
    summary="Add a sales rep",
    responses={409: {"description": "a rep with this id exists"}},
)
async def create_rep(body: RepCreate, _: Manager, team: TeamDep, clock: ClockDep) -> RepPublic:
    try:
        rep = await team.add_rep(Rep(**body.model_dump()), clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return RepPublic.model_validate(rep)


@router.get("/reps", response_model=list[RepPublic], tags=["reps"], summary="All reps")
async def list_reps(_: Manager, team: TeamDep) -> list[RepPublic]:
    return [RepPublic.model_validate(rep) for rep in await team.reps()]


@router.get(
    "/reps/{rep_id}",
    response_model=RepPublic,
    tags=["reps"],
    summary="One rep",
    responses={404: {"description": "no such rep"}},
)
async def get_rep(rep_id: str, _: Manager, team: TeamDep) -> RepPublic:
    try:
        rep = await team.rep(rep_id)
    except AssignmentError as error:
        raise refusal(error) from error
    return RepPublic.model_validate(rep)


@router.patch(
    "/reps/{rep_id}",
    response_model=RepPublic,
    tags=["reps"],
    summary="Change a rep: away, inactive (left the team), name, contact details",
    responses={404: {"description": "no such rep"}},
)
async def update_rep(
    rep_id: str, body: RepUpdate, _: Manager, team: TeamDep, clock: ClockDep
) -> RepPublic:
    sent = body.model_fields_set
    changes = RepChanges()
    if body.name is not None:
        changes["name"] = body.name
    if "email" in sent:
        changes["email"] = body.email
    if "timezone" in sent:
        changes["timezone"] = body.timezone
    if body.active is not None:
        changes["active"] = body.active
    if body.away is not None:
        changes["away"] = body.away
    try:
        rep = await team.change_rep(rep_id, changes, clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return RepPublic.model_validate(rep)


# --- pools ----------------------------------------------------------------------------


class PoolMatchBody(BaseModel):
    """Criteria a lead's profile must all meet (case-insensitive); omitted ones admit all."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    industry: Criterion | None = None
    region: Criterion | None = None
    country: Criterion | None = None
    product_line: Criterion | None = None
    min_company_size: CompanySize | None = None
    max_company_size: CompanySize | None = None

    @field_validator("max_company_size", mode="after")
    @classmethod
    def _not_below_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        least = info.data.get("min_company_size")
        if value is not None and least is not None and value < least:
            raise ValueError("must be at least min_company_size")
        return value

    def to_match(self) -> PoolMatch:
        return PoolMatch(**self.model_dump())


def _distinct(rep_ids: list[str]) -> list[str]:
    if repeated := sorted({r for r in rep_ids if rep_ids.count(r) > 1}):
        raise ValueError("each rep may appear once; repeated: " + ", ".join(repeated))
    return rep_ids


RepIds = Annotated[list[Id], Field(max_length=500), AfterValidator(_distinct)]
Priority = Annotated[int, Field(ge=-1_000_000, le=1_000_000)]


class PoolCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "pool_id": "west-fitness",
                    "name": "West coast gyms",
                    "rep_ids": ["jkim", "amara"],
                    "match": {"industry": "fitness", "region": "west"},
                    "priority": 10,
                    "is_default": False,
                }
            ]
        },
    )

    pool_id: Id
    name: Text
    rep_ids: RepIds = []
    match: PoolMatchBody = PoolMatchBody()
    priority: Priority = 0
    is_default: bool = False


class PoolUpdate(BaseModel):
    """Only the fields sent change; `match` is replaced as a whole."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    rep_ids: RepIds | None = None
    match: PoolMatchBody | None = None
    priority: Priority | None = None
    is_default: bool | None = None

    @field_validator("name", "rep_ids", "match", "priority", "is_default", mode="after")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            raise ValueError(f"'{info.field_name}' cannot be null; leave it out to keep it")
        return value


class MemberPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    rep_id: str
    available: bool = Field(description="active and not away: takes new leads")
    last_assigned_at: datetime | None = Field(
        description="when the rep was last dealt a lead, from this pool or any other"
    )


class PoolPublic(BaseModel):
    pool_id: str
    name: str
    rep_ids: list[str]
    match: PoolMatchBody
    priority: int
    is_default: bool
    members: list[MemberPublic] = Field(
        description="the pool's reps in the order its next leads go to them: round robin "
        "is fair per rep across every pool, so the available rep whose last lead (from any "
        "pool) is oldest comes first; reps who are away or inactive come last"
    )

    @classmethod
    def of(cls, view: PoolView) -> PoolPublic:
        pool = view.pool
        return cls(
            pool_id=pool.pool_id,
            name=pool.name,
            rep_ids=list(pool.rep_ids),
            match=PoolMatchBody.model_validate(pool.match),
            priority=pool.priority,
            is_default=pool.is_default,
            members=[MemberPublic.model_validate(member) for member in view.members],
        )


@router.post(
    "/pools",
    response_model=PoolPublic,
    status_code=status.HTTP_201_CREATED,
    tags=["pools"],
    summary="Add a pool of reps with the criteria of the leads it takes",
    responses={
        409: {"description": "a pool with this id exists"},
        422: {"description": "a field is invalid, e.g. an unknown rep in rep_ids"},
    },
)
async def create_pool(body: PoolCreate, _: Manager, team: TeamDep, clock: ClockDep) -> PoolPublic:
    """Naming a pool `is_default` makes it the only default: it takes the leads no other
    pool's criteria admit."""
    pool = Pool(
        pool_id=body.pool_id,
        name=body.name,
        rep_ids=tuple(body.rep_ids),
        match=body.match.to_match(),
        priority=body.priority,
        is_default=body.is_default,
    )
    try:
        created = await team.add_pool(pool, clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return PoolPublic.of(created)


@router.get("/pools", response_model=list[PoolPublic], tags=["pools"], summary="All pools")
async def list_pools(_: Manager, team: TeamDep) -> list[PoolPublic]:
    """Highest priority first: the order routing tries them in."""
    return [PoolPublic.of(view) for view in await team.pools()]


@router.get(
    "/pools/{pool_id}",
    response_model=PoolPublic,
    tags=["pools"],
    summary="One pool",
    responses={404: {"description": "no such pool"}},
)
async def get_pool(pool_id: str, _: Manager, team: TeamDep) -> PoolPublic:
    try:
        view = await team.pool(pool_id)
    except AssignmentError as error:
        raise refusal(error) from error
    return PoolPublic.of(view)


@router.patch(
    "/pools/{pool_id}",
    response_model=PoolPublic,
    tags=["pools"],
    summary="Change a pool's reps, criteria, priority or default flag",
    responses={404: {"description": "no such pool"}, 422: {}},
)
async def update_pool(
    pool_id: str, body: PoolUpdate, _: Manager, team: TeamDep, clock: ClockDep
) -> PoolPublic:
    changes = PoolChanges()
    if body.name is not None:
        changes["name"] = body.name
    if body.rep_ids is not None:
        changes["rep_ids"] = tuple(body.rep_ids)
    if body.match is not None:
        changes["match"] = body.match.to_match()
    if body.priority is not None:
        changes["priority"] = body.priority
    if body.is_default is not None:
        changes["is_default"] = body.is_default
    try:
        view = await team.change_pool(pool_id, changes, clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return PoolPublic.of(view)


# --- leads ----------------------------------------------------------------------------


class LeadPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    lead_id: str
    status: LeadStatus
    rep_id: str | None
    pool_id: str | None
    assigned_at: datetime | None
    contact: Contact
    consent: Consent
    attribution: Attribution
    profile: Profile
    fit_score: int | None
    message: str | None
    received_at: datetime
    inquiries: int
    last_inquiry_at: datetime | None
    lost_level: LossLevel | None
    lost_reason: str | None
    returned_by: list[str]
    updated_at: datetime | None


class LossReport(BaseModel):
    """Why the lead is lost. 1 invalid contact (closed for good), 2 bought elsewhere,
    3 busy / not now (both go to nurture)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"level": 3}]})

    level: LossLevel
    reason: Annotated[str, Field(max_length=1000)] | None = None


class PoolReturn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=1000)] | None = None


@router.get(
    "/leads",
    response_model=list[LeadPublic],
    tags=["leads"],
    summary="Leads, newest first; a rep sees only their own",
    responses={403: {"description": "a rep asked for another rep's leads"}},
)
async def list_leads(
    *,
    principal: SalesStaff,
    leads: LeadsDep,
    lead_status: Annotated[LeadStatus | None, Query(alias="status")] = None,
    rep_id: Annotated[str | None, Query(max_length=64)] = None,
    pool_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[LeadPublic]:
    own = acting_rep(principal)
    if own is not None and rep_id not in (None, own):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="a rep sees only their own leads")
    query = LeadQuery(status=lead_status, rep_id=own or rep_id, pool_id=pool_id, limit=limit)
    return [LeadPublic.model_validate(lead) for lead in await leads.leads(query)]


@router.get(
    "/leads/{lead_id}",
    response_model=LeadPublic,
    tags=["leads"],
    summary="One lead",
    responses={403: {"description": "not your lead"}, 404: {"description": "no such lead"}},
)
async def get_lead(lead_id: str, principal: SalesStaff, leads: LeadsDep) -> LeadPublic:
    try:
        lead = await leads.lead(lead_id, acting_rep(principal))
    except AssignmentError as error:
        raise refusal(error) from error
    return LeadPublic.model_validate(lead)


@router.post(
    "/leads/{lead_id}/lost",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Mark a lead lost with a level: 1 closes it, 2 and 3 hand it to nurture",
    responses={
        403: {"description": "not your lead"},
        404: {"description": "no such lead"},
        409: {"description": "the lead is already lost, nurturing or converted"},
    },
)
async def mark_lost(
    lead_id: str, body: LossReport, principal: SalesStaff, leads: LeadsDep, clock: ClockDep
) -> LeadPublic:
    try:
        lead = await leads.mark_lost(
            lead_id, body.level, body.reason, acting_rep(principal), clock()
        )
    except AssignmentError as error:
        raise refusal(error) from error
    return LeadPublic.model_validate(lead)


@router.post(
    "/leads/{lead_id}/return",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Return a lead you could not reach to its pool; another rep gets it",
    responses={
        403: {"description": "not your lead"},
        404: {"description": "no such lead"},
        409: {"description": "the lead is not held by a rep, or was already met"},
    },
)
async def return_to_pool(
    lead_id: str, body: PoolReturn, principal: SalesStaff, leads: LeadsDep, clock: ClockDep
) -> LeadPublic:
    """The lead goes to the pool's next available rep other than the one returning it;
    if there is none it waits in the pool as `new`."""
    try:
        lead = await leads.return_to_pool(lead_id, body.reason, acting_rep(principal), clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return LeadPublic.model_validate(lead)
