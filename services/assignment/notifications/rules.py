"""Pure decisions of notifications: who is told what, through which channel, and when.

No I/O and no clock reads. The use cases load the people concerned and pass `now` in;
`plan_notifications` turns a batch of assignment's events into entries of reps' live
streams and delivery jobs (one per person and push channel), and says which scheduled SLA
warnings are no longer wanted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Literal

from shared.events import (
    ActivityLoggedV1,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadQueuedV1,
    LeadRejectedByRepV1,
    LeadReturnedToPoolV1,
    SlaBreachedV1,
    VisitCheckedInV1,
    VisitScheduledV1,
)

Channel = Literal["email", "webhook", "sse"]
CHANNELS: Final[tuple[Channel, ...]] = ("email", "webhook", "sse")
PUSH_CHANNELS: Final[tuple[Channel, ...]] = ("email", "webhook")

NOTIFIED_EVENTS: Final = (
    LeadAssignedV1,
    LeadQueuedV1,
    LeadReturnedToPoolV1,
    LeadRejectedByRepV1,
    ActivityLoggedV1,
    VisitScheduledV1,
    VisitCheckedInV1,
    LeadConvertedV1,
    LeadLostV1,
    SlaBreachedV1,
)
"""Assignment's own events that change a rep's queue or call for someone to be told."""

NotifiedEvent = (
    LeadAssignedV1
    | LeadQueuedV1
    | LeadReturnedToPoolV1
    | LeadRejectedByRepV1
    | ActivityLoggedV1
    | VisitScheduledV1
    | VisitCheckedInV1
    | LeadConvertedV1
    | LeadLostV1
    | SlaBreachedV1
)

PLANNED_EVENTS: Final = (*NOTIFIED_EVENTS, LeadMergedV1)
"""What notifications plan from: assignment's own events, and intake's repeat inquiries
(the lead's owner is told at once; routing itself changes nothing on an open lead)."""

PlannedEvent = NotifiedEvent | LeadMergedV1

_OTHER_ALERTS: Final = frozenset({"help", "satisfaction", "follow_up", "follow-up", "forgotten"})
"""`SlaBreachedV1.sla` values that are not a missed response (see `_sla_notices`)."""

SIGNATURE_HEADER: Final = "X-Leadflow-Signature"
TIMESTAMP_HEADER: Final = "X-Leadflow-Timestamp"
DELIVERY_HEADER: Final = "X-Leadflow-Delivery"
KIND_HEADER: Final = "X-Leadflow-Event"


class NoticeKind(StrEnum):
    ASSIGNED = "lead-assigned"
    REASSIGNED_AWAY = "lead-reassigned-away"
    SLA_WARNING = "sla-warning"
    SLA_BREACHED = "sla-breached"
    SLA_ESCALATED = "sla-escalated"
    QUEUED = "lead-queued"
    HELP_REQUESTED = "help-requested"
    FOLLOW_UP_OVERDUE = "follow-up-overdue"
    LOW_SATISFACTION = "low-satisfaction"
    REPEAT_INQUIRY = "repeat-inquiry"


_MIRRORED_ON_STREAM: Final = frozenset(
    {NoticeKind.ASSIGNED, NoticeKind.REASSIGNED_AWAY, NoticeKind.SLA_BREACHED}
)
"""Notices the recipient's live stream already shows as the queue change itself."""


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Preferences:
    """How a person wants to be told (`notify` on a rep's or manager's document)."""

    email: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    slack: bool = False
    channels: frozenset[str] = frozenset()

    @classmethod
    def from_document(cls, document: Mapping[str, Any] | None) -> Preferences:
        if not document:
            return cls()
        return cls(
            email=document.get("email"),
            webhook_url=document.get("webhook_url"),
            webhook_secret=document.get("webhook_secret"),
            slack=bool(document.get("slack", False)),
            channels=frozenset(document.get("channels") or ()),
        )

    def push_channels(self) -> list[Channel]:
        """The chosen channels that can reach the person without them listening."""
        wanted: list[Channel] = []
        if "email" in self.channels and self.email:
            wanted.append("email")
        if "webhook" in self.channels and self.webhook_url:
            wanted.append("webhook")
        return wanted


@dataclass(frozen=True, slots=True)
class Person:
    """A rep or manager who may be told something."""

    person_id: str
    name: str = ""
    manager_id: str | None = None
    notify: Preferences = Preferences()


@dataclass(frozen=True, slots=True)
class LeadOwner:
    """Who holds an open lead, and since when (as planning finds it)."""

    rep_id: str
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """Something one person must be told about one lead."""

    notice_id: str
    kind: NoticeKind
    person_id: str
    lead_id: str
    at: datetime
    """When it happened (or, for a warning, when it is due to be told)."""
    text: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notice through one channel: a durable job, sent once, retried with back-off."""

    delivery_id: str
    channel: Channel
    notice: Notice
    due_at: datetime


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One entry in a rep's (or manager's) live stream."""

    person_id: str
    kind: str
    lead_id: str
    at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class NotificationPlan:
    """What a batch implies; filled in as the batch is read."""

    feed: list[FeedEntry] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    """Delivery ids of scheduled SLA warnings the batch made moot (first contact, lead
    gone from the rep)."""
    unaddressed: list[Notice] = field(default_factory=list)
    """Notices nobody known could be told (no such person, no manager named)."""
    stale: int = 0
    """Events too old to tell anyone about."""


# --- who is concerned ----------------------------------------------------------------------


def people_concerned(events: Iterable[Event]) -> set[str]:
    """The reps an event batch names (their managers are found from their documents)."""
    ids: set[str] = set()
    for event in events:
        rep_id = getattr(event, "rep_id", None)
        if rep_id:
            ids.add(rep_id)
        if isinstance(event, LeadAssignedV1) and event.previous_rep_id:
            ids.add(event.previous_rep_id)
        if isinstance(event, SlaBreachedV1) and event.escalated_to:
            ids.add(event.escalated_to)
    return ids


def leads_concerned(events: Iterable[Event]) -> set[str]:
    """Leads whose current owner must be looked up: those with a repeat inquiry."""
    return {event.lead_id for event in events if isinstance(event, LeadMergedV1)}


def pools_concerned(events: Iterable[Event]) -> set[str]:
    """Pools whose manager must hear of a lead waiting in their queue."""
    return {event.pool_id for event in events if isinstance(event, LeadQueuedV1)}


def managers_concerned(
    people: Mapping[str, Person], pool_managers: Mapping[str, Sequence[str]]
) -> set[str]:
    """Managers to load after the reps: of the reps named, and of pools with a queue."""
    ids = {person.manager_id for person in people.values() if person.manager_id}
    ids.update(m for managers in pool_managers.values() for m in managers)
    return ids - set(people)


# --- planning -------------------------------------------------------------------------------


def plan_notifications(
    events: Sequence[Event],
    people: Mapping[str, Person],
    pool_managers: Mapping[str, Sequence[str]],
    *,
    now: datetime,
    sla_warning_before: timedelta,
    max_age: timedelta | None = None,
    owners: Mapping[str, LeadOwner] | None = None,
) -> NotificationPlan:
    """The stream entries, deliveries and cancelled warnings a batch of events implies.

    `owners`: the current owner of each open lead `leads_concerned` names (a lead not in
    it is closed, waiting in a queue or unknown: nobody holds it to be told).

    Events are taken in order: within a batch, a first contact after an assignment
    cancels the warning that assignment scheduled. Events older than `max_age` (a new
    consumer group reading a topic from its start) tell nobody anything; they still
    cancel warnings.
    """
    plan = NotificationPlan()
    notices: list[Notice] = []
    # lead_id -> its SLA warning (None: none is wanted any more)
    warnings: dict[str, Notice | None] = {}
    for event in events:
        if _stops_sla_warning(event):
            warnings[event.lead_id] = None
        if max_age is not None and event.occurred_at < now - max_age:
            plan.stale += 1
            continue
        plan.feed.extend(_queue_changes(event))
        notices.extend(_notices_for(event, people, pool_managers, owners or {}))
        if isinstance(event, LeadAssignedV1) and event.sla_due_at is not None:
            warnings[event.lead_id] = _sla_warning(event, people, before=sla_warning_before)
    for lead_id, warning in warnings.items():
        if warning is None:
            plan.cancelled.extend(sla_warning_delivery_ids(lead_id))
        else:
            notices.append(warning)
    for notice in notices:
        person = people.get(notice.person_id)
        if person is None:
            plan.unaddressed.append(notice)
            continue
        add_notice(plan, notice, person, now=now)
    return plan


def add_notice(plan: NotificationPlan, notice: Notice, person: Person, *, now: datetime) -> None:
    """Add `notice` to `plan`: a delivery per chosen push channel, and the person's live
    stream (at once, or through a delivery when the notice is due later)."""
    due_at = max(notice.at, now)
    for channel in person.notify.push_channels():
        plan.deliveries.append(Delivery(delivery_id_for(notice, channel), channel, notice, due_at))
    if notice.kind in _MIRRORED_ON_STREAM:
        return
    if notice.at > now:
        plan.deliveries.append(Delivery(delivery_id_for(notice, "sse"), "sse", notice, due_at))
    else:
        plan.feed.append(feed_entry_for(notice))


def delivery_id_for(notice: Notice, channel: Channel) -> str:
    return f"{notice.notice_id}:{channel}"


def feed_entry_for(notice: Notice) -> FeedEntry:
    return FeedEntry(
        person_id=notice.person_id,
        kind=notice.kind.value,
        lead_id=notice.lead_id,
        at=notice.at,
        data={"text": notice.text, **notice.details},
    )


def sla_warning_delivery_ids(lead_id: str) -> list[str]:
    """One SLA warning per lead at a time: a reassignment replaces it."""
    return [f"sla-warning:{lead_id}:{channel}" for channel in CHANNELS]


def _stops_sla_warning(event: Event) -> bool:
    match event:
        case ActivityLoggedV1(first_contact=True):
            return True
        case (
            LeadReturnedToPoolV1()
            | LeadRejectedByRepV1()
            | LeadLostV1()
            | LeadConvertedV1()
            | LeadAssignedV1()
        ):
            return True
        case SlaBreachedV1():
            return is_missed_response(event)
    return False


def sla_warning_at(assigned_at: datetime, due_at: datetime, before: timedelta) -> datetime | None:
    """When to warn that the first response is nearly due: `before` ahead of it, or half
    way when the SLA is shorter than that; None when it is already due."""
    if due_at <= assigned_at:
        return None
    warn_at = due_at - before
    return warn_at if warn_at > assigned_at else assigned_at + (due_at - assigned_at) / 2


def _sla_warning(
    event: LeadAssignedV1, people: Mapping[str, Person], *, before: timedelta
) -> Notice | None:
    assert event.sla_due_at is not None
    warn_at = sla_warning_at(event.occurred_at, event.sla_due_at, before)
    if warn_at is None:
        return None
    return Notice(
        notice_id=f"sla-warning:{event.lead_id}",
        kind=NoticeKind.SLA_WARNING,
        person_id=event.rep_id,
        lead_id=event.lead_id,
        at=warn_at,
        text=f"Lead {event.lead_id}: first response due by {_clock(event.sla_due_at)}. "
        "No contact is logged yet.",
        details={"sla_due_at": event.sla_due_at.isoformat(), "pool_id": event.pool_id},
    )


def _queue_changes(event: Event) -> list[FeedEntry]:
    """What a rep's live stream shows for `event`: their queue changed."""
    at = event.occurred_at
    match event:
        case LeadAssignedV1():
            entries = [
                FeedEntry(
                    event.rep_id,
                    "lead-assigned",
                    event.lead_id,
                    at,
                    _without_none(
                        pool_id=event.pool_id,
                        how=event.how,
                        previous_rep_id=event.previous_rep_id,
                        sla_due_at=_iso(event.sla_due_at),
                        strategy=event.strategy,
                    ),
                )
            ]
            if event.previous_rep_id and event.previous_rep_id != event.rep_id:
                entries.append(
                    FeedEntry(
                        event.previous_rep_id,
                        "lead-reassigned-away",
                        event.lead_id,
                        at,
                        {"to_rep_id": event.rep_id, "how": event.how},
                    )
                )
            return entries
        case LeadReturnedToPoolV1():
            data = _without_none(pool_id=event.pool_id, reason=event.reason)
            return [FeedEntry(event.rep_id, "lead-returned-to-pool", event.lead_id, at, data)]
        case LeadRejectedByRepV1():
            data = {"reason": event.reason}
            return [FeedEntry(event.rep_id, "lead-rejected", event.lead_id, at, data)]
        case ActivityLoggedV1():
            data = _without_none(
                activity=event.activity, outcome=event.outcome, first_contact=event.first_contact
            )
            return [FeedEntry(event.rep_id, "activity-logged", event.lead_id, at, data)]
        case VisitScheduledV1():
            data = {"visit_id": event.visit_id, "scheduled_for": event.scheduled_for.isoformat()}
            return [FeedEntry(event.rep_id, "visit-scheduled", event.lead_id, at, data)]
        case VisitCheckedInV1(rep_id=str() as rep_id):
            data = _without_none(visit_id=event.visit_id, walk_in=event.walk_in)
            return [FeedEntry(rep_id, "visit-checked-in", event.lead_id, at, data)]
        case LeadConvertedV1():
            data = {"revenue": event.revenue, "currency": event.currency}
            return [FeedEntry(event.rep_id, "lead-converted", event.lead_id, at, data)]
        case LeadLostV1(rep_id=str() as rep_id):
            data = _without_none(level=event.level, reason=event.reason)
            return [FeedEntry(rep_id, "lead-lost", event.lead_id, at, data)]
        case SlaBreachedV1() if is_missed_response(event):
            data = _without_none(
                sla=event.sla,
                due_at=event.due_at.isoformat(),
                escalated_to=event.escalated_to,
                reassigned=event.reassigned,
            )
            return [FeedEntry(event.rep_id, "sla-breached", event.lead_id, at, data)]
    return []


def _notices_for(
    event: Event,
    people: Mapping[str, Person],
    pool_managers: Mapping[str, Sequence[str]],
    owners: Mapping[str, LeadOwner],
) -> list[Notice]:
    base = str(event.event_id)
    at = event.occurred_at
    lead = event.lead_id
    match event:
        case LeadAssignedV1():
            due = f" First response due by {_clock(event.sla_due_at)}." if event.sla_due_at else ""
            how = "" if event.how == "routed" else f" ({event.how})"
            notices = [
                Notice(
                    f"{base}:{NoticeKind.ASSIGNED}:{event.rep_id}",
                    NoticeKind.ASSIGNED,
                    event.rep_id,
                    lead,
                    at,
                    f"New lead {lead} is yours{how}.{due}",
                    _without_none(
                        pool_id=event.pool_id,
                        how=event.how,
                        previous_rep_id=event.previous_rep_id,
                        sla_due_at=_iso(event.sla_due_at),
                    ),
                )
            ]
            if event.previous_rep_id and event.previous_rep_id != event.rep_id:
                notices.append(
                    Notice(
                        f"{base}:{NoticeKind.REASSIGNED_AWAY}:{event.previous_rep_id}",
                        NoticeKind.REASSIGNED_AWAY,
                        event.previous_rep_id,
                        lead,
                        at,
                        f"Lead {lead} was reassigned to {_name(people, event.rep_id)}.",
                        {"to_rep_id": event.rep_id, "how": event.how},
                    )
                )
            return notices
        case SlaBreachedV1():
            return _sla_notices(event, people)
        case LeadMergedV1():
            return _repeat_inquiry_notices(event, owners.get(lead))
        case LeadQueuedV1():
            text = f"Lead {lead} is waiting in pool {event.pool_id}: {event.reason}."
            details = {"pool_id": event.pool_id, "reason": event.reason}
            return [
                Notice(
                    f"{base}:{NoticeKind.QUEUED}:{m}", NoticeKind.QUEUED, m, lead, at, text, details
                )
                for m in pool_managers.get(event.pool_id) or ("",)
            ]
    return []


def _repeat_inquiry_notices(event: LeadMergedV1, owner: LeadOwner | None) -> list[Notice]:
    """The owner of an open lead hears at once that the person asked again. A lead dealt
    after the inquiry (a nurtured lead it reopened, a lead received in the same breath)
    is told by its assignment notice instead: no second notice for one inquiry."""
    if owner is None or (owner.since is not None and owner.since > event.occurred_at):
        return []
    who = event.contact.name or event.contact.phone or event.contact.email or "The contact"
    via = event.attribution.channel or event.attribution.source or "another channel"
    text = f"Repeat inquiry on your lead {event.lead_id}: {who} asked again ({via})."
    details = _without_none(
        matched_on=event.matched_on,
        source=event.attribution.source,
        channel=event.attribution.channel,
        message=event.message[:500] if event.message else None,
    )
    kind = NoticeKind.REPEAT_INQUIRY
    return [
        Notice(
            f"{event.event_id}:{kind}:{owner.rep_id}",
            kind,
            owner.rep_id,
            event.lead_id,
            event.occurred_at,
            text,
            details,
        )
    ]


def _sla_notices(event: SlaBreachedV1, people: Mapping[str, Person]) -> list[Notice]:
    """The workflow raises every timer-born alert as `SlaBreachedV1`, its `sla` saying
    which: the first response missed (the rep, escalated to the manager), a rep asking
    for help or a low satisfaction score (the manager), a follow-up overdue or a lead
    forgotten (the rep, then the manager once escalated)."""
    base, lead, at = str(event.event_id), event.lead_id, event.occurred_at
    rep = _name(people, event.rep_id)
    manager_id = event.escalated_to or _manager_of(people, event.rep_id)
    details = _without_none(
        sla=event.sla,
        due_at=event.due_at.isoformat(),
        pool_id=event.pool_id,
        reassigned=event.reassigned or None,
        rep_id=event.rep_id,
    )

    def notice(kind: NoticeKind, person_id: str | None, text: str) -> Notice:
        return Notice(
            f"{base}:{kind}:{person_id or '?'}", kind, person_id or "", lead, at, text, details
        )

    match event.sla:
        case "help":
            return [
                notice(
                    NoticeKind.HELP_REQUESTED, manager_id, f"{rep} asks for help with lead {lead}."
                )
            ]
        case "satisfaction":
            text = f"Lead {lead} gave {rep}'s visit a low satisfaction score."
            return [notice(NoticeKind.LOW_SATISFACTION, manager_id, text)]
        case "follow_up" | "follow-up" | "forgotten":
            what = (
                "is forgotten: no activity for days"
                if event.sla == "forgotten"
                else "is overdue for a follow-up"
            )
            if event.escalated_to:
                return [
                    notice(
                        NoticeKind.FOLLOW_UP_OVERDUE,
                        event.escalated_to,
                        f"Lead {lead} of {rep} {what}.",
                    )
                ]
            return [notice(NoticeKind.FOLLOW_UP_OVERDUE, event.rep_id, f"Lead {lead} {what}.")]
    reassigned = " It has been reassigned." if event.reassigned else ""
    due = _clock(event.due_at)
    notices = [
        notice(
            NoticeKind.SLA_BREACHED,
            event.rep_id,
            f"Lead {lead}: the {event.sla} SLA was missed (due {due}).{reassigned}",
        )
    ]
    if manager_id:
        text = f"Escalation: {rep} missed the {event.sla} SLA on lead {lead} (due {due})."
        notices.append(notice(NoticeKind.SLA_ESCALATED, manager_id, text + reassigned))
    return notices


def is_missed_response(event: SlaBreachedV1) -> bool:
    """A first response (or an unknown kind of SLA) was missed, as opposed to the other
    alerts the workflow raises as `SlaBreachedV1`."""
    return event.sla not in _OTHER_ALERTS


def notice_for_request(
    kind: NoticeKind,
    *,
    source_id: str,
    person_id: str,
    lead_id: str,
    at: datetime,
    text: str,
    details: Mapping[str, Any] | None = None,
) -> Notice:
    """A notice a workflow step raises itself, for what no event carries: the step records
    it in its own transaction (`NotificationRuntime.record_notices`). `source_id` names
    the occurrence (an activity's or a timer's id): the same source, kind and person is
    one notice, and recording it twice fails the step's transaction."""
    return Notice(
        f"{source_id}:{kind}:{person_id}", kind, person_id, lead_id, at, text, details or {}
    )


def _manager_of(people: Mapping[str, Person], rep_id: str) -> str | None:
    person = people.get(rep_id)
    return person.manager_id if person else None


def _name(people: Mapping[str, Person], person_id: str) -> str:
    person = people.get(person_id)
    return person.name if person and person.name else person_id


def _clock(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _without_none(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


# --- retries -------------------------------------------------------------------------------


def retry_at(attempts: int, now: datetime, *, base_s: float, max_s: float) -> datetime:
    """When to try again after `attempts` failed attempts: exponential back-off, capped."""
    return now + timedelta(seconds=min(max_s, base_s * 2 ** max(0, attempts - 1)))


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmailMessage:
    to: str
    subject: str
    body: str
    message_id: str


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    url: str
    body: bytes
    headers: Mapping[str, str]


def email_for(notice: Notice, to: str, *, delivery_id: str) -> EmailMessage:
    lines = [notice.text, ""]
    lines += [f"{key}: {value}" for key, value in notice.details.items()]
    lines += ["", f"lead: {notice.lead_id}"]
    digest = hashlib.sha256(delivery_id.encode()).hexdigest()[:32]
    return EmailMessage(
        to=to,
        subject=f"[leadflow] {notice.text}"[:200],
        body="\n".join(lines) + "\n",
        # The same delivery sent twice (a retry after a lost answer) carries the same id,
        # so mail clients can fold the copies.
        message_id=f"<{digest}@leadflow>",
    )


def webhook_body(notice: Notice, *, slack: bool) -> bytes:
    """The JSON a webhook receives: Slack's `{"text": ...}` shape, or the full notice."""
    if slack:
        document: dict[str, Any] = {"text": notice.text}
    else:
        document = {
            "id": notice.notice_id,
            "kind": notice.kind.value,
            "person_id": notice.person_id,
            "lead_id": notice.lead_id,
            "at": notice.at.isoformat(),
            "text": notice.text,
            "details": dict(notice.details),
        }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 with the receiver's secret over `<timestamp>.` followed
    by the raw body, so neither the body nor the time can be changed on the way."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def signature_valid(
    secret: str,
    *,
    timestamp: str,
    signature_header: str,
    body: bytes,
    now: datetime,
    tolerance: timedelta = timedelta(minutes=5),
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (an old
    request replayed is refused)."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    if abs(now.timestamp() - sent_at) > tolerance.total_seconds():
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), signature_header)


def webhook_request(
    notice: Notice, preferences: Preferences, *, delivery_id: str, now: datetime
) -> WebhookRequest:
    if not preferences.webhook_url:
        raise ValueError(f"{notice.person_id} has no webhook url")
    body = webhook_body(notice, slack=preferences.slack)
    timestamp = str(int(now.timestamp()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        DELIVERY_HEADER: delivery_id,
        KIND_HEADER: notice.kind.value,
    }
    if preferences.webhook_secret:
        headers[SIGNATURE_HEADER] = signature(preferences.webhook_secret, timestamp, body)
    return WebhookRequest(preferences.webhook_url, body, headers)
