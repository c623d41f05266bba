"""Nurture's stored documents leave out None fields (and an empty `engaged`); documents
written before, which stored them, are read as they always were (a rolling upgrade meets
both). Mongo only: the in-memory twin keeps no documents."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.nurture.rules import (
    Enrollment,
    EnrollmentStatus,
    NurtureChanges,
    StopReason,
)
from services.nurture.store import MongoNurtureStore, NurtureTransaction
from shared.events import Event
from tests.contract.conftest import NOW, MongoParts
from tests.contract.test_nurture_store import a_send

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(parts: MongoParts) -> MongoNurtureStore:
    made = MongoNurtureStore(parts.database, parts.ledger)
    await made.ensure_indexes()
    return made


def an_enrollment(enrollment_id: str, **changes: object) -> Enrollment:
    fields: dict[str, object] = {
        "enrollment_id": enrollment_id,
        "lead_id": f"lead-{enrollment_id}",
        "sequence_id": "s",
        "sequence_version": 1,
        "reason": "lost",
        "status": EnrollmentStatus.ACTIVE,
        "enrolled_at": NOW,
        "triggered_at": NOW,
        "current_step": 0,
        "next_send_at": NOW + timedelta(hours=1),
        "channels": ("email",),
        **changes,
    }
    return Enrollment(**fields)  # type: ignore[arg-type]


OLD_ENROLLMENT = {
    "_id": "old",
    "lead_id": "lead-old",
    "sequence_id": "s",
    "sequence_version": 1,
    "reason": "lost",
    "status": "stopped",
    "enrolled_at": NOW,
    "triggered_at": NOW,
    "current_step": 1,
    "next_send_at": None,
    "channels": ["email", "sms"],
    "last_sent_at": None,
    "stopped_at": NOW,
    "stop_reason": "replied",
    "engaged": [],
}
OLD_SEND = {
    "_id": "send:old:0",
    "lead_id": "lead-old",
    "enrollment_id": "e",
    "sequence_id": "s",
    "step": 0,
    "channel": "email",
    "status": "sending",
    "reserved_at": NOW,
    "attempts": 1,
    "sent_at": None,
    "provider_id": None,
    "error": None,
}


async def test_documents_written_before_are_read_as_before(
    store: MongoNurtureStore, parts: MongoParts
) -> None:
    await parts.database["enrollments"].insert_one(dict(OLD_ENROLLMENT))
    await parts.database["sends"].insert_one(dict(OLD_SEND))

    enrollments, _ = await store.enrollments_with_contacts(["old"])
    assert enrollments["old"] == an_enrollment(
        "old",
        status=EnrollmentStatus.STOPPED,
        current_step=1,
        next_send_at=None,
        channels=("email", "sms"),
        stopped_at=NOW,
        stop_reason=StopReason.REPLIED,
    )
    found = await store.send_records(["send:old:0"])
    assert found["send:old:0"] == a_send("send:old:0", "lead-old")
    assert [r.key for r in (await store.sends_since(["lead-old"], NOW))["lead-old"]] == [
        "send:old:0"
    ]


async def test_none_fields_are_not_stored_and_read_back_as_none(
    store: MongoNurtureStore, parts: MongoParts
) -> None:
    fresh = an_enrollment("fresh")

    async def start(tx: NurtureTransaction) -> tuple[None, list[Event]]:
        await tx.save(NurtureChanges(started=(fresh,)))
        return None, []

    await store.commit(start)
    record = a_send("send:fresh:0", "lead-fresh")
    assert await store.reserve_sends([record]) == {"send:fresh:0": 1}

    stored = await parts.database["enrollments"].find_one({"_id": "fresh"})
    assert stored is not None
    assert {"last_sent_at", "stopped_at", "stop_reason", "engaged"}.isdisjoint(stored)
    stored_send = await parts.database["sends"].find_one({"_id": "send:fresh:0"})
    assert stored_send is not None
    assert {"sent_at", "provider_id", "error"}.isdisjoint(stored_send)

    enrollments, _ = await store.enrollments_with_contacts(["fresh"])
    assert enrollments["fresh"] == fresh
    assert (await store.send_records(["send:fresh:0"]))["send:fresh:0"] == record
