"""Nurture's persistence, in the `leadflow_nurture` database.

- `contacts`: what nurture knows of each lead (contact, consent), carried by other services'
  events; `_id` is the lead id.
- `sequences`: the email/SMS sequences marketing edits; `_id` is the sequence id.
- `enrollments`: one document per enrollment of a lead in a sequence. A scheduler picks the
  due ones with `{status: "active", next_send_at: {$lte: now}}` (index `due_steps`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import uuid4

from pymongo import ASCENDING, DESCENDING, ReturnDocument

from leadflow.chassis.store import (
    Collection,
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    Session,
)
from services.nurture.rules import (
    EnrollmentStatus,
    NurtureSequence,
    SendWindow,
    Step,
    StopReason,
    plan_step,
)
from shared.events import Channel, Consent, Contact, Event, LeadEnrolledV1


class SequenceNotFoundError(Exception):
    def __init__(self, sequence_id: str) -> None:
        super().__init__(f"sequence '{sequence_id}' not found")


class SequenceExistsError(Exception):
    def __init__(self, sequence_id: str) -> None:
        super().__init__(f"sequence '{sequence_id}' already exists")


class LeadNotFoundError(Exception):
    def __init__(self, lead_id: str) -> None:
        super().__init__(f"lead '{lead_id}' is not known to nurture")


class AlreadyEnrolledError(Exception):
    def __init__(self, lead_id: str, sequence_id: str | None) -> None:
        super().__init__(
            f"lead '{lead_id}' is already in an active enrollment"
            + (f" in '{sequence_id}'" if sequence_id else "")
        )


@dataclass(frozen=True, slots=True)
class SequenceRecord:
    sequence: NurtureSequence
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Enrollment:
    enrollment_id: str
    lead_id: str
    sequence_id: str
    sequence_version: int
    reason: str
    status: EnrollmentStatus
    enrolled_at: datetime
    triggered_at: datetime
    """When the fact that caused the enrollment happened (the loss, or the manual request)."""
    current_step: int
    next_send_at: datetime | None
    channels: tuple[Channel, ...]
    last_sent_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_reason: StopReason | None = None


@dataclass(frozen=True, slots=True)
class ContactUpdate:
    """Contact and/or consent of a lead as of `as_of` (the carrying event's time)."""

    lead_id: str
    as_of: datetime
    contact: Contact | None = None
    consent: Consent | None = None


@dataclass(frozen=True, slots=True)
class EnrollmentRequest:
    lead_id: str
    sequence_id: str
    reason: str
    triggered_at: datetime
    carried: ContactUpdate | None = None
    """Contact or consent the triggering event carries, applied before channels are chosen."""
    lead_must_be_known: bool = False


@dataclass(frozen=True, slots=True)
class EnrollmentFilter:
    status: EnrollmentStatus | None = None
    sequence_id: str | None = None
    lead_id: str | None = None
    limit: int = 50


class NurtureStore(Protocol):
    async def ensure_indexes(self) -> None: ...
    async def seed_sequences(
        self, sequences: tuple[NurtureSequence, ...], now: datetime
    ) -> None: ...
    async def record_contact(self, update: ContactUpdate) -> None: ...
    async def forget_contact(self, lead_id: str, now: datetime) -> None: ...
    async def create_sequence(self, sequence: NurtureSequence, now: datetime) -> SequenceRecord: ...
    async def replace_sequence(
        self, sequence: NurtureSequence, now: datetime
    ) -> SequenceRecord: ...
    async def get_sequence(self, sequence_id: str) -> SequenceRecord | None: ...
    async def list_sequences(self) -> list[SequenceRecord]: ...
    async def enroll(
        self, request: EnrollmentRequest, now: datetime, *, consumed: Event | None = None
    ) -> Enrollment: ...
    async def stop_enrollment(
        self, lead_id: str, reason: StopReason, happened_at: datetime, now: datetime
    ) -> bool: ...
    async def latest_enrollment(self, lead_id: str) -> Enrollment | None: ...
    async def list_enrollments(self, where: EnrollmentFilter) -> list[Enrollment]: ...


def _newer_only(field: str, value: Document | None, as_of: datetime) -> Document:
    """Pipeline `$set` of `field` that only takes if `as_of` is newer than what is stored.

    Events about one lead arrive on several topics, which Kafka does not order among
    themselves; an erased lead is never filled in again.
    """
    stamp = f"{field}_as_of"
    newer = {
        "$and": [
            {"$lt": [{"$ifNull": [f"${stamp}", None]}, as_of]},
            {"$eq": [{"$ifNull": ["$erased_at", None]}, None]},
        ]
    }
    return {
        field: {"$cond": [newer, {"$literal": value}, f"${field}"]},
        stamp: {"$cond": [newer, as_of, f"${stamp}"]},
    }


def _contact_fields(update: ContactUpdate) -> Document:
    fields: Document = {}
    if update.contact is not None:
        fields |= _newer_only("contact", update.contact.model_dump(), update.as_of)
    if update.consent is not None:
        fields |= _newer_only("consent", update.consent.model_dump(), update.as_of)
    return fields


def _sequence_fields(sequence: NurtureSequence) -> Document:
    fields = asdict(sequence)
    del fields["sequence_id"]  # it is the document's _id
    return fields


def _sequence_from(doc: Document) -> SequenceRecord:
    window = doc.get("send_window")
    weekdays = doc.get("weekdays")
    sequence = NurtureSequence(
        sequence_id=doc["_id"],
        name=doc["name"],
        steps=tuple(Step(**s) for s in doc["steps"]),
        send_window=None if window is None else SendWindow(**window),
        weekdays=None if weekdays is None else tuple(weekdays),
    )
    return SequenceRecord(sequence, doc["version"], doc["created_at"], doc["updated_at"])


def _enrollment_from(doc: Document) -> Enrollment:
    stop_reason = doc.get("stop_reason")
    return Enrollment(
        enrollment_id=doc["_id"],
        lead_id=doc["lead_id"],
        sequence_id=doc["sequence_id"],
        sequence_version=doc["sequence_version"],
        reason=doc["reason"],
        status=EnrollmentStatus(doc["status"]),
        enrolled_at=doc["enrolled_at"],
        triggered_at=doc["triggered_at"],
        current_step=doc["current_step"],
        next_send_at=doc.get("next_send_at"),
        channels=tuple(doc["channels"]),
        last_sent_at=doc.get("last_sent_at"),
        stopped_at=doc.get("stopped_at"),
        stop_reason=None if stop_reason is None else StopReason(stop_reason),
    )


class MongoNurtureStore:
    def __init__(self, database: Database, ledger: EventLedger, *, default_timezone: str) -> None:
        self._contacts: Collection = database["contacts"]
        self._sequences: Collection = database["sequences"]
        self._enrollments: Collection = database["enrollments"]
        self._ledger = ledger
        self._default_timezone = default_timezone

    async def ensure_indexes(self) -> None:
        # At most one active enrollment per lead, even when an event and a manual request race.
        await self._enrollments.create_index(
            "lead_id",
            name="one_active_enrollment_per_lead",
            unique=True,
            partialFilterExpression={"status": EnrollmentStatus.ACTIVE.value},
        )
        await self._enrollments.create_index(
            [("status", ASCENDING), ("next_send_at", ASCENDING)], name="due_steps"
        )
        await self._enrollments.create_index([("lead_id", ASCENDING), ("enrolled_at", DESCENDING)])
        await self._enrollments.create_index([("enrolled_at", DESCENDING)])

    async def seed_sequences(self, sequences: tuple[NurtureSequence, ...], now: datetime) -> None:
        """Insert the sequences that are missing; never touch one marketing has edited."""
        for sequence in sequences:
            await self._sequences.update_one(
                {"_id": sequence.sequence_id},
                {
                    "$setOnInsert": {
                        **_sequence_fields(sequence),
                        "version": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                },
                upsert=True,
            )

    # --- contacts -------------------------------------------------------------------------

    async def record_contact(self, update: ContactUpdate) -> None:
        """Keep the newest contact and consent of a lead; older or repeated ones change nothing.

        A lead that was ever enrolled gets its active enrollment's channels recomputed: its
        contact may arrive after the loss that enrolled it (topics are not ordered).
        """
        lead = await self._update_contact(update.lead_id, _contact_fields(update))
        if lead.get("nurtured"):
            await self._replan_active_enrollment(lead)

    async def _replan_active_enrollment(self, lead: Document) -> None:
        """The lead's channels and time zone may have changed: so may its enrollment's
        channels and the time its current step is due."""
        active = await self._enrollments.find_one(
            {"lead_id": lead["_id"], "status": EnrollmentStatus.ACTIVE.value}
        )
        if active is None:
            return
        record = await self.get_sequence(active["sequence_id"])
        if record is None:
            raise SequenceNotFoundError(active["sequence_id"])
        step = active["current_step"]
        since = active["last_sent_at"] or active["enrolled_at"]
        contact, consent = _contact_of(lead)
        plan = plan_step(
            record.sequence,
            step,
            since,
            contact=contact,
            consent=consent,
            default_timezone=self._default_timezone,
        )
        # Only if the enrollment has not moved on (a step sent, a stop) in the meantime.
        await self._enrollments.update_one(
            {"_id": active["_id"], "status": EnrollmentStatus.ACTIVE.value, "current_step": step},
            {"$set": {"channels": list(plan.channels), "next_send_at": plan.next_send_at}},
        )

    async def _update_contact(
        self, lead_id: str, fields: Document, session: Session | None = None
    ) -> Document:
        """Apply pipeline `$set` fields to a lead's contact document (made if missing)."""
        lead = await self._contacts.find_one_and_update(
            {"_id": lead_id},
            [{"$set": fields}],
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if lead is None:  # an upsert returning the new document always has one
            raise RuntimeError(f"contact upsert of lead '{lead_id}' returned nothing")
        return lead

    async def forget_contact(self, lead_id: str, now: datetime) -> None:
        """Right to erasure: drop personal data, keep a tombstone so late events add none back."""
        await self._contacts.replace_one(
            {"_id": lead_id}, {"_id": lead_id, "erased_at": now}, upsert=True
        )

    # --- sequences ------------------------------------------------------------------------

    async def create_sequence(self, sequence: NurtureSequence, now: datetime) -> SequenceRecord:
        doc = {
            "_id": sequence.sequence_id,
            **_sequence_fields(sequence),
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        try:
            await self._sequences.insert_one(doc)
        except DuplicateKeyError as error:
            raise SequenceExistsError(sequence.sequence_id) from error
        return _sequence_from(doc)

    async def replace_sequence(self, sequence: NurtureSequence, now: datetime) -> SequenceRecord:
        """Replace a sequence's content; enrollments record the version they started on."""
        doc = await self._sequences.find_one_and_update(
            {"_id": sequence.sequence_id},
            {"$set": {**_sequence_fields(sequence), "updated_at": now}, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise SequenceNotFoundError(sequence.sequence_id)
        return _sequence_from(doc)

    async def get_sequence(self, sequence_id: str) -> SequenceRecord | None:
        doc = await self._sequences.find_one({"_id": sequence_id})
        return None if doc is None else _sequence_from(doc)

    async def list_sequences(self) -> list[SequenceRecord]:
        return [_sequence_from(doc) async for doc in self._sequences.find().sort("_id")]

    # --- enrollments ----------------------------------------------------------------------

    async def enroll(
        self, request: EnrollmentRequest, now: datetime, *, consumed: Event | None = None
    ) -> Enrollment:
        """Enroll a lead and publish `LeadEnrolledV1`, in one transaction.

        Raises AlreadyEnrolledError, SequenceNotFoundError, LeadNotFoundError (erased, or
        never seen when `lead_must_be_known`), and AlreadyHandled if `consumed` was handled.
        """
        try:
            return await self._ledger.commit(
                lambda session: self._enroll(session, request, now), consumed=consumed
            )
        except DuplicateKeyError as error:
            # A simultaneous enrollment of the same lead committed first.
            raise AlreadyEnrolledError(request.lead_id, None) from error

    async def _enroll(
        self, session: Session, request: EnrollmentRequest, now: datetime
    ) -> tuple[Enrollment, list[Event]]:
        active = await self._enrollments.find_one(
            {"lead_id": request.lead_id, "status": EnrollmentStatus.ACTIVE.value},
            {"sequence_id": 1},
            session=session,
        )
        if active is not None:
            raise AlreadyEnrolledError(request.lead_id, active["sequence_id"])
        sequence_doc = await self._sequences.find_one({"_id": request.sequence_id}, session=session)
        if sequence_doc is None:
            raise SequenceNotFoundError(request.sequence_id)
        record = _sequence_from(sequence_doc)
        # Apply what the triggering event carries, and mark the lead so later contact
        # updates reach its enrollment; an aborted enrollment leaves neither behind.
        carried = {} if request.carried is None else _contact_fields(request.carried)
        lead = await self._update_contact(request.lead_id, {**carried, "nurtured": True}, session)
        unknown = lead.get("contact") is None and lead.get("consent") is None
        if lead.get("erased_at") or (unknown and request.lead_must_be_known):
            raise LeadNotFoundError(request.lead_id)
        contact, consent = _contact_of(lead)
        plan = plan_step(
            record.sequence,
            0,
            now,
            contact=contact,
            consent=consent,
            default_timezone=self._default_timezone,
        )
        enrollment = Enrollment(
            enrollment_id=uuid4().hex,
            lead_id=request.lead_id,
            sequence_id=request.sequence_id,
            sequence_version=record.version,
            reason=request.reason,
            status=EnrollmentStatus.ACTIVE,
            enrolled_at=now,
            triggered_at=request.triggered_at,
            current_step=0,
            next_send_at=plan.next_send_at,
            channels=plan.channels,
        )
        await self._enrollments.insert_one(_enrollment_document(enrollment), session=session)
        event = LeadEnrolledV1(
            lead_id=request.lead_id,
            occurred_at=now,
            sequence_id=request.sequence_id,
            reason=request.reason,
        )
        return enrollment, [event]

    async def stop_enrollment(
        self, lead_id: str, reason: StopReason, happened_at: datetime, now: datetime
    ) -> bool:
        """Stop the lead's active enrollment if it began before `happened_at`.

        The guard keeps a late or redelivered event from stopping a newer enrollment; one
        conditional write also makes the same event twice change nothing.
        """
        result = await self._enrollments.update_one(
            {
                "lead_id": lead_id,
                "status": EnrollmentStatus.ACTIVE.value,
                "triggered_at": {"$lt": happened_at},
            },
            {
                "$set": {
                    "status": EnrollmentStatus.STOPPED.value,
                    "stop_reason": reason.value,
                    "stopped_at": now,
                    "next_send_at": None,
                }
            },
        )
        return result.modified_count == 1

    async def latest_enrollment(self, lead_id: str) -> Enrollment | None:
        cursor = self._enrollments.find({"lead_id": lead_id}).sort("enrolled_at", DESCENDING)
        async for doc in cursor.limit(1):
            return _enrollment_from(doc)
        return None

    async def list_enrollments(self, where: EnrollmentFilter) -> list[Enrollment]:
        query: dict[str, Any] = {}
        if where.status is not None:
            query["status"] = where.status.value
        if where.sequence_id is not None:
            query["sequence_id"] = where.sequence_id
        if where.lead_id is not None:
            query["lead_id"] = where.lead_id
        cursor = self._enrollments.find(query).sort("enrolled_at", DESCENDING).limit(where.limit)
        return [_enrollment_from(doc) async for doc in cursor]


def _contact_of(lead: Document) -> tuple[Contact | None, Consent | None]:
    contact, consent = lead.get("contact"), lead.get("consent")
    return (
        None if contact is None else Contact.model_validate(contact),
        None if consent is None else Consent.model_validate(consent),
    )


def _enrollment_document(enrollment: Enrollment) -> Document:
    doc = asdict(enrollment)
    doc["_id"] = doc.pop("enrollment_id")
    return doc
