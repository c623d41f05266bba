"""In-memory nurture store: the same Protocol as `MongoNurtureStore`, held to the same
contract tests (tests/contract/test_nurture_store.py).

It also counts the reads each collection gets, so unit tests can check that a batch costs
one query per collection and that sequences are read only when they changed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from leadflow.chassis.duework import ClaimedWork
from services.nurture.rules import (
    AlreadyEnrolledError,
    Enrollment,
    EnrollmentMovedMeanwhileError,
    EnrollmentStatus,
    LeadContact,
    LeadScore,
    NurtureChanges,
    NurtureSequence,
    SendRecord,
    SendStatus,
    SequenceExistsError,
    SequenceNotFoundError,
    SequenceRecord,
    SequenceStatus,
    StepMove,
    StopReason,
    allowed_channels,
    send_key,
    stopped,
)
from services.nurture.store import (
    BatchWork,
    ContactFilter,
    EnrollmentFilter,
    Work,
    step_timers,
)
from shared.events import Event
from tests.fakes.duework import InMemoryDueWork
from tests.fakes.ledger import InMemoryLedger

T = TypeVar("T")


@dataclass
class _Tables:
    contacts: dict[str, LeadContact] = field(default_factory=dict)
    sequences: dict[str, SequenceRecord] = field(default_factory=dict)
    sequences_version: int = 0
    enrollments: dict[str, Enrollment] = field(default_factory=dict)
    due: InMemoryDueWork = field(default_factory=InMemoryDueWork)
    """Timers, restored with the other tables when a unit of work fails."""
    scores: dict[str, LeadScore] = field(default_factory=dict)


def _newest_first(enrollment: Enrollment) -> tuple[datetime, datetime]:
    return enrollment.enrolled_at, enrollment.triggered_at


class _NurtureLedger(InMemoryLedger):
    def _restore(self, saved: Any) -> None:
        # The timers are restored inside the object every runner holds (a commit that
        # aborts after finishing its timers must leave them claimable by that runner).
        due = self.tables.due
        due.items = saved.due.items
        super()._restore(saved)
        self.tables.due = due


class InMemoryNurtureStore:
    def __init__(self) -> None:
        self.tables = _Tables()
        self.ledger = _NurtureLedger(self.tables)
        self.reads: Counter[str] = Counter()
        """Queries per collection: contacts, enrollments, sequences, config_versions."""
        # Outside the tables: send records and rate windows are written outside
        # transactions (they guard effects no transaction can undo).
        self.sends: dict[str, SendRecord] = {}
        self.rates: Counter[str] = Counter()

    @property
    def due(self) -> InMemoryDueWork:
        return self.tables.due

    async def ensure_indexes(self) -> None:
        return None

    async def commit(self, work: Work[T]) -> T:
        async def in_transaction() -> tuple[T, Sequence[Event]]:
            return await work(_InMemoryNurtureTransaction(self))

        return await self.ledger.commit(in_transaction)

    async def commit_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        async def in_transaction(fresh: list[Event]) -> tuple[T, Sequence[Event]]:
            return await work(_InMemoryNurtureTransaction(self), fresh)

        return await self.ledger.commit_batch(consumed, in_transaction)

    # --- sequences ------------------------------------------------------------------------

    async def sequences_version(self) -> int:
        self.reads["config_versions"] += 1
        return self.tables.sequences_version

    async def sequence_catalog(self) -> dict[str, SequenceRecord]:
        self.reads["sequences"] += 1
        return dict(self.tables.sequences)

    async def get_sequence(self, sequence_id: str) -> SequenceRecord | None:
        self.reads["sequences"] += 1
        return self.tables.sequences.get(sequence_id)

    async def list_sequences(self) -> list[SequenceRecord]:
        self.reads["sequences"] += 1
        return [self.tables.sequences[i] for i in sorted(self.tables.sequences)]

    async def insert_sequence(self, record: SequenceRecord) -> None:
        async def insert() -> tuple[None, list[Event]]:
            sequence_id = record.sequence.sequence_id
            if sequence_id in self.tables.sequences:
                raise SequenceExistsError(sequence_id)
            self.tables.sequences[sequence_id] = record
            self.tables.sequences_version += 1
            return None, []

        await self.ledger.commit(insert)

    async def update_sequence(self, sequence: NurtureSequence, now: datetime) -> SequenceRecord:
        async def update() -> tuple[SequenceRecord, list[Event]]:
            known = self.tables.sequences.get(sequence.sequence_id)
            if known is None:
                raise SequenceNotFoundError(sequence.sequence_id)
            record = dataclasses.replace(
                known,
                sequence=sequence,
                version=known.version + 1,
                updated_at=now,
                history={**known.history, known.version: known.sequence},
            )
            self.tables.sequences[sequence.sequence_id] = record
            self.tables.sequences_version += 1
            return record, []

        return await self.ledger.commit(update)

    async def set_sequence_status(
        self, sequence_id: str, status: SequenceStatus, now: datetime
    ) -> SequenceRecord:
        async def update() -> tuple[SequenceRecord, list[Event]]:
            known = self.tables.sequences.get(sequence_id)
            if known is None:
                raise SequenceNotFoundError(sequence_id)
            record = dataclasses.replace(known, status=status, updated_at=now)
            self.tables.sequences[sequence_id] = record
            self.tables.sequences_version += 1
            if status is SequenceStatus.ARCHIVED:
                ending = [
                    e
                    for e in self.tables.enrollments.values()
                    if e.sequence_id == sequence_id and e.status is EnrollmentStatus.ACTIVE
                ]
                for e in ending:
                    self.tables.enrollments[e.enrollment_id] = stopped(e, StopReason.ARCHIVED, now)
                await self.tables.due.cancel(
                    [send_key(e.enrollment_id, e.current_step) for e in ending]
                )
            return record, []

        return await self.ledger.commit(update)

    async def insert_missing_sequences(self, records: Sequence[SequenceRecord]) -> int:
        async def insert() -> tuple[int, list[Event]]:
            missing = [r for r in records if r.sequence.sequence_id not in self.tables.sequences]
            for record in missing:
                self.tables.sequences[record.sequence.sequence_id] = record
            if missing:
                self.tables.sequences_version += 1
            return len(missing), []

        return await self.ledger.commit(insert)

    async def enrollments_with_contacts(
        self, enrollment_ids: Collection[str]
    ) -> tuple[dict[str, Enrollment], dict[str, LeadContact]]:
        self.reads["enrollments"] += 1
        self.reads["contacts"] += 1
        tables = self.tables
        enrollments = {i: tables.enrollments[i] for i in enrollment_ids if i in tables.enrollments}
        lead_ids = {e.lead_id for e in enrollments.values()}
        return enrollments, {i: tables.contacts[i] for i in lead_ids if i in tables.contacts}

    # --- sends ----------------------------------------------------------------------------

    async def send_records(self, keys: Collection[str]) -> dict[str, SendRecord]:
        return {k: self.sends[k] for k in keys if k in self.sends}

    async def sends_since(
        self, lead_ids: Collection[str], since: datetime
    ) -> dict[str, list[SendRecord]]:
        wanted = set(lead_ids)
        found: dict[str, list[SendRecord]] = {}
        for record in self.sends.values():
            if record.lead_id in wanted and record.reserved_at >= since:
                found.setdefault(record.lead_id, []).append(record)
        return found

    async def reserve_sends(self, records: Sequence[SendRecord]) -> dict[str, int]:
        reserved: dict[str, int] = {}
        for record in records:
            known = self.sends.get(record.key)
            if known is None:
                self.sends[record.key] = record
            elif known.status is SendStatus.RETRYABLE:
                self.sends[record.key] = dataclasses.replace(
                    known,
                    status=SendStatus.SENDING,
                    reserved_at=record.reserved_at,
                    attempts=known.attempts + 1,
                )
            else:
                continue
            reserved[record.key] = self.sends[record.key].attempts
        return reserved

    async def record_outcomes(self, records: Sequence[SendRecord]) -> None:
        for record in records:
            known = self.sends[record.key]
            self.sends[record.key] = dataclasses.replace(
                known,
                status=record.status,
                sent_at=record.sent_at,
                provider_id=record.provider_id,
                error=record.error,
            )

    async def take_rate(self, channel: str, second: datetime, wanted: int, limit: int) -> int:
        if wanted <= 0:
            return 0
        window = f"{channel}:{second.replace(microsecond=0).isoformat()}"
        before = self.rates[window]
        self.rates[window] += wanted
        return max(0, min(wanted, limit - before))

    # --- enrollments ----------------------------------------------------------------------

    async def contacts_matching(self, where: ContactFilter) -> list[str]:
        self.reads["contacts"] += 1
        matching = [
            lead.lead_id
            for lead in self.tables.contacts.values()
            if lead.erased_at is None
            and (where.stages is None or lead.stage in where.stages)
            and lead.stage not in where.exclude_stages
            and (
                where.reachable_on is None
                or where.reachable_on in allowed_channels(lead.contact, lead.consent, lead.blocked)
            )
        ]
        return sorted(matching)[: where.limit]

    async def latest_enrollment(self, lead_id: str) -> Enrollment | None:
        found = await self.list_enrollments(EnrollmentFilter(lead_id=lead_id, limit=1))
        return found[0] if found else None

    async def list_enrollments(self, where: EnrollmentFilter) -> list[Enrollment]:
        self.reads["enrollments"] += 1
        matching = [
            e
            for e in self.tables.enrollments.values()
            if (where.status is None or e.status == where.status)
            and (where.sequence_id is None or e.sequence_id == where.sequence_id)
            and (where.lead_id is None or e.lead_id == where.lead_id)
        ]
        return sorted(matching, key=_newest_first, reverse=True)[: where.limit]


class _InMemoryNurtureTransaction:
    def __init__(self, store: InMemoryNurtureStore) -> None:
        self._store = store
        self._tables = store.tables

    async def enrollments(self, enrollment_ids: Collection[str]) -> dict[str, Enrollment]:
        self._store.reads["enrollments"] += 1
        return {
            i: self._tables.enrollments[i] for i in enrollment_ids if i in self._tables.enrollments
        }

    async def finish(self, claimed: Sequence[ClaimedWork]) -> None:
        await self._tables.due.finish(claimed)

    async def move_on(self, moves: Sequence[StepMove]) -> None:
        tables = self._tables
        for move in moves:
            before = move.before
            stored = tables.enrollments.get(before.enrollment_id)
            if stored is None:
                raise EnrollmentMovedMeanwhileError([before.enrollment_id])
            # Only what the move changed: a field changed meanwhile (engaged) stays.
            moved = {
                f.name: getattr(move.after, f.name)
                for f in dataclasses.fields(before)
                if getattr(move.after, f.name) != getattr(before, f.name)
            }
            tables.enrollments[before.enrollment_id] = dataclasses.replace(stored, **moved)
        due, done = step_timers([move.after for move in moves])
        await tables.due.cancel(done)
        await tables.due.schedule(due)

    async def take_commit_turn(self) -> None:
        return  # one transaction at a time here

    async def scores(self, lead_ids: Collection[str]) -> dict[str, LeadScore]:
        self._store.reads["scores"] += 1
        return {i: self._tables.scores[i] for i in lead_ids if i in self._tables.scores}

    async def save_scores(self, scores: Sequence[LeadScore]) -> None:
        for score in scores:
            self._tables.scores[score.lead_id] = score

    async def contacts(self, lead_ids: Collection[str]) -> dict[str, LeadContact]:
        self._store.reads["contacts"] += 1
        return {i: self._tables.contacts[i] for i in lead_ids if i in self._tables.contacts}

    async def active_enrollments(
        self, lead_ids: Collection[str]
    ) -> dict[str, tuple[Enrollment, ...]]:
        self._store.reads["enrollments"] += 1
        wanted = set(lead_ids)
        active: dict[str, tuple[Enrollment, ...]] = {}
        for e in self._tables.enrollments.values():
            if e.lead_id in wanted and e.status is EnrollmentStatus.ACTIVE:
                active[e.lead_id] = (*active.get(e.lead_id, ()), e)
        return active

    async def save(self, changes: NurtureChanges) -> None:
        tables = self._tables
        for lead in changes.contacts:
            tables.contacts[lead.lead_id] = lead
        for enrollment in changes.changed:
            if enrollment.enrollment_id not in tables.enrollments:
                raise KeyError(f"no enrollment {enrollment.enrollment_id} to replace")
            tables.enrollments[enrollment.enrollment_id] = enrollment
        for enrollment in changes.started:
            if enrollment.enrollment_id in tables.enrollments:
                raise KeyError(f"duplicate enrollment id {enrollment.enrollment_id}")
            tables.enrollments[enrollment.enrollment_id] = enrollment
        # What MongoDB's unique partial index refuses (the ledger rolls the tables back).
        active: set[tuple[str, str]] = set()
        for enrollment in tables.enrollments.values():
            if enrollment.status is EnrollmentStatus.ACTIVE:
                key = (enrollment.lead_id, enrollment.sequence_id)
                if key in active:
                    raise AlreadyEnrolledError(*key)
                active.add(key)
        due, done = step_timers((*changes.changed, *changes.started))
        await tables.due.cancel(done)
        await tables.due.schedule(due)
