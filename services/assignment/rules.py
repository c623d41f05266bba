"""Pure decisions of assignment: which pool and rep get a lead, and where a lead may go next.

No I/O and no clock reads: the store loads the facts, these functions decide, and the
store persists the outcome together with the events it implies.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from shared.events import Attribution, Consent, Contact, LossLevel, Profile

Clock = Callable[[], datetime]
"""Where "now" comes from; passed in so decisions never read the clock themselves."""

ROUND_ROBIN: Final = "round_robin"


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
class Turn:
    """A rep's place in a pool's rotation: the pool's turn number when they last got a lead."""

    rep_id: str
    number: int
    taken_at: datetime


@dataclass(frozen=True, slots=True)
class Pool:
    pool_id: str
    name: str
    rep_ids: tuple[str, ...] = ()
    match: PoolMatch = PoolMatch()
    priority: int = 0
    is_default: bool = False
    rotation: tuple[Turn, ...] = ()


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
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a lead goes: a pool and a rep, a pool with nobody free, or nowhere."""

    pool: Pool | None
    rep: Rep | None
    rotation: tuple[Turn, ...] = ()
    """The pool's rotation after this lead; unchanged when no rep took it."""

    @property
    def status(self) -> LeadStatus:
        return LeadStatus.ASSIGNED if self.rep is not None else LeadStatus.NEW


# --- decisions ------------------------------------------------------------------------


def choose_pool(profile: Profile, pools: Iterable[Pool]) -> Pool | None:
    """The highest-priority pool whose criteria all hold for `profile`, else the default pool.

    Equal priorities are settled by pool id, so the same lead always lands in the same pool.
    """
    ranked = sorted(pools, key=lambda pool: (-pool.priority, pool.pool_id))
    for pool in ranked:
        if pool.match.admits(profile):
            return pool
    return next((pool for pool in ranked if pool.is_default), None)


def choose_rep(
    pool: Pool, reps: Mapping[str, Rep], *, passing_over: Collection[str] = ()
) -> Rep | None:
    """Fair round robin: of the pool's available reps, the one whose last lead from this
    pool is oldest; reps who never had one come first, ties go by order in `rep_ids`.

    `passing_over` names reps who must not get this lead (the rep who just returned it).
    """
    last_turn = {turn.rep_id: turn.number for turn in pool.rotation}
    candidates = [
        reps[rep_id]
        for rep_id in pool.rep_ids
        if rep_id in reps and reps[rep_id].available and rep_id not in passing_over
    ]
    # min() keeps the first of equal keys, which is the rep_ids order.
    return min(candidates, key=lambda rep: last_turn.get(rep.rep_id, 0), default=None)


def take_turn(pool: Pool, rep_id: str, now: datetime) -> tuple[Turn, ...]:
    """The pool's rotation after `rep_id` takes a lead at `now`: they go to the back."""
    number = max((turn.number for turn in pool.rotation), default=0) + 1
    return (*(turn for turn in pool.rotation if turn.rep_id != rep_id), Turn(rep_id, number, now))


def route_in_pool(
    pool: Pool | None,
    reps: Mapping[str, Rep],
    now: datetime,
    *,
    passing_over: Collection[str] = (),
) -> Routing:
    """Deal a lead in `pool` (see `choose_rep`); no pool or nobody free leaves it unassigned."""
    if pool is None:
        return Routing(pool=None, rep=None)
    rep = choose_rep(pool, reps, passing_over=passing_over)
    if rep is None:
        return Routing(pool=pool, rep=None, rotation=pool.rotation)
    return Routing(pool=pool, rep=rep, rotation=take_turn(pool, rep.rep_id, now))


def may_work(lead: Lead, acting_rep: str | None) -> bool:
    """A manager (no rep id) may work every lead; a rep only the leads assigned to them."""
    return acting_rep is None or lead.rep_id == acting_rep


def status_after_loss(current: LeadStatus, level: LossLevel) -> LeadStatus:
    """Level 1 ends the lead (`lost`); levels 2 and 3 hand it to nurture (`nurturing`)."""
    if current in _CANNOT_BE_LOST:
        raise TransitionRefusedError(current, "marked lost")
    return STATUS_AFTER_LOSS[level]


def ensure_returnable(current: LeadStatus) -> None:
    """Only a lead a rep holds and has not met yet can go back to its pool."""
    if current not in _RETURNABLE:
        raise TransitionRefusedError(current, "returned to its pool")
