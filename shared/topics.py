"""Topic names: `<owning-service>.<event-in-past-tense>.v<N>`, keyed by `lead_id`.

`TOPIC_OF` is the single place that says which event travels on which topic.
"""

from __future__ import annotations

from typing import Final

from shared.events import (
    ActivityLoggedV1,
    CampaignSavedV1,
    EngagementRecordedV1,
    Event,
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
    SatisfactionRecordedV1,
    SlaBreachedV1,
    VisitCheckedInV1,
    VisitScheduledV1,
)

DLQ_SUFFIX: Final = ".dlq"

TOPIC_OF: Final[dict[type[Event], str]] = {
    LeadReceivedV1: "intake.lead-received.v1",
    LeadMergedV1: "intake.lead-merged.v1",
    LeadErasedV1: "intake.lead-erased.v1",
    CampaignSavedV1: "intake.campaign-saved.v1",
    LeadRoutedToNurtureV1: "assignment.lead-routed-to-nurture.v1",
    LeadQueuedV1: "assignment.lead-queued.v1",
    LeadAssignedV1: "assignment.lead-assigned.v1",
    LeadReturnedToPoolV1: "assignment.lead-returned-to-pool.v1",
    LeadRejectedByRepV1: "assignment.lead-rejected-by-rep.v1",
    ActivityLoggedV1: "assignment.activity-logged.v1",
    VisitScheduledV1: "assignment.visit-scheduled.v1",
    VisitCheckedInV1: "assignment.visit-checked-in.v1",
    SatisfactionRecordedV1: "assignment.satisfaction-recorded.v1",
    OpportunityOpenedV1: "assignment.opportunity-opened.v1",
    LeadConvertedV1: "assignment.lead-converted.v1",
    LeadLostV1: "assignment.lead-lost.v1",
    SlaBreachedV1: "assignment.sla-breached.v1",
    LeadEnrolledV1: "nurture.lead-enrolled.v1",
    MessageSentV1: "nurture.message-sent.v1",
    MessageStatusUpdatedV1: "nurture.message-status-updated.v1",
    MessageFailedV1: "nurture.message-failed.v1",
    EngagementRecordedV1: "nurture.engagement-recorded.v1",
    LeadOptedOutV1: "nurture.lead-opted-out.v1",
    LeadOptedInV1: "nurture.lead-opted-in.v1",
    LeadRequalifiedV1: "nurture.lead-requalified.v1",
}

EVENT_ON: Final[dict[str, type[Event]]] = {topic: model for model, topic in TOPIC_OF.items()}

ALL_TOPICS: Final[tuple[str, ...]] = tuple(TOPIC_OF.values())


def topic_for(event: Event | type[Event]) -> str:
    model = event if isinstance(event, type) else type(event)
    return TOPIC_OF[model]


def dead_letter_topic(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"


def owned_by(service: str) -> tuple[str, ...]:
    """Topics a service publishes: the owner is the first dotted part of the name."""
    return tuple(t for t in ALL_TOPICS if t.split(".", 1)[0] == service)
