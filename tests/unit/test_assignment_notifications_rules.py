"""Who is told what, through which channel, and when: the pure decisions of notifications."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.assignment.documents import pool_document
from services.assignment.notifications.rules import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    LeadOwner,
    NoticeKind,
    NotificationPlan,
    Person,
    Preferences,
    leads_concerned,
    managers_concerned,
    people_concerned,
    plan_notifications,
    retry_at,
    signature,
    signature_valid,
    sla_warning_at,
    sla_warning_delivery_ids,
    webhook_request,
)
from services.assignment.notifications.store import lead_owner_of, pool_managers_of
from services.assignment.rules import Pool
from shared.events import (
    ActivityLoggedV1,
    Attribution,
    Contact,
    Event,
    LeadAssignedV1,
    LeadMergedV1,
    LeadQueuedV1,
    SatisfactionRecordedV1,
    SlaBreachedV1,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
BEFORE = timedelta(minutes=5)

EVERYTHING = Preferences(
    email="rita@example.com",
    webhook_url="https://hooks.example.com/rita",
    webhook_secret="s3cret",
    channels=frozenset({"email", "webhook", "sse"}),
)
RITA = Person("rita", "Rita", manager_id="mona", notify=EVERYTHING)
SAM = Person("sam", "Sam", manager_id="mona", notify=Preferences(email="sam@example.com"))
MONA = Person(
    "mona",
    "Mona",
    notify=Preferences(email="mona@example.com", channels=frozenset({"email"})),
)
PEOPLE = {p.person_id: p for p in (RITA, SAM, MONA)}


def assigned(rep_id: str = "rita", **fields: Any) -> LeadAssignedV1:
    return LeadAssignedV1(
        lead_id=str(fields.pop("lead_id", "lead-1")),
        occurred_at=NOW,
        rep_id=rep_id,
        pool_id="seoul",
        strategy="round_robin",
        **fields,
    )


def plan(
    *events: Event, pool_managers: dict[str, tuple[str, ...]] | None = None
) -> NotificationPlan:
    return plan_notifications(
        list(events),
        PEOPLE,
        pool_managers or {},
        now=NOW,
        sla_warning_before=BEFORE,
    )


def test_an_assigned_lead_reaches_the_rep_on_every_chosen_push_channel_and_their_stream() -> None:
    decided = plan(assigned())

    assert sorted(d.channel for d in decided.deliveries) == ["email", "webhook"]
    assert {d.notice.person_id for d in decided.deliveries} == {"rita"}
    assert all(d.due_at == NOW for d in decided.deliveries)
    assert [(e.person_id, e.kind, e.lead_id) for e in decided.feed] == [
        ("rita", "lead-assigned", "lead-1")
    ]


def test_a_rep_who_chose_no_push_channel_only_sees_the_stream() -> None:
    decided = plan(assigned("sam"))

    assert decided.deliveries == []
    assert [e.kind for e in decided.feed] == ["lead-assigned"]


def test_a_chosen_channel_without_an_address_is_not_used() -> None:
    no_address = Preferences(email=None, channels=frozenset({"email", "webhook"}))

    assert no_address.push_channels() == []


def test_reassignment_tells_both_the_new_and_the_previous_rep() -> None:
    decided = plan(assigned("rita", previous_rep_id="sam", how="reassigned"))

    by_person = {(d.notice.person_id, d.notice.kind) for d in decided.deliveries}
    assert ("rita", NoticeKind.ASSIGNED) in by_person
    assert {(e.person_id, e.kind) for e in decided.feed} == {
        ("rita", "lead-assigned"),
        ("sam", "lead-reassigned-away"),
    }
    assert "reassigned" in decided.deliveries[0].notice.text


def test_an_sla_breach_tells_the_rep_and_escalates_to_their_manager() -> None:
    breach = SlaBreachedV1(
        lead_id="lead-1", occurred_at=NOW, rep_id="rita", sla="first_response", due_at=NOW
    )

    decided = plan(breach)

    kinds = {(d.notice.person_id, d.notice.kind, d.channel) for d in decided.deliveries}
    assert ("mona", NoticeKind.SLA_ESCALATED, "email") in kinds
    assert ("rita", NoticeKind.SLA_BREACHED, "email") in kinds
    assert ("mona", "sla-escalated") in {(e.person_id, e.kind) for e in decided.feed}
    [escalation] = [d for d in decided.deliveries if d.notice.person_id == "mona"]
    assert "Rita missed the first_response SLA" in escalation.notice.text


def test_an_escalation_goes_to_whoever_the_event_names() -> None:
    breach = SlaBreachedV1(
        lead_id="lead-1",
        occurred_at=NOW,
        rep_id="rita",
        sla="first_response",
        due_at=NOW,
        escalated_to="sam",
    )

    decided = plan(breach)

    assert {e.person_id for e in decided.feed if e.kind == "sla-escalated"} == {"sam"}


def repeat_inquiry(lead_id: str = "lead-1") -> LeadMergedV1:
    return LeadMergedV1(
        lead_id=lead_id,
        occurred_at=NOW,
        contact=Contact(name="Dana Kim", phone="+14155550100"),
        attribution=Attribution(source="desk", channel="phone"),
        matched_on="phone",
    )


def test_a_repeat_inquiry_tells_the_open_leads_owner_at_once_on_their_channels() -> None:
    inquiry = repeat_inquiry()
    assert leads_concerned([inquiry, assigned()]) == {"lead-1"}

    decided = plan_notifications(
        [inquiry],
        PEOPLE,
        {},
        now=NOW,
        sla_warning_before=BEFORE,
        owners={"lead-1": LeadOwner("rita", since=NOW - timedelta(days=2))},
    )

    assert sorted((d.notice.person_id, d.channel) for d in decided.deliveries) == [
        ("rita", "email"),
        ("rita", "webhook"),
    ]
    assert all(d.notice.kind is NoticeKind.REPEAT_INQUIRY for d in decided.deliveries)
    assert all(d.due_at == NOW for d in decided.deliveries)
    [entry] = decided.feed
    assert (entry.person_id, entry.kind, entry.lead_id) == ("rita", "repeat-inquiry", "lead-1")
    assert "Dana Kim asked again (phone)" in str(entry.data["text"])


def test_a_repeat_inquiry_tells_nobody_when_no_one_held_the_lead_before_it() -> None:
    # Unknown, closed or queued (no owner), or dealt after the inquiry (reopened from
    # nurture, received in the same breath): the assignment notice is the one told.
    for owners in ({}, {"lead-1": LeadOwner("rita", since=NOW + timedelta(seconds=1))}):
        decided = plan_notifications(
            [repeat_inquiry()], PEOPLE, {}, now=NOW, sla_warning_before=BEFORE, owners=owners
        )
        assert (decided.feed, decided.deliveries, decided.unaddressed) == ([], [], [])


def test_only_an_open_lead_with_a_rep_has_an_owner_to_tell() -> None:
    since = NOW - timedelta(days=1)
    assert lead_owner_of(
        {"_id": "l", "status": "contacted", "rep_id": "rita", "assigned_at": since}
    ) == LeadOwner("rita", since)
    assert lead_owner_of({"_id": "l", "status": "nurturing", "rep_id": "rita"}) is None
    assert lead_owner_of({"_id": "l", "status": "new", "rep_id": None}) is None
    assert lead_owner_of({"_id": "l"}) is None  # awaited: not received yet


def test_a_pools_own_manager_is_alerted_of_its_queue_rather_than_its_members_managers() -> None:
    members_managers = {"rita": "mona", "sam": "mona"}
    without = {"_id": "seoul", **pool_document(Pool("seoul", "Seoul", ("rita", "sam")))}
    assert pool_managers_of(without, members_managers) == ("mona",)

    stored = pool_document(Pool("seoul", "Seoul", ("rita", "sam"), manager_id="sam"))
    pool_managers = {"seoul": pool_managers_of({"_id": "seoul", **stored}, members_managers)}
    queued = LeadQueuedV1(
        lead_id="lead-2", occurred_at=NOW, pool_id="seoul", reason="nobody on shift"
    )

    decided = plan(queued, pool_managers=pool_managers)

    assert [(e.person_id, e.kind) for e in decided.feed] == [("sam", "lead-queued")]


def test_a_queued_lead_alerts_the_pools_managers() -> None:
    queued = LeadQueuedV1(
        lead_id="lead-2", occurred_at=NOW, pool_id="seoul", reason="nobody on shift"
    )

    decided = plan(queued, pool_managers={"seoul": ("mona",)})

    assert [(d.notice.person_id, d.notice.kind) for d in decided.deliveries] == [
        ("mona", NoticeKind.QUEUED)
    ]
    assert "nobody on shift" in decided.deliveries[0].notice.text


def test_a_queued_lead_with_no_manager_to_tell_is_reported_not_dropped_silently() -> None:
    queued = LeadQueuedV1(lead_id="lead-2", occurred_at=NOW, pool_id="x", reason="nobody on shift")

    decided = plan(queued)

    assert [n.kind for n in decided.unaddressed] == [NoticeKind.QUEUED]


def alert(sla: str, **fields: Any) -> SlaBreachedV1:
    return SlaBreachedV1(
        lead_id="lead-3", occurred_at=NOW, rep_id="rita", sla=sla, due_at=NOW, **fields
    )


def test_a_low_satisfaction_score_alerts_the_manager_only() -> None:
    decided = plan(alert("satisfaction", escalated_to="mona"))

    told = [(d.notice.person_id, d.notice.kind) for d in decided.deliveries]
    assert told == [("mona", NoticeKind.LOW_SATISFACTION)]
    assert [(e.person_id, e.kind) for e in decided.feed] == [("mona", "low-satisfaction")]
    assert "low satisfaction score" in decided.deliveries[0].notice.text


def test_a_rep_asking_for_help_alerts_their_manager_and_keeps_the_sla_warning() -> None:
    decided = plan(alert("help", escalated_to="mona"))

    assert [(d.notice.person_id, d.notice.kind) for d in decided.deliveries] == [
        ("mona", NoticeKind.HELP_REQUESTED)
    ]
    assert decided.deliveries[0].notice.text == "Rita asks for help with lead lead-3."
    assert decided.cancelled == []  # asking for help is not a first contact


def test_an_overdue_follow_up_reminds_the_rep_then_the_manager() -> None:
    reminder = plan(alert("follow_up"))
    escalated = plan(alert("follow_up", escalated_to="mona"))

    assert [(e.person_id, e.kind) for e in reminder.feed] == [("rita", "follow-up-overdue")]
    assert [(d.notice.person_id, d.notice.kind) for d in escalated.deliveries] == [
        ("mona", NoticeKind.FOLLOW_UP_OVERDUE)
    ]
    assert "Lead lead-3 of Rita is overdue" in escalated.deliveries[0].notice.text


def test_a_satisfaction_score_on_its_own_tells_nobody() -> None:
    """The workflow decides what is low (its threshold) and raises the alert."""
    rated = SatisfactionRecordedV1(lead_id="lead-3", occurred_at=NOW, rep_id="rita", score=3)

    assert plan(rated) == NotificationPlan()


def test_an_sla_warning_is_scheduled_ahead_of_the_due_time() -> None:
    decided = plan(assigned(sla_due_at=NOW + timedelta(minutes=30)))

    warnings = [d for d in decided.deliveries if d.notice.kind is NoticeKind.SLA_WARNING]
    assert {d.channel for d in warnings} == {"email", "webhook", "sse"}
    assert {d.due_at for d in warnings} == {NOW + timedelta(minutes=25)}
    assert {d.delivery_id for d in warnings} <= set(sla_warning_delivery_ids("lead-1"))


def test_a_short_sla_is_warned_half_way() -> None:
    assert sla_warning_at(NOW, NOW + timedelta(minutes=4), BEFORE) == NOW + timedelta(minutes=2)
    assert sla_warning_at(NOW, NOW, BEFORE) is None


def test_first_contact_in_the_same_batch_cancels_the_warning() -> None:
    contact = ActivityLoggedV1(
        lead_id="lead-1", occurred_at=NOW, rep_id="rita", activity="call", first_contact=True
    )

    decided = plan(assigned(sla_due_at=NOW + timedelta(minutes=30)), contact)

    assert not [d for d in decided.deliveries if d.notice.kind is NoticeKind.SLA_WARNING]
    assert sorted(decided.cancelled) == sorted(sla_warning_delivery_ids("lead-1"))


def test_a_later_contact_cancels_the_scheduled_warning() -> None:
    contact = ActivityLoggedV1(
        lead_id="lead-1", occurred_at=NOW, rep_id="rita", activity="call", first_contact=True
    )
    other = ActivityLoggedV1(lead_id="lead-9", occurred_at=NOW, rep_id="rita", activity="note")

    decided = plan(contact, other)

    assert sorted(decided.cancelled) == sorted(sla_warning_delivery_ids("lead-1"))


def test_the_same_event_always_plans_the_same_delivery_ids() -> None:
    event = assigned()

    assert [d.delivery_id for d in plan(event).deliveries] == [
        d.delivery_id for d in plan(event).deliveries
    ]


def test_managers_are_looked_up_after_their_reps() -> None:
    events = [assigned("rita")]
    people = {"rita": RITA}

    assert people_concerned(events) == {"rita"}
    assert managers_concerned(people, {"seoul": ("boss",)}) == {"mona", "boss"}


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    delays = [(retry_at(n, NOW, base_s=5, max_s=60) - NOW).total_seconds() for n in range(1, 7)]

    assert delays == [5, 10, 20, 40, 60, 60]


# --- webhooks -------------------------------------------------------------------------------


def test_a_webhook_is_signed_over_its_timestamp_and_raw_body() -> None:
    [delivery, *_] = [d for d in plan(assigned()).deliveries if d.channel == "webhook"]

    request = webhook_request(delivery.notice, EVERYTHING, delivery_id="d-1", now=NOW)

    timestamp = request.headers[TIMESTAMP_HEADER]
    assert timestamp == str(int(NOW.timestamp()))
    assert request.headers[SIGNATURE_HEADER] == signature("s3cret", timestamp, request.body)
    assert request.headers[DELIVERY_HEADER] == "d-1"
    body = json.loads(request.body)
    assert body["kind"] == "lead-assigned"
    assert body["lead_id"] == "lead-1"
    assert signature_valid(
        "s3cret",
        timestamp=timestamp,
        signature_header=request.headers[SIGNATURE_HEADER],
        body=request.body,
        now=NOW,
    )


def test_a_changed_body_a_wrong_secret_or_an_old_timestamp_fails_verification() -> None:
    body = b'{"text":"hi"}'
    ts = str(int(NOW.timestamp()))
    good = signature("s3cret", ts, body)

    def valid(secret: str, timestamp: str, sent: bytes, now: datetime) -> bool:
        return signature_valid(
            secret, timestamp=timestamp, signature_header=good, body=sent, now=now
        )

    assert valid("s3cret", ts, body, NOW)
    assert not valid("s3cret", ts, b'{"text":"ho"}', NOW)
    assert not valid("other", ts, body, NOW)
    assert not valid("s3cret", ts, body, NOW + timedelta(minutes=6))  # replayed later
    assert not valid("s3cret", "not-a-time", body, NOW)


def test_slack_receivers_get_slacks_text_shape() -> None:
    slack = Preferences(
        webhook_url="https://hooks.slack.com/services/T/B/X",
        slack=True,
        channels=frozenset({"webhook"}),
    )
    [delivery] = [d for d in plan(assigned()).deliveries if d.channel == "webhook"]

    request = webhook_request(delivery.notice, slack, delivery_id="d-1", now=NOW)

    body = json.loads(request.body)
    assert list(body) == ["text"]
    assert body["text"].startswith("New lead lead-1 is yours")
    assert SIGNATURE_HEADER not in request.headers  # no secret, nothing to sign with


def test_events_older_than_the_max_age_tell_nobody_but_still_cancel_warnings() -> None:
    old = assigned(lead_id="lead-old").model_copy(update={"occurred_at": NOW - timedelta(hours=2)})
    contact = ActivityLoggedV1(
        lead_id="lead-1",
        occurred_at=NOW - timedelta(hours=2),
        rep_id="rita",
        activity="call",
        first_contact=True,
    )

    decided = plan_notifications(
        [old, contact], PEOPLE, {}, now=NOW, sla_warning_before=BEFORE, max_age=timedelta(hours=1)
    )

    assert (decided.feed, decided.deliveries, decided.stale) == ([], [], 2)
    # A (re)assignment replaces the lead's warning: an old one leaves none scheduled.
    assert sorted(decided.cancelled) == sorted(
        sla_warning_delivery_ids("lead-old") + sla_warning_delivery_ids("lead-1")
    )
