"""The contract in shared/: every event round-trips through JSON; topics and models agree."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import pytest
from pydantic import TypeAdapter, ValidationError

from leadflow.config import SERVICES
from shared.events import (
    ActivityLoggedV1,
    AnyEvent,
    Attribution,
    CampaignSavedV1,
    Consent,
    ConsentRecord,
    Contact,
    EngagementRecordedV1,
    Event,
    FitScore,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadEnrolledV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadOptedInV1,
    LeadOptedOutV1,
    LeadQueuedV1,
    LeadReceivedV1,
    LeadRejectedByRepV1,
    LeadRequalifiedV1,
    LeadReturnedToPoolV1,
    LeadRoutedToNurtureV1,
    MessageFailedV1,
    MessageSentV1,
    MessageStatusUpdatedV1,
    OpportunityOpenedV1,
    RoutingReason,
    SatisfactionRecordedV1,
    SlaBreachedV1,
    VisitCheckedInV1,
    VisitScheduledV1,
)
from shared.topics import ALL_TOPICS, EVENT_ON, TOPIC_OF, dead_letter_topic, owned_by, topic_for

pytestmark = pytest.mark.unit

WHEN = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
CONTACT = Contact(name="Dana Kim", phone="+14155550100", email="dana@example.com")
SOURCE = Attribution(source="website", channel="web_form", campaign="spring")

SAMPLES: list[Event] = [
    LeadReceivedV1(
        lead_id="L1",
        contact=CONTACT,
        attribution=SOURCE,
        fit_score=80,
        fit=FitScore(score=80, grade="A", factors={"industry": 30}),
        consent=Consent(
            email=True,
            records=(ConsentRecord(channel="email", granted=True, at=WHEN, source="form f1"),),
        ),
    ),
    LeadMergedV1(lead_id="L1", contact=CONTACT, attribution=SOURCE, matched_on="phone"),
    LeadErasedV1(lead_id="L1", requested_by="dpo"),
    CampaignSavedV1(lead_id="campaign:c1", campaign_id="c1", name="Spring", channel="ad", cost=500),
    LeadQueuedV1(lead_id="L1", pool_id="p1", reason="nobody on shift"),
    LeadRoutedToNurtureV1(lead_id="L1", reason="low fit score", contact=CONTACT),
    LeadAssignedV1(
        lead_id="L1",
        rep_id="r1",
        pool_id="p1",
        strategy="round_robin",
        received_at=WHEN,
        why=RoutingReason(rule_id="t1", pool_id="p1", skipped={"r2": "off shift"}),
    ),
    LeadReturnedToPoolV1(lead_id="L1", rep_id="r1", pool_id="p1", reason="unreachable"),
    LeadRejectedByRepV1(lead_id="L1", rep_id="r1", reason="not my territory"),
    ActivityLoggedV1(lead_id="L1", rep_id="r1", activity="call", outcome="no answer"),
    VisitScheduledV1(lead_id="L1", rep_id="r1", visit_id="v1", scheduled_for=WHEN),
    VisitCheckedInV1(lead_id="L1", rep_id="r1", visit_id="v1"),
    SatisfactionRecordedV1(lead_id="L1", rep_id="r1", visit_id="v1", score=7),
    OpportunityOpenedV1(
        lead_id="L1", rep_id="r1", opportunity_id="o1", amount=900, stage="proposal"
    ),
    LeadConvertedV1(lead_id="L1", rep_id="r1", revenue=1200.5, currency="KRW"),
    LeadLostV1(lead_id="L1", rep_id="r1", level=2, reason="bought elsewhere", contact=CONTACT),
    SlaBreachedV1(lead_id="L1", rep_id="r1", sla="first_response", due_at=WHEN),
    LeadEnrolledV1(lead_id="L1", sequence_id="loss-level-2", reason="lost-level-2"),
    MessageSentV1(lead_id="L1", sequence_id="s", step=0, channel="email", message_id="m1"),
    MessageStatusUpdatedV1(lead_id="L1", channel="sms", message_id="m2", status="delivered"),
    MessageFailedV1(lead_id="L1", sequence_id="s", step=1, channel="sms", error="bounced"),
    EngagementRecordedV1(lead_id="L1", kind="click", message_id="m1", score=5),
    LeadOptedOutV1(lead_id="L1", channel="all"),
    LeadOptedInV1(lead_id="L1", channel="sms", reason="sms_keyword"),
    LeadRequalifiedV1(lead_id="L1", score=72.5, reason="clicked pricing twice"),
]


def test_there_is_a_sample_of_every_event_on_a_topic() -> None:
    assert {type(e) for e in SAMPLES} == set(TOPIC_OF)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.event_type)
def test_every_event_round_trips_through_json(event: Event) -> None:
    wire = event.model_dump_json()
    assert type(event).model_validate_json(wire) == event
    assert TypeAdapter(AnyEvent).validate_json(wire) == event


def test_topic_names_follow_owner_event_version() -> None:
    for model, topic in TOPIC_OF.items():
        owner, event_name, version = topic.split(".")
        assert owner in SERVICES
        assert event_name == model.model_fields["event_type"].default
        assert re.fullmatch(r"v\d+", version)
        assert model.__name__.endswith(version.upper())


def test_every_model_travels_on_exactly_one_topic_and_the_union_knows_them_all() -> None:
    assert len(set(ALL_TOPICS)) == len(TOPIC_OF)
    assert {EVENT_ON[t] for t in ALL_TOPICS} == set(TOPIC_OF)
    union_members = set(get_args(get_args(AnyEvent)[0]))
    assert union_members == set(TOPIC_OF)
    assert topic_for(SAMPLES[0]) == "intake.lead-received.v1"
    assert dead_letter_topic("intake.lead-received.v1") == "intake.lead-received.v1.dlq"
    assert owned_by("intake") == (
        "intake.lead-received.v1",
        "intake.lead-merged.v1",
        "intake.lead-erased.v1",
        "intake.campaign-saved.v1",
    )


def test_unknown_fields_are_ignored_on_read() -> None:
    wire: dict[str, Any] = SAMPLES[0].model_dump(mode="json")
    wire["added_in_a_later_release"] = {"x": 1}
    assert LeadReceivedV1.model_validate(wire) == SAMPLES[0]


def test_events_are_frozen() -> None:
    with pytest.raises(ValidationError):
        SAMPLES[0].lead_id = "other"  # type: ignore[misc]


def test_occurred_at_is_stored_in_utc_and_must_carry_a_zone() -> None:
    seoul = timezone(timedelta(hours=9))
    event = LeadErasedV1(lead_id="L1", occurred_at=datetime(2026, 1, 1, 9, tzinfo=seoul))
    assert event.occurred_at == datetime(2026, 1, 1, 0, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)
    with pytest.raises(ValidationError, match="timezone"):
        LeadErasedV1(lead_id="L1", occurred_at=datetime(2026, 1, 1, 9))


def test_a_loss_level_outside_1_to_3_is_rejected() -> None:
    with pytest.raises(ValidationError, match="level"):
        LeadLostV1.model_validate({"lead_id": "L1", "level": 4})
