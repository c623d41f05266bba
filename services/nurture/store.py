"""Nurture's persistence, in the `leadflow_nurture` database. Decisions live in `rules`, the
steps of each flow in `usecases`.

- `contacts`: how nurture may reach each lead (contact, consent, each with the time of the
  event that carried it) or a tombstone once it was erased; `_id` is the lead id.
- `sequences`: the email/SMS sequences marketing edits; `_id` is the sequence id.
- `config_versions`: `{_id: "sequences", version}`, incremented in the same transaction as
  every change to `sequences`, so replicas re-read sequences only when they changed.
- `enrollments`: one document per enrollment of a lead in a sequence; at most one active per
  lead and sequence (a unique partial index).
- `sequences` keep every earlier version's content in `history` (enrolled leads go on with
  the version they started on) and a `status` (active / paused / archived).
- `sends`: one record per step's send key, inserted before the message leaves (so no step is
  sent twice); a refusal (retryable or final) is written into it. `send_outcomes`: the
  provider's answer to a message that went (`_id` the send key), inserted once: it is
  final, and an insert costs the local MongoDB-wire server a fraction of an update. Records
  are read with their outcome laid over them. The send loop stores an accepted answer only
  when its batch's commit failed (see `services.nurture.sending`): a committed step's
  record stays `sending`, its enrollment past the step and its `MessageSentV1` published.
- Fields whose value is None (and an enrollment's empty `engaged`) are not stored: the local
  server's cost grows with every element it encodes, indexes and logs; readers take a
  missing field as None, as they read documents written before, which stored them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from pymongo import ASCENDING, DESCENDING, InsertOne, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError

from leadflow.chassis.duework import ClaimedWork, DueWork, DueWorkStore
from leadflow.chassis.store import Collection as MongoCollection
from leadflow.chassis.store import (
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    MongoDueWork,
    Session,
    find_in,
)
from services.nurture.rules import (
    SEND_KIND,
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
    SendWindow,
    SequenceExistsError,
    SequenceNotFoundError,
    SequenceRecord,
    SequenceStatus,
    SkipCondition,
    Step,
    StepAnchor,
    StepMove,
    StopReason,
    send_key,
)
from shared.events import Channel, Consent, Contact, Event

T = TypeVar("T")

SEQUENCES_VERSION = "sequences"
"""The `config_versions` document every sequence change increments."""

_DUPLICATE_KEY = 11000


@dataclass(frozen=True, slots=True)
class EnrollmentFilter:
    status: EnrollmentStatus | None = None
    sequence_id: str | None = None
    lead_id: str | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class ContactFilter:
    """Which known (not erased) leads a bulk enrollment takes."""

    stages: tuple[str, ...] | None = None
    exclude_stages: tuple[str, ...] = ()
    reachable_on: Channel | None = None
    """Only leads that consented to this channel, have an address for it and did not
    opt out of it."""
    limit: int = 10_000


class NurtureTransaction(Protocol):
    """What a use case may read and write inside one transaction."""

    async def contacts(self, lead_ids: Collection[str]) -> dict[str, LeadContact]:
        """The stored contacts of these leads (one query); unknown leads are left out."""
        ...

    async def active_enrollments(
        self, lead_ids: Collection[str]
    ) -> dict[str, tuple[Enrollment, ...]]:
        """The active enrollments of each of these leads that has some (one query)."""
        ...

    async def save(self, changes: NurtureChanges) -> None:
        """Store changed contacts and new or changed enrollments, in bulk, and their timers:
        an active enrollment's current step is scheduled at its `next_send_at` (key
        `send_key`), any other's is cancelled. Raises AlreadyEnrolledError if a lead would
        have two active enrollments in one sequence."""
        ...

    async def enrollments(self, enrollment_ids: Collection[str]) -> dict[str, Enrollment]:
        """These enrollments by id (one query); unknown ids are left out."""
        ...

    async def move_on(self, moves: Sequence[StepMove]) -> None:
        """Store each move without reading the enrollment again: by `_id`, only the fields
        that differ from `before`, and each step's timer scheduled or cancelled as `save`
        does. For a caller that finishes the step's claimed timer in this transaction and
        read `before` after claiming it: every enrollment write schedules or cancels its
        current step's timer (`save`, archiving), which voids that claim (the finish raises
        LeaseLost), so what is stored is still `before`. Raises
        EnrollmentMovedMeanwhileError if one is not stored at all (the transaction must
        then abort: some of the writes may have landed)."""
        ...

    async def finish(self, claimed: Sequence[ClaimedWork]) -> None:
        """Complete claimed timers in this transaction (LeaseLost if one was taken over)."""
        ...

    async def take_commit_turn(self) -> None:
        """First in a send batch's commit: concurrent commits (other replicas') collide
        here, at their first write, so the one that must retry does so before its work
        rather than after it (every commit ends on the outbox's sequence counter, where
        overlapping transactions would collide anyway)."""
        ...

    async def scores(self, lead_ids: Collection[str]) -> dict[str, LeadScore]: ...

    async def save_scores(self, scores: Sequence[LeadScore]) -> None: ...


Work = Callable[[NurtureTransaction], Awaitable[tuple[T, Sequence[Event]]]]
BatchWork = Callable[[NurtureTransaction, list[Event]], Awaitable[tuple[T, Sequence[Event]]]]


class NurtureStore(Protocol):
    @property
    def due(self) -> DueWorkStore:
        """The timers of the steps (kind `send`), written in the same transactions."""
        ...

    async def ensure_indexes(self) -> None: ...

    async def commit(self, work: Work[T]) -> T:
        """Run `work` in one transaction; the events it returns go to the outbox."""
        ...

    async def commit_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        """Run `work` on the events of `consumed` not handled before, in one transaction
        that also remembers them and puts the events `work` returns in the outbox; None
        (nothing written) when every one was handled before."""
        ...

    # --- sequences (hot configuration) ----------------------------------------------------

    async def sequences_version(self) -> int:
        """A number that changes whenever any sequence does (0 before the first)."""
        ...

    async def sequence_catalog(self) -> dict[str, SequenceRecord]: ...
    async def get_sequence(self, sequence_id: str) -> SequenceRecord | None: ...
    async def list_sequences(self) -> list[SequenceRecord]: ...

    async def insert_sequence(self, record: SequenceRecord) -> None:
        """Raises SequenceExistsError."""
        ...

    async def update_sequence(self, sequence: NurtureSequence, now: datetime) -> SequenceRecord:
        """Replace a sequence's content, one version up, keeping the old content in its
        history. Raises SequenceNotFoundError."""
        ...

    async def set_sequence_status(
        self, sequence_id: str, status: SequenceStatus, now: datetime
    ) -> SequenceRecord:
        """Pause, resume or archive (the content's version does not move). Raises
        SequenceNotFoundError."""
        ...

    async def insert_missing_sequences(self, records: Sequence[SequenceRecord]) -> int:
        """Insert those whose id is not taken, never touching one that exists; how many."""
        ...

    async def enrollments_with_contacts(
        self, enrollment_ids: Collection[str]
    ) -> tuple[dict[str, Enrollment], dict[str, LeadContact]]:
        """These enrollments by id (unknown ids left out) and their leads' stored contacts,
        read outside any transaction: for a caller that reads each enrollment again in the
        transaction that changes it."""
        ...

    # --- sends (outside transactions: they guard an effect no transaction can undo) -------

    async def send_records(self, keys: Collection[str]) -> dict[str, SendRecord]: ...

    async def sends_since(
        self, lead_ids: Collection[str], since: datetime
    ) -> dict[str, list[SendRecord]]:
        """Each lead's send records reserved at or after `since` (for frequency caps)."""
        ...

    async def reserve_sends(self, records: Sequence[SendRecord]) -> dict[str, int]:
        """Insert these records (status sending); the keys this call reserved, each with
        its attempt number. A key reserved before is not reserved again, except a
        RETRYABLE one, which is taken back (its `attempts` moves on)."""
        ...

    async def record_outcomes(self, records: Sequence[SendRecord]) -> None:
        """Write the provider's answer into each record (status, provider id, error)."""
        ...

    async def take_rate(self, channel: str, second: datetime, wanted: int, limit: int) -> int:
        """Reserve up to `wanted` of the `limit` sends `channel` may make in `second`, across
        replicas; how many were granted."""
        ...

    # --- enrollments (reads) --------------------------------------------------------------

    async def contacts_matching(self, where: ContactFilter) -> list[str]:
        """The ids of the known, not erased leads `where` selects, at most `where.limit`."""
        ...

    async def latest_enrollment(self, lead_id: str) -> Enrollment | None: ...
    async def list_enrollments(self, where: EnrollmentFilter) -> list[Enrollment]:
        """Newest first."""
        ...


COMMIT_TURN = "send-batches"
"""The document send batches' commits all write first (`take_commit_turn`)."""
NEWEST_FIRST = [("enrolled_at", DESCENDING), ("triggered_at", DESCENDING)]
"""A batch enrolls at one `now`: a lead enrolled, stopped and enrolled again in one batch
has two enrollments at the same time, the later trigger being the newer."""


class MongoNurtureStore:
    def __init__(
        self, database: Database, ledger: EventLedger, due: DueWorkStore | None = None
    ) -> None:
        self._contacts: MongoCollection = database["contacts"]
        self._sequences: MongoCollection = database["sequences"]
        self._versions: MongoCollection = database["config_versions"]
        self._enrollments: MongoCollection = database["enrollments"]
        self._sends: MongoCollection = database["sends"]
        self._outcomes: MongoCollection = database["send_outcomes"]
        self._rates: MongoCollection = database["send_rates"]
        self._turns: MongoCollection = database["send_commit_turns"]
        self._scores: MongoCollection = database["scores"]
        self._ledger = ledger
        self.due: DueWorkStore = due or MongoDueWork(database)

    async def ensure_indexes(self) -> None:
        # Enrollments used to be one active per lead; now one per lead and sequence.
        indexes = await self._enrollments.index_information()
        if "one_active_enrollment_per_lead" in indexes:
            await self._enrollments.drop_index("one_active_enrollment_per_lead")
        # Steps fall due through their timers (due work), never by this index's query; it
        # only made every enrollment write dearer.
        if "due_steps" in indexes:
            await self._enrollments.drop_index("due_steps")
        # At most one active enrollment per lead and sequence, even when an event and a
        # manual request race.
        await self._enrollments.create_index(
            [("lead_id", ASCENDING), ("sequence_id", ASCENDING)],
            name="one_active_enrollment_per_lead_and_sequence",
            unique=True,
            partialFilterExpression={"status": EnrollmentStatus.ACTIVE.value},
        )
        await self._enrollments.create_index([("lead_id", ASCENDING), *NEWEST_FIRST])
        await self._enrollments.create_index(NEWEST_FIRST)
        await self._sends.create_index([("lead_id", ASCENDING), ("reserved_at", ASCENDING)])
        # Rate windows are one second long: a minute later nobody reads them.
        await self._rates.create_index("expires_at", expireAfterSeconds=0)
        # Made here, outside any transaction: two first commits must not both insert it.
        await self._turns.update_one({"_id": COMMIT_TURN}, {"$set": {"turn": 0}}, upsert=True)
        await self.due.ensure_indexes()

    async def commit(self, work: Work[T]) -> T:
        async def in_transaction(session: Session) -> tuple[T, Sequence[Event]]:
            return await work(_MongoNurtureTransaction(self, session))

        return await self._ledger.commit(in_transaction)

    async def commit_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        async def in_transaction(session: Session, fresh: list[Event]) -> tuple[T, Sequence[Event]]:
            return await work(_MongoNurtureTransaction(self, session), fresh)

        return await self._ledger.commit_batch(consumed, in_transaction)

    # --- sequences ------------------------------------------------------------------------

    async def sequences_version(self) -> int:
        doc = await self._versions.find_one({"_id": SEQUENCES_VERSION})
        return 0 if doc is None else int(doc["version"])

    async def sequence_catalog(self) -> dict[str, SequenceRecord]:
        return {record.sequence.sequence_id: record for record in await self.list_sequences()}

    async def get_sequence(self, sequence_id: str) -> SequenceRecord | None:
        doc = await self._sequences.find_one({"_id": sequence_id})
        return None if doc is None else sequence_from_document(doc)

    async def list_sequences(self) -> list[SequenceRecord]:
        return [sequence_from_document(doc) async for doc in self._sequences.find().sort("_id")]

    async def insert_sequence(self, record: SequenceRecord) -> None:
        async def insert(session: Session) -> tuple[None, list[Event]]:
            await self._sequences.insert_one(sequence_document(record), session=session)
            await self._bump_sequences_version(session)
            return None, []

        try:
            await self._ledger.commit(insert)
        except DuplicateKeyError as error:
            raise SequenceExistsError(record.sequence.sequence_id) from error

    async def update_sequence(self, sequence: NurtureSequence, now: datetime) -> SequenceRecord:
        async def update(session: Session) -> tuple[SequenceRecord, list[Event]]:
            known = await self._sequences.find_one({"_id": sequence.sequence_id}, session=session)
            if known is None:
                raise SequenceNotFoundError(sequence.sequence_id)
            old = sequence_from_document(known)
            doc = await self._sequences.find_one_and_update(
                {"_id": sequence.sequence_id, "version": old.version},
                {
                    "$set": {
                        **_sequence_fields(sequence),
                        f"history.{old.version}": _sequence_fields(old.sequence),
                        "updated_at": now,
                        "version": old.version + 1,
                    }
                },
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if doc is None:  # edited on another replica in between: the transaction retries
                raise SequenceNotFoundError(sequence.sequence_id)
            await self._bump_sequences_version(session)
            return sequence_from_document(doc), []

        return await self._ledger.commit(update)

    async def set_sequence_status(
        self, sequence_id: str, status: SequenceStatus, now: datetime
    ) -> SequenceRecord:
        async def update(session: Session) -> tuple[SequenceRecord, list[Event]]:
            doc = await self._sequences.find_one_and_update(
                {"_id": sequence_id},
                {"$set": {"status": status.value, "updated_at": now}},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if doc is None:
                raise SequenceNotFoundError(sequence_id)
            await self._bump_sequences_version(session)
            if status is SequenceStatus.ARCHIVED:
                await self._stop_archived(session, sequence_id, now)
            return sequence_from_document(doc), []

        return await self._ledger.commit(update)

    async def _stop_archived(self, session: Session, sequence_id: str, now: datetime) -> None:
        """Archive is final: its active enrollments stop now (one read, one bulk update)
        and their step timers go, rather than each stopping when its next step falls due."""
        active = {"sequence_id": sequence_id, "status": EnrollmentStatus.ACTIVE.value}
        cursor = self._enrollments.find(active, {"_id": 1, "current_step": 1}, session=session)
        keys = [send_key(doc["_id"], doc["current_step"]) async for doc in cursor]
        if not keys:
            return
        await self._enrollments.update_many(
            active,
            {
                "$set": {
                    "status": EnrollmentStatus.STOPPED.value,
                    "stop_reason": StopReason.ARCHIVED.value,
                    "stopped_at": now,
                    "next_send_at": None,
                }
            },
            session=session,
        )
        await self.due.cancel(keys, session=session)

    async def insert_missing_sequences(self, records: Sequence[SequenceRecord]) -> int:
        async def insert(session: Session) -> tuple[int, list[Event]]:
            result = await self._sequences.bulk_write(
                [
                    UpdateOne(
                        {"_id": record.sequence.sequence_id},
                        {"$setOnInsert": sequence_document(record)},
                        upsert=True,
                    )
                    for record in records
                ],
                ordered=False,
                session=session,
            )
            if result.upserted_count:
                await self._bump_sequences_version(session)
            return result.upserted_count, []

        if not records:
            return 0
        return await self._ledger.commit(insert)

    async def _bump_sequences_version(self, session: Session) -> None:
        await self._versions.update_one(
            {"_id": SEQUENCES_VERSION}, {"$inc": {"version": 1}}, upsert=True, session=session
        )

    async def enrollments_with_contacts(
        self, enrollment_ids: Collection[str]
    ) -> tuple[dict[str, Enrollment], dict[str, LeadContact]]:
        enrollments = {
            doc["_id"]: enrollment_from_document(doc)
            for doc in await find_in(self._enrollments, "_id", enrollment_ids)
        }
        lead_ids = {e.lead_id for e in enrollments.values()}
        contacts = {
            doc["_id"]: contact_from_document(doc)
            for doc in await find_in(self._contacts, "_id", lead_ids)
        }
        return enrollments, contacts

    # --- sends ----------------------------------------------------------------------------

    async def send_records(self, keys: Collection[str]) -> dict[str, SendRecord]:
        # Outcomes only for the records found: the send loop asks for every key it is about
        # to send, and almost none has a record yet.
        documents = await find_in(self._sends, "_id", keys)
        outcomes = await find_in(self._outcomes, "_id", [doc["_id"] for doc in documents])
        return {r.key: r for r in _with_outcomes(documents, outcomes)}

    async def sends_since(
        self, lead_ids: Collection[str], since: datetime
    ) -> dict[str, list[SendRecord]]:
        documents = await find_in(
            self._sends, "lead_id", lead_ids, also={"reserved_at": {"$gte": since}}
        )
        outcomes = await find_in(self._outcomes, "_id", [doc["_id"] for doc in documents])
        found: dict[str, list[SendRecord]] = {}
        for record in _with_outcomes(documents, outcomes):
            found.setdefault(record.lead_id, []).append(record)
        return found

    async def reserve_sends(self, records: Sequence[SendRecord]) -> dict[str, int]:
        if not records:
            return {}
        taken: set[str] = set()
        try:
            await self._sends.insert_many([send_document(r) for r in records], ordered=False)
        except BulkWriteError as error:
            taken = {
                str(f["keyValue"]["_id"])
                for f in error.details.get("writeErrors", [])
                if f.get("code") == _DUPLICATE_KEY
            }
            if len(taken) != len(error.details.get("writeErrors", [])):
                raise
        reserved = {r.key: r.attempts for r in records if r.key not in taken}
        for record in records:
            if record.key not in taken:
                continue
            # Only a record the provider refused for now is taken back, by one replica.
            again = await self._sends.find_one_and_update(
                {"_id": record.key, "status": SendStatus.RETRYABLE.value},
                {
                    "$set": {"status": SendStatus.SENDING.value, "reserved_at": record.reserved_at},
                    "$inc": {"attempts": 1},
                },
                return_document=ReturnDocument.AFTER,
            )
            if again is not None:
                reserved[record.key] = int(again["attempts"])
        return reserved

    async def record_outcomes(self, records: Sequence[SendRecord]) -> None:
        sent = [r for r in records if r.status is SendStatus.SENT]
        refused = [r for r in records if r.status is not SendStatus.SENT]
        if sent:
            try:
                await self._outcomes.insert_many([outcome_document(r) for r in sent], ordered=False)
            except BulkWriteError as error:
                # The same answer written twice (a retried request): it is already there.
                if not _only_duplicate_keys(error):
                    raise
        if refused:
            await self._sends.bulk_write(
                [
                    UpdateOne(
                        {"_id": r.key},
                        {
                            "$set": {
                                "status": r.status.value,
                                "sent_at": r.sent_at,
                                "provider_id": r.provider_id,
                                "error": r.error,
                            }
                        },
                    )
                    for r in refused
                ],
                ordered=False,
            )

    async def take_rate(self, channel: str, second: datetime, wanted: int, limit: int) -> int:
        if wanted <= 0:
            return 0
        window = second.replace(microsecond=0)
        key = {"_id": f"{channel}:{window.isoformat()}"}
        take = {"$inc": {"taken": wanted}}
        # No upsert: SecantusDB lets callers upserting a new document at once each create it,
        # each then seeing only its own increment (docs/LOCAL_INFRA_FINDINGS.md §5), so a
        # window's limit was granted more than once. The window is inserted on its own,
        # where the unique `_id` does hold, and only ever incremented.
        doc = await self._rates.find_one_and_update(key, take, return_document=ReturnDocument.AFTER)
        if doc is None:
            with contextlib.suppress(DuplicateKeyError):  # another caller opened it first
                await self._rates.insert_one(
                    {**key, "taken": 0, "expires_at": window + RATE_WINDOW_KEPT}
                )
            doc = await self._rates.find_one_and_update(
                key, take, return_document=ReturnDocument.AFTER
            )
        if doc is None:
            raise RuntimeError(f"rate window {key['_id']} vanished as it was opened")
        before = int(doc["taken"]) - wanted
        return max(0, min(wanted, limit - before))

    # --- enrollments ----------------------------------------------------------------------

    async def contacts_matching(self, where: ContactFilter) -> list[str]:
        query: dict[str, Any] = {"erased_at": None}
        stages: dict[str, Any] = {}
        if where.stages is not None:
            stages["$in"] = list(where.stages)
        if where.exclude_stages:
            stages["$nin"] = list(where.exclude_stages)
        if stages:
            query["stage"] = stages
        if where.reachable_on is not None:
            address = "email" if where.reachable_on == "email" else "phone"
            query[f"consent.{where.reachable_on}"] = True
            query[f"contact.{address}"] = {"$nin": [None, ""]}
            query["blocked"] = {"$ne": where.reachable_on}
        cursor = self._contacts.find(query, {"_id": 1}).sort("_id").limit(where.limit)
        return [doc["_id"] async for doc in cursor]

    async def latest_enrollment(self, lead_id: str) -> Enrollment | None:
        cursor = self._enrollments.find({"lead_id": lead_id}).sort(NEWEST_FIRST).limit(1)
        async for doc in cursor:
            return enrollment_from_document(doc)
        return None

    async def list_enrollments(self, where: EnrollmentFilter) -> list[Enrollment]:
        query: dict[str, Any] = {}
        if where.status is not None:
            query["status"] = where.status.value
        if where.sequence_id is not None:
            query["sequence_id"] = where.sequence_id
        if where.lead_id is not None:
            query["lead_id"] = where.lead_id
        cursor = self._enrollments.find(query).sort(NEWEST_FIRST).limit(where.limit)
        return [enrollment_from_document(doc) async for doc in cursor]


class _MongoNurtureTransaction:
    def __init__(self, store: MongoNurtureStore, session: Session) -> None:
        self._store = store
        self._session = session
        self._stored_contacts: set[str] = set()

    async def enrollments(self, enrollment_ids: Collection[str]) -> dict[str, Enrollment]:
        documents = await find_in(
            self._store._enrollments, "_id", enrollment_ids, session=self._session
        )
        return {doc["_id"]: enrollment_from_document(doc) for doc in documents}

    async def finish(self, claimed: Sequence[ClaimedWork]) -> None:
        await self._store.due.finish(claimed, session=self._session)

    async def move_on(self, moves: Sequence[StepMove]) -> None:
        store, session = self._store, self._session
        # By `_id` alone: any other field in the filter takes SecantusDB off its `_id`
        # point look-up (measured: twice the time of the bulk replace it replaces). No
        # change since `before` was read is possible here: see the Protocol.
        writes = [
            UpdateOne({"_id": move.before.enrollment_id}, change)
            for move in moves
            if (change := enrollment_change(move.before, move.after))
        ]
        if writes:
            result = await store._enrollments.bulk_write(writes, ordered=False, session=session)
            if result.matched_count != len(writes):
                # Which ones a bulk write does not tell; the caller reads them again.
                raise EnrollmentMovedMeanwhileError([m.before.enrollment_id for m in moves])
        due, done = step_timers([move.after for move in moves])
        await store.due.cancel(done, session=session)
        await store.due.schedule(due, session=session)

    async def take_commit_turn(self) -> None:
        await self._store._turns.update_one(
            {"_id": COMMIT_TURN}, {"$inc": {"turn": 1}}, session=self._session
        )

    async def scores(self, lead_ids: Collection[str]) -> dict[str, LeadScore]:
        documents = await find_in(self._store._scores, "_id", lead_ids, session=self._session)
        return {doc["_id"]: score_from_document(doc) for doc in documents}

    async def save_scores(self, scores: Sequence[LeadScore]) -> None:
        if scores:
            await self._store._scores.bulk_write(
                [ReplaceOne({"_id": s.lead_id}, score_document(s), upsert=True) for s in scores],
                ordered=False,
                session=self._session,
            )

    async def contacts(self, lead_ids: Collection[str]) -> dict[str, LeadContact]:
        documents = await find_in(self._store._contacts, "_id", lead_ids, session=self._session)
        self._stored_contacts.update(doc["_id"] for doc in documents)
        return {doc["_id"]: contact_from_document(doc) for doc in documents}

    async def active_enrollments(
        self, lead_ids: Collection[str]
    ) -> dict[str, tuple[Enrollment, ...]]:
        documents = await find_in(
            self._store._enrollments,
            "lead_id",
            lead_ids,
            session=self._session,
            also={"status": EnrollmentStatus.ACTIVE.value},
        )
        active: dict[str, tuple[Enrollment, ...]] = {}
        for doc in documents:
            active[doc["lead_id"]] = (
                *active.get(doc["lead_id"], ()),
                enrollment_from_document(doc),
            )
        return active

    async def save(self, changes: NurtureChanges) -> None:
        store, session = self._store, self._session
        # Contacts read in this transaction are replaced, new ones inserted (far cheaper
        # than upserts on the local server); a lead whose contact another replica inserts at
        # the same moment fails this batch, which is then handled again.
        known = [c for c in changes.contacts if c.lead_id in self._stored_contacts]
        first = [c for c in changes.contacts if c.lead_id not in self._stored_contacts]
        if first:
            await store._contacts.insert_many(
                [contact_document(lead) for lead in first], session=session
            )
        if known:
            await store._contacts.bulk_write(
                [ReplaceOne({"_id": lead.lead_id}, contact_document(lead)) for lead in known],
                ordered=False,
                session=session,
            )
        # Changed enrollments first: a lead's stopped enrollment makes room for its new one.
        writes: list[ReplaceOne[Document] | InsertOne[Document]] = [
            ReplaceOne({"_id": e.enrollment_id}, enrollment_document(e)) for e in changes.changed
        ]
        writes += [InsertOne(enrollment_document(e)) for e in changes.started]
        if not writes:
            return
        try:
            await store._enrollments.bulk_write(writes, ordered=True, session=session)
        except BulkWriteError as error:
            second = _second_active_enrollment_of(error)
            if second is None:
                raise
            raise AlreadyEnrolledError(*second) from error
        due, done = step_timers((*changes.changed, *changes.started))
        await store.due.cancel(done, session=session)
        await store.due.schedule(due, session=session)


def _only_duplicate_keys(error: BulkWriteError) -> bool:
    failures = error.details.get("writeErrors", [])
    return bool(failures) and all(f.get("code") == _DUPLICATE_KEY for f in failures)


def _second_active_enrollment_of(error: BulkWriteError) -> tuple[str, str | None] | None:
    """The lead (and sequence) a write gave a second active enrollment, if that is what
    failed."""
    for failure in error.details.get("writeErrors", []):
        key = failure.get("keyValue") or {}
        if failure.get("code") == _DUPLICATE_KEY and "lead_id" in key:
            return str(key["lead_id"]), key.get("sequence_id")
    return None


def step_timers(enrollments: Sequence[Enrollment]) -> tuple[list[DueWork], list[str]]:
    """The timers these enrollments need now: their current step at `next_send_at` when
    active (scheduling the same key again only moves it), and the keys to cancel: a stopped
    enrollment's step. (A completed one went past its last step, which has no timer: its
    send finished it.)"""
    due: list[DueWork] = []
    done: list[str] = []
    for e in enrollments:
        key = send_key(e.enrollment_id, e.current_step)
        if e.status is EnrollmentStatus.ACTIVE and e.next_send_at is not None:
            payload = {"enrollment_id": e.enrollment_id, "step": e.current_step}
            due.append(DueWork(key, SEND_KIND, e.next_send_at, payload))
        elif e.status is not EnrollmentStatus.COMPLETED:
            done.append(key)
    return due, done


RATE_WINDOW_KEPT = timedelta(minutes=1)


# --- documents ----------------------------------------------------------------------------


def _shallow(record: Enrollment | SendRecord) -> Document:
    """`asdict` without its deep copies (every value here is immutable): the send loop
    writes hundreds of these per batch."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _without_none(doc: Document) -> Document:
    return {name: value for name, value in doc.items() if value is not None}


def send_document(record: SendRecord) -> Document:
    doc = _without_none(_shallow(record))
    doc["_id"] = doc.pop("key")
    return doc


def outcome_document(record: SendRecord) -> Document:
    """A message that went: the provider's answer, final (`send_outcomes`)."""
    return {
        "_id": record.key,
        "status": record.status.value,
        "sent_at": record.sent_at,
        "provider_id": record.provider_id,
    }


def _with_outcomes(documents: list[Document], outcomes: list[Document]) -> list[SendRecord]:
    """Send records with the outcome stored for each (if any) laid over them."""
    by_key = {doc["_id"]: doc for doc in outcomes}
    return [
        send_from_document({**doc, **by_key[doc["_id"]]} if doc["_id"] in by_key else doc)
        for doc in documents
    ]


def send_from_document(doc: Document) -> SendRecord:
    return SendRecord(
        key=doc["_id"],
        lead_id=doc["lead_id"],
        enrollment_id=doc["enrollment_id"],
        sequence_id=doc["sequence_id"],
        step=doc["step"],
        channel=doc["channel"],
        status=SendStatus(doc["status"]),
        reserved_at=doc["reserved_at"],
        attempts=doc.get("attempts", 1),
        sent_at=doc.get("sent_at"),
        provider_id=doc.get("provider_id"),
        error=doc.get("error"),
    )


def score_document(score: LeadScore) -> Document:
    return {
        "_id": score.lead_id,
        "score": score.score,
        "as_of": score.as_of,
        "temperature": score.temperature,
    }


def score_from_document(doc: Document) -> LeadScore:
    return LeadScore(doc["_id"], doc["score"], doc["as_of"], doc["temperature"])


def contact_document(lead: LeadContact) -> Document:
    return {
        "_id": lead.lead_id,
        "contact": None if lead.contact is None else lead.contact.model_dump(),
        "contact_as_of": lead.contact_as_of,
        "consent": None if lead.consent is None else lead.consent.model_dump(),
        "consent_as_of": lead.consent_as_of,
        "erased_at": lead.erased_at,
        "blocked": list(lead.blocked),
        "opted_as_of": dict(lead.opted_as_of),
        "stage": lead.stage,
        "stage_as_of": lead.stage_as_of,
    }


def contact_from_document(doc: Document) -> LeadContact:
    contact, consent = doc.get("contact"), doc.get("consent")
    return LeadContact(
        lead_id=doc["_id"],
        contact=None if contact is None else Contact.model_validate(contact),
        contact_as_of=doc.get("contact_as_of"),
        consent=None if consent is None else Consent.model_validate(consent),
        consent_as_of=doc.get("consent_as_of"),
        erased_at=doc.get("erased_at"),
        blocked=tuple(doc.get("blocked", ())),
        opted_as_of=tuple(sorted((doc.get("opted_as_of") or {}).items())),
        stage=doc.get("stage"),
        stage_as_of=doc.get("stage_as_of"),
    )


def _sequence_fields(sequence: NurtureSequence) -> Document:
    fields = asdict(sequence)
    del fields["sequence_id"]  # it is the document's _id
    return fields


def sequence_document(record: SequenceRecord) -> Document:
    return {
        "_id": record.sequence.sequence_id,
        **_sequence_fields(record.sequence),
        "version": record.version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "status": record.status.value,
        "history": {str(v): _sequence_fields(s) for v, s in record.history.items()},
    }


def _window(doc: Document | None) -> SendWindow | None:
    return None if doc is None else SendWindow(**doc)


def _weekdays(values: list[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(values)


def step_from_document(doc: Document) -> Step:
    return Step(
        channel=doc["channel"],
        delay_hours=doc["delay_hours"],
        body=doc["body"],
        subject=doc.get("subject"),
        html=doc.get("html"),
        after=StepAnchor(doc.get("after", StepAnchor.PREVIOUS.value)),
        skip_if=tuple(SkipCondition(c) for c in doc.get("skip_if", ())),
        send_window=_window(doc.get("send_window")),
        weekdays=_weekdays(doc.get("weekdays")),
    )


def _sequence_content(sequence_id: str, doc: Document) -> NurtureSequence:
    return NurtureSequence(
        sequence_id=sequence_id,
        name=doc["name"],
        steps=tuple(step_from_document(s) for s in doc["steps"]),
        send_window=_window(doc.get("send_window")),
        weekdays=_weekdays(doc.get("weekdays")),
    )


def sequence_from_document(doc: Document) -> SequenceRecord:
    sequence_id = doc["_id"]
    return SequenceRecord(
        _sequence_content(sequence_id, doc),
        doc["version"],
        doc["created_at"],
        doc["updated_at"],
        status=SequenceStatus(doc.get("status", SequenceStatus.ACTIVE.value)),
        history={
            int(version): _sequence_content(sequence_id, content)
            for version, content in (doc.get("history") or {}).items()
        },
    )


def enrollment_document(enrollment: Enrollment) -> Document:
    doc = _without_none(_shallow(enrollment))
    doc["_id"] = doc.pop("enrollment_id")
    doc["channels"] = list(enrollment.channels)
    if enrollment.engaged:
        doc["engaged"] = list(enrollment.engaged)
    else:
        del doc["engaged"]
    return doc


def enrollment_change(before: Enrollment, after: Enrollment) -> Document:
    """The update that turns `before`'s document into `after`'s: `$set` of the fields
    that differ, `$unset` of those that became None (or empty); {} when none did."""
    old, new = enrollment_document(before), enrollment_document(after)
    changed = {name: value for name, value in new.items() if old.get(name) != value}
    gone = {name: "" for name in old if name not in new}
    change: Document = {}
    if changed:
        change["$set"] = changed
    if gone:
        change["$unset"] = gone
    return change


def enrollment_from_document(doc: Document) -> Enrollment:
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
        engaged=tuple(doc.get("engaged", ())),
    )
