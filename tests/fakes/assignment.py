"""In-memory assignment store: the same Protocol as `MongoAssignmentStore`, held to the same
contract tests (tests/contract/test_assignment_store.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from services.assignment.rules import (
    AlreadyExistsError,
    KnownLead,
    LastAssignment,
    Lead,
    Pool,
    Rep,
    RoutingConfig,
)
from services.assignment.store import BatchWork, ConfigurationWork, LeadQuery, LeadWork
from shared.events import Event
from tests.fakes.ledger import InMemoryLedger

T = TypeVar("T")


@dataclass
class _Tables:
    reps: dict[str, Rep] = field(default_factory=dict)
    """In the order they were added, as the Mongo store lists them."""
    pools: dict[str, Pool] = field(default_factory=dict)
    leads: dict[str, KnownLead] = field(default_factory=dict)
    last_assignments: dict[str, LastAssignment] = field(default_factory=dict)
    last_turn: int = 0
    configuration_version: int = 0


class InMemoryAssignmentStore:
    def __init__(self) -> None:
        self.tables = _Tables()
        self.ledger = InMemoryLedger(self.tables)

    async def ensure_indexes(self) -> None:
        return None

    async def handle_batch(self, consumed: Sequence[Event], work: BatchWork[T]) -> T | None:
        async def in_transaction(fresh: list[Event]) -> tuple[T, Sequence[Event]]:
            return await work(_InMemoryLeads(self.tables), fresh)

        return await self.ledger.commit_batch(consumed, in_transaction)

    async def change_leads(self, work: LeadWork[T]) -> T:
        async def in_transaction() -> tuple[T, Sequence[Event]]:
            return await work(_InMemoryLeads(self.tables))

        return await self.ledger.commit(in_transaction)

    async def change_configuration(self, work: ConfigurationWork[T]) -> T:
        async def in_transaction() -> tuple[T, Sequence[Event]]:
            result = await work(_InMemoryConfiguration(self.tables))
            self.tables.configuration_version += 1
            return result, []

        return await self.ledger.commit(in_transaction)

    async def configuration_version(self) -> int:
        return self.tables.configuration_version

    async def load_configuration(self) -> RoutingConfig:
        return RoutingConfig(reps=dict(self.tables.reps), pools=tuple(await self.list_pools()))

    async def list_reps(self) -> list[Rep]:
        return list(self.tables.reps.values())

    async def get_rep(self, rep_id: str) -> Rep | None:
        return self.tables.reps.get(rep_id)

    async def list_pools(self) -> list[Pool]:
        return sorted(self.tables.pools.values(), key=lambda pool: (-pool.priority, pool.pool_id))

    async def get_pool(self, pool_id: str) -> Pool | None:
        return self.tables.pools.get(pool_id)

    async def last_assignments(self, rep_ids: Collection[str]) -> dict[str, LastAssignment]:
        return await _InMemoryLeads(self.tables).last_assignments(rep_ids)

    async def list_leads(self, query: LeadQuery) -> list[Lead]:
        matching = [
            lead
            for lead in self.tables.leads.values()
            if isinstance(lead, Lead)
            and (query.status is None or lead.status is query.status)
            and (query.rep_id is None or lead.rep_id == query.rep_id)
            and (query.pool_id is None or lead.pool_id == query.pool_id)
        ]
        matching.sort(key=lambda lead: lead.lead_id)
        matching.sort(key=lambda lead: lead.received_at, reverse=True)
        return matching[: query.limit]

    async def get_lead(self, lead_id: str) -> Lead | None:
        lead = self.tables.leads.get(lead_id)
        return lead if isinstance(lead, Lead) else None


class _InMemoryLeads:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables
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


class _InMemoryConfiguration:
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

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
