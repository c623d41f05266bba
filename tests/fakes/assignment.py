"""In-memory assignment store: the same Protocol as `MongoAssignmentStore`, held to the same
contract tests (tests/contract/test_assignment_store.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from leadflow.chassis.duework import ClaimedWork
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
from services.assignment.store import (
    BatchWork,
    ConfigurationWork,
    LeadQuery,
    LeadWork,
    timer_work,
)
from shared.events import Event
from tests.fakes.duework import InMemoryDueWork
from tests.fakes.ledger import InMemoryLedger

T = TypeVar("T")


@dataclass
class _Tables:
    reps: dict[str, Rep] = field(default_factory=dict)
    """In the order they were added, as the Mongo store lists them."""
    pools: dict[str, Pool] = field(default_factory=dict)
    leads: dict[str, KnownLead] = field(default_factory=dict)
    last_assignments: dict[str, LastAssignment] = field(default_factory=dict)
    rules: dict[str, TerritoryRule] = field(default_factory=dict)
    settings: RoutingSettings = field(default_factory=RoutingSettings)
    last_turn: int = 0
    configuration_version: int = 0


class InMemoryAssignmentStore:
    """Timers go to an `InMemoryDueWork` outside the tables: a unit of work that fails
    after scheduling leaves its timers behind (the Mongo store's do not); firing such a
    timer finds the state unchanged and does nothing, as the use cases check state."""

    def __init__(self) -> None:
        self.tables = _Tables()
        self.ledger = InMemoryLedger(self.tables)
        self.due = InMemoryDueWork()

    @property
    def due_work(self) -> InMemoryDueWork:
        return self.due

    async def ensure_indexes(self) -> None:
        return None

    async def handle_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        async def in_transaction(fresh: list[Event]) -> tuple[T, Sequence[Event]]:
            return await work(_InMemoryLeads(self.tables, self.due), fresh)

        return await self.ledger.commit_batch(consumed, in_transaction)

    async def change_leads(self, work: LeadWork[T]) -> T:
        async def in_transaction() -> tuple[T, Sequence[Event]]:
            return await work(_InMemoryLeads(self.tables, self.due))

        return await self.ledger.commit(in_transaction)

    async def change_configuration(self, work: ConfigurationWork[T]) -> T:
        async def in_transaction() -> tuple[T, Sequence[Event]]:
            result = await work(_InMemoryConfiguration(self.tables, self.due))
            self.tables.configuration_version += 1
            return result, []

        return await self.ledger.commit(in_transaction)

    async def configuration_version(self) -> int:
        return self.tables.configuration_version

    async def load_configuration(self) -> RoutingConfig:
        return RoutingConfig(
            reps=dict(self.tables.reps),
            pools=tuple(await self.list_pools()),
            rules=tuple(await self.list_rules()),
            settings=self.tables.settings,
        )

    async def list_rules(self) -> list[TerritoryRule]:
        return ranked_rules(self.tables.rules.values())

    async def get_settings(self) -> RoutingSettings:
        return self.tables.settings

    async def list_reps(self) -> list[Rep]:
        return list(self.tables.reps.values())

    async def get_rep(self, rep_id: str) -> Rep | None:
        return self.tables.reps.get(rep_id)

    async def list_pools(self) -> list[Pool]:
        return sorted(self.tables.pools.values(), key=lambda pool: (-pool.priority, pool.pool_id))

    async def get_pool(self, pool_id: str) -> Pool | None:
        return self.tables.pools.get(pool_id)

    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]:
        return await _InMemoryLeads(self.tables, self.due).last_assignments(rep_ids)

    async def list_leads(self, query: LeadQuery) -> list[Lead]:
        matching = [
            lead
            for lead in self.tables.leads.values()
            if isinstance(lead, Lead) and _matches(lead, query)
        ]
        matching.sort(key=lambda lead: lead.lead_id)
        matching.sort(key=lambda lead: lead.received_at, reverse=True)
        return matching[: query.limit]

    async def get_lead(self, lead_id: str) -> Lead | None:
        lead = self.tables.leads.get(lead_id)
        return lead if isinstance(lead, Lead) else None


def _matches(lead: Lead, query: LeadQuery) -> bool:
    if query.status is not None:
        if lead.status is not query.status:
            return False
    elif query.open_only or query.overdue_at is not None:
        if lead.status not in OPEN_STATUSES:
            return False
    elif query.not_converted and lead.status is LeadStatus.CONVERTED:
        return False
    if query.rep_id is not None and lead.rep_id != query.rep_id:
        return False
    if query.rep_id is None and query.rep_ids is not None and lead.rep_id not in query.rep_ids:
        return False
    if query.pool_id is not None and lead.pool_id != query.pool_id:
        return False
    if query.grade is not None and lead.grade != query.grade:
        return False
    if query.overdue_at is not None and not (
        lead.next_follow_up_at is not None and lead.next_follow_up_at < query.overdue_at
    ):
        return False
    return not (query.queued and lead.queued_at is None)


class _InMemoryLeads:
    def __init__(self, tables: _Tables, due: InMemoryDueWork) -> None:
        self._tables = tables
        self._due = due
        self._stored: set[str] = set()

    async def leads(self, lead_ids: Collection[str]) -> dict[str, KnownLead]:
        found = {i: self._tables.leads[i] for i in lead_ids if i in self._tables.leads}
        self._stored.update(found)
        return found

    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]:
        known = self._tables.last_assignments
        return {i: known[i] for i in rep_ids if i in known}

    async def take_turns(self, count: int) -> int:
        self._tables.last_turn += count
        return self._tables.last_turn - count + 1

    async def save(
        self, leads: Sequence[KnownLead], last_assignments: Sequence[LastAssignment]
    ) -> None:
        for lead in leads:
            # As the Mongo store: a lead not read in this transaction is inserted as new.
            if lead.lead_id in self._tables.leads and lead.lead_id not in self._stored:
                raise KeyError(f"lead '{lead.lead_id}' exists but was not read before saving")
            self._tables.leads[lead.lead_id] = lead
            self._stored.add(lead.lead_id)
        for last in last_assignments:
            self._tables.last_assignments[last.rep_id] = last

    def _read(self, leads: list[Lead]) -> list[Lead]:
        self._stored.update(lead.lead_id for lead in leads)
        return leads

    async def queued(self, pool_id: str, limit: int) -> list[Lead]:
        waiting = [
            lead
            for lead in self._tables.leads.values()
            if isinstance(lead, Lead)
            and lead.pool_id == pool_id
            and lead.queued_at is not None
            and lead.status is LeadStatus.NEW
        ]
        waiting.sort(key=lambda lead: (lead.queued_at, lead.lead_id))
        return self._read(waiting[:limit])

    async def open_leads_of(self, rep_id: str) -> list[Lead]:
        held = [
            lead
            for lead in self._tables.leads.values()
            if isinstance(lead, Lead) and lead.rep_id == rep_id and lead.status in OPEN_STATUSES
        ]
        held.sort(key=lambda lead: (lead.received_at, lead.lead_id))
        return self._read(held)

    async def claimed_open(self, rep_id: str, pool_id: str) -> int:
        return sum(
            1
            for lead in self._tables.leads.values()
            if isinstance(lead, Lead)
            and lead.rep_id == rep_id
            and lead.pool_id == pool_id
            and lead.status in OPEN_STATUSES
            and lead.why is not None
            and lead.why.strategy == "claimed"
        )

    async def schedule(self, timers: Sequence[Timer]) -> None:
        await self._due.schedule([timer_work(t) for t in timers])

    async def cancel(self, keys: Collection[str]) -> None:
        await self._due.cancel(keys)

    async def finish(self, claimed: Sequence[ClaimedWork]) -> None:
        await self._due.finish(claimed)


class _InMemoryConfiguration:
    def __init__(self, tables: _Tables, due: InMemoryDueWork) -> None:
        self._tables = tables
        self._due = due

    async def rep(self, rep_id: str) -> Rep | None:
        return self._tables.reps.get(rep_id)

    async def known_rep_ids(self, rep_ids: Collection[str]) -> set[str]:
        return {rep_id for rep_id in rep_ids if rep_id in self._tables.reps}

    async def pool(self, pool_id: str) -> Pool | None:
        return self._tables.pools.get(pool_id)

    async def add_rep(self, rep: Rep, now: datetime) -> None:
        if rep.rep_id in self._tables.reps:
            raise AlreadyExistsError("rep", rep.rep_id)
        self._tables.reps[rep.rep_id] = rep

    async def save_rep(self, rep: Rep, now: datetime) -> None:
        if rep.rep_id in self._tables.reps:
            self._tables.reps[rep.rep_id] = rep

    async def add_pool(self, pool: Pool, now: datetime) -> None:
        if pool.pool_id in self._tables.pools:
            raise AlreadyExistsError("pool", pool.pool_id)
        self._tables.pools[pool.pool_id] = pool

    async def save_pool(self, pool: Pool, now: datetime) -> None:
        if pool.pool_id in self._tables.pools:
            self._tables.pools[pool.pool_id] = pool

    async def demote_default_pools(self, keeping: str) -> None:
        for pool_id, pool in self._tables.pools.items():
            if pool.is_default and pool_id != keeping:
                self._tables.pools[pool_id] = dataclasses.replace(pool, is_default=False)

    async def rule(self, rule_id: str) -> TerritoryRule | None:
        return self._tables.rules.get(rule_id)

    async def add_rule(self, rule: TerritoryRule, now: datetime) -> None:
        if rule.rule_id in self._tables.rules:
            raise AlreadyExistsError("rule", rule.rule_id)
        self._tables.rules[rule.rule_id] = rule

    async def save_rule(self, rule: TerritoryRule, now: datetime) -> None:
        if rule.rule_id in self._tables.rules:
            self._tables.rules[rule.rule_id] = rule

    async def delete_rule(self, rule_id: str) -> bool:
        return self._tables.rules.pop(rule_id, None) is not None

    async def save_settings(self, settings: RoutingSettings, now: datetime) -> None:
        self._tables.settings = settings

    async def schedule(self, timers: Sequence[Timer]) -> None:
        await self._due.schedule([timer_work(t) for t in timers])
