"""What the channel webhooks change, in nurture's database (the Mongo driver only here).

- `channel_opt_outs`: one document per lead and channel (`_id` "lead:<lead>:<channel>"),
  per phone number for SMS (`_id` "phone:<E.164>") and per hard-bounced email address
  (`_id` "email:<address, lower case>"), with the reason and time of the change.
- `channel_message_statuses`: the latest delivery status of each message we sent (`_id`
  our message id), never moved backwards.
- `channel_engagements`: opens, clicks and replies, `_id` the engagement's de-duplication
  key; read by lead (index `lead_at`).
- `channel_sms_recipients`: which lead was last texted at each number (`_id` the number),
  so an inbound text is attributed.

Every change commits with the events it implies (outbox) through the chassis ledger, in
one transaction; only the send loop's recipients are written outside one (they imply no
event, and each number keeps its newest whatever the order of the writes). The send loop
reads opt-outs, statuses and engagements for many leads at once (`find_in`, chunked).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from pymongo import ASCENDING, InsertOne, ReplaceOne
from pymongo.errors import BulkWriteError

from leadflow.chassis.store import Collection as MongoCollection
from leadflow.chassis.store import (
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    Session,
    find_in,
)
from services.nurture.channels.bounces import email_key, normalize_address
from services.nurture.channels.rules import (
    Engagement,
    MessageStatusRecord,
    OptOut,
    SmsRecipient,
    lead_opt_out_key,
    phone_key,
)
from shared.events import Channel, Event

T = TypeVar("T")

CHANNELS: tuple[Channel, ...] = ("email", "sms")
_COMMIT_ATTEMPTS = 3
_DUPLICATE_KEY = 11000


class ChannelTransaction(Protocol):
    """What a channel use case reads and writes inside one transaction."""

    async def opt_outs(self, keys: Collection[str]) -> dict[str, OptOut]:
        """Stored opt-out states by key (`lead_opt_out_key`, `phone_key`)."""
        ...

    async def save_opt_outs(self, states: Sequence[OptOut]) -> None: ...

    async def statuses(self, message_ids: Collection[str]) -> dict[str, MessageStatusRecord]: ...

    async def save_statuses(self, records: Sequence[MessageStatusRecord]) -> None: ...

    async def known_engagements(self, keys: Collection[str]) -> set[str]:
        """Which of these engagement keys are stored already."""
        ...

    async def add_engagements(self, engagements: Sequence[Engagement]) -> None:
        """Insert engagements whose keys are not stored (check with known_engagements)."""
        ...

    async def recipients(self, phones: Collection[str]) -> dict[str, SmsRecipient]: ...

    async def save_recipients(self, recipients: Sequence[SmsRecipient]) -> None: ...


Work = Callable[[ChannelTransaction], Awaitable[tuple[T, Sequence[Event]]]]


class ChannelStore(Protocol):
    async def ensure_indexes(self) -> None: ...

    async def commit(self, work: Work[T]) -> T:
        """Run `work` in one transaction; the events it returns go to the outbox. A race
        with another replica writing the same new document runs `work` again."""
        ...

    # --- batch reads for the send loop ------------------------------------------------

    async def opted_out_channels(self, lead_ids: Collection[str]) -> dict[str, frozenset[Channel]]:
        """The channels each lead opted out of (leads with none are left out)."""
        ...

    async def remember_recipients(self, recipients: Sequence[SmsRecipient]) -> None:
        """Store who was texted at each number, outside any transaction: a number keeps its
        newest recipient (by `at`) whatever the order the writes of several replicas land
        in. One number at most once in `recipients`."""
        ...

    async def opted_out_of(
        self, wanted: Collection[tuple[str, Channel]]
    ) -> set[tuple[str, Channel]]:
        """Which of these (lead, channel) pairs the lead opted out of: the send loop asks
        only about the channel each lead is about to get (half the keys of
        `opted_out_channels`)."""
        ...

    async def opted_out_phones(self, phones: Collection[str]) -> set[str]:
        """Which of these numbers opted out of SMS (STOP, or the carrier said so)."""
        ...

    async def suppressed_emails(self, addresses: Collection[str]) -> set[str]:
        """Which of these addresses (as given) hard-bounced, compared case-insensitively."""
        ...

    async def engagements(
        self, lead_ids: Collection[str], since: datetime | None = None
    ) -> list[Engagement]:
        """These leads' engagements (at or after `since`), oldest first."""
        ...

    async def message_statuses(
        self, message_ids: Collection[str]
    ) -> dict[str, MessageStatusRecord]: ...


class MongoChannelStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._opt_outs: MongoCollection = database["channel_opt_outs"]
        self._statuses: MongoCollection = database["channel_message_statuses"]
        self._engagements: MongoCollection = database["channel_engagements"]
        self._recipients: MongoCollection = database["channel_sms_recipients"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        await self._engagements.create_index(
            [("lead_id", ASCENDING), ("at", ASCENDING)], name="lead_at"
        )

    async def commit(self, work: Work[T]) -> T:
        async def in_transaction(session: Session) -> tuple[T, Sequence[Event]]:
            return await work(_MongoChannelTransaction(self, session))

        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                return await self._ledger.commit(in_transaction)
            except (DuplicateKeyError, BulkWriteError) as error:
                # Another request inserted the same new document first (two callbacks for
                # one message, a webhook delivered twice at once): run again, now seeing it.
                if attempt == _COMMIT_ATTEMPTS or not _only_duplicates(error):
                    raise
        raise AssertionError("unreachable")

    async def opted_out_channels(self, lead_ids: Collection[str]) -> dict[str, frozenset[Channel]]:
        keys = [lead_opt_out_key(lead_id, channel) for lead_id in lead_ids for channel in CHANNELS]
        found: dict[str, set[Channel]] = {}
        for doc in await find_in(self._opt_outs, "_id", keys, also={"opted_out": True}):
            found.setdefault(doc["lead_id"], set()).add(doc["channel"])
        return {lead_id: frozenset(channels) for lead_id, channels in found.items()}

    async def opted_out_of(
        self, wanted: Collection[tuple[str, Channel]]
    ) -> set[tuple[str, Channel]]:
        keys = [lead_opt_out_key(lead_id, channel) for lead_id, channel in wanted]
        docs = await find_in(
            self._opt_outs,
            "_id",
            keys,
            also={"opted_out": True},
            projection={"lead_id": 1, "channel": 1},
        )
        return {(doc["lead_id"], doc["channel"]) for doc in docs}

    async def remember_recipients(self, recipients: Sequence[SmsRecipient]) -> None:
        # New numbers are inserted (an upsert costs the local server several inserts'
        # worth); a number stored already is replaced only by a newer recipient, each
        # replace atomic on its document.
        if not recipients:
            return
        stored: set[str] = set()
        try:
            await self._recipients.insert_many(
                [recipient_document(r) for r in recipients], ordered=False
            )
        except BulkWriteError as error:
            if not _only_duplicates(error):
                raise
            stored = {str(f["keyValue"]["_id"]) for f in error.details["writeErrors"]}
        newer = [
            ReplaceOne({"_id": r.phone, "at": {"$lte": r.at}}, recipient_document(r))
            for r in recipients
            if r.phone in stored
        ]
        if newer:
            await self._recipients.bulk_write(newer, ordered=False)

    async def opted_out_phones(self, phones: Collection[str]) -> set[str]:
        keys = [phone_key(phone) for phone in phones]
        docs = await find_in(self._opt_outs, "_id", keys, also={"opted_out": True})
        return {doc["phone"] for doc in docs}

    async def suppressed_emails(self, addresses: Collection[str]) -> set[str]:
        by_key: dict[str, list[str]] = {}
        for address in addresses:
            by_key.setdefault(email_key(address), []).append(address)
        docs = await find_in(
            self._opt_outs, "_id", list(by_key), also={"opted_out": True}, projection={"_id": 1}
        )
        return {address for doc in docs for address in by_key[doc["_id"]]}

    async def engagements(
        self, lead_ids: Collection[str], since: datetime | None = None
    ) -> list[Engagement]:
        also = None if since is None else {"at": {"$gte": since}}
        docs = await find_in(self._engagements, "lead_id", lead_ids, also=also)
        return sorted((engagement_from_document(d) for d in docs), key=lambda e: (e.at, e.key))

    async def message_statuses(
        self, message_ids: Collection[str]
    ) -> dict[str, MessageStatusRecord]:
        docs = await find_in(self._statuses, "_id", message_ids)
        return {doc["_id"]: status_from_document(doc) for doc in docs}


def _only_duplicates(error: DuplicateKeyError | BulkWriteError) -> bool:
    if isinstance(error, DuplicateKeyError):
        return True
    failures = error.details.get("writeErrors", [])
    return bool(failures) and all(f.get("code") == _DUPLICATE_KEY for f in failures)


class _MongoChannelTransaction:
    def __init__(self, store: MongoChannelStore, session: Session) -> None:
        self._store = store
        self._session = session
        self._stored_phones: set[str] = set()
        """Numbers whose recipient document this transaction read: replaced, not upserted."""

    async def opt_outs(self, keys: Collection[str]) -> dict[str, OptOut]:
        docs = await find_in(self._store._opt_outs, "_id", keys, session=self._session)
        return {doc["_id"]: opt_out_from_document(doc) for doc in docs}

    async def save_opt_outs(self, states: Sequence[OptOut]) -> None:
        if states:
            await self._store._opt_outs.bulk_write(
                [ReplaceOne({"_id": s.key}, opt_out_document(s), upsert=True) for s in states],
                ordered=False,
                session=self._session,
            )

    async def statuses(self, message_ids: Collection[str]) -> dict[str, MessageStatusRecord]:
        docs = await find_in(self._store._statuses, "_id", message_ids, session=self._session)
        return {doc["_id"]: status_from_document(doc) for doc in docs}

    async def save_statuses(self, records: Sequence[MessageStatusRecord]) -> None:
        if records:
            await self._store._statuses.bulk_write(
                [
                    ReplaceOne({"_id": r.message_id}, status_document(r), upsert=True)
                    for r in records
                ],
                ordered=False,
                session=self._session,
            )

    async def known_engagements(self, keys: Collection[str]) -> set[str]:
        docs = await find_in(
            self._store._engagements, "_id", keys, session=self._session, projection={"_id": 1}
        )
        return {doc["_id"] for doc in docs}

    async def add_engagements(self, engagements: Sequence[Engagement]) -> None:
        if engagements:
            await self._store._engagements.bulk_write(
                [InsertOne(engagement_document(e)) for e in engagements],
                ordered=False,
                session=self._session,
            )

    async def recipients(self, phones: Collection[str]) -> dict[str, SmsRecipient]:
        docs = await find_in(self._store._recipients, "_id", phones, session=self._session)
        self._stored_phones.update(doc["_id"] for doc in docs)
        return {doc["_id"]: recipient_from_document(doc) for doc in docs}

    async def save_recipients(self, recipients: Sequence[SmsRecipient]) -> None:
        # Numbers read in this transaction are replaced, new ones inserted (an upsert costs
        # the local server several inserts' worth); a number another replica inserts at
        # the same moment fails this transaction (DuplicateKey), and its caller tries again.
        known = [r for r in recipients if r.phone in self._stored_phones]
        first = [r for r in recipients if r.phone not in self._stored_phones]
        if first:
            await self._store._recipients.insert_many(
                [recipient_document(r) for r in first], ordered=False, session=self._session
            )
        if known:
            await self._store._recipients.bulk_write(
                [ReplaceOne({"_id": r.phone}, recipient_document(r), upsert=True) for r in known],
                ordered=False,
                session=self._session,
            )


# --- documents ------------------------------------------------------------------------------


def opt_out_document(state: OptOut) -> Document:
    return {
        "_id": state.key,
        "channel": state.channel,
        "opted_out": state.opted_out,
        "reason": state.reason,
        "changed_at": state.changed_at,
        "lead_id": state.lead_id,
        "phone": state.phone,
        "email": None if state.email is None else normalize_address(state.email),
    }


def opt_out_from_document(doc: Document) -> OptOut:
    return OptOut(
        channel=cast(Channel, doc["channel"]),
        opted_out=bool(doc["opted_out"]),
        reason=doc["reason"],
        changed_at=doc["changed_at"],
        lead_id=doc.get("lead_id"),
        phone=doc.get("phone"),
        email=doc.get("email"),
    )


def status_document(record: MessageStatusRecord) -> Document:
    fields: dict[str, Any] = {
        "lead_id": record.lead_id,
        "channel": record.channel,
        "status": record.status,
        "rank": record.rank,
        "updated_at": record.updated_at,
        "provider_id": record.provider_id,
        "error_code": record.error_code,
        "sequence_id": record.sequence_id,
        "step": record.step,
    }
    return {"_id": record.message_id, **fields}


def status_from_document(doc: Document) -> MessageStatusRecord:
    return MessageStatusRecord(
        message_id=doc["_id"],
        lead_id=doc["lead_id"],
        channel=doc["channel"],
        status=doc["status"],
        rank=int(doc["rank"]),
        updated_at=doc["updated_at"],
        provider_id=doc.get("provider_id"),
        error_code=doc.get("error_code"),
        sequence_id=doc.get("sequence_id"),
        step=doc.get("step"),
    )


def engagement_document(engagement: Engagement) -> Document:
    return {
        "_id": engagement.key,
        "lead_id": engagement.lead_id,
        "kind": engagement.kind,
        "at": engagement.at,
        "message_id": engagement.message_id,
        "channel": engagement.channel,
        "sequence_id": engagement.sequence_id,
        "step": engagement.step,
        "url": engagement.url,
    }


def engagement_from_document(doc: Document) -> Engagement:
    return Engagement(
        key=doc["_id"],
        lead_id=doc["lead_id"],
        kind=doc["kind"],
        at=doc["at"],
        message_id=doc.get("message_id"),
        channel=doc.get("channel"),
        sequence_id=doc.get("sequence_id"),
        step=doc.get("step"),
        url=doc.get("url"),
    )


def recipient_from_document(doc: Document) -> SmsRecipient:
    return SmsRecipient(
        phone=doc["_id"], lead_id=doc["lead_id"], at=doc["at"], message_id=doc.get("message_id")
    )


def recipient_document(recipient: SmsRecipient) -> Document:
    return {
        "_id": recipient.phone,
        "lead_id": recipient.lead_id,
        "at": recipient.at,
        "message_id": recipient.message_id,
    }
