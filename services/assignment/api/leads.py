"""Reps' and managers' work on leads over HTTP: queues, claim, reject, return, help,
activities, visits, conversion, loss; bulk assign, reassign, handover.

Access: a manager key acts on every lead; a rep key on the rep's own leads (and leads they
joined), plus their team's when other reps name them as manager; else 403.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.assignment.api.common import (
    ClockDep,
    ConfigDep,
    Id,
    LeadsDep,
    Note,
    SalesStaff,
    TeamDep,
    actor_of,
    forbidden,
    refusal,
)
from services.assignment.rules import (
    CALL_OUTCOMES,
    Actor,
    AssignmentError,
    Conversion,
    Lead,
    LeadStatus,
)
from services.assignment.store import LeadQuery
from shared.events import Attribution, Consent, Contact, LossLevel, Profile, RoutingReason

router = APIRouter(prefix="/v1")


class ActivityPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    activity_id: str
    at: datetime
    rep_id: str
    kind: str
    outcome: str | None
    note: str | None


class VisitPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    visit_id: str
    scheduled_for: datetime | None
    rep_id: str | None
    walk_in: bool
    checked_in_at: datetime | None
    callback_due_at: datetime | None
    callback_open: bool
    satisfaction: int | None
    satisfaction_note: str | None


class HistoryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    action: str
    rep_id: str | None
    by: str | None
    note: str | None


class ConversionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    customer_id: str
    revenue: float
    currency: str
    plan: str | None
    converted_at: datetime
    opportunity_id: str | None
    opportunity_amount: float | None
    opportunity_stage: str | None


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
    fit_grade: str | None
    message: str | None
    received_at: datetime
    inquiries: int
    last_inquiry_at: datetime | None
    lost_level: LossLevel | None
    lost_reason: str | None
    returned_by: list[str]
    rejected_by: list[str]
    updated_at: datetime | None
    why: RoutingReason | None = Field(description="why the lead is where it is")
    queued_at: datetime | None = Field(description="set while it waits in its pool's queue")
    queue_reason: str | None
    sla_due_at: datetime | None = Field(description="first contact due (business time)")
    first_contact_at: datetime | None
    last_activity_at: datetime | None
    grade: str | None
    next_follow_up_at: datetime | None
    overdue: bool = False
    help_requested_at: datetime | None
    helpers: list[str]
    activities: list[ActivityPublic]
    visits: list[VisitPublic]
    conversion: ConversionPublic | None
    history: list[HistoryPublic]

    @classmethod
    def of(cls, lead: Lead, now: datetime | None = None) -> LeadPublic:
        public = cls.model_validate(lead)
        if now is not None and lead.is_open and lead.next_follow_up_at is not None:
            public.overdue = lead.next_follow_up_at < now
        return public


async def _actor(principal: SalesStaff, configuration: ConfigDep) -> Actor:
    return await actor_of(principal, configuration)


# --- queues ------------------------------------------------------------------------------


@router.get(
    "/leads",
    response_model=list[LeadPublic],
    tags=["leads"],
    summary="Leads, newest first: a rep's own queue, a team manager's team, a manager's all",
    responses={403: {"description": "a rep asked for leads that are not theirs or their team's"}},
)
async def list_leads(
    *,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
    lead_status: Annotated[LeadStatus | None, Query(alias="status")] = None,
    rep_id: Annotated[str | None, Query(max_length=64)] = None,
    pool_id: Annotated[str | None, Query(max_length=64)] = None,
    grade: Annotated[str | None, Query(max_length=20)] = None,
    overdue: bool = False,
    not_converted: bool = False,
    queued: bool = Query(False, description="only leads waiting in a pool's queue"),
    team: bool = Query(False, description="a team manager: the whole team's leads"),
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[LeadPublic]:
    actor = await _actor(principal, configuration)
    now = clock()
    rep_ids: tuple[str, ...] | None = None
    if actor.rep_id is not None:
        if queued:
            # A rep sees the waiting leads of the claimable pools they are in.
            config = await configuration.get()
            pool = config.pool(pool_id)
            if pool is None or not pool.claimable or actor.rep_id not in pool.rep_ids:
                raise forbidden("a rep sees the queues of claimable pools they are in only")
        elif rep_id is not None and rep_id != actor.rep_id and rep_id not in actor.team:
            raise forbidden("a rep sees only their own leads (or their team's)")
        elif team:
            rep_ids = (actor.rep_id, *sorted(actor.team))
        elif rep_id is None:
            rep_id = actor.rep_id
    query = LeadQuery(
        status=lead_status,
        rep_id=rep_id,
        rep_ids=rep_ids,
        pool_id=pool_id,
        grade=grade,
        overdue_at=now if overdue else None,
        not_converted=not_converted,
        queued=queued,
        limit=limit,
    )
    return [LeadPublic.of(lead, now) for lead in await leads.leads(query)]


@router.get(
    "/leads/{lead_id}",
    response_model=LeadPublic,
    tags=["leads"],
    summary="One lead, with its activities, visits, routing reason and history",
    responses={403: {"description": "not your lead"}, 404: {"description": "no such lead"}},
)
async def get_lead(
    *,
    lead_id: str,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    try:
        lead = await leads.lead(lead_id, await _actor(principal, configuration))
    except AssignmentError as error:
        raise refusal(error) from error
    return LeadPublic.of(lead, clock())


# --- the rep's actions ---------------------------------------------------------------------


class LossReport(BaseModel):
    """Why the lead is lost. 1 invalid contact (closed for good), 2 bought elsewhere,
    3 busy / not now (both go to nurture)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"level": 3}]})

    level: LossLevel
    reason: Annotated[str, Field(max_length=1000)] | None = None


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=1000)] | None = None


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=1000)]


class HelpBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Note | None = None


ActivityKind = Literal["call", "sms", "email", "visit_note", "tm_note", "note"]


class ActivityBody(BaseModel):
    """A call needs its outcome: reached, no_answer, wrong_number or visit_booked."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"kind": "call", "outcome": "reached", "note": "hot"}]},
    )

    kind: ActivityKind
    outcome: Literal["reached", "no_answer", "wrong_number", "visit_booked"] | None = None
    note: Note | None = None

    @model_validator(mode="after")
    def _call_has_outcome(self) -> ActivityBody:
        if self.kind == "call" and self.outcome is None:
            raise ValueError("outcome: a call needs one of " + ", ".join(CALL_OUTCOMES))
        if self.kind != "call" and self.outcome is not None:
            raise ValueError("outcome: only calls have an outcome")
        return self


class GradeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grade: Annotated[str, Field(min_length=1, max_length=20)]


class VisitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduled_for: AwareDatetime


class CheckInBody(BaseModel):
    """A reserved visit: its `visit_id`; a walk-in: no `visit_id`."""

    model_config = ConfigDict(extra="forbid")

    visit_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class SatisfactionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: Annotated[int, Field(ge=1, le=10)]
    note: Note | None = None


class OpportunityBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    opportunity_id: Id
    amount: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    stage: Annotated[str, Field(min_length=1, max_length=50)]


class ConvertBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"customer_id": "M-1042", "revenue": 890000, "currency": "KRW", "plan": "12m"}
            ]
        },
    )

    customer_id: Id
    revenue: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    plan: Annotated[str, Field(max_length=100)] | None = None
    opportunity: OpportunityBody | None = None


_RESPONSES: dict[int | str, dict[str, str]] = {
    403: {"description": "not your lead (or your team's)"},
    404: {"description": "no such lead"},
    409: {"description": "the lead's state does not allow this"},
}


def _refused(error: AssignmentError) -> HTTPException:
    return refusal(error)


@router.post(
    "/leads/{lead_id}/lost",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Mark a lead lost with a level: 1 closes it, 2 and 3 hand it to nurture",
    responses=_RESPONSES,
)
async def mark_lost(
    *,
    lead_id: str,
    body: LossReport,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.mark_lost(lead_id, body.level, body.reason, actor, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/return",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Return a lead you could not reach to its pool; another rep gets it",
    responses=_RESPONSES,
)
async def return_to_pool(
    *,
    lead_id: str,
    body: ReasonBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    """The lead goes to the pool's next eligible rep other than those who returned or
    rejected it; if there is none it waits in the pool's queue as `new`."""
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.return_to_pool(lead_id, body.reason, actor, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/reject",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Refuse a lead with a reason: it is dealt to another rep, never back to you",
    responses=_RESPONSES,
)
async def reject_lead(
    *,
    lead_id: str,
    body: RejectBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.reject(lead_id, body.reason, actor, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/claim",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Claim a waiting lead from a claimable pool you are in",
    responses=_RESPONSES,
)
async def claim_lead(
    *,
    lead_id: str,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    actor = await _actor(principal, configuration)
    if actor.rep_id is None:
        raise forbidden("claiming is for reps: a manager assigns (POST /v1/leads/assign)")
    try:
        lead = await leads.claim(lead_id, actor.rep_id, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/help",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Ask your manager for help; they may join the lead as second negotiator",
    responses=_RESPONSES,
)
async def ask_help(
    *,
    lead_id: str,
    body: HelpBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.ask_help(lead_id, body.note, actor, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/join",
    response_model=LeadPublic,
    tags=["leads"],
    summary="A team manager joins a team member's lead as second negotiator",
    responses=_RESPONSES,
)
async def join_lead(
    *,
    lead_id: str,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    actor = await _actor(principal, configuration)
    if actor.rep_id is None or not actor.team:
        raise forbidden("only a rep who manages a team joins leads as second negotiator")
    try:
        lead = await leads.join(lead_id, actor, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/activities",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Log a call (with outcome), SMS, email, visit note or TM note",
    responses=_RESPONSES,
)
async def log_activity(
    *,
    lead_id: str,
    body: ActivityBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    """The first call, SMS or email is the first contact: it stops the SLA clock."""
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.log_activity(lead_id, body.kind, body.outcome, body.note, actor, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/grade",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Set the lead's sales grade (sets its follow-up interval)",
    responses=_RESPONSES,
)
async def grade_lead(
    *,
    lead_id: str,
    body: GradeBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.set_grade(lead_id, body.grade, actor, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/visits",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Book a visit",
    responses=_RESPONSES,
)
async def book_visit(
    *,
    lead_id: str,
    body: VisitBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.book_visit(lead_id, body.scheduled_for, actor, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/check-in",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Check in a visit: a booked one (visit_id) or a walk-in (no visit_id)",
    responses=_RESPONSES,
)
async def check_in(
    *,
    lead_id: str,
    body: CheckInBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    """Sets the next-day satisfaction callback (seed 004)."""
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.check_in(lead_id, body.visit_id, actor, clock())
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/visits/{visit_id}/satisfaction",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Record the satisfaction callback's score (1-10); below 8 alerts the manager",
    responses=_RESPONSES,
)
async def record_satisfaction(
    *,
    lead_id: str,
    visit_id: str,
    body: SatisfactionBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.record_satisfaction(
            lead_id, visit_id, body.score, body.note, actor, clock()
        )
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


@router.post(
    "/leads/{lead_id}/convert",
    response_model=LeadPublic,
    tags=["leads"],
    summary="Convert: customer id, revenue, currency, plan; optionally an opportunity",
    responses=_RESPONSES,
)
async def convert(
    *,
    lead_id: str,
    body: ConvertBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> LeadPublic:
    conversion = Conversion(
        customer_id=body.customer_id,
        revenue=body.revenue,
        currency=body.currency,
        plan=body.plan,
        converted_at=clock(),
        opportunity_id=body.opportunity.opportunity_id if body.opportunity else None,
        opportunity_amount=body.opportunity.amount if body.opportunity else None,
        opportunity_stage=body.opportunity.stage if body.opportunity else None,
    )
    try:
        actor = await _actor(principal, configuration)
        lead = await leads.convert(lead_id, conversion, actor)
    except AssignmentError as error:
        raise _refused(error) from error
    return LeadPublic.of(lead)


# --- the manager's actions ------------------------------------------------------------------


class AssignBody(BaseModel):
    """Leads to a named rep; without `rep_id` (bulk return) they are dealt again by the
    rules, never back to their current rep."""

    model_config = ConfigDict(extra="forbid")

    lead_ids: Annotated[list[Id], Field(min_length=1, max_length=500)]
    rep_id: Id | None = None


@router.post(
    "/leads/assign",
    response_model=list[LeadPublic],
    tags=["manager"],
    summary="Bulk assign (rep_id) or bulk return (no rep_id) selected leads; reassign one",
    responses=_RESPONSES,
)
async def assign(
    *,
    body: AssignBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    clock: ClockDep,
) -> list[LeadPublic]:
    actor = await _actor(principal, configuration)
    if actor.rep_id is not None and not actor.team:
        raise forbidden("assigning leads is for managers")
    how = "bulk" if len(body.lead_ids) > 1 else "reassigned"
    try:
        done = await leads.reassign(body.lead_ids, body.rep_id, actor, clock(), how=how)
    except AssignmentError as error:
        raise _refused(error) from error
    return [LeadPublic.of(lead) for lead in done]


class HandoverBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_rep_id: Id | None = Field(
        default=None, description="who takes every open lead; none: dealt by the rules"
    )


class HandoverAnswer(BaseModel):
    rep_id: str
    active: bool
    leads: list[LeadPublic]


@router.post(
    "/reps/{rep_id}/handover",
    response_model=HandoverAnswer,
    tags=["manager"],
    summary="A rep leaves: every open lead reassigned, history kept, the rep deactivated",
    responses={403: {}, 404: {"description": "no such rep"}, 409: {}},
)
async def handover(
    *,
    rep_id: str,
    body: HandoverBody,
    principal: SalesStaff,
    configuration: ConfigDep,
    leads: LeadsDep,
    team: TeamDep,
    clock: ClockDep,
) -> HandoverAnswer:
    actor = await _actor(principal, configuration)
    if not actor.manages(rep_id):
        raise forbidden("only the rep's manager hands their leads over")
    if body.to_rep_id == rep_id:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {
                    "loc": ["body", "to_rep_id"],
                    "msg": "cannot hand leads over to the rep who leaves",
                    "type": "value_error",
                }
            ],
        )
    now = clock()
    try:
        await team.rep(rep_id)
        # Deactivated first: from now on routing passes them over.
        rep = await team.change_rep(rep_id, {"active": False}, now)
        moved = await leads.handover(rep_id, body.to_rep_id, actor, now)
    except AssignmentError as error:
        raise _refused(error) from error
    return HandoverAnswer(
        rep_id=rep.rep_id, active=rep.active, leads=[LeadPublic.of(lead) for lead in moved]
    )
