"""Nurture's use cases: the steps of each flow, between the entrypoints and the store.

- `ApplyLeadEvents`: a batch of consumed lifecycle events, applied in one transaction.
- `EnrollByHand`: marketing enrolls a known lead.
- `Sequences`: marketing's sequences, and the cached catalog enrollments are planned on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import uuid4

import structlog

from leadflow.chassis.clock import Clock
from leadflow.chassis.config_cache import VersionedCache
from services.nurture.rules import (
    BULK_ENROLLMENT,
    AlreadyEnrolledError,
    Enrollment,
    LeadContact,
    LeadNotFoundError,
    LeadNurture,
    NurtureChanges,
    NurtureSequence,
    Requalification,
    ScoringPolicy,
    SequenceCatalog,
    SequenceNotEnrollingError,
    SequenceNotFoundError,
    SequenceRecord,
    SequenceStatus,
    enroll_by_hand,
    nurture_batch,
    score_batch,
    sequence_of,
    sequences_needed,
    stop_requalified,
)
from services.nurture.store import ContactFilter, NurtureStore, NurtureTransaction
from shared.events import EngagementRecordedV1, Event, LeadEnrolledV1, LeadRequalifiedV1

log = structlog.get_logger(__name__)


class Sequences:
    """Marketing's sequences, and the catalog the other use cases plan enrollments on.

    The catalog is hot configuration: it is read through `cache`, which re-reads it only
    when the sequences' version moved. Every change here invalidates it at once; a change
    made on another replica is seen within the cache's `max_age_s`.
    """

    def __init__(
        self, store: NurtureStore, cache: VersionedCache[SequenceCatalog], *, clock: Clock
    ) -> None:
        self._store = store
        self._cache = cache
        self._clock = clock

    async def create(self, sequence: NurtureSequence) -> SequenceRecord:
        """Raises SequenceExistsError."""
        now = self._clock()
        record = SequenceRecord(sequence, version=1, created_at=now, updated_at=now)
        await self._store.insert_sequence(record)
        self._cache.invalidate()
        return record

    async def replace(self, sequence: NurtureSequence) -> SequenceRecord:
        """Replace a sequence's content; enrollments record the version they started on.
        Raises SequenceNotFoundError."""
        record = await self._store.update_sequence(sequence, self._clock())
        self._cache.invalidate()
        return record

    async def set_status(self, sequence_id: str, status: SequenceStatus) -> SequenceRecord:
        """Pause, resume or archive. Raises SequenceNotFoundError."""
        record = await self._store.set_sequence_status(sequence_id, status, self._clock())
        self._cache.invalidate()
        log.info("sequence status changed", sequence_id=sequence_id, status=status.value)
        return record

    async def seed(self, defaults: Sequence[NurtureSequence]) -> None:
        """Insert the default sequences that are missing; never touch one marketing edited."""
        now = self._clock()
        inserted = await self._store.insert_missing_sequences(
            [SequenceRecord(sequence, 1, now, now) for sequence in defaults]
        )
        if inserted:
            log.info("default sequences added", count=inserted)
            self._cache.invalidate()

    async def get(self, sequence_id: str) -> SequenceRecord:
        """Raises SequenceNotFoundError."""
        record = await self._store.get_sequence(sequence_id)
        if record is None:
            raise SequenceNotFoundError(sequence_id)
        return record

    async def all(self) -> list[SequenceRecord]:
        return await self._store.list_sequences()

    async def catalog(self, *, needing: Collection[str] = ()) -> SequenceCatalog:
        """Every sequence, from the cache. If one `needing` is missing, it may have been
        created on another replica a moment ago: the version is checked once more."""
        catalog = await self._cache.get()
        if any(sequence_id not in catalog for sequence_id in needing):
            self._cache.invalidate()
            catalog = await self._cache.get()
        return catalog


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    enrolled: list[LeadEnrolledV1]
    changes: NurtureChanges


class ApplyLeadEvents:
    """Apply consumed lifecycle events to nurture: contacts kept, leads enrolled on loss,
    enrollments replanned or stopped. One transaction per batch, one query per collection."""

    def __init__(
        self,
        store: NurtureStore,
        sequences: Sequences,
        *,
        default_timezone: str,
        clock: Clock,
        scoring: ScoringPolicy | None = None,
    ) -> None:
        self._store = store
        self._sequences = sequences
        self._default_timezone = default_timezone
        self._clock = clock
        self._scoring = scoring

    async def __call__(self, events: Sequence[Event]) -> list[LeadEnrolledV1]:
        """Apply the events not handled before, in order; the enrollments they started."""

        async def apply(
            transaction: NurtureTransaction, fresh: list[Event]
        ) -> tuple[BatchOutcome, list[Event]]:
            lead_ids = {event.lead_id for event in fresh}
            contacts = await transaction.contacts(lead_ids)
            active = await transaction.active_enrollments(lead_ids)
            catalog = await self._sequences.catalog(
                needing=sequences_needed(fresh, (e for es in active.values() for e in es))
            )
            now = self._clock()
            changes = nurture_batch(
                fresh,
                contacts,
                active,
                catalog,
                now=now,
                default_timezone=self._default_timezone,
            )
            requalified = await self._score(transaction, fresh, active)
            changes = stop_requalified(changes, active, {r.lead_id for r in requalified}, now)
            await transaction.save(changes)
            enrolled = [enrolled_event(e) for e in changes.started]
            handed_back = [requalified_event(r) for r in requalified]
            return BatchOutcome(enrolled, changes), [*enrolled, *handed_back]

        outcome = await self._store.commit_batch(events, apply)
        if outcome is None:
            log.debug("events already handled", events=len(events))
            return []
        _log_outcome(outcome.changes)
        return outcome.enrolled

    async def _score(
        self,
        transaction: NurtureTransaction,
        fresh: Sequence[Event],
        active: Mapping[str, Sequence[Enrollment]],
    ) -> tuple[Requalification, ...]:
        """Score the batch's engagements; the nurtured leads they hand back to sales."""
        engagements = [e for e in fresh if isinstance(e, EngagementRecordedV1)]
        if not engagements or self._scoring is None:
            return ()
        stored = await transaction.scores({e.lead_id for e in engagements})
        nurtured = {lead_id: es[0].sequence_id for lead_id, es in active.items() if es}
        batch = score_batch(engagements, stored, nurtured, self._scoring)
        await transaction.save_scores(batch.scores)
        for requalification in batch.requalified:
            log.info(
                "lead requalified",
                lead_id=requalification.lead_id,
                reason=requalification.reason,
                score=round(requalification.score, 2),
            )
        return batch.requalified


class _Enrolling:
    """What enrolling by hand, one lead or many, works with."""

    def __init__(
        self,
        store: NurtureStore,
        sequences: Sequences,
        *,
        default_timezone: str,
        clock: Clock,
        new_id: Callable[[], str] = lambda: uuid4().hex,
    ) -> None:
        self._store = store
        self._sequences = sequences
        self._default_timezone = default_timezone
        self._clock = clock
        self._new_id = new_id


class EnrollByHand(_Enrolling):
    """Marketing enrolls a lead nurture knows in a sequence of its choice."""

    async def __call__(self, lead_id: str, sequence_id: str) -> Enrollment:
        """Enroll and publish `LeadEnrolledV1`, in one transaction. Raises
        AlreadyEnrolledError, SequenceNotFoundError, LeadNotFoundError (erased, or never
        seen)."""
        enrollment_id = self._new_id()

        async def enroll(
            transaction: NurtureTransaction,
        ) -> tuple[Enrollment, list[LeadEnrolledV1]]:
            contacts = await transaction.contacts([lead_id])
            active = await transaction.active_enrollments([lead_id])
            catalog = await self._sequences.catalog(needing=[sequence_id])
            lead = LeadNurture(
                contacts.get(lead_id) or LeadContact(lead_id), active.get(lead_id, ())
            )
            enrollment = enroll_by_hand(
                lead,
                catalog,
                sequence_id,
                enrollment_id=enrollment_id,
                now=self._clock(),
                default_timezone=self._default_timezone,
            )
            # A loss consumed at the same moment may enroll the lead too: the transactions
            # conflict, and the one retried sees the other's enrollment (or the store's
            # one-active-per-lead index refuses it: AlreadyEnrolledError).
            await transaction.save(NurtureChanges(started=(enrollment,)))
            return enrollment, [enrolled_event(enrollment)]

        enrollment = await self._store.commit(enroll)
        log.info(
            "lead enrolled by hand",
            lead_id=lead_id,
            sequence_id=sequence_id,
            enrollment_id=enrollment.enrollment_id,
        )
        return enrollment


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    enrolled: int
    already_enrolled: int
    refused: int
    """Erased or unknown leads (only possible with an explicit list)."""
    refused_lead_ids: tuple[str, ...] = ()


BULK_CHUNK = 200
"""Leads per transaction: one query per collection and one bulk write each."""


class EnrollInBulk(_Enrolling):
    """A manager or marketing enrolls many leads at once: chosen by id or by a filter
    (seed 000: a bulk SMS to the leads who have not paid)."""

    async def __call__(
        self, sequence_id: str, *, lead_ids: Sequence[str] | None, where: ContactFilter
    ) -> BulkOutcome:
        """Raises SequenceNotFoundError, SequenceNotEnrollingError."""
        catalog = await self._sequences.catalog(needing=[sequence_id])
        record = sequence_of(catalog, sequence_id)
        if record.status is not SequenceStatus.ACTIVE:
            raise SequenceNotEnrollingError(sequence_id, record.status)
        chosen = (
            list(dict.fromkeys(lead_ids))
            if lead_ids is not None
            else (await self._store.contacts_matching(where))
        )
        total = BulkOutcome(0, 0, 0)
        for start in range(0, len(chosen), BULK_CHUNK):
            outcome = await self._chunk(catalog, sequence_id, chosen[start : start + BULK_CHUNK])
            total = BulkOutcome(
                total.enrolled + outcome.enrolled,
                total.already_enrolled + outcome.already_enrolled,
                total.refused + outcome.refused,
                total.refused_lead_ids + outcome.refused_lead_ids,
            )
        log.info(
            "bulk enrollment",
            sequence_id=sequence_id,
            enrolled=total.enrolled,
            already_enrolled=total.already_enrolled,
            refused=total.refused,
        )
        return total

    async def _chunk(
        self, catalog: SequenceCatalog, sequence_id: str, lead_ids: Sequence[str]
    ) -> BulkOutcome:
        async def enroll(transaction: NurtureTransaction) -> tuple[BulkOutcome, list[Event]]:
            contacts = await transaction.contacts(lead_ids)
            active = await transaction.active_enrollments(lead_ids)
            now = self._clock()
            started: list[Enrollment] = []
            already = 0
            refused: list[str] = []
            for lead_id in lead_ids:
                lead = LeadNurture(
                    contacts.get(lead_id) or LeadContact(lead_id), active.get(lead_id, ())
                )
                try:
                    started.append(
                        enroll_by_hand(
                            lead,
                            catalog,
                            sequence_id,
                            enrollment_id=self._new_id(),
                            now=now,
                            default_timezone=self._default_timezone,
                            reason=BULK_ENROLLMENT,
                        )
                    )
                except AlreadyEnrolledError:
                    already += 1
                except LeadNotFoundError:
                    refused.append(lead_id)
            await transaction.save(NurtureChanges(started=tuple(started)))
            outcome = BulkOutcome(len(started), already, len(refused), tuple(refused))
            return outcome, [enrolled_event(e) for e in started]

        return await self._store.commit(enroll)


class RecordWebVisit:
    """The website's beacon: a known lead viewed a page. Recorded as an engagement event,
    which nurture's own consumer scores (and may requalify on), like opens and clicks."""

    def __init__(self, store: NurtureStore, *, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def __call__(self, lead_id: str, url: str, occurred_at: datetime | None) -> None:
        event = EngagementRecordedV1(
            lead_id=lead_id, occurred_at=occurred_at or self._clock(), kind="web_visit", url=url
        )

        async def record(_: NurtureTransaction) -> tuple[None, list[Event]]:
            return None, [event]

        await self._store.commit(record)


def requalified_event(requalification: Requalification) -> LeadRequalifiedV1:
    return LeadRequalifiedV1(
        lead_id=requalification.lead_id,
        occurred_at=requalification.at,
        score=round(requalification.score, 3),
        reason=requalification.reason,
        sequence_id=requalification.sequence_id,
    )


def enrolled_event(enrollment: Enrollment) -> LeadEnrolledV1:
    return LeadEnrolledV1(
        lead_id=enrollment.lead_id,
        occurred_at=enrollment.enrolled_at,
        sequence_id=enrollment.sequence_id,
        reason=enrollment.reason,
        sequence_version=enrollment.sequence_version,
    )


def _log_outcome(changes: NurtureChanges) -> None:
    for enrollment in changes.started:
        log.info(
            "lead enrolled",
            lead_id=enrollment.lead_id,
            sequence_id=enrollment.sequence_id,
            reason=enrollment.reason,
        )
    for enrollment in (*changes.started, *changes.changed):
        if enrollment.stop_reason is not None:
            log.info(
                "nurturing stopped",
                lead_id=enrollment.lead_id,
                sequence_id=enrollment.sequence_id,
                reason=enrollment.stop_reason.value,
            )
    for lead_id, why in changes.not_enrolled:
        log.info("lost lead not enrolled", lead_id=lead_id, why=why)
