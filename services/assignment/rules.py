"""Pure decisions of assignment: which pool and rep get a lead, and where a lead may go next.

No I/O and no clock reads: the use cases load the facts and pass `now` in, these functions
decide, and the store persists the outcome together with the events it implies.

Round robin is fair per rep across every pool they are in: each rep's last assignment
carries a service-wide turn number, and of a pool's available reps the one whose last lead
(from any pool) is oldest is dealt next. A rep who joins a pool or comes back from away is
dealt one lead and then waits their turn like everyone else: no catch-up burst.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final, TypedDict

from shared.events import (
    Attribution,
    Consent,
    Contact,
    Event,
    LeadErasedV1,
    LeadMergedV1,
    LeadReceivedV1,
    LossLevel,
    Profile,
)

ROUND_ROBIN: Final = "round_robin"

ConsumedEvent = LeadReceivedV1 | LeadMergedV1 | LeadErasedV1
"""The events assignment takes in from intake."""

CONSUMED_EVENTS: Final = (LeadReceivedV1, LeadMergedV1, LeadErasedV1)


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
    def __init__(self, rep_ids: Iterable[str]) -> None:
        self.rep_ids = sorted(rep_ids)
        super().__init__("unknown rep ids: " + ", ".join(self.rep_ids))


class NotOwnerError(AssignmentError):
    def __init__(self, lead_id: str) -> None:
        super().__init__(f"lead '{lead_id}' is not assigned to you")


class TransitionRefusedError(AssignmentError):
    def __init__(self, status: LeadStatus, action: str) -> None:
        self.status = status
        super().__init__(f"a lead that is '{status}' cannot be {action}")


# --- the facts decisions are made on --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rep:
    rep_id: str
    name: str
    email: str | None = None
    timezone: str | None = None
    active: bool = True
    away: bool = False

    @property
    def available(self) -> bool:
        """Takes new leads: active (still with the team) and not away."""
        return self.active and not self.away


class RepChanges(TypedDict, total=False):
    name: str
    email: str | None
    timezone: str | None
    active: bool
    away: bool


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
        for criterion, value in (
            (self.industry, profile.industry),
            (self.region, profile.region),
            (self.country, profile.country),
            (self.product_line, profile.product_line),
        ):
            # Forms and ad platforms disagree on case ("Fitness" vs "fitness").
            if criterion is not None and (
                value is None or criterion.casefold() != value.casefold()
            ):
                return False
        size = profile.company_size
        if self.min_company_size is not None and (size is None or size < self.min_company_size):
            return False
        return not (
            self.max_company_size is not None and (size is None or size > self.max_company_size)
        )


@dataclass(frozen=True, slots=True)
class Pool:
    pool_id: str
    name: str
    rep_ids: tuple[str, ...] = ()
    match: PoolMatch = PoolMatch()
    priority: int = 0
    is_default: bool = False


class PoolChanges(TypedDict, total=False):
    name: str
    rep_ids: tuple[str, ...]
    match: PoolMatch
    priority: int
    is_default: bool


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The configuration routing reads: every rep and every pool (kept in a cache)."""

    reps: Mapping[str, Rep]
    pools: tuple[Pool, ...]


@dataclass(frozen=True, slots=True)
class LastAssignment:
    """A rep's place in the round robin: the service-wide turn number of the last lead they
    were dealt, from whichever pool. The lowest number among a pool's reps goes next."""

    rep_id: str
    turn: int
    assigned_at: datetime
    pool_id: str | None


@dataclass(frozen=True, slots=True)
class PoolMember:
    """A pool's rep as a manager sees it: free to take leads, and when they last got one."""

    rep_id: str
    available: bool
    last_assigned_at: datetime | None


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
class Routing:
    """Where a lead goes: a pool and a rep, a pool with nobody free, or nowhere."""

    pool: Pool | None
    rep: Rep | None
    taken: LastAssignment | None = None
    """The rep's new last assignment, when one took the lead."""

    @property
    def status(self) -> LeadStatus:
        return LeadStatus.ASSIGNED if self.rep is not None else LeadStatus.NEW


# --- routing --------------------------------------------------------------------------


def choose_pool(profile: Profile, pools: Iterable[Pool]) -> Pool | None:
    """The highest-priority pool whose criteria all hold for `profile`, else the default pool.

    Equal priorities are settled by pool id, so the same lead always lands in the same pool.
    """
    ranked = sorted(pools, key=lambda pool: (-pool.priority, pool.pool_id))
    for pool in ranked:
        if pool.match.admits(profile):
            return pool
    return next((pool for pool in ranked if pool.is_default), None)


def _last_turn(last: Mapping[str, LastAssignment], rep_id: str) -> int:
    known = last.get(rep_id)
    return 0 if known is None else known.turn


def _candidates(pool: Pool, reps: Mapping[str, Rep], passing_over: Collection[str]) -> list[Rep]:
    return [
        reps[rep_id]
        for rep_id in pool.rep_ids
        if rep_id in reps and reps[rep_id].available and rep_id not in passing_over
    ]


def choose_rep(
    pool: Pool,
    reps: Mapping[str, Rep],
    last: Mapping[str, LastAssignment],
    *,
    passing_over: Collection[str] = (),
) -> Rep | None:
    """Fair round robin: of the pool's available reps, the one whose last lead from any pool
    is oldest; reps who never had one come first, ties go by order in `rep_ids`.

    `passing_over` names reps who must not get this lead (the reps who returned it).
    """
    # min() keeps the first of equal keys, which is the rep_ids order.
    return min(
        _candidates(pool, reps, passing_over),
        key=lambda rep: _last_turn(last, rep.rep_id),
        default=None,
    )


def route_in_pool(
    pool: Pool | None,
    reps: Mapping[str, Rep],
    last: Mapping[str, LastAssignment],
    *,
    turn: int,
    now: datetime,
    passing_over: Collection[str] = (),
) -> Routing:
    """Deal a lead in `pool` as turn number `turn` (see `choose_rep`); no pool or nobody
    free leaves it unassigned and uses no turn."""
    if pool is None:
        return Routing(pool=None, rep=None)
    rep = choose_rep(pool, reps, last, passing_over=passing_over)
    if rep is None:
        return Routing(pool=pool, rep=None)
    return Routing(pool=pool, rep=rep, taken=LastAssignment(rep.rep_id, turn, now, pool.pool_id))


def reps_who_may_be_dealt(events: Iterable[Event], config: RoutingConfig) -> set[str]:
    """The available reps of the pools the received leads among `events` go to: the reps
    whose last assignments a batch needs to deal them."""
    wanted: set[str] = set()
    for event in events:
        if isinstance(event, LeadReceivedV1):
            pool = choose_pool(event.profile, config.pools)
            if pool is not None:
                wanted.update(rep.rep_id for rep in _candidates(pool, config.reps, ()))
    return wanted


def pool_members(
    pool: Pool, reps: Mapping[str, Rep], last: Mapping[str, LastAssignment]
) -> list[PoolMember]:
    """The pool's reps in the order its next leads go to them: available reps whose last
    lead (from any pool) is oldest first, then the reps who are away or inactive."""
    available = [
        rep.rep_id
        for rep in sorted(_candidates(pool, reps, ()), key=lambda r: _last_turn(last, r.rep_id))
    ]
    free = set(available)
    resting = [rep_id for rep_id in pool.rep_ids if rep_id not in free]
    return [
        PoolMember(
            rep_id=rep_id,
            available=rep_id in free,
            last_assigned_at=last[rep_id].assigned_at if rep_id in last else None,
        )
        for rep_id in available + resting
    ]


# --- what intake's events do to a lead -------------------------------------------------


def receive_lead(
    event: LeadReceivedV1, awaited: AwaitedLead | None, routing: Routing, now: datetime
) -> Lead:
    """The lead `event` announces, dealt as `routing` says, with what arrived before it."""
    lead = Lead(
        lead_id=event.lead_id,
        status=routing.status,
        contact=event.contact,
        consent=event.consent,
        attribution=event.attribution,
        profile=event.profile,
        received_at=event.occurred_at,
        rep_id=routing.rep.rep_id if routing.rep else None,
        pool_id=routing.pool.pool_id if routing.pool else None,
        assigned_at=now if routing.rep else None,
        fit_score=event.fit_score,
        message=event.message,
        inquiries=1,
        last_inquiry_at=event.occurred_at,
        updated_at=now,
    )
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
class BatchOutcome:
    """What a batch of intake's events changes."""

    leads: tuple[KnownLead, ...]
    """Every lead the batch changed, in its state after the batch."""
    assigned: tuple[Lead, ...]
    """Leads dealt to a rep, in the order they were dealt."""
    unassigned: tuple[Lead, ...]
    """Received leads that no pool takes or whose pool has nobody available."""
    received_twice: tuple[str, ...]
    """Leads received again after their first routing, which stands."""
    last_assignments: tuple[LastAssignment, ...]
    """The new last assignment of every rep dealt a lead."""


def take_in_batch(
    events: Sequence[Event],
    known: Mapping[str, KnownLead],
    config: RoutingConfig,
    last: Mapping[str, LastAssignment],
    *,
    first_turn: int,
    now: datetime,
) -> BatchOutcome:
    """Apply intake's events in order: route new leads (turn numbers from `first_turn` on),
    count repeat inquiries, forget erased contacts.

    `known` holds the batch's leads as stored, `last` the last assignments of the reps who
    may be dealt one (see `reps_who_may_be_dealt`).
    """
    leads: dict[str, KnownLead] = dict(known)
    changed: dict[str, KnownLead] = {}
    turns: dict[str, LastAssignment] = dict(last)
    taken: dict[str, LastAssignment] = {}
    assigned: list[Lead] = []
    unassigned: list[Lead] = []
    received_twice: list[str] = []
    turn = first_turn
    for event in events:
        current = leads.get(event.lead_id)
        lead: KnownLead
        match event:
            case LeadReceivedV1():
                if isinstance(current, Lead):
                    received_twice.append(event.lead_id)
                    continue
                pool = choose_pool(event.profile, config.pools)
                routing = route_in_pool(pool, config.reps, turns, turn=turn, now=now)
                if routing.taken is not None:
                    turns[routing.taken.rep_id] = taken[routing.taken.rep_id] = routing.taken
                    turn += 1
                lead = receive_lead(event, current, routing, now)
                (assigned if routing.rep else unassigned).append(lead)
            case LeadMergedV1():
                lead = add_repeat_inquiry(event, current, now)
            case LeadErasedV1():
                lead = erase_personal_data(event.lead_id, current, now)
            case _:
                raise TypeError(f"assignment does not take in {event.event_type} events")
        leads[event.lead_id] = changed[event.lead_id] = lead
    return BatchOutcome(
        leads=tuple(changed.values()),
        assigned=tuple(assigned),
        unassigned=tuple(unassigned),
        received_twice=tuple(received_twice),
        last_assignments=tuple(taken.values()),
    )


# --- the sales workflow ---------------------------------------------------------------


def may_work(lead: Lead, acting_rep: str | None) -> bool:
    """A manager (no rep id) may work every lead; a rep only the leads assigned to them."""
    return acting_rep is None or lead.rep_id == acting_rep


def status_after_loss(current: LeadStatus, level: LossLevel) -> LeadStatus:
    """Level 1 ends the lead (`lost`); levels 2 and 3 hand it to nurture (`nurturing`)."""
    if current in _CANNOT_BE_LOST:
        raise TransitionRefusedError(current, "marked lost")
    return STATUS_AFTER_LOSS[level]


def lose_lead(lead: Lead, level: LossLevel, reason: str | None, now: datetime) -> Lead:
    """The lead after a rep marks it lost with `level` (see `status_after_loss`)."""
    return dataclasses.replace(
        lead,
        status=status_after_loss(lead.status, level),
        lost_level=level,
        lost_reason=reason,
        updated_at=now,
    )


def ensure_returnable(current: LeadStatus) -> None:
    """Only a lead a rep holds and has not met yet can go back to its pool."""
    if current not in _RETURNABLE:
        raise TransitionRefusedError(current, "returned to its pool")


def return_to_pool(
    lead: Lead,
    pool: Pool | None,
    reps: Mapping[str, Rep],
    last: Mapping[str, LastAssignment],
    *,
    turn: int,
    now: datetime,
) -> tuple[Lead, Routing]:
    """Give the lead back to its pool and deal it to an available rep who has not returned
    it yet; with nobody free it waits in the pool as `new`."""
    ensure_returnable(lead.status)
    returned_by = (*lead.returned_by, lead.rep_id or "")
    routing = route_in_pool(pool, reps, last, turn=turn, now=now, passing_over=returned_by)
    returned = dataclasses.replace(
        lead,
        status=routing.status,
        rep_id=routing.rep.rep_id if routing.rep else None,
        assigned_at=now if routing.rep else None,
        returned_by=returned_by,
        updated_at=now,
    )
    return returned, routing


def changed_rep(rep: Rep, changes: RepChanges) -> Rep:
    return dataclasses.replace(rep, **changes)


def changed_pool(pool: Pool, changes: PoolChanges) -> Pool:
    return dataclasses.replace(pool, **changes)
