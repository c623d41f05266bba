"""Assignment's persistence, in the `leadflow_assignment` database. Decisions live in
`rules`, the steps of each flow in `usecases`, document shapes in `documents`.

- `reps`, `pools`, `territory_rules`, `settings`: the routing configuration. Every change to
  it also increments the `configuration` counter in the same transaction, which is how
  replicas know to reload it.
- `leads`: one document per lead (its activities, visits and history embedded); a lead whose
  lead-received event has not been read yet (an `AwaitedLead`) is a document without `status`.
- `last_assignments`: per rep, their routing state (turn, open leads, today's count).
- `counters`: `turn` (the service-wide turn numbers, taken once per routed batch) and
  `configuration` (the version of the configuration).
- `due_work`: timers (the chassis' due work), written in the transaction that needs them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from pymongo import ASCENDING, DESCENDING, InsertOne, ReplaceOne, ReturnDocument

from leadflow.chassis.duework import ClaimedWork, DueWork
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
from services.assignment.documents import (
    known_lead_document,
    known_lead_from_document,
    lead_from_document,
    load_document,
    load_from_document,
    pool_document,
    pool_from_document,
    rep_document,
    rep_from_document,
    rule_document,
    rule_from_document,
    settings_document,
    settings_from_document,
)
from services.assignment.rules import (
    OPEN_STATUSES,
    AlreadyExistsError,
    KnownLead,
    LastAssignment,
    Lead,
    LeadStatus,
    Pool,
    Rep,
    RoutingConfig,
    RoutingSettings,
    TerritoryRule,
    Timer,
    ranked_rules,
)
from shared.events import Event

T = TypeVar("T")

_TURN = "turn"
_CONFIGURATION = "configuration"
_SETTINGS = "routing"


@dataclass(frozen=True, slots=True)
class LeadQuery:
    status: LeadStatus | None = None
    rep_id: str | None = None
    pool_id: str | None = None
    limit: int = 50
    rep_ids: tuple[str, ...] | None = None
    """Only leads held by one of these reps (a team queue)."""
    grade: str | None = None
    overdue_at: datetime | None = None
    """Only open leads whose next follow-up was due before this."""
    not_converted: bool = False
    queued: bool = False
    """Only leads waiting in a pool's queue."""
    open_only: bool = False


def timer_work(timer: Timer) -> DueWork:
    return DueWork(timer.key, timer.kind, timer.due_at, dict(timer.payload))


class LeadsInTransaction(Protocol):
    """What a use case may read and write about leads inside one transaction."""

    async def leads(self, lead_ids: Collection[str]) -> dict[str, KnownLead]: ...
    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]: ...
    async def take_turns(self, count: int) -> int:
        """Reserve `count` new turn numbers; returns the first. Every routing transaction
        takes turns, so two replicas routing at once conflict here and run one after the
        other: neither deals on last assignments the other is changing."""
        ...

    async def save(
        self, leads: Sequence[KnownLead], last_assignments: Sequence[LastAssignment]
    ) -> None:
        """Store leads and reps' routing state. A lead that `leads` did not find in this
        transaction is stored as new: read a lead before saving a change to it."""
        ...

    async def queued(self, pool_id: str, limit: int) -> list[Lead]:
        """Leads waiting in the pool's queue, longest waiting first (and read: saveable)."""
        ...

    async def open_leads_of(self, rep_id: str) -> list[Lead]:
        """Every open lead the rep holds (and read: saveable)."""
        ...

    async def claimed_open(self, rep_id: str, pool_id: str) -> int:
        """How many open leads the rep holds from claims in the pool."""
        ...

    async def schedule(self, timers: Sequence[Timer]) -> None: ...
    async def cancel(self, keys: Collection[str]) -> None: ...
    async def finish(self, claimed: Sequence[ClaimedWork]) -> None:
        """Complete fired timers in this transaction (raises `LeaseLost` if another
        replica took them over: the transaction then aborts)."""
        ...


class ConfigurationInTransaction(Protocol):
    """What a use case may read and write about the configuration inside one transaction."""

    async def rep(self, rep_id: str) -> Rep | None: ...
    async def known_rep_ids(self, rep_ids: Collection[str]) -> set[str]: ...
    async def pool(self, pool_id: str) -> Pool | None: ...
    async def add_rep(self, rep: Rep, now: datetime) -> None:
        """Raises `AlreadyExistsError` when the rep id is taken."""
        ...

    async def save_rep(self, rep: Rep, now: datetime) -> None: ...
    async def add_pool(self, pool: Pool, now: datetime) -> None:
        """Raises `AlreadyExistsError` when the pool id is taken."""
        ...

    async def save_pool(self, pool: Pool, now: datetime) -> None: ...
    async def demote_default_pools(self, keeping: str) -> None:
        """No pool but `keeping` is the default any more."""
        ...

    async def rule(self, rule_id: str) -> TerritoryRule | None: ...
    async def add_rule(self, rule: TerritoryRule, now: datetime) -> None:
        """Raises `AlreadyExistsError` when the rule id is taken."""
        ...

    async def save_rule(self, rule: TerritoryRule, now: datetime) -> None: ...
    async def delete_rule(self, rule_id: str) -> bool: ...
    async def save_settings(self, settings: RoutingSettings, now: datetime) -> None: ...
    async def schedule(self, timers: Sequence[Timer]) -> None: ...


BatchWork = Callable[[LeadsInTransaction, list[Event]], Awaitable[tuple[T, Sequence[Event]]]]
LeadWork = Callable[[LeadsInTransaction], Awaitable[tuple[T, Sequence[Event]]]]
ConfigurationWork = Callable[[ConfigurationInTransaction], Awaitable[T]]


class AssignmentStore(Protocol):
    @property
    def due_work(self) -> object:
        """The due-work store timers live in (a `DueWorkStore`)."""
        ...

    async def ensure_indexes(self) -> None: ...

    async def handle_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        """Run `work` on the events of `consumed` not handled before, in one transaction
        that also remembers them and stores the events `work` returns for publishing.
        None (nothing written) when every one was handled before."""
        ...

    async def change_leads(self, work: LeadWork[T]) -> T:
        """Run `work` in one transaction, storing the events it returns for publishing."""
        ...

    async def change_configuration(self, work: ConfigurationWork[T]) -> T:
        """Run `work` in one transaction that also moves the configuration's version."""
        ...

    async def configuration_version(self) -> int: ...
    async def load_configuration(self) -> RoutingConfig: ...

    async def list_reps(self) -> list[Rep]: ...
    async def get_rep(self, rep_id: str) -> Rep | None: ...
    async def list_pools(self) -> list[Pool]: ...
    async def get_pool(self, pool_id: str) -> Pool | None: ...
    async def list_rules(self) -> list[TerritoryRule]: ...
    async def get_settings(self) -> RoutingSettings: ...
    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]: ...
    async def list_leads(self, query: LeadQuery) -> list[Lead]: ...
    async def get_lead(self, lead_id: str) -> Lead | None:
        """The lead, or None when it is unknown or not received yet."""
        ...


class MongoAssignmentStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._reps: MongoCollection = database["reps"]
        self._pools: MongoCollection = database["pools"]
        self._rules: MongoCollection = database["territory_rules"]
        self._settings: MongoCollection = database["settings"]
        self._leads: MongoCollection = database["leads"]
        self._last_assignments: MongoCollection = database["last_assignments"]
        self._counters: MongoCollection = database["counters"]
        self._due = MongoDueWork(database)
        self._ledger = ledger

    @property
    def due_work(self) -> MongoDueWork:
        return self._due

    async def ensure_indexes(self) -> None:
        for field in ("rep_id", "pool_id", "status"):
            await self._leads.create_index([(field, ASCENDING), ("received_at", DESCENDING)])
        await self._leads.create_index([("received_at", DESCENDING)])
        await self._leads.create_index([("pool_id", ASCENDING), ("queued_at", ASCENDING)])
        await self._due.ensure_indexes()

    # --- transactions -----------------------------------------------------------------

    async def handle_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        async def in_transaction(session: Session, fresh: list[Event]) -> tuple[T, Sequence[Event]]:
            return await work(_MongoLeads(self, session), fresh)

        return await self._ledger.commit_batch(consumed, in_transaction)

    async def change_leads(self, work: LeadWork[T]) -> T:
        async def in_transaction(session: Session) -> tuple[T, Sequence[Event]]:
            return await work(_MongoLeads(self, session))

        return await self._ledger.commit(in_transaction)

    async def change_configuration(self, work: ConfigurationWork[T]) -> T:
        async def in_transaction(session: Session) -> tuple[T, Sequence[Event]]:
            result = await work(_MongoConfiguration(self, session))
            await self._counters.update_one(
                {"_id": _CONFIGURATION}, {"$inc": {"value": 1}}, upsert=True, session=session
            )
            return result, []

        return await self._ledger.commit(in_transaction)

    # --- configuration ----------------------------------------------------------------

    async def configuration_version(self) -> int:
        doc = await self._counters.find_one({"_id": _CONFIGURATION})
        return 0 if doc is None else int(doc["value"])

    async def load_configuration(self) -> RoutingConfig:
        reps = {rep.rep_id: rep for rep in await self.list_reps()}
        return RoutingConfig(
            reps=reps,
            pools=tuple(await self.list_pools()),
            rules=tuple(await self.list_rules()),
            settings=await self.get_settings(),
        )

    async def list_reps(self) -> list[Rep]:
        cursor = self._reps.find({}).sort([("created_at", ASCENDING), ("_id", ASCENDING)])
        return [rep_from_document(doc) async for doc in cursor]

    async def get_rep(self, rep_id: str) -> Rep | None:
        doc = await self._reps.find_one({"_id": rep_id})
        return None if doc is None else rep_from_document(doc)

    async def list_pools(self) -> list[Pool]:
        cursor = self._pools.find({}).sort([("priority", DESCENDING), ("_id", ASCENDING)])
        return [pool_from_document(doc) async for doc in cursor]

    async def get_pool(self, pool_id: str) -> Pool | None:
        doc = await self._pools.find_one({"_id": pool_id})
        return None if doc is None else pool_from_document(doc)

    async def list_rules(self) -> list[TerritoryRule]:
        return ranked_rules([rule_from_document(doc) async for doc in self._rules.find({})])

    async def get_settings(self) -> RoutingSettings:
        return settings_from_document(await self._settings.find_one({"_id": _SETTINGS}))

    # --- leads ------------------------------------------------------------------------

    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]:
        return await _MongoLeads(self, None).last_assignments(rep_ids)

    async def list_leads(self, query: LeadQuery) -> list[Lead]:
        criteria: Document = {"status": {"$exists": True}}
        if query.status is not None:
            criteria["status"] = query.status.value
        elif query.open_only or query.overdue_at is not None:
            criteria["status"] = {"$in": sorted(s.value for s in OPEN_STATUSES)}
        elif query.not_converted:
            criteria["status"] = {"$exists": True, "$ne": LeadStatus.CONVERTED.value}
        if query.rep_id is not None:
            criteria["rep_id"] = query.rep_id
        elif query.rep_ids is not None:
            criteria["rep_id"] = {"$in": list(query.rep_ids)}
        if query.pool_id is not None:
            criteria["pool_id"] = query.pool_id
        if query.grade is not None:
            criteria["grade"] = query.grade
        if query.overdue_at is not None:
            criteria["next_follow_up_at"] = {"$lt": query.overdue_at}
        if query.queued:
            criteria["queued_at"] = {"$ne": None}
        cursor = (
            self._leads.find(criteria)
            .sort([("received_at", DESCENDING), ("_id", ASCENDING)])
            .limit(query.limit)
        )
        return [lead_from_document(doc) async for doc in cursor]

    async def get_lead(self, lead_id: str) -> Lead | None:
        doc = await self._leads.find_one({"_id": lead_id, "status": {"$exists": True}})
        return None if doc is None else lead_from_document(doc)


class _MongoLeads:
    def __init__(self, store: MongoAssignmentStore, session: Session | None) -> None:
        self._store = store
        self._session = session
        self._stored: set[str] = set()
        """Leads read in this transaction and found: saved by replacing, the rest inserted."""

    async def leads(self, lead_ids: Collection[str]) -> dict[str, KnownLead]:
        if not lead_ids:
            return {}
        documents = await find_in(self._store._leads, "_id", lead_ids, session=self._session)
        found = {doc["_id"]: known_lead_from_document(doc) for doc in documents}
        self._stored.update(found)
        return found

    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]:
        if not rep_ids:
            return {}
        documents = await find_in(
            self._store._last_assignments, "_id", rep_ids, session=self._session
        )
        return {doc["_id"]: load_from_document(doc) for doc in documents}

    async def take_turns(self, count: int) -> int:
        counter = await self._store._counters.find_one_and_update(
            {"_id": _TURN},
            {"$inc": {"value": count}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=self._session,
        )
        return int(counter["value"]) - count + 1 if counter else 1

    async def save(
        self, leads: Sequence[KnownLead], last_assignments: Sequence[LastAssignment]
    ) -> None:
        if leads:
            # Inserting is several times cheaper than upserting. A lead this transaction
            # did not find is new; should another transaction store it meanwhile, the two
            # conflict and one of them runs again.
            await self._store._leads.bulk_write(
                [
                    ReplaceOne({"_id": lead.lead_id}, known_lead_document(lead))
                    if lead.lead_id in self._stored
                    else InsertOne({"_id": lead.lead_id, **known_lead_document(lead)})
                    for lead in leads
                ],
                ordered=False,
                session=self._session,
            )
            self._stored.update(lead.lead_id for lead in leads)
        if last_assignments:
            await self._store._last_assignments.bulk_write(
                [
                    ReplaceOne({"_id": last.rep_id}, load_document(last), upsert=True)
                    for last in last_assignments
                ],
                ordered=False,
                session=self._session,
            )

    async def _read(self, criteria: Document, limit: int, sort: str) -> list[Lead]:
        cursor = (
            self._store._leads.find(criteria, session=self._session)
            .sort([(sort, ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        found = [lead_from_document(doc) async for doc in cursor]
        self._stored.update(lead.lead_id for lead in found)
        return found

    async def queued(self, pool_id: str, limit: int) -> list[Lead]:
        return await self._read(
            {"pool_id": pool_id, "queued_at": {"$ne": None}, "status": LeadStatus.NEW.value},
            limit,
            "queued_at",
        )

    async def open_leads_of(self, rep_id: str) -> list[Lead]:
        return await self._read(
            {"rep_id": rep_id, "status": {"$in": sorted(s.value for s in OPEN_STATUSES)}},
            10_000,
            "received_at",
        )

    async def claimed_open(self, rep_id: str, pool_id: str) -> int:
        return await self._store._leads.count_documents(
            {
                "rep_id": rep_id,
                "pool_id": pool_id,
                "status": {"$in": sorted(s.value for s in OPEN_STATUSES)},
                "why.strategy": "claimed",
            },
            session=self._session,
        )

    async def schedule(self, timers: Sequence[Timer]) -> None:
        await self._store._due.schedule([timer_work(t) for t in timers], session=self._session)

    async def cancel(self, keys: Collection[str]) -> None:
        if keys:
            await self._store._due.cancel(keys, session=self._session)

    async def finish(self, claimed: Sequence[ClaimedWork]) -> None:
        await self._store._due.finish(claimed, session=self._session)


class _MongoConfiguration:
    def __init__(self, store: MongoAssignmentStore, session: Session) -> None:
        self._store = store
        self._session = session

    async def rep(self, rep_id: str) -> Rep | None:
        doc = await self._store._reps.find_one({"_id": rep_id}, session=self._session)
        return None if doc is None else rep_from_document(doc)

    async def known_rep_ids(self, rep_ids: Collection[str]) -> set[str]:
        if not rep_ids:
            return set()
        documents = await find_in(
            self._store._reps, "_id", rep_ids, session=self._session, projection={"_id": 1}
        )
        return {doc["_id"] for doc in documents}

    async def pool(self, pool_id: str) -> Pool | None:
        doc = await self._store._pools.find_one({"_id": pool_id}, session=self._session)
        return None if doc is None else pool_from_document(doc)

    async def add_rep(self, rep: Rep, now: datetime) -> None:
        document = {"_id": rep.rep_id, **rep_document(rep), "created_at": now, "updated_at": now}
        try:
            await self._store._reps.insert_one(document, session=self._session)
        except DuplicateKeyError as error:
            raise AlreadyExistsError("rep", rep.rep_id) from error

    async def save_rep(self, rep: Rep, now: datetime) -> None:
        await self._store._reps.update_one(
            {"_id": rep.rep_id},
            {"$set": {**rep_document(rep), "updated_at": now}},
            session=self._session,
        )

    async def add_pool(self, pool: Pool, now: datetime) -> None:
        document = {
            "_id": pool.pool_id,
            **pool_document(pool),
            "created_at": now,
            "updated_at": now,
        }
        try:
            await self._store._pools.insert_one(document, session=self._session)
        except DuplicateKeyError as error:
            raise AlreadyExistsError("pool", pool.pool_id) from error

    async def save_pool(self, pool: Pool, now: datetime) -> None:
        # $unset: pools stored before per-rep round robin kept a `rotation` of their own.
        await self._store._pools.update_one(
            {"_id": pool.pool_id},
            {"$set": {**pool_document(pool), "updated_at": now}, "$unset": {"rotation": ""}},
            session=self._session,
        )

    async def demote_default_pools(self, keeping: str) -> None:
        await self._store._pools.update_many(
            {"is_default": True, "_id": {"$ne": keeping}},
            {"$set": {"is_default": False}},
            session=self._session,
        )

    async def rule(self, rule_id: str) -> TerritoryRule | None:
        doc = await self._store._rules.find_one({"_id": rule_id}, session=self._session)
        return None if doc is None else rule_from_document(doc)

    async def add_rule(self, rule: TerritoryRule, now: datetime) -> None:
        document = {"_id": rule.rule_id, **rule_document(rule)}
        try:
            await self._store._rules.insert_one(document, session=self._session)
        except DuplicateKeyError as error:
            raise AlreadyExistsError("rule", rule.rule_id) from error

    async def save_rule(self, rule: TerritoryRule, now: datetime) -> None:
        await self._store._rules.replace_one(
            {"_id": rule.rule_id}, rule_document(rule), session=self._session
        )

    async def delete_rule(self, rule_id: str) -> bool:
        result = await self._store._rules.delete_one({"_id": rule_id}, session=self._session)
        return result.deleted_count == 1

    async def save_settings(self, settings: RoutingSettings, now: datetime) -> None:
        await self._store._settings.replace_one(
            {"_id": _SETTINGS},
            {**settings_document(settings), "updated_at": now},
            upsert=True,
            session=self._session,
        )

    async def schedule(self, timers: Sequence[Timer]) -> None:
        await self._store._due.schedule([timer_work(t) for t in timers], session=self._session)
