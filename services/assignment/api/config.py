"""Managers' configuration over HTTP: reps, pools, territory rules, routing settings, and the
dry run ("where would this lead go, and why")."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Response, status
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    HttpUrl,
    ValidationInfo,
    field_validator,
    model_validator,
)

from leadflow.chassis.auth import Principal, Role, require
from services.assignment.api.common import (
    ClockDep,
    CompanySize,
    Criterion,
    Id,
    Manager,
    TeamDep,
    Text,
    TimeZone,
    acting_rep,
    forbidden,
    not_null,
    refusal,
)
from services.assignment.rules import (
    AssignmentError,
    Notify,
    Pool,
    PoolChanges,
    PoolMatch,
    Rep,
    RepChanges,
    RoutingSettings,
    Strategy,
    TerritoryRule,
)
from services.assignment.shifts import AwayPeriod, Shift, is_known_country
from services.assignment.usecases import PoolView
from shared.events import Attribution, FitGrade, Profile, RoutingReason

router = APIRouter(prefix="/v1")

Names = Annotated[list[Criterion], Field(max_length=100)]


# --- reps -----------------------------------------------------------------------------


class ShiftBody(BaseModel):
    """A working stretch on one weekday (0 = Monday) in the rep's time zone, "HH:MM"."""

    model_config = ConfigDict(extra="forbid")

    weekday: Annotated[int, Field(ge=0, le=6)]
    start: time
    end: time

    @field_validator("end", mode="after")
    @classmethod
    def _after_start(cls, value: time, info: ValidationInfo) -> time:
        start = info.data.get("start")
        if start is not None and value <= start:
            raise ValueError("must be after start (write a night shift as two shifts)")
        return value


class AwayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    starts_at: AwareDatetime
    ends_at: AwareDatetime
    reason: Annotated[str, Field(max_length=200)] | None = None

    @field_validator("ends_at", mode="after")
    @classmethod
    def _after_start(cls, value: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("starts_at")
        if start is not None and value <= start:
            raise ValueError("must be after starts_at")
        return value


Channel = Literal["email", "webhook", "sse"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _https(url: HttpUrl | None) -> HttpUrl | None:
    """Leads (names, phones) are posted to this address: https, or plain http only to this
    machine (a receiver in local development and tests)."""
    if url is not None and url.scheme != "https" and url.host not in LOOPBACK_HOSTS:
        raise ValueError("the webhook must be an https:// URL (http only to a loopback address)")
    return url


class NotifyBody(BaseModel):
    """How the rep is told of new leads, SLA warnings and escalations."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    email: EmailStr | None = None
    webhook_url: Annotated[HttpUrl | None, AfterValidator(_https)] = None
    webhook_secret: Annotated[str, Field(min_length=16, max_length=200)] | None = None
    slack: bool = False
    channels: Annotated[list[Channel], Field(max_length=3)] = []

    @model_validator(mode="after")
    def _channels_have_addresses(self) -> NotifyBody:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels: each channel may appear once")
        if "webhook" in self.channels and self.webhook_url is None:
            raise ValueError("channels: 'webhook' needs webhook_url")
        return self

    def to_notify(self) -> Notify:
        return Notify(
            email=self.email,
            webhook_url=str(self.webhook_url) if self.webhook_url else None,
            webhook_secret=self.webhook_secret,
            slack=self.slack,
            channels=tuple(self.channels),
        )


class MyNotifyBody(NotifyBody):
    """What a rep chooses for themselves (the same rules as a manager's)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "jin@example.com",
                    "webhook_url": "https://hooks.example.com/jin",
                    "webhook_secret": "a-long-shared-secret",
                    "channels": ["email", "webhook", "sse"],
                }
            ]
        },
    )


class NotifyPublic(BaseModel):
    email: str | None
    webhook_url: str | None
    webhook_secret_set: bool
    slack: bool
    channels: list[Channel]

    @classmethod
    def of(cls, notify: Notify) -> NotifyPublic:
        return cls(
            email=notify.email,
            webhook_url=notify.webhook_url,
            webhook_secret_set=notify.webhook_secret is not None,
            slack=notify.slack,
            channels=list(notify.channels),
        )


def _country(value: str) -> str:
    if not is_known_country(value.upper()):
        raise ValueError(f"no holiday calendar for country '{value}' (ISO 3166 alpha-2)")
    return value.upper()


Country = Annotated[str, Field(min_length=2, max_length=3), AfterValidator(_country)]
Capacity = Annotated[int, Field(ge=0, le=100_000)]


class RepFields(BaseModel):
    """Fields a rep is made with and changed by (shared by create and update)."""

    model_config = ConfigDict(extra="forbid")

    email: EmailStr | None = None
    timezone: TimeZone | None = None
    manager_id: Id | None = None
    team: Text | None = None
    product_lines: Names = []
    regions: Names = []
    languages: Names = []
    skills: Names = []
    max_open: Capacity | None = None
    daily_quota: Capacity | None = None
    working_hours: Annotated[list[ShiftBody], Field(max_length=50)] = []
    holiday_country: Country | None = None
    holiday_subdivision: Annotated[str, Field(max_length=10)] | None = None
    days_off: Annotated[list[date], Field(max_length=400)] = []
    away_periods: Annotated[list[AwayBody], Field(max_length=100)] = []
    notify: NotifyBody = NotifyBody()

    def domain_values(self, fields: set[str]) -> dict[str, Any]:
        """The sent `fields` as `Rep` field values."""
        values: dict[str, Any] = {}
        for name in fields:
            value = getattr(self, name)
            match name:
                case "product_lines" | "regions" | "languages" | "skills" | "days_off":
                    values[name] = tuple(value)
                case "working_hours":
                    values[name] = tuple(Shift(s.weekday, s.start, s.end) for s in value)
                case "away_periods":
                    values[name] = tuple(
                        AwayPeriod(p.starts_at, p.ends_at, p.reason) for p in value
                    )
                case "notify":
                    values[name] = value.to_notify()
                case _:
                    values[name] = value
        return values


class RepCreate(RepFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "rep_id": "jkim",
                    "name": "Jin Kim",
                    "email": "jin@example.com",
                    "timezone": "Asia/Seoul",
                    "manager_id": "sora",
                    "languages": ["ko", "en"],
                    "max_open": 30,
                    "daily_quota": 15,
                    "working_hours": [
                        {"weekday": d, "start": "09:00", "end": "18:00"} for d in range(5)
                    ],
                    "holiday_country": "KR",
                    "notify": {"email": "jin@example.com", "channels": ["email", "sse"]},
                }
            ]
        },
    )

    rep_id: Id
    name: Text
    active: bool = True
    away: bool = False

    def to_rep(self) -> Rep:
        values = self.domain_values(set(RepFields.model_fields))
        return Rep(rep_id=self.rep_id, name=self.name, active=self.active, away=self.away, **values)


class RepUpdate(RepFields):
    """Only the fields sent change; nullable ones may be set to null to clear them."""

    name: Text | None = None
    active: bool | None = None
    away: bool | None = None
    product_lines: Names | None = None  # type: ignore[assignment]
    regions: Names | None = None  # type: ignore[assignment]
    languages: Names | None = None  # type: ignore[assignment]
    skills: Names | None = None  # type: ignore[assignment]
    working_hours: Annotated[list[ShiftBody], Field(max_length=50)] | None = None  # type: ignore[assignment]
    days_off: Annotated[list[date], Field(max_length=400)] | None = None  # type: ignore[assignment]
    away_periods: Annotated[list[AwayBody], Field(max_length=100)] | None = None  # type: ignore[assignment]
    notify: NotifyBody | None = None  # type: ignore[assignment]

    @field_validator(
        "name",
        "active",
        "away",
        "product_lines",
        "regions",
        "languages",
        "skills",
        "working_hours",
        "days_off",
        "away_periods",
        "notify",
        mode="after",
    )
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        return not_null(value, info.field_name or "field")

    def changes(self) -> RepChanges:
        return cast("RepChanges", self.domain_values(set(self.model_fields_set)))


class ShiftPublic(BaseModel):
    weekday: int
    start: str
    end: str


class AwayPublic(BaseModel):
    starts_at: datetime
    ends_at: datetime
    reason: str | None


class RepPublic(BaseModel):
    rep_id: str
    name: str
    email: str | None
    timezone: str | None
    active: bool
    away: bool
    available: bool
    manager_id: str | None
    team: str | None
    product_lines: list[str]
    regions: list[str]
    languages: list[str]
    skills: list[str]
    max_open: int | None
    daily_quota: int | None
    working_hours: list[ShiftPublic]
    holiday_country: str | None
    holiday_subdivision: str | None
    days_off: list[date]
    away_periods: list[AwayPublic]
    notify: NotifyPublic

    @classmethod
    def of(cls, rep: Rep) -> RepPublic:
        return cls(
            rep_id=rep.rep_id,
            name=rep.name,
            email=rep.email,
            timezone=rep.timezone,
            active=rep.active,
            away=rep.away,
            available=rep.available,
            manager_id=rep.manager_id,
            team=rep.team,
            product_lines=list(rep.product_lines),
            regions=list(rep.regions),
            languages=list(rep.languages),
            skills=list(rep.skills),
            max_open=rep.max_open,
            daily_quota=rep.daily_quota,
            working_hours=[
                ShiftPublic(
                    weekday=s.weekday, start=s.start.strftime("%H:%M"), end=s.end.strftime("%H:%M")
                )
                for s in rep.working_hours
            ],
            holiday_country=rep.holiday_country,
            holiday_subdivision=rep.holiday_subdivision,
            days_off=list(rep.days_off),
            away_periods=[
                AwayPublic(starts_at=p.starts_at, ends_at=p.ends_at, reason=p.reason)
                for p in rep.away_periods
            ],
            notify=NotifyPublic.of(rep.notify),
        )


@router.post(
    "/reps",
    response_model=RepPublic,
    status_code=status.HTTP_201_CREATED,
    tags=["reps"],
    summary="Add a sales rep (or a manager: a rep others name as manager_id)",
    responses={409: {"description": "a rep with this id exists"}, 422: {}},
)
async def create_rep(body: RepCreate, _: Manager, team: TeamDep, clock: ClockDep) -> RepPublic:
    try:
        rep = await team.add_rep(body.to_rep(), clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return RepPublic.of(rep)


@router.get("/reps", response_model=list[RepPublic], tags=["reps"], summary="All reps")
async def list_reps(_: Manager, team: TeamDep) -> list[RepPublic]:
    return [RepPublic.of(rep) for rep in await team.reps()]


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
    return RepPublic.of(rep)


@router.patch(
    "/reps/{rep_id}",
    response_model=RepPublic,
    tags=["reps"],
    summary="Change a rep: hours, capacity, away, inactive, manager, notifications, ...",
    responses={404: {"description": "no such rep"}, 422: {}},
)
async def update_rep(
    rep_id: str, body: RepUpdate, _: Manager, team: TeamDep, clock: ClockDep
) -> RepPublic:
    try:
        rep = await team.change_rep(rep_id, body.changes(), clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return RepPublic.of(rep)


RepKey = Annotated[Principal, Depends(require(Role.REP))]


@router.put(
    "/me/notify",
    response_model=NotifyPublic,
    tags=["reps"],
    summary="Set how I am told of new leads, SLA warnings and escalations (rep key)",
    description="Replaces the rep's own notification preferences as a whole (a field left "
    "out is cleared; resend `webhook_secret` to keep signing). `email` must be a valid "
    "address, `webhook_url` an https URL; 422 names every bad field.",
    responses={403: {"description": "the key names no rep"}, 404: {"description": "no such rep"}},
)
async def set_my_notify(
    body: MyNotifyBody, principal: RepKey, team: TeamDep, clock: ClockDep
) -> NotifyPublic:
    rep_id = acting_rep(principal)
    if rep_id is None:  # not reached: only rep keys pass `RepKey`
        raise forbidden("a rep key sets its own preferences")
    try:
        rep = await team.change_rep(rep_id, {"notify": body.to_notify()}, clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return NotifyPublic.of(rep.notify)


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
Weights = Annotated[dict[str, Annotated[int, Field(ge=1, le=1000)]], Field(max_length=500)]
SlaMinutes = Annotated[int, Field(ge=1, le=60 * 24 * 30)]
ClaimLimit = Annotated[int, Field(ge=0, le=10_000)]


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
                    "strategy": "weighted",
                    "weights": {"jkim": 2, "amara": 1},
                    "claimable": True,
                    "claim_limit": 5,
                    "sla_minutes": 30,
                    "sla_reassign": True,
                    "manager_id": "mlee",
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
    strategy: Strategy = Strategy.ROUND_ROBIN
    weights: Weights = {}
    default_assignee: Id | None = None
    claimable: bool = False
    claim_limit: ClaimLimit | None = None
    sla_minutes: SlaMinutes | None = None
    sla_reassign: bool = False
    manager_id: Id | None = Field(
        None,
        description="the rep (manager) told of leads waiting in this pool's queue; "
        "without one, the members' managers are",
    )

    def to_pool(self) -> Pool:
        return Pool(
            pool_id=self.pool_id,
            name=self.name,
            rep_ids=tuple(self.rep_ids),
            match=self.match.to_match(),
            priority=self.priority,
            is_default=self.is_default,
            strategy=self.strategy,
            weights=dict(self.weights),
            default_assignee=self.default_assignee,
            claimable=self.claimable,
            claim_limit=self.claim_limit,
            sla_minutes=self.sla_minutes,
            sla_reassign=self.sla_reassign,
            manager_id=self.manager_id,
        )


class PoolUpdate(BaseModel):
    """Only the fields sent change; `match` and `weights` are replaced as a whole;
    `default_assignee`, `claim_limit`, `sla_minutes` and `manager_id` may be set to null to
    clear them."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    rep_ids: RepIds | None = None
    match: PoolMatchBody | None = None
    priority: Priority | None = None
    is_default: bool | None = None
    strategy: Strategy | None = None
    weights: Weights | None = None
    default_assignee: Id | None = None
    claimable: bool | None = None
    claim_limit: ClaimLimit | None = None
    sla_minutes: SlaMinutes | None = None
    sla_reassign: bool | None = None
    manager_id: Id | None = None

    @field_validator(
        "name",
        "rep_ids",
        "match",
        "priority",
        "is_default",
        "strategy",
        "weights",
        "claimable",
        "sla_reassign",
        mode="after",
    )
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        return not_null(value, info.field_name or "field")

    def changes(self) -> PoolChanges:
        changes: dict[str, Any] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            match name:
                case "rep_ids":
                    changes[name] = tuple(value)
                case "match":
                    changes[name] = value.to_match()
                case "weights":
                    changes[name] = dict(value)
                case _:
                    changes[name] = value
        return cast("PoolChanges", changes)


class MemberPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    rep_id: str
    available: bool = Field(description="eligible for a lead right now")
    last_assigned_at: datetime | None = Field(
        description="when the rep was last dealt a lead, from this pool or any other"
    )
    skipped: str | None = Field(description="why the rep would be passed over right now")
    open: int = Field(description="open leads the rep holds")


class PoolPublic(BaseModel):
    pool_id: str
    name: str
    rep_ids: list[str]
    match: PoolMatchBody
    priority: int
    is_default: bool
    strategy: Strategy
    weights: dict[str, int]
    default_assignee: str | None
    claimable: bool
    claim_limit: int | None
    sla_minutes: int | None
    sla_reassign: bool
    manager_id: str | None
    members: list[MemberPublic] = Field(
        description="the pool's reps in the order round robin deals its next leads to them: "
        "fair per rep across every pool, so the eligible rep whose last lead (from any "
        "pool) is oldest comes first; reps passed over right now come last, with why"
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
            strategy=pool.strategy,
            weights=dict(pool.weights),
            default_assignee=pool.default_assignee,
            claimable=pool.claimable,
            claim_limit=pool.claim_limit,
            sla_minutes=pool.sla_minutes,
            sla_reassign=pool.sla_reassign,
            manager_id=pool.manager_id,
            members=[MemberPublic.model_validate(member) for member in view.members],
        )


@router.post(
    "/pools",
    response_model=PoolPublic,
    status_code=status.HTTP_201_CREATED,
    tags=["pools"],
    summary="Add a pool of reps with the criteria of the leads it takes and how it deals them",
    responses={
        409: {"description": "a pool with this id exists"},
        422: {"description": "a field is invalid, e.g. an unknown rep in rep_ids"},
    },
)
async def create_pool(body: PoolCreate, _: Manager, team: TeamDep, clock: ClockDep) -> PoolPublic:
    """Naming a pool `is_default` makes it the only default: it takes the leads no rule or
    other pool's criteria take (unless the routing settings name a fallback pool)."""
    try:
        created = await team.add_pool(body.to_pool(), clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return PoolPublic.of(created)


@router.get("/pools", response_model=list[PoolPublic], tags=["pools"], summary="All pools")
async def list_pools(_: Manager, team: TeamDep) -> list[PoolPublic]:
    """Highest priority first: the order routing tries their criteria in."""
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
    summary="Change a pool's reps, criteria, strategy, claiming or SLA",
    responses={404: {"description": "no such pool"}, 422: {}},
)
async def update_pool(
    pool_id: str, body: PoolUpdate, _: Manager, team: TeamDep, clock: ClockDep
) -> PoolPublic:
    try:
        view = await team.change_pool(pool_id, body.changes(), clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return PoolPublic.of(view)


# --- territory rules ----------------------------------------------------------------------


class RuleBody(BaseModel):
    """Conditions on a lead (all must hold; an empty one admits every lead) and where a lead
    they hold for goes: exactly one of `pool_id` or `rep_id`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Seoul gyms",
                    "priority": 100,
                    "countries": ["KR"],
                    "postal_prefixes": ["06", "07"],
                    "industries": ["fitness"],
                    "pool_id": "seoul-fitness",
                }
            ]
        },
    )

    name: Annotated[str, Field(max_length=200)] = ""
    priority: Priority = 0
    countries: Names = []
    regions: Names = []
    postal_prefixes: Names = []
    postal_from: Criterion | None = None
    postal_to: Criterion | None = None
    industries: Names = []
    min_company_size: CompanySize | None = None
    max_company_size: CompanySize | None = None
    product_lines: Names = []
    languages: Names = []
    sources: Names = []
    campaigns: Names = []
    fit_grades: Annotated[list[FitGrade], Field(max_length=4)] = []
    pool_id: Id | None = None
    rep_id: Id | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RuleBody:
        if (self.pool_id is None) == (self.rep_id is None):
            raise ValueError("pool_id: name exactly one of pool_id or rep_id")
        if (
            self.min_company_size is not None
            and self.max_company_size is not None
            and self.max_company_size < self.min_company_size
        ):
            raise ValueError("max_company_size: must be at least min_company_size")
        if (
            self.postal_from is not None
            and self.postal_to is not None
            and (len(self.postal_from) != len(self.postal_to) or self.postal_to < self.postal_from)
        ):
            raise ValueError("postal_to: must be as long as postal_from and not before it")
        return self

    def to_rule(self, rule_id: str) -> TerritoryRule:
        values = self.model_dump(exclude={"rule_id"})
        for key, value in values.items():
            if isinstance(value, list):
                values[key] = tuple(value)
        return TerritoryRule(rule_id=rule_id, **values)


class RuleCreate(RuleBody):
    rule_id: Id


class RulePublic(RuleBody):
    rule_id: str

    @classmethod
    def of(cls, rule: TerritoryRule) -> RulePublic:
        return cls.model_validate(
            {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in vars_of(rule).items()
            }
        )


def vars_of(rule: TerritoryRule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in TerritoryRule.__dataclass_fields__}


@router.post(
    "/territory-rules",
    response_model=RulePublic,
    status_code=status.HTTP_201_CREATED,
    tags=["territory rules"],
    summary="Add a territory rule: conditions on a lead -> a pool or a rep",
    responses={409: {"description": "a rule with this id exists"}, 422: {}},
)
async def create_rule(body: RuleCreate, _: Manager, team: TeamDep, clock: ClockDep) -> RulePublic:
    try:
        rule = await team.add_rule(body.to_rule(body.rule_id), clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return RulePublic.of(rule)


@router.get(
    "/territory-rules",
    response_model=list[RulePublic],
    tags=["territory rules"],
    summary="Territory rules in the order they are tried (highest priority first)",
)
async def list_rules(_: Manager, team: TeamDep) -> list[RulePublic]:
    return [RulePublic.of(rule) for rule in await team.rules()]


@router.put(
    "/territory-rules/{rule_id}",
    response_model=RulePublic,
    tags=["territory rules"],
    summary="Replace a territory rule",
    responses={404: {"description": "no such rule"}, 422: {}},
)
async def replace_rule(
    rule_id: str, body: RuleBody, _: Manager, team: TeamDep, clock: ClockDep
) -> RulePublic:
    try:
        rule = await team.replace_rule(body.to_rule(rule_id), clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return RulePublic.of(rule)


@router.delete(
    "/territory-rules/{rule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["territory rules"],
    summary="Delete a territory rule",
    responses={404: {"description": "no such rule"}},
)
async def delete_rule(rule_id: str, _: Manager, team: TeamDep) -> Response:
    try:
        await team.delete_rule(rule_id)
    except AssignmentError as error:
        raise refusal(error) from error
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- routing settings and the dry run ----------------------------------------------------


GradeName = Annotated[str, Field(min_length=1, max_length=20)]


class SettingsBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "nurture_below": "C",
                    "fallback_pool_id": "everyone",
                    "company_days_off": ["2026-12-31"],
                    "grades": {"H": 24, "A": 72, "B": 168, "C": 336},
                    "forgotten_after_days": 3,
                    "escalate_after_hours": 24,
                    "satisfaction_alert_below": 8,
                }
            ]
        },
    )

    nurture_below: FitGrade | None = Field(
        default=None, description="leads with a fit grade below this go to nurture"
    )
    fallback_pool_id: Id | None = None
    company_days_off: Annotated[list[date], Field(max_length=400)] = []
    grades: Annotated[
        dict[GradeName, Annotated[int, Field(ge=1, le=24 * 365)]], Field(max_length=20)
    ] = Field(
        default_factory=lambda: dict(RoutingSettings().grades),
        description="sales grade -> follow-up interval in hours",
    )
    forgotten_after_days: Annotated[int, Field(ge=1, le=365)] | None = 3
    escalate_after_hours: Annotated[int, Field(ge=1, le=24 * 30)] = 24
    satisfaction_alert_below: Annotated[int, Field(ge=1, le=11)] = 8

    def to_settings(self) -> RoutingSettings:
        return RoutingSettings(
            nurture_below=self.nurture_below,
            fallback_pool_id=self.fallback_pool_id,
            company_days_off=tuple(self.company_days_off),
            grades=dict(self.grades),
            forgotten_after_days=self.forgotten_after_days,
            escalate_after_hours=self.escalate_after_hours,
            satisfaction_alert_below=self.satisfaction_alert_below,
        )

    @classmethod
    def of(cls, settings: RoutingSettings) -> SettingsBody:
        return cls(
            nurture_below=settings.nurture_below,
            fallback_pool_id=settings.fallback_pool_id,
            company_days_off=list(settings.company_days_off),
            grades=dict(settings.grades),
            forgotten_after_days=settings.forgotten_after_days,
            escalate_after_hours=settings.escalate_after_hours,
            satisfaction_alert_below=settings.satisfaction_alert_below,
        )


@router.get(
    "/routing-settings",
    response_model=SettingsBody,
    tags=["routing"],
    summary="Fit threshold for nurture, fallback pool, days off, grades and reminders",
)
async def get_settings(_: Manager, team: TeamDep) -> SettingsBody:
    return SettingsBody.of(await team.settings())


@router.put(
    "/routing-settings",
    response_model=SettingsBody,
    tags=["routing"],
    summary="Replace the routing settings",
    responses={422: {"description": "e.g. an unknown fallback pool"}},
)
async def put_settings(
    body: SettingsBody, _: Manager, team: TeamDep, clock: ClockDep
) -> SettingsBody:
    try:
        saved = await team.change_settings(body.to_settings(), clock())
    except AssignmentError as error:
        raise refusal(error) from error
    return SettingsBody.of(saved)


class DryRunLead(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "profile": {"country": "KR", "industry": "fitness", "postal_code": "06236"},
                    "attribution": {"source": "website", "channel": "web_form"},
                    "fit_grade": "B",
                }
            ]
        },
    )

    profile: Profile = Profile()
    attribution: Attribution = Attribution(source="dry-run", channel="web_form")
    fit_grade: FitGrade | None = None


class DryRunAnswer(BaseModel):
    outcome: Literal["assigned", "queued", "nurture", "unrouted"]
    rep_id: str | None
    pool_id: str | None
    why: RoutingReason | None
    wake_at: datetime | None = Field(
        description="a queued lead: when the first skipped rep's shift starts"
    )


@router.post(
    "/routing/dry-run",
    response_model=DryRunAnswer,
    tags=["routing"],
    summary="Where would this lead go right now, and why (nothing is stored)",
)
async def dry_run(body: DryRunLead, _: Manager, team: TeamDep) -> DryRunAnswer:
    routing = await team.dry_run(body.profile, body.attribution, body.fit_grade)
    outcome: Literal["assigned", "queued", "nurture", "unrouted"]
    if routing.nurture:
        outcome = "nurture"
    elif routing.rep is not None:
        outcome = "assigned"
    elif routing.pool is not None:
        outcome = "queued"
    else:
        outcome = "unrouted"
    return DryRunAnswer(
        outcome=outcome,
        rep_id=routing.rep.rep_id if routing.rep else None,
        pool_id=routing.pool.pool_id if routing.pool else None,
        why=routing.why,
        wake_at=routing.wake_at,
    )
