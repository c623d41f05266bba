"""Pure decisions of assignment: which pool and rep get a lead, and where a lead may go next.

No I/O and no clock reads: the use cases load the facts and pass `now` in, these functions
decide, and the store persists the outcome together with the events it implies.

Routing a lead, in order (`route_lead`):
1. a fit grade below the configured threshold sends it to nurture, not to a rep;
2. the first territory rule (highest priority) whose conditions all hold names a pool or a
   rep; else the first pool whose own criteria admit the lead; else the fallback pool;
3. in the pool, reps who cannot take it are skipped, each with its reason (inactive, away,
   holiday, off shift, at capacity, daily quota reached, rejected it, returned it);
4. of the rest, the pool's strategy picks one (`Strategy`); with nobody left the lead waits
   in the pool's queue until the earliest shift start, or until capacity frees.
The reason (`RoutingReason`) travels on the event and stays on the lead.

Round robin is fair per rep across every pool they are in: each rep's last assignment
carries a service-wide turn number, and of a pool's eligible reps the one whose last lead
(from any pool) is oldest is dealt next. A rep who joins a pool or comes back from away is
dealt one lead and then waits their turn like everyone else: no catch-up burst.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Final, Literal, TypedDict

from services.assignment.shifts import (
    AwayPeriod,
    Shift,
    WorkingTime,
    add_working_time,
    next_shift_start,
    off_duty_reason,
    zone,
)
from shared.events import (
    Attribution,
    Consent,
    Contact,
    Event,
    FitGrade,
    LeadErasedV1,
    LeadMergedV1,
    LeadReceivedV1,
    LeadRequalifiedV1,
    LossLevel,
    Profile,
    RoutingReason,
)

ConsumedEvent = LeadReceivedV1 | LeadMergedV1 | LeadErasedV1 | LeadRequalifiedV1
"""The events assignment takes in: intake's, and nurture's requalified leads."""

CONSUMED_EVENTS: Final = (LeadReceivedV1, LeadMergedV1, LeadErasedV1, LeadRequalifiedV1)


class Strategy(StrEnum):
    """How a pool picks among its eligible reps."""

    ROUND_ROBIN = "round_robin"
    """The rep whose last lead (from any pool) is oldest."""
    WEIGHTED = "weighted"
    """Shares in proportion to the members' weights (stride scheduling)."""
    CAPACITY = "capacity"
    """The rep with the most room left (max open leads, then daily quota)."""
    LEAST_OPEN = "least_open"
    """The rep holding the fewest open leads."""
    SKILLS = "skills"
    """The rep whose product lines, regions, languages and skills fit the lead best."""
    CLAIM = "claim"
    """Nobody is dealt: leads wait in the pool until a rep claims one."""


ROUND_ROBIN: Final = Strategy.ROUND_ROBIN.value
DEFAULT_ASSIGNEE: Final = "default_assignee"
GRADE_ORDER: Final[Mapping[str, int]] = {"A": 4, "B": 3, "C": 2, "D": 1}


class LeadStatus(StrEnum):
    """Where a lead is in its lifecycle (DESIGN.md, "Lead lifecycle")."""

    NEW = "new"
    ASSIGNED = "assigned"
    CONTACTED = "contacted"
    VISIT_SCHEDULED = "visit_scheduled"
    VISITED = "visited"
    CONVERTED = "converted"
    NURTURING = "nurturing"
    LOST = "lost"
    REQUALIFIED = "requalified"


OPEN_STATUSES: Final = frozenset(
    {LeadStatus.ASSIGNED, LeadStatus.CONTACTED, LeadStatus.VISIT_SCHEDULED, LeadStatus.VISITED}
)
"""A rep holds and works the lead: it counts against their capacity."""

# A lead that is already lost, handed to nurture or won cannot be lost (again).
_CANNOT_BE_LOST: Final = frozenset({LeadStatus.LOST, LeadStatus.NURTURING, LeadStatus.CONVERTED})
# Return to pool is for a lead a rep could not reach: once met, it is theirs to finish.
_RETURNABLE: Final = frozenset({LeadStatus.ASSIGNED, LeadStatus.CONTACTED})

STATUS_AFTER_LOSS: Final[Mapping[LossLevel, LeadStatus]] = {
    1: LeadStatus.LOST,  # invalid contact: truly lost, never nurtured
    2: LeadStatus.NURTURING,  # bought elsewhere: nurture like a customer
    3: LeadStatus.NURTURING,  # busy / not now: nurture, retry later
}


# --- errors a use case can end in -----------------------------------------------------


class AssignmentError(Exception):
    """A request the domain refuses; the API turns each kind into its HTTP status."""


class NotFoundError(AssignmentError):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} '{key}' not found")


class AlreadyExistsError(AssignmentError):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} '{key}' already exists")


class UnknownRepsError(AssignmentError):
    def __init__(self, rep_ids: Iterable[str], field: str = "rep_ids") -> None:
        self.rep_ids = sorted(rep_ids)
        self.field = field
        super().__init__("unknown rep ids: " + ", ".join(self.rep_ids))


class UnknownPoolError(AssignmentError):
    def __init__(self, pool_id: str, field: str = "pool_id") -> None:
        self.field = field
        super().__init__(f"unknown pool '{pool_id}'")


class NotOwnerError(AssignmentError):
    def __init__(self, lead_id: str) -> None:
        super().__init__(f"lead '{lead_id}' is not assigned to you")


class TransitionRefusedError(AssignmentError):
    def __init__(self, status: LeadStatus, action: str) -> None:
        self.status = status
        super().__init__(f"a lead that is '{status}' cannot be {action}")


class RefusedError(AssignmentError):
    """A request that conflicts with the lead's or pool's state (409), with the reason."""


class InvalidValueError(AssignmentError):
    """A request field whose value the configuration does not know (422, naming it)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


# --- the facts decisions are made on --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notify:
    """How a rep or manager wants to be told (read by the notifications module)."""

    email: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    slack: bool = False
    """The webhook gets Slack-compatible JSON."""
    channels: tuple[Literal["email", "webhook", "sse"], ...] = ()


@dataclass(frozen=True, slots=True)
class Rep:
    """A sales rep; a manager is a rep others name as their `manager_id`."""

    rep_id: str
    name: str
    email: str | None = None
    timezone: str | None = None
    active: bool = True
    away: bool = False
    manager_id: str | None = None
    team: str | None = None
    product_lines: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()
    max_open: int | None = None
    """Most open leads held at once (None: no limit)."""
    daily_quota: int | None = None
    """Most leads dealt per day in the rep's time zone (None: no limit)."""
    working_hours: tuple[Shift, ...] = ()
    """Empty: works around the clock."""
    holiday_country: str | None = None
    holiday_subdivision: str | None = None
    days_off: tuple[date, ...] = ()
    away_periods: tuple[AwayPeriod, ...] = ()
    notify: Notify = Notify()

    @property
    def available(self) -> bool:
        """Takes new leads at all: active (still with the team) and not marked away."""
        return self.active and not self.away

    @property
    def working_time(self) -> WorkingTime:
        return WorkingTime(
            timezone=self.timezone or "UTC",
            shifts=self.working_hours,
            holiday_country=self.holiday_country,
            holiday_subdivision=self.holiday_subdivision,
            days_off=frozenset(self.days_off),
            away=self.away_periods,
        )


class RepChanges(TypedDict, total=False):
    name: str
    email: str | None
    timezone: str | None
    active: bool
    away: bool
    manager_id: str | None
    team: str | None
    product_lines: tuple[str, ...]
    regions: tuple[str, ...]
    languages: tuple[str, ...]
    skills: tuple[str, ...]
    max_open: int | None
    daily_quota: int | None
    working_hours: tuple[Shift, ...]
    holiday_country: str | None
    holiday_subdivision: str | None
    days_off: tuple[date, ...]
    away_periods: tuple[AwayPeriod, ...]
    notify: Notify


def _same(criterion: str | None, value: str | None) -> bool:
    # Forms and ad platforms disagree on case ("Fitness" vs "fitness").
    return criterion is None or (value is not None and criterion.casefold() == value.casefold())


@dataclass(frozen=True, slots=True)
class PoolMatch:
    """Criteria a lead's profile must all meet; a criterion left out admits everything."""

    industry: str | None = None
    region: str | None = None
    country: str | None = None
    product_line: str | None = None
    min_company_size: int | None = None
    max_company_size: int | None = None

    def admits(self, profile: Profile) -> bool:
        if not (
            _same(self.industry, profile.industry)
            and _same(self.region, profile.region)
            and _same(self.country, profile.country)
            and _same(self.product_line, profile.product_line)
        ):
            return False
        return _size_within(profile.company_size, self.min_company_size, self.max_company_size)


def _size_within(size: int | None, least: int | None, most: int | None) -> bool:
    if least is not None and (size is None or size < least):
        return False
    return not (most is not None and (size is None or size > most))


@dataclass(frozen=True, slots=True)
class Pool:
    pool_id: str
    name: str
    rep_ids: tuple[str, ...] = ()
    match: PoolMatch = PoolMatch()
    priority: int = 0
    is_default: bool = False
    strategy: Strategy = Strategy.ROUND_ROBIN
    weights: Mapping[str, int] = field(default_factory=dict)
    """Per member, for `Strategy.WEIGHTED`; a member left out weighs 1."""
    default_assignee: str | None = None
    """Gets every lead of the pool while eligible (seed 002's "预设指派")."""
    claimable: bool = False
    """Reps in the pool may claim its waiting leads."""
    claim_limit: int | None = None
    """Most open leads a rep may hold from claims in this pool."""
    sla_minutes: int | None = None
    """First response due within this much of the rep's working time."""
    sla_reassign: bool = False
    """A breached SLA hands the lead to the next rep."""
    manager_id: str | None = None
    """Who hears of leads waiting in the pool's queue (else its members' managers)."""


class PoolChanges(TypedDict, total=False):
    name: str
    rep_ids: tuple[str, ...]
    match: PoolMatch
    priority: int
    is_default: bool
    strategy: Strategy
    weights: Mapping[str, int]
    default_assignee: str | None
    claimable: bool
    claim_limit: int | None
    sla_minutes: int | None
    sla_reassign: bool
    manager_id: str | None


def _folded(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.casefold() for v in values)


@dataclass(frozen=True, slots=True)
class TerritoryRule:
    """Conditions on a lead that send it to a pool or a rep; an empty condition admits all.
    Each list condition holds when the lead's value is one of the list (case-insensitive)."""

    rule_id: str
    name: str = ""
    priority: int = 0
    countries: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    postal_prefixes: tuple[str, ...] = ()
    postal_from: str | None = None
    postal_to: str | None = None
    """An inclusive range of postal codes, compared as strings of equal length."""
    industries: tuple[str, ...] = ()
    min_company_size: int | None = None
    max_company_size: int | None = None
    product_lines: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    campaigns: tuple[str, ...] = ()
    fit_grades: tuple[FitGrade, ...] = ()
    pool_id: str | None = None
    rep_id: str | None = None

    def admits(self, profile: Profile, attribution: Attribution, grade: str | None) -> bool:
        return (
            _one_of(self.countries, profile.country)
            and _one_of(self.regions, profile.region)
            and _one_of(self.industries, profile.industry)
            and _one_of(self.product_lines, profile.product_line)
            and _one_of(self.languages, profile.language)
            and _one_of(self.sources, attribution.source)
            and _one_of(self.campaigns, attribution.campaign)
            and (not self.fit_grades or grade in self.fit_grades)
            and _size_within(profile.company_size, self.min_company_size, self.max_company_size)
            and self._postal_admits(profile.postal_code)
        )

    def _postal_admits(self, postal: str | None) -> bool:
        if not self.postal_prefixes and self.postal_from is None and self.postal_to is None:
            return True
        if postal is None:
            return False
        code = postal.replace(" ", "").upper()
        if self.postal_prefixes and not any(
            code.startswith(p.replace(" ", "").upper()) for p in self.postal_prefixes
        ):
            return False
        for bound, inside in ((self.postal_from, True), (self.postal_to, False)):
            if bound is None:
                continue
            edge = bound.replace(" ", "").upper()
            # Same length first: "9" is not after "10000" just because it sorts so.
            if len(code) != len(edge) or (code < edge if inside else code > edge):
                return False
        return True


def _one_of(allowed: tuple[str, ...], value: str | None) -> bool:
    if not allowed:
        return True
    return value is not None and value.casefold() in _folded(allowed)


DEFAULT_GRADES: Final[Mapping[str, int]] = {"H": 24, "A": 72, "B": 168, "C": 336}
"""Seed 004's grades by purchase intent, with their follow-up interval in hours."""


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """Service-wide routing and follow-up settings, kept with reps and pools."""

    nurture_below: FitGrade | None = None
    """Leads whose fit grade is below this go to nurture instead of a rep."""
    fallback_pool_id: str | None = None
    """Takes what no rule or pool criteria take (else the pool marked default)."""
    company_days_off: tuple[date, ...] = ()
    grades: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_GRADES))
    """Sales grade -> follow-up interval in hours."""
    forgotten_after_days: int | None = 3
    """Remind the rep when an open lead has had no activity this long."""
    escalate_after_hours: int = 24
    """An overdue follow-up not done this long after the rep's reminder goes to the manager."""
    satisfaction_alert_below: int = 8


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The configuration routing reads (kept in a cache): reps, pools, rules, settings."""

    reps: Mapping[str, Rep]
    pools: tuple[Pool, ...]
    rules: tuple[TerritoryRule, ...] = ()
    settings: RoutingSettings = RoutingSettings()

    def pool(self, pool_id: str | None) -> Pool | None:
        return next((p for p in self.pools if p.pool_id == pool_id), None)

    def team_of(self, manager_id: str) -> frozenset[str]:
        """The reps who name `manager_id` as their manager."""
        return frozenset(r.rep_id for r in self.reps.values() if r.manager_id == manager_id)

    def manager_of(self, rep_id: str | None) -> str | None:
        rep = self.reps.get(rep_id or "")
        return rep.manager_id if rep else None


@dataclass(frozen=True, slots=True)
class LastAssignment:
    """A rep's routing state: the service-wide turn number of the last lead they were dealt
    (the lowest among a pool's reps goes next), the open leads they hold, how many they
    were dealt on their local `day`, and their stride pass per weighted pool."""

    rep_id: str
    turn: int
    assigned_at: datetime | None
    pool_id: str | None
    open: int = 0
    day: date | None = None
    day_count: int = 0
    passes: Mapping[str, float] = field(default_factory=dict, hash=False)


def empty_load(rep_id: str) -> LastAssignment:
    return LastAssignment(rep_id, 0, None, None)


@dataclass(frozen=True, slots=True)
class PoolMember:
    """A pool's rep as a manager sees it: free to take leads, and when they last got one."""

    rep_id: str
    available: bool
    last_assigned_at: datetime | None
    skipped: str | None = None
    """Why the rep would be passed over right now."""
    open: int = 0


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One step in the lead's life, kept through reassignments and handovers."""

    at: datetime
    action: str
    rep_id: str | None = None
    by: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Activity:
    activity_id: str
    at: datetime
    rep_id: str
    kind: str
    outcome: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Visit:
    visit_id: str
    scheduled_for: datetime | None
    rep_id: str | None
    walk_in: bool = False
    checked_in_at: datetime | None = None
    callback_due_at: datetime | None = None
    """The next-day satisfaction callback (seed 004), set at check-in."""
    callback_open: bool = False
    """The callback task is due and not done yet."""
    satisfaction: int | None = None
    satisfaction_note: str | None = None


@dataclass(frozen=True, slots=True)
class Conversion:
    customer_id: str
    revenue: float
    currency: str
    plan: str | None
    converted_at: datetime
    opportunity_id: str | None = None
    opportunity_amount: float | None = None
    opportunity_stage: str | None = None


@dataclass(frozen=True, slots=True)
class Lead:
    lead_id: str
    status: LeadStatus
    contact: Contact
    consent: Consent
    attribution: Attribution
    profile: Profile
    received_at: datetime
    rep_id: str | None = None
    pool_id: str | None = None
    assigned_at: datetime | None = None
    fit_score: int | None = None
    message: str | None = None
    inquiries: int = 1
    last_inquiry_at: datetime | None = None
    lost_level: LossLevel | None = None
    lost_reason: str | None = None
    returned_by: tuple[str, ...] = ()
    """Reps who gave the lead back to its pool; it is not dealt to them again."""
    erased_at: datetime | None = None
    updated_at: datetime | None = None
    fit_grade: str | None = None
    why: RoutingReason | None = None
    """Why the lead is where it is (the last routing decision)."""
    queued_at: datetime | None = None
    """Set while the lead waits in its pool's queue for a rep."""
    queue_reason: str | None = None
    rejected_by: tuple[str, ...] = ()
    assignments: int = 0
    """How many times the lead has been dealt; numbers its SLA timers."""
    sla_due_at: datetime | None = None
    first_contact_at: datetime | None = None
    last_activity_at: datetime | None = None
    grade: str | None = None
    """The sales grade (seed 004: H/A/B/C) that sets the follow-up interval."""
    next_follow_up_at: datetime | None = None
    help_requested_at: datetime | None = None
    help_note: str | None = None
    helpers: tuple[str, ...] = ()
    """Managers who joined as second negotiators."""
    activities: tuple[Activity, ...] = ()
    visits: tuple[Visit, ...] = ()
    conversion: Conversion | None = None
    history: tuple[HistoryEntry, ...] = ()

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES and self.rep_id is not None


@dataclass(frozen=True, slots=True)
class AwaitedLead:
    """What is known of a lead whose lead-received event has not been read yet.

    Kafka keeps order per topic, not across topics, so a repeat inquiry (or an erasure) can
    be read before the lead it is about. It is kept here and folded in when the lead comes.
    """

    lead_id: str
    contact: Contact
    inquiries: int = 0
    last_inquiry_at: datetime | None = None
    erased_at: datetime | None = None
    updated_at: datetime | None = None


KnownLead = Lead | AwaitedLead


@dataclass(frozen=True, slots=True)
class Timer:
    """Work due later, written with the change that needs it (the use case turns it into the
    chassis' due work). Same key = same timer: scheduling again moves it."""

    key: str
    kind: str
    due_at: datetime
    payload: Mapping[str, str] = field(default_factory=dict)


class TimerKind(StrEnum):
    SLA = "sla"
    DEAL = "deal"
    FORGOTTEN = "forgotten"
    FOLLOW_UP = "follow-up"
    SATISFACTION = "satisfaction"


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a lead goes: a rep (in a pool or by a rule), a pool's queue, nurture, nowhere."""

    pool: Pool | None
    rep: Rep | None
    taken: LastAssignment | None = None
    """The rep's new routing state, when one took the lead."""
    why: RoutingReason | None = None
    wake_at: datetime | None = None
    """A queued lead: when the first skipped rep's shift starts (None: wait for capacity)."""
    nurture: bool = False

    @property
    def status(self) -> LeadStatus:
        if self.nurture:
            return LeadStatus.NURTURING
        return LeadStatus.ASSIGNED if self.rep is not None else LeadStatus.NEW

    @property
    def queued(self) -> bool:
        return self.rep is None and not self.nurture and self.pool is not None


# --- where a lead goes ----------------------------------------------------------------


def choose_pool(profile: Profile, pools: Iterable[Pool]) -> Pool | None:
    """The highest-priority pool whose criteria all hold for `profile`, else the default pool.

    Equal priorities are settled by pool id, so the same lead always lands in the same pool.
    """
    ranked = sorted(pools, key=lambda pool: (-pool.priority, pool.pool_id))
    for pool in ranked:
        if pool.match.admits(profile):
            return pool
    return next((pool for pool in ranked if pool.is_default), None)


def _criteria_pool(profile: Profile, pools: Iterable[Pool]) -> Pool | None:
    """The highest-priority pool with criteria of its own that admit `profile`."""
    ranked = sorted(pools, key=lambda pool: (-pool.priority, pool.pool_id))
    return next(
        (p for p in ranked if p.match != PoolMatch() and p.match.admits(profile)),
        None,
    )


def fallback_pool(config: RoutingConfig) -> Pool | None:
    if config.settings.fallback_pool_id is not None:
        chosen = config.pool(config.settings.fallback_pool_id)
        if chosen is not None:
            return chosen
    ranked = sorted(config.pools, key=lambda pool: (-pool.priority, pool.pool_id))
    return next((p for p in ranked if p.is_default), None) or next(
        (p for p in ranked if p.match == PoolMatch() and not p.is_default), None
    )


def ranked_rules(rules: Iterable[TerritoryRule]) -> list[TerritoryRule]:
    return sorted(rules, key=lambda rule: (-rule.priority, rule.rule_id))


@dataclass(frozen=True, slots=True)
class Target:
    """Where the rules send a lead before any rep is picked."""

    rule: TerritoryRule | None
    pool: Pool | None
    rep_id: str | None
    how: str
    """"rule", "pool criteria", "fallback pool" or "no pool"."""


def choose_target(
    profile: Profile, attribution: Attribution, grade: str | None, config: RoutingConfig
) -> Target:
    """The first territory rule that holds (its pool or rep), else the first pool whose own
    criteria hold, else the fallback pool."""
    for rule in config.rules:  # kept ranked by the configuration loader
        if rule.admits(profile, attribution, grade):
            pool = config.pool(rule.pool_id) if rule.pool_id else None
            if rule.rep_id is not None and pool is None:
                # A rule naming a rep deals in a pool of its own making: the rep's first pool.
                pool = next((p for p in config.pools if rule.rep_id in p.rep_ids), None)
            return Target(rule, pool, rule.rep_id, "rule")
    pool = _criteria_pool(profile, config.pools)
    if pool is not None:
        return Target(None, pool, None, "pool criteria")
    pool = fallback_pool(config)
    return Target(None, pool, None, "fallback pool" if pool else "no pool")


def below_grade(grade: str | None, threshold: str | None) -> bool:
    """Whether a fit grade is below the threshold (A best, D worst); unknown grades pass."""
    if grade is None or threshold is None:
        return False
    return GRADE_ORDER.get(grade, 0) < GRADE_ORDER.get(threshold, 0)


# --- who may take it -------------------------------------------------------------------


def local_day(rep: Rep, now: datetime) -> date:
    return now.astimezone(zone(rep.timezone or "UTC")).date()


def dealt_today(rep: Rep, load: LastAssignment, now: datetime) -> int:
    return load.day_count if load.day == local_day(rep, now) else 0


def skip_reason(
    rep: Rep | None,
    load: LastAssignment,
    now: datetime,
    settings: RoutingSettings,
    *,
    passing_over: Mapping[str, str] | None = None,
) -> str | None:
    """Why `rep` cannot be dealt a lead right now, or None when they can."""
    if rep is None:
        return "not a rep"
    if passing_over and rep.rep_id in passing_over:
        return passing_over[rep.rep_id]
    if not rep.active:
        return "inactive"
    if rep.away:
        return "away"
    off = off_duty_reason(rep.working_time, now, settings.company_days_off)
    if off is not None:
        return off
    if rep.max_open is not None and load.open >= rep.max_open:
        return "at capacity"
    if rep.daily_quota is not None and dealt_today(rep, load, now) >= rep.daily_quota:
        return "daily quota reached"
    return None


def _skills_fit(rep: Rep, profile: Profile | None) -> int:
    if profile is None:
        return 0
    fit = 0
    for wanted, offered in (
        (profile.product_line, rep.product_lines),
        (profile.region, rep.regions),
        (profile.language, rep.languages),
        (profile.industry, rep.skills),
    ):
        if wanted is not None and wanted.casefold() in _folded(offered):
            fit += 1
    return fit


def _room(rep: Rep, load: LastAssignment, now: datetime) -> tuple[float, float]:
    open_room = float("inf") if rep.max_open is None else rep.max_open - load.open
    quota_room = (
        float("inf") if rep.daily_quota is None else rep.daily_quota - dealt_today(rep, load, now)
    )
    return open_room, quota_room


def _weight(pool: Pool, rep_id: str) -> int:
    return max(1, pool.weights.get(rep_id, 1))


def pick(
    pool: Pool,
    candidates: Sequence[Rep],
    loads: Mapping[str, LastAssignment],
    *,
    now: datetime,
    profile: Profile | None = None,
) -> Rep | None:
    """The pool's strategy applied to `candidates` (all eligible, in pool order); ties go
    to the rep whose last lead is oldest, then to pool order."""
    if not candidates:
        return None

    def load(rep: Rep) -> LastAssignment:
        return loads.get(rep.rep_id) or empty_load(rep.rep_id)

    # min() keeps the first of equal keys, which is the rep_ids order.
    match pool.strategy:
        case Strategy.WEIGHTED:
            # Stride scheduling: the lowest pass after this lead goes next.
            return min(
                candidates,
                key=lambda r: (
                    load(r).passes.get(pool.pool_id, 0.0) + 1 / _weight(pool, r.rep_id),
                    load(r).turn,
                ),
            )
        case Strategy.CAPACITY:
            return min(
                candidates,
                key=lambda r: (tuple(-x for x in _room(r, load(r), now)), load(r).turn),
            )
        case Strategy.LEAST_OPEN:
            return min(candidates, key=lambda r: (load(r).open, load(r).turn))
        case Strategy.SKILLS:
            return min(candidates, key=lambda r: (-_skills_fit(r, profile), load(r).turn))
        case _:
            return min(candidates, key=lambda r: load(r).turn)


def taken_by(
    rep: Rep, pool: Pool | None, load: LastAssignment, *, turn: int, now: datetime
) -> LastAssignment:
    """The rep's routing state after being dealt one more lead as turn `turn`."""
    today = local_day(rep, now)
    passes = dict(load.passes)
    if pool is not None and pool.strategy is Strategy.WEIGHTED:
        floor = passes.get(pool.pool_id, 0.0)
        passes[pool.pool_id] = floor + 1 / _weight(pool, rep.rep_id)
    return LastAssignment(
        rep_id=rep.rep_id,
        turn=turn,
        assigned_at=now,
        pool_id=pool.pool_id if pool else None,
        open=load.open + 1,
        day=today,
        day_count=(load.day_count if load.day == today else 0) + 1,
        passes=passes,
    )


def released_by(load: LastAssignment) -> LastAssignment:
    """The rep's state after an open lead leaves them (closed, returned, reassigned)."""
    return dataclasses.replace(load, open=max(0, load.open - 1))


def _weighted_floor(
    pool: Pool, candidates: Sequence[Rep], loads: Mapping[str, LastAssignment]
) -> Mapping[str, LastAssignment]:
    """Lift a candidate whose pass is more than one stride behind the furthest one to that
    mark, so a rep newly added or back from away takes their share from now on rather than
    a burst for the time they missed. In steady state every pass is within one stride of
    the others, so nobody else is moved."""
    if pool.strategy is not Strategy.WEIGHTED or not candidates:
        return loads

    def load(rep: Rep) -> LastAssignment:
        return loads.get(rep.rep_id) or empty_load(rep.rep_id)

    top = max(load(r).passes.get(pool.pool_id, 0.0) for r in candidates)
    floor = top - max(1 / _weight(pool, r.rep_id) for r in candidates)
    lifted = dict(loads)
    for rep in candidates:
        current = load(rep)
        if current.passes.get(pool.pool_id, 0.0) < floor:
            lifted[rep.rep_id] = dataclasses.replace(
                current, passes={**current.passes, pool.pool_id: floor}
            )
    return lifted


def deal(
    pool: Pool | None,
    config: RoutingConfig,
    loads: Mapping[str, LastAssignment],
    *,
    turn: int,
    now: datetime,
    passing_over: Mapping[str, str] | None = None,
    profile: Profile | None = None,
    rule_id: str | None = None,
    direct_rep: str | None = None,
    note: str | None = None,
) -> Routing:
    """Deal a lead in `pool` as turn `turn`: a rule's rep or the pool's default assignee
    when eligible, else the pool's strategy among its eligible members. With nobody
    eligible the lead waits in the pool; `wake_at` is the earliest shift start among the
    members who are merely off duty."""
    settings = config.settings
    skipped: dict[str, str] = {}
    strategy = pool.strategy.value if pool else None

    def load(rep_id: str) -> LastAssignment:
        return loads.get(rep_id) or empty_load(rep_id)

    def why(chosen_by: str | None, extra: str | None = None) -> RoutingReason:
        notes = "; ".join(n for n in (note, extra) if n)
        return RoutingReason(
            rule_id=rule_id,
            pool_id=pool.pool_id if pool else None,
            strategy=chosen_by,
            skipped=dict(skipped),
            note=notes or None,
        )

    if direct_rep is not None:
        rep = config.reps.get(direct_rep)
        reason = skip_reason(rep, load(direct_rep), now, settings, passing_over=passing_over)
        if rep is not None and reason is None:
            taken = taken_by(rep, pool, load(rep.rep_id), turn=turn, now=now)
            return Routing(pool, rep, taken, why("territory_rule"))
        skipped[direct_rep] = reason or "not a rep"
    if pool is None:
        return Routing(None, None, why=why(None, "no pool takes this lead"))
    if pool.default_assignee is not None and pool.default_assignee not in skipped:
        rep = config.reps.get(pool.default_assignee)
        reason = skip_reason(
            rep, load(pool.default_assignee), now, settings, passing_over=passing_over
        )
        if rep is not None and reason is None:
            taken = taken_by(rep, pool, load(rep.rep_id), turn=turn, now=now)
            return Routing(pool, rep, taken, why(DEFAULT_ASSIGNEE))
        skipped[pool.default_assignee] = reason or "not a rep"
    if pool.strategy is Strategy.CLAIM:
        return Routing(pool, None, why=why(strategy, "waits to be claimed"))
    candidates: list[Rep] = []
    for rep_id in pool.rep_ids:
        if rep_id in skipped:
            continue
        rep = config.reps.get(rep_id)
        reason = skip_reason(rep, load(rep_id), now, settings, passing_over=passing_over)
        if reason is None and rep is not None:
            candidates.append(rep)
        else:
            skipped[rep_id] = reason or "not a rep"
    lifted = _weighted_floor(pool, candidates, loads)
    rep = pick(pool, candidates, lifted, now=now, profile=profile)
    if rep is not None:
        taken = taken_by(
            rep, pool, lifted.get(rep.rep_id) or empty_load(rep.rep_id), turn=turn, now=now
        )
        return Routing(pool, rep, taken, why(strategy))
    return Routing(
        pool,
        None,
        why=why(strategy, "nobody eligible: waits in the pool's queue"),
        wake_at=earliest_return(pool, config, now, passing_over=passing_over, skipped=skipped),
    )


_OFF_DUTY_ONLY: Final = ("off shift", "public holiday", "company day off", "day off", "away until")


def earliest_return(
    pool: Pool,
    config: RoutingConfig,
    now: datetime,
    *,
    passing_over: Mapping[str, str] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> datetime | None:
    """When the first member who is only off duty (not inactive, marked away, at capacity
    or passed over) starts working again; a rep whose daily quota is used up, on their
    next working day."""
    starts: list[datetime] = []
    members = [*pool.rep_ids, *([pool.default_assignee] if pool.default_assignee else [])]
    for rep_id in members:
        rep = config.reps.get(rep_id)
        if rep is None or not rep.available or (passing_over and rep_id in passing_over):
            continue
        after = now
        if skipped and skipped.get(rep_id) == "daily quota reached":
            local = now.astimezone(zone(rep.timezone or "UTC"))
            after = datetime.combine(
                local.date() + timedelta(days=1), datetime.min.time(), local.tzinfo
            )
        start = next_shift_start(rep.working_time, after, config.settings.company_days_off)
        if start is not None and start > now:
            starts.append(start)
    return min(starts, default=None)


def route_lead(
    profile: Profile,
    attribution: Attribution,
    fit_grade: str | None,
    config: RoutingConfig,
    loads: Mapping[str, LastAssignment],
    *,
    turn: int,
    now: datetime,
) -> Routing:
    """The whole routing decision for a new lead (see the module docstring)."""
    threshold = config.settings.nurture_below
    if below_grade(fit_grade, threshold):
        return Routing(
            None,
            None,
            why=RoutingReason(note=f"fit grade {fit_grade} is below {threshold}"),
            nurture=True,
        )
    target = choose_target(profile, attribution, fit_grade, config)
    return deal(
        target.pool,
        config,
        loads,
        turn=turn,
        now=now,
        profile=profile,
        rule_id=target.rule.rule_id if target.rule else None,
        direct_rep=target.rep_id,
        note=f"by {target.how}",
    )


def reps_who_may_be_dealt(
    events: Iterable[Event],
    config: RoutingConfig,
    known: Mapping[str, KnownLead] | None = None,
) -> set[str]:
    """Every rep a batch of events might deal a lead to (their routing state is loaded):
    the members, default assignees and rule reps of the pools new leads go to, and for a
    lead coming back to sales its previous owner and the pools it may go to."""
    wanted: set[str] = set()
    for event in events:
        match event:
            case LeadReceivedV1():
                grade = event.fit.grade if event.fit else None
                target = choose_target(event.profile, event.attribution, grade, config)
                wanted.update(_pool_people(target.pool))
                if target.rep_id:
                    wanted.add(target.rep_id)
            case LeadMergedV1() | LeadRequalifiedV1():
                lead = (known or {}).get(event.lead_id)
                if not isinstance(lead, Lead) or lead.status is not LeadStatus.NURTURING:
                    continue
                target = choose_target(lead.profile, lead.attribution, lead.fit_grade, config)
                wanted.update(_pool_people(target.pool) | _pool_people(config.pool(lead.pool_id)))
                wanted.update(r for r in (lead.rep_id, target.rep_id) if r)
                if isinstance(event, LeadRequalifiedV1) and event.previous_rep_id:
                    wanted.add(event.previous_rep_id)
            case _:
                pass
    return wanted


def _pool_people(pool: Pool | None) -> set[str]:
    if pool is None:
        return set()
    return {*pool.rep_ids, *([pool.default_assignee] if pool.default_assignee else [])}


def pool_members(
    pool: Pool,
    reps: Mapping[str, Rep],
    last: Mapping[str, LastAssignment],
    *,
    now: datetime | None = None,
    settings: RoutingSettings | None = None,
) -> list[PoolMember]:
    """The pool's reps in the order its next leads go to them (round robin): eligible
    reps whose last lead (from any pool) is oldest first, then the reps passed over."""

    def load(rep_id: str) -> LastAssignment:
        return last.get(rep_id) or empty_load(rep_id)

    reasons: dict[str, str | None] = {}
    for rep_id in pool.rep_ids:
        rep = reps.get(rep_id)
        if now is None:
            reasons[rep_id] = None if rep is not None and rep.available else "unavailable"
        else:
            reasons[rep_id] = skip_reason(rep, load(rep_id), now, settings or RoutingSettings())
    ready = sorted((r for r in pool.rep_ids if reasons[r] is None), key=lambda r: load(r).turn)
    resting = [r for r in pool.rep_ids if reasons[r] is not None]
    return [
        PoolMember(
            rep_id=rep_id,
            available=reasons[rep_id] is None,
            last_assigned_at=load(rep_id).assigned_at,
            skipped=reasons[rep_id],
            open=load(rep_id).open,
        )
        for rep_id in ready + resting
    ]


# --- the first-response SLA ----------------------------------------------------------


def sla_due(
    rep: Rep, pool: Pool | None, assigned_at: datetime, settings: RoutingSettings
) -> datetime | None:
    """When the first contact is due: the pool's SLA in the rep's working time."""
    if pool is None or pool.sla_minutes is None:
        return None
    return add_working_time(
        rep.working_time,
        assigned_at,
        timedelta(minutes=pool.sla_minutes),
        settings.company_days_off,
    )


def sla_key(lead: Lead) -> str:
    """The key of the SLA timer of the lead's current assignment (numbered: a lead dealt
    again has a clock of its own)."""
    return f"{TimerKind.SLA}:{lead.lead_id}:{lead.assignments}"


def sla_timer(lead: Lead) -> Timer | None:
    if lead.sla_due_at is None or lead.rep_id is None or lead.first_contact_at is not None:
        return None
    return Timer(
        key=sla_key(lead),
        kind=TimerKind.SLA,
        due_at=lead.sla_due_at,
        payload={"lead_id": lead.lead_id, "rep_id": lead.rep_id},
    )


def deal_timer(pool_id: str, due_at: datetime) -> Timer:
    """Deal the pool's queue at `due_at`. Keyed by pool and time: two reasons to deal at
    the same moment are one timer, and a firing may schedule the next one."""
    return Timer(
        key=f"{TimerKind.DEAL}:{pool_id}:{due_at.isoformat()}",
        kind=TimerKind.DEAL,
        due_at=due_at,
        payload={"pool_id": pool_id},
    )


# --- what a routing does to a lead ----------------------------------------------------


def routed(
    lead: Lead,
    routing: Routing,
    config: RoutingConfig,
    now: datetime,
    *,
    how: str,
    by: str | None = None,
) -> Lead:
    """The lead after `routing`: dealt (with its SLA), queued, or handed to nurture."""
    rep = routing.rep
    entry = HistoryEntry(
        at=now,
        action=how if rep else ("nurture" if routing.nurture else "queued"),
        rep_id=rep.rep_id if rep else None,
        by=by,
        note=routing.why.note if routing.why else None,
    )
    if rep is not None:
        return dataclasses.replace(
            lead,
            status=LeadStatus.ASSIGNED,
            rep_id=rep.rep_id,
            pool_id=routing.pool.pool_id if routing.pool else lead.pool_id,
            assigned_at=now,
            why=routing.why,
            queued_at=None,
            queue_reason=None,
            assignments=lead.assignments + 1,
            sla_due_at=sla_due(rep, routing.pool, now, config.settings),
            first_contact_at=None,
            history=(*lead.history, entry),
            updated_at=now,
        )
    return dataclasses.replace(
        lead,
        status=routing.status,
        rep_id=lead.rep_id if routing.nurture else None,
        pool_id=routing.pool.pool_id if routing.pool else lead.pool_id,
        assigned_at=None if not routing.nurture else lead.assigned_at,
        why=routing.why,
        queued_at=(lead.queued_at or now) if routing.queued else None,
        queue_reason=(routing.why.note if routing.why else None) if routing.queued else None,
        sla_due_at=None,
        history=(*lead.history, entry),
        updated_at=now,
    )


def timers_after_routing(lead: Lead, routing: Routing) -> list[Timer]:
    timers: list[Timer] = []
    sla = sla_timer(lead) if routing.rep is not None else None
    if sla is not None:
        timers.append(sla)
    if routing.queued and routing.wake_at is not None and routing.pool is not None:
        timers.append(deal_timer(routing.pool.pool_id, routing.wake_at))
    return timers


# --- what intake's and nurture's events do to a lead -------------------------------------


def receive_lead(
    event: LeadReceivedV1,
    awaited: AwaitedLead | None,
    routing: Routing,
    config: RoutingConfig,
    now: datetime,
) -> Lead:
    """The lead `event` announces, routed as `routing` says, with what arrived before it."""
    lead = Lead(
        lead_id=event.lead_id,
        status=LeadStatus.NEW,
        contact=event.contact,
        consent=event.consent,
        attribution=event.attribution,
        profile=event.profile,
        received_at=event.occurred_at,
        fit_score=event.fit_score
        if event.fit_score is not None
        else (event.fit.score if event.fit else None),
        fit_grade=event.fit.grade if event.fit else None,
        message=event.message,
        inquiries=1,
        last_inquiry_at=event.occurred_at,
        updated_at=now,
    )
    lead = routed(lead, routing, config, now, how="routed")
    if awaited is None:
        return lead
    lead = dataclasses.replace(
        lead,
        # A repeat inquiry read before the lead itself carries the newer contact.
        contact=awaited.contact,
        inquiries=1 + awaited.inquiries,
        last_inquiry_at=_latest(event.occurred_at, awaited.last_inquiry_at),
    )
    if awaited.erased_at is not None:
        lead = dataclasses.replace(
            lead, contact=Contact(), message=None, erased_at=awaited.erased_at
        )
    return lead


def add_repeat_inquiry(event: LeadMergedV1, known: KnownLead | None, now: datetime) -> KnownLead:
    """Count a repeat inquiry and take its merged contact; a lead keeps its rep."""
    if known is None:
        return AwaitedLead(
            lead_id=event.lead_id,
            contact=event.contact,
            inquiries=1,
            last_inquiry_at=event.occurred_at,
            updated_at=now,
        )
    return dataclasses.replace(
        known,
        contact=event.contact,
        inquiries=known.inquiries + 1,
        last_inquiry_at=_latest(event.occurred_at, known.last_inquiry_at),
        updated_at=now,
    )


def reopens(lead: Lead) -> bool:
    """A repeat inquiry brings back a lead that was nurturing (lost at level 2 or 3, or
    sent to nurture by its fit); a lead lost at level 1 (invalid contact) stays closed."""
    return lead.status is LeadStatus.NURTURING


def back_to_sales(
    lead: Lead,
    preferred_rep: str | None,
    config: RoutingConfig,
    loads: Mapping[str, LastAssignment],
    *,
    turn: int,
    now: datetime,
    how: str,
) -> Routing:
    """A lead coming back to sales (repeat inquiry, requalified): its previous owner when
    they are active (shift and capacity do not matter: it is their customer), else the
    rules as for a new lead, fit threshold aside."""
    rep = config.reps.get(preferred_rep or "")
    pool = config.pool(lead.pool_id)
    if rep is not None and rep.active:
        load = loads.get(rep.rep_id) or empty_load(rep.rep_id)
        return Routing(
            pool,
            rep,
            taken_by(rep, pool, load, turn=turn, now=now),
            RoutingReason(
                pool_id=pool.pool_id if pool else None,
                strategy="previous_owner",
                note=f"{how}: back to the previous owner",
            ),
        )
    target = choose_target(lead.profile, lead.attribution, lead.fit_grade, config)
    skipped = {preferred_rep: "inactive"} if preferred_rep else {}
    return deal(
        target.pool,
        config,
        loads,
        turn=turn,
        now=now,
        passing_over=skipped,
        profile=lead.profile,
        rule_id=target.rule.rule_id if target.rule else None,
        direct_rep=target.rep_id,
        note=f"{how}: previous owner unavailable, by {target.how}",
    )


def erase_personal_data(lead_id: str, known: KnownLead | None, now: datetime) -> KnownLead:
    """Right to erasure: drop the lead's personal data, keep its anonymous history. An
    erasure read before its lead is kept, so the lead arrives already erased."""
    match known:
        case Lead():
            return dataclasses.replace(
                known,
                contact=Contact(),
                message=None,
                lost_reason=None,
                help_note=None,
                activities=tuple(dataclasses.replace(a, note=None) for a in known.activities),
                visits=tuple(dataclasses.replace(v, satisfaction_note=None) for v in known.visits),
                history=tuple(dataclasses.replace(h, note=None) for h in known.history),
                erased_at=now,
                updated_at=now,
            )
        case AwaitedLead():
            return dataclasses.replace(known, contact=Contact(), erased_at=now, updated_at=now)
        case None:
            return AwaitedLead(lead_id=lead_id, contact=Contact(), erased_at=now, updated_at=now)


def _latest(first: datetime, second: datetime | None) -> datetime:
    return first if second is None else max(first, second)


@dataclass(frozen=True, slots=True)
class Dealt:
    """A lead that went somewhere in a batch, with how and from whom."""

    lead: Lead
    routing: Routing
    how: str
    previous_rep_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What a batch of consumed events changes."""

    leads: tuple[KnownLead, ...]
    """Every lead the batch changed, in its state after the batch."""
    dealt: tuple[Dealt, ...]
    """Every routing decision, in order: assigned, queued, or sent to nurture."""
    received_twice: tuple[str, ...]
    """Leads received again after their first routing, which stands."""
    last_assignments: tuple[LastAssignment, ...]
    """The new routing state of every rep dealt a lead."""
    timers: tuple[Timer, ...] = ()
    cancelled: tuple[str, ...] = ()
    """Keys of timers that no longer apply."""

    @property
    def assigned(self) -> tuple[Lead, ...]:
        return tuple(d.lead for d in self.dealt if d.routing.rep is not None)

    @property
    def unassigned(self) -> tuple[Lead, ...]:
        return tuple(d.lead for d in self.dealt if d.routing.rep is None and not d.routing.nurture)


def take_in_batch(
    events: Sequence[Event],
    known: Mapping[str, KnownLead],
    config: RoutingConfig,
    last: Mapping[str, LastAssignment],
    *,
    first_turn: int,
    now: datetime,
) -> BatchOutcome:
    """Apply consumed events in order: route new leads (turn numbers from `first_turn` on),
    count repeat inquiries and reopen nurtured leads, bring requalified leads back to sales,
    forget erased contacts.

    `known` holds the batch's leads as stored, `last` the routing state of the reps who
    may be dealt one (see `reps_who_may_be_dealt`).
    """
    leads: dict[str, KnownLead] = dict(known)
    changed: dict[str, KnownLead] = {}
    loads: dict[str, LastAssignment] = dict(last)
    taken: dict[str, LastAssignment] = {}
    dealt: list[Dealt] = []
    timers: list[Timer] = []
    cancelled: list[str] = []
    received_twice: list[str] = []
    turn = first_turn

    def record(dealt_now: Dealt) -> Lead:
        nonlocal turn
        routing = dealt_now.routing
        if routing.taken is not None:
            loads[routing.taken.rep_id] = taken[routing.taken.rep_id] = routing.taken
            turn += 1
        dealt.append(dealt_now)
        timers.extend(timers_after_routing(dealt_now.lead, routing))
        timers.extend(follow_up_timers(dealt_now.lead, config.settings, now))
        return dealt_now.lead

    for event in events:
        current = leads.get(event.lead_id)
        lead: KnownLead
        match event:
            case LeadReceivedV1():
                if isinstance(current, Lead):
                    received_twice.append(event.lead_id)
                    continue
                grade = event.fit.grade if event.fit else None
                routing = route_lead(
                    event.profile, event.attribution, grade, config, loads, turn=turn, now=now
                )
                awaited = current if isinstance(current, AwaitedLead) else None
                lead = receive_lead(event, awaited, routing, config, now)
                record(Dealt(lead, routing, "routed"))
            case LeadMergedV1():
                lead = add_repeat_inquiry(event, current, now)
                if isinstance(lead, Lead) and reopens(lead):
                    owner = lead.rep_id
                    again, routing = _reopen(
                        lead, owner, "repeat", config, loads, turn=turn, now=now
                    )
                    lead = record(Dealt(again, routing, "repeat", owner))
            case LeadRequalifiedV1():
                if not isinstance(current, Lead) or current.is_open:
                    continue  # unknown here, or already with sales: nothing to bring back
                if current.status in (LeadStatus.CONVERTED, LeadStatus.LOST):
                    continue
                preferred = event.previous_rep_id or current.rep_id
                again, routing = _reopen(
                    current, preferred, "requalified", config, loads, turn=turn, now=now
                )
                lead = record(Dealt(again, routing, "requalified", current.rep_id))
            case LeadErasedV1():
                lead = erase_personal_data(event.lead_id, current, now)
            case _:
                raise TypeError(f"assignment does not take in {event.event_type} events")
        leads[event.lead_id] = changed[event.lead_id] = lead
    return BatchOutcome(
        leads=tuple(changed.values()),
        dealt=tuple(dealt),
        received_twice=tuple(received_twice),
        last_assignments=tuple(taken.values()),
        timers=tuple(timers),
        cancelled=tuple(cancelled),
    )


def _reopen(
    lead: Lead,
    preferred: str | None,
    how: str,
    config: RoutingConfig,
    loads: Mapping[str, LastAssignment],
    *,
    turn: int,
    now: datetime,
) -> tuple[Lead, Routing]:
    routing = back_to_sales(lead, preferred, config, loads, turn=turn, now=now, how=how)
    reopened = dataclasses.replace(lead, lost_level=None, lost_reason=None)
    return routed(reopened, routing, config, now, how=how), routing


# --- the sales workflow ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a manager key (everything), a rep (own leads), or a rep who manages a team
    (own and the team's leads)."""

    rep_id: str | None
    team: frozenset[str] = frozenset()

    @property
    def is_manager(self) -> bool:
        return self.rep_id is None

    def manages(self, rep_id: str | None) -> bool:
        return self.rep_id is None or (rep_id is not None and rep_id in self.team)


def may_work(lead: Lead, acting_rep: str | Actor | None) -> bool:
    """A manager (no rep id) may work every lead; a team manager their team's leads; a rep
    the leads assigned to them or that they joined as second negotiator."""
    actor = acting_rep if isinstance(acting_rep, Actor) else Actor(acting_rep)
    if actor.rep_id is None:
        return True
    return (
        lead.rep_id == actor.rep_id
        or actor.rep_id in lead.helpers
        or (lead.rep_id is not None and lead.rep_id in actor.team)
    )


def status_after_loss(current: LeadStatus, level: LossLevel) -> LeadStatus:
    """Level 1 ends the lead (`lost`); levels 2 and 3 hand it to nurture (`nurturing`)."""
    if current in _CANNOT_BE_LOST:
        raise TransitionRefusedError(current, "marked lost")
    return STATUS_AFTER_LOSS[level]


def lose_lead(
    lead: Lead, level: LossLevel, reason: str | None, now: datetime, *, by: str | None = None
) -> Lead:
    """The lead after a rep marks it lost with `level` (see `status_after_loss`)."""
    status = status_after_loss(lead.status, level)
    return dataclasses.replace(
        lead,
        status=status,
        lost_level=level,
        lost_reason=reason,
        queued_at=None,
        queue_reason=None,
        sla_due_at=None,
        next_follow_up_at=None,
        history=(*lead.history, HistoryEntry(now, f"lost level {level}", lead.rep_id, by, reason)),
        updated_at=now,
    )


def ensure_returnable(current: LeadStatus) -> None:
    """Only a lead a rep holds and has not met yet can go back to its pool."""
    if current not in _RETURNABLE:
        raise TransitionRefusedError(current, "returned to its pool")


def passed_over(lead: Lead) -> dict[str, str]:
    """The reps a lead must not be dealt to again, and why."""
    skipped = {rep_id: "returned this lead" for rep_id in lead.returned_by}
    skipped.update({rep_id: "rejected this lead" for rep_id in lead.rejected_by})
    return skipped


def return_to_pool(
    lead: Lead,
    pool: Pool | None,
    reps: Mapping[str, Rep] | RoutingConfig,
    last: Mapping[str, LastAssignment],
    *,
    turn: int,
    now: datetime,
    by: str | None = None,
) -> tuple[Lead, Routing]:
    """Give the lead back to its pool and deal it to an eligible rep who has not returned
    or rejected it; with nobody free it waits in the pool's queue as `new`."""
    ensure_returnable(lead.status)
    config = (
        reps if isinstance(reps, RoutingConfig) else RoutingConfig(reps, (pool,) if pool else ())
    )
    returned = dataclasses.replace(
        lead,
        returned_by=(*lead.returned_by, lead.rep_id or ""),
        history=(*lead.history, HistoryEntry(now, "returned", lead.rep_id, by)),
    )
    routing = deal(
        pool,
        config,
        last,
        turn=turn,
        now=now,
        passing_over=passed_over(returned),
        profile=lead.profile,
        note="returned to the pool",
    )
    return routed(returned, routing, config, now, how="routed"), routing


def choose_rep(
    pool: Pool,
    reps: Mapping[str, Rep],
    last: Mapping[str, LastAssignment],
    *,
    passing_over: Collection[str] = (),
    now: datetime,
) -> Rep | None:
    """The rep `pool` would deal its next lead to at `now`."""
    config = RoutingConfig(reps, (pool,))
    routing = deal(
        pool,
        config,
        last,
        turn=0,
        now=now,
        passing_over={rep_id: "passed over" for rep_id in passing_over},
    )
    return routing.rep


def route_in_pool(
    pool: Pool | None,
    reps: Mapping[str, Rep],
    last: Mapping[str, LastAssignment],
    *,
    turn: int,
    now: datetime,
    passing_over: Collection[str] = (),
) -> Routing:
    """Deal a lead in `pool` as turn number `turn`; no pool or nobody free leaves it
    unassigned and uses no turn."""
    config = RoutingConfig(reps, (pool,) if pool else ())
    return deal(
        pool,
        config,
        last,
        turn=turn,
        now=now,
        passing_over={rep_id: "passed over" for rep_id in passing_over},
    )


def changed_rep(rep: Rep, changes: RepChanges) -> Rep:
    return dataclasses.replace(rep, **changes)


def changed_pool(pool: Pool, changes: PoolChanges) -> Pool:
    return dataclasses.replace(pool, **changes)


# --- the rep's work on a lead ------------------------------------------------------------

CONTACT_KINDS: Final = frozenset({"call", "sms", "email"})
"""Activities that reach out to the person: the first one stops the first-response clock."""
CALL_OUTCOMES: Final = ("reached", "no_answer", "wrong_number", "visit_booked")
_WORKABLE: Final = OPEN_STATUSES


def ensure_workable(lead: Lead, action: str) -> None:
    if lead.status not in _WORKABLE:
        raise TransitionRefusedError(lead.status, action)


def follow_up_due(lead: Lead, settings: RoutingSettings, since: datetime) -> datetime | None:
    """The next follow-up: the grade's interval after the last activity (or `since`)."""
    if lead.grade is None or lead.grade not in settings.grades:
        return None
    return since + timedelta(hours=settings.grades[lead.grade])


def follow_up_timers(lead: Lead, settings: RoutingSettings, now: datetime) -> list[Timer]:
    """The follow-up and forgotten-lead timers of an open lead after a change at `now`."""
    timers: list[Timer] = []
    if not lead.is_open:
        return timers
    if lead.next_follow_up_at is not None:
        timers.append(
            Timer(
                f"{TimerKind.FOLLOW_UP}:{lead.lead_id}",
                TimerKind.FOLLOW_UP,
                lead.next_follow_up_at,
                {"lead_id": lead.lead_id, "stage": "rep"},
            )
        )
    if settings.forgotten_after_days is not None:
        timers.append(
            Timer(
                f"{TimerKind.FORGOTTEN}:{lead.lead_id}",
                TimerKind.FORGOTTEN,
                (lead.last_activity_at or lead.assigned_at or now)
                + timedelta(days=settings.forgotten_after_days),
                {"lead_id": lead.lead_id},
            )
        )
    return timers


def lead_timer_keys(lead: Lead) -> list[str]:
    """Every timer key an open lead may have, to cancel when it closes or changes hands."""
    keys = [
        sla_key(lead),
        f"{TimerKind.FOLLOW_UP}:{lead.lead_id}",
        f"{TimerKind.FORGOTTEN}:{lead.lead_id}",
    ]
    return keys


def log_activity(
    lead: Lead,
    activity: Activity,
    settings: RoutingSettings,
) -> tuple[Lead, bool]:
    """The lead after a logged activity, and whether it was the first contact (which stops
    the first-response SLA). A wrong number does not reach anyone but is still an attempt."""
    ensure_workable(lead, "worked on")
    now = activity.at
    first = activity.kind in CONTACT_KINDS and lead.first_contact_at is None
    status = lead.status
    if first and status is LeadStatus.ASSIGNED:
        status = LeadStatus.CONTACTED
    changed = dataclasses.replace(
        lead,
        status=status,
        first_contact_at=now if first else lead.first_contact_at,
        sla_due_at=None if first else lead.sla_due_at,
        last_activity_at=now,
        activities=(*lead.activities, activity),
        updated_at=now,
    )
    return dataclasses.replace(
        changed, next_follow_up_at=follow_up_due(changed, settings, now)
    ), first


def set_grade(lead: Lead, grade: str, settings: RoutingSettings, now: datetime) -> Lead:
    if grade not in settings.grades:
        raise InvalidValueError(
            "grade", f"unknown grade '{grade}'; known: {', '.join(settings.grades)}"
        )
    ensure_workable(lead, "graded")
    graded = dataclasses.replace(lead, grade=grade, updated_at=now)
    since = lead.last_activity_at or lead.assigned_at or now
    return dataclasses.replace(graded, next_follow_up_at=follow_up_due(graded, settings, since))


def book_visit(
    lead: Lead, visit_id: str, when: datetime, rep_id: str | None, now: datetime
) -> Lead:
    ensure_workable(lead, "booked a visit")
    if any(v.visit_id == visit_id for v in lead.visits):
        raise RefusedError(f"visit '{visit_id}' is already booked")
    return dataclasses.replace(
        lead,
        status=LeadStatus.VISIT_SCHEDULED if lead.status is not LeadStatus.VISITED else lead.status,
        visits=(*lead.visits, Visit(visit_id, when, rep_id)),
        last_activity_at=now,
        first_contact_at=lead.first_contact_at or now,
        sla_due_at=None,
        updated_at=now,
    )


def satisfaction_callback_due(rep: Rep | None, at: datetime) -> datetime:
    """Seed 004: the next day, in the morning of the rep's (or UTC) day, 10:00."""
    local = at.astimezone(zone((rep.timezone if rep else None) or "UTC"))
    next_day = local.date() + timedelta(days=1)
    return datetime.combine(next_day, datetime.min.time(), local.tzinfo).replace(hour=10)


def check_in(
    lead: Lead,
    visit_id: str,
    walk_in: bool,
    rep: Rep | None,
    now: datetime,
) -> tuple[Lead, Visit]:
    """A visit checked in: a booked one (reserved) or a walk-in (a visit made now)."""
    if lead.status in (LeadStatus.CONVERTED, LeadStatus.LOST):
        raise TransitionRefusedError(lead.status, "checked in")
    booked = next((v for v in lead.visits if v.visit_id == visit_id), None)
    if booked is not None and booked.checked_in_at is not None:
        raise RefusedError(f"visit '{visit_id}' is already checked in")
    if booked is None and not walk_in:
        raise NotFoundError("visit", visit_id)
    visit = dataclasses.replace(
        booked or Visit(visit_id, None, rep.rep_id if rep else lead.rep_id),
        walk_in=walk_in and booked is None,
        checked_in_at=now,
        callback_due_at=satisfaction_callback_due(rep, now),
    )
    visits = (*(v for v in lead.visits if v.visit_id != visit_id), visit)
    return (
        dataclasses.replace(
            lead,
            status=LeadStatus.VISITED if lead.status in _WORKABLE else lead.status,
            visits=visits,
            first_contact_at=lead.first_contact_at or now,
            sla_due_at=None,
            last_activity_at=now,
            updated_at=now,
        ),
        visit,
    )


def satisfaction_timer(lead: Lead, visit: Visit) -> Timer | None:
    if visit.callback_due_at is None:
        return None
    return Timer(
        f"{TimerKind.SATISFACTION}:{lead.lead_id}:{visit.visit_id}",
        TimerKind.SATISFACTION,
        visit.callback_due_at,
        {"lead_id": lead.lead_id, "visit_id": visit.visit_id},
    )


def open_callback(lead: Lead, visit_id: str, now: datetime) -> Lead:
    """The satisfaction callback of a visit is due: it shows as a task on the lead."""
    return dataclasses.replace(
        lead,
        visits=tuple(
            dataclasses.replace(v, callback_open=True)
            if v.visit_id == visit_id and v.satisfaction is None
            else v
            for v in lead.visits
        ),
        updated_at=now,
    )


def record_satisfaction(
    lead: Lead, visit_id: str, score: int, note: str | None, now: datetime
) -> Lead:
    visit = next((v for v in lead.visits if v.visit_id == visit_id), None)
    if visit is None or visit.checked_in_at is None:
        raise NotFoundError("checked-in visit", visit_id)
    if visit.satisfaction is not None:
        raise RefusedError(f"visit '{visit_id}' already has a satisfaction score")
    return dataclasses.replace(
        lead,
        visits=tuple(
            dataclasses.replace(v, satisfaction=score, satisfaction_note=note, callback_open=False)
            if v.visit_id == visit_id
            else v
            for v in lead.visits
        ),
        updated_at=now,
    )


def convert_lead(lead: Lead, conversion: Conversion, by: str | None) -> Lead:
    if lead.status in (LeadStatus.CONVERTED, LeadStatus.LOST) or lead.rep_id is None:
        raise TransitionRefusedError(lead.status, "converted")
    now = conversion.converted_at
    return dataclasses.replace(
        lead,
        status=LeadStatus.CONVERTED,
        conversion=conversion,
        sla_due_at=None,
        next_follow_up_at=None,
        last_activity_at=now,
        history=(*lead.history, HistoryEntry(now, "converted", lead.rep_id, by)),
        updated_at=now,
    )


def ask_help(lead: Lead, note: str | None, now: datetime) -> Lead:
    ensure_workable(lead, "helped")
    return dataclasses.replace(
        lead,
        help_requested_at=now,
        help_note=note,
        history=(
            *lead.history,
            HistoryEntry(now, "asked for help", lead.rep_id, lead.rep_id, note),
        ),
        updated_at=now,
    )


def join_lead(lead: Lead, helper: str, now: datetime) -> Lead:
    """A manager joins as second negotiator (seed 004's 二级谈判)."""
    ensure_workable(lead, "joined")
    if helper in lead.helpers or helper == lead.rep_id:
        return lead
    return dataclasses.replace(
        lead,
        helpers=(*lead.helpers, helper),
        history=(*lead.history, HistoryEntry(now, "joined", helper, helper)),
        updated_at=now,
    )


def ensure_claimable(lead: Lead, pool: Pool | None, rep_id: str, claimed_open: int) -> Pool:
    """A rep may claim a waiting lead from a claimable pool they are in, within its limit."""
    if pool is None or rep_id not in pool.rep_ids:
        raise NotOwnerError(lead.lead_id)  # not a pool of theirs: none of their business
    if lead.status is not LeadStatus.NEW or lead.queued_at is None:
        raise TransitionRefusedError(lead.status, "claimed")
    if not pool.claimable:
        raise RefusedError("the lead's pool does not let reps claim its leads")
    if pool.claim_limit is not None and claimed_open >= pool.claim_limit:
        raise RefusedError(f"claim limit reached: {pool.claim_limit} open claimed leads")
    return pool


def assign_to(
    lead: Lead,
    rep: Rep,
    pool: Pool | None,
    config: RoutingConfig,
    load: LastAssignment,
    *,
    turn: int,
    now: datetime,
    how: str,
    by: str | None,
    note: str | None = None,
) -> tuple[Lead, Routing]:
    """A lead given to a named rep (claimed, bulk assigned, reassigned, handed over). An
    inactive rep never receives a lead; a named rep off shift still may (a person chose)."""
    if not rep.active:
        raise RefusedError(f"rep '{rep.rep_id}' is inactive and receives no leads")
    if lead.status in (LeadStatus.CONVERTED, LeadStatus.LOST, LeadStatus.NURTURING):
        raise TransitionRefusedError(lead.status, "assigned")
    if lead.rep_id == rep.rep_id and lead.is_open:
        raise RefusedError(f"the lead is already {rep.rep_id}'s")
    routing = Routing(
        pool,
        rep,
        taken_by(rep, pool, load, turn=turn, now=now),
        RoutingReason(pool_id=pool.pool_id if pool else None, strategy=how, note=note),
    )
    return routed(lead, routing, config, now, how=how, by=by), routing


def reject(lead: Lead, rep_id: str, reason: str, now: datetime) -> Lead:
    """The rep refuses the lead: they are passed over for it from now on."""
    if not lead.is_open or lead.rep_id != rep_id:
        raise TransitionRefusedError(lead.status, "rejected")
    return dataclasses.replace(
        lead,
        rejected_by=(*lead.rejected_by, rep_id),
        history=(*lead.history, HistoryEntry(now, "rejected", rep_id, rep_id, reason)),
    )
