"""Assignment's use cases: the steps of each flow, between the entrypoints and the store.

- `RouteLeads` takes in a batch of intake's events in one transaction: the batch's leads
  with one query, the last assignments of the reps who may be dealt one with another, turn
  numbers once, every decision in memory (`rules.take_in_batch`), writes in bulk.
- `WorkLeads` is the sales workflow on one lead (lose, return to pool) and the lead views.
- `ManageTeam` changes reps and pools: each change moves the configuration's version in its
  transaction and drops this replica's cached copy, so the next lead is routed on it.

Reps and pools reach routing through a `VersionedCache`: a batch reads no configuration
unless its version moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog

from leadflow.chassis.clock import Clock
from leadflow.chassis.config_cache import VersionedCache
from services.assignment.rules import (
    ROUND_ROBIN,
    BatchOutcome,
    Lead,
    LeadStatus,
    NotFoundError,
    NotOwnerError,
    Pool,
    PoolChanges,
    PoolMember,
    Rep,
    RepChanges,
    RoutingConfig,
    UnknownRepsError,
    changed_pool,
    changed_rep,
    lose_lead,
    may_work,
    pool_members,
    reps_who_may_be_dealt,
    return_to_pool,
    take_in_batch,
)
from services.assignment.store import (
    AssignmentStore,
    ConfigurationInTransaction,
    ConfigurationWork,
    LeadQuery,
    LeadsInTransaction,
)
from shared.events import (
    Event,
    LeadAssignedV1,
    LeadLostV1,
    LeadReceivedV1,
    LeadReturnedToPoolV1,
    LossLevel,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

ConfigurationCache = VersionedCache[RoutingConfig]


def configuration_cache(store: AssignmentStore, *, max_age_s: float) -> ConfigurationCache:
    """Reps and pools as routing reads them, reloaded only when their version moves."""
    return VersionedCache(
        store.configuration_version, store.load_configuration, max_age_s=max_age_s
    )


def assigned_event(lead: Lead, previous_rep_id: str | None = None) -> LeadAssignedV1:
    if lead.rep_id is None or lead.assigned_at is None:
        raise ValueError(f"lead '{lead.lead_id}' is not assigned")
    return LeadAssignedV1(
        lead_id=lead.lead_id,
        occurred_at=lead.assigned_at,
        rep_id=lead.rep_id,
        pool_id=lead.pool_id,
        strategy=ROUND_ROBIN,
        previous_rep_id=previous_rep_id,
        received_at=lead.received_at,
    )


# --- intake's events -------------------------------------------------------------------


class RouteLeads:
    """Take in intake's events: route new leads, count repeat inquiries, forget erased
    contacts. A batch is one transaction; events handled before change nothing."""

    def __init__(
        self, store: AssignmentStore, configuration: ConfigurationCache, *, clock: Clock
    ) -> None:
        self._store = store
        self._configuration = configuration
        self._clock = clock

    async def __call__(self, events: Sequence[Event]) -> BatchOutcome | None:
        """Handle a batch; None when every event in it was handled before."""
        config = await self._configuration.get()
        now = self._clock()

        async def take_in(
            leads: LeadsInTransaction, fresh: list[Event]
        ) -> tuple[BatchOutcome, list[Event]]:
            received = sum(isinstance(event, LeadReceivedV1) for event in fresh)
            dealable = reps_who_may_be_dealt(fresh, config)
            # Turns first: it is what concurrent routing conflicts on, so it fails early.
            first_turn = await leads.take_turns(received) if dealable else 0
            known = await leads.leads({event.lead_id for event in fresh})
            last = await leads.last_assignments(dealable)
            outcome = take_in_batch(fresh, known, config, last, first_turn=first_turn, now=now)
            await leads.save(outcome.leads, outcome.last_assignments)
            return outcome, [assigned_event(lead) for lead in outcome.assigned]

        outcome = await self._store.handle_batch(events, take_in)
        if outcome is None:
            log.info("events already handled", events=len(events))
            return None
        for lead_id in outcome.received_twice:
            log.warning("lead received twice; its first routing stands", lead_id=lead_id)
        for lead in outcome.unassigned:
            log.info(
                "lead left unassigned",
                lead_id=lead.lead_id,
                pool_id=lead.pool_id,
                reason="no available rep" if lead.pool_id else "no pool matches",
            )
        log.info(
            "intake events handled",
            events=len(events),
            changed_leads=len(outcome.leads),
            assigned=len(outcome.assigned),
            unassigned=len(outcome.unassigned),
        )
        return outcome


# --- the sales workflow ------------------------------------------------------------------


class WorkLeads:
    """What reps and managers do with a lead, and what they see of leads."""

    def __init__(self, store: AssignmentStore, configuration: ConfigurationCache) -> None:
        self._store = store
        self._configuration = configuration

    async def leads(self, query: LeadQuery) -> list[Lead]:
        return await self._store.list_leads(query)

    async def lead(self, lead_id: str, acting_rep: str | None) -> Lead:
        """The lead, if `acting_rep` (None: a manager) may see it."""
        lead = await self._store.get_lead(lead_id)
        if lead is None:
            raise NotFoundError("lead", lead_id)
        if not may_work(lead, acting_rep):
            raise NotOwnerError(lead_id)
        return lead

    async def mark_lost(
        self,
        lead_id: str,
        level: LossLevel,
        reason: str | None,
        acting_rep: str | None,
        now: datetime,
    ) -> Lead:
        """Close the lead (level 1) or hand it to nurture (2, 3), announcing `LeadLostV1`."""

        async def lose(leads: LeadsInTransaction) -> tuple[Lead, list[Event]]:
            lead = await _lead_to_work(leads, lead_id, acting_rep)
            lost = lose_lead(lead, level, reason, now)
            await leads.save([lost], [])
            event = LeadLostV1(
                lead_id=lead_id,
                occurred_at=now,
                rep_id=lead.rep_id,
                level=level,
                reason=reason,
                contact=lost.contact,
                consent=lost.consent,
            )
            return lost, [event]

        lost = await self._store.change_leads(lose)
        log.info("lead lost", lead_id=lead_id, level=level, status=lost.status)
        return lost

    async def return_to_pool(
        self, lead_id: str, reason: str | None, acting_rep: str | None, now: datetime
    ) -> Lead:
        """Give the lead back to its pool and deal it to another rep, if one is free."""
        config = await self._configuration.get()

        async def give_back(leads: LeadsInTransaction) -> tuple[Lead, list[Event]]:
            lead = await _lead_to_work(leads, lead_id, acting_rep)
            pool = next((p for p in config.pools if p.pool_id == lead.pool_id), None)
            turn = await leads.take_turns(1) if pool else 0
            last = await leads.last_assignments(pool.rep_ids if pool else ())
            returned, routing = return_to_pool(lead, pool, config.reps, last, turn=turn, now=now)
            await leads.save([returned], [routing.taken] if routing.taken else [])
            events: list[Event] = [
                LeadReturnedToPoolV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=lead.rep_id or "",
                    pool_id=lead.pool_id,
                    reason=reason,
                )
            ]
            if returned.status is LeadStatus.ASSIGNED:
                events.append(assigned_event(returned, previous_rep_id=lead.rep_id))
            return returned, events

        returned = await self._store.change_leads(give_back)
        log.info(
            "lead returned to its pool",
            lead_id=lead_id,
            pool_id=returned.pool_id,
            rep_id=returned.rep_id,
        )
        return returned


async def _lead_to_work(leads: LeadsInTransaction, lead_id: str, acting_rep: str | None) -> Lead:
    lead = (await leads.leads([lead_id])).get(lead_id)
    if not isinstance(lead, Lead):  # unknown, or not received yet
        raise NotFoundError("lead", lead_id)
    if not may_work(lead, acting_rep):
        raise NotOwnerError(lead_id)
    return lead


# --- reps and pools ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool and its members in the order its next leads go to them."""

    pool: Pool
    members: tuple[PoolMember, ...]


class ManageTeam:
    """Reps and pools: the configuration routing reads."""

    def __init__(self, store: AssignmentStore, configuration: ConfigurationCache) -> None:
        self._store = store
        self._configuration = configuration

    async def reps(self) -> list[Rep]:
        return await self._store.list_reps()

    async def rep(self, rep_id: str) -> Rep:
        rep = await self._store.get_rep(rep_id)
        if rep is None:
            raise NotFoundError("rep", rep_id)
        return rep

    async def add_rep(self, rep: Rep, now: datetime) -> Rep:
        async def add(team: ConfigurationInTransaction) -> Rep:
            await team.add_rep(rep, now)
            return rep

        return await self._change(add, "rep added", rep_id=rep.rep_id)

    async def change_rep(self, rep_id: str, changes: RepChanges, now: datetime) -> Rep:
        async def change(team: ConfigurationInTransaction) -> Rep:
            rep = await team.rep(rep_id)
            if rep is None:
                raise NotFoundError("rep", rep_id)
            changed = changed_rep(rep, changes)
            await team.save_rep(changed, now)
            return changed

        return await self._change(change, "rep changed", rep_id=rep_id, fields=sorted(changes))

    async def pools(self) -> list[PoolView]:
        """Every pool, highest priority first (the order routing tries them in)."""
        return await self._views(await self._store.list_pools())

    async def pool(self, pool_id: str) -> PoolView:
        pool = await self._store.get_pool(pool_id)
        if pool is None:
            raise NotFoundError("pool", pool_id)
        [view] = await self._views([pool])
        return view

    async def add_pool(self, pool: Pool, now: datetime) -> PoolView:
        """Naming a pool `is_default` makes it the only default."""

        async def add(team: ConfigurationInTransaction) -> Pool:
            await _require_reps(team, pool.rep_ids)
            if pool.is_default:
                await team.demote_default_pools(keeping=pool.pool_id)
            await team.add_pool(pool, now)
            return pool

        added = await self._change(add, "pool added", pool_id=pool.pool_id)
        [view] = await self._views([added])
        return view

    async def change_pool(self, pool_id: str, changes: PoolChanges, now: datetime) -> PoolView:
        async def change(team: ConfigurationInTransaction) -> Pool:
            pool = await team.pool(pool_id)
            if pool is None:
                raise NotFoundError("pool", pool_id)
            changed = changed_pool(pool, changes)
            await _require_reps(team, changed.rep_ids)
            if changes.get("is_default"):
                await team.demote_default_pools(keeping=pool_id)
            await team.save_pool(changed, now)
            return changed

        changed = await self._change(
            change, "pool changed", pool_id=pool_id, fields=sorted(changes)
        )
        [view] = await self._views([changed])
        return view

    async def _change(self, work: ConfigurationWork[T], what: str, **context: object) -> T:
        result = await self._store.change_configuration(work)
        self._configuration.invalidate()
        log.info(what, **context)
        return result

    async def _views(self, pools: Sequence[Pool]) -> list[PoolView]:
        member_ids = {rep_id for pool in pools for rep_id in pool.rep_ids}
        reps = {rep.rep_id: rep for rep in await self._store.list_reps()} if member_ids else {}
        last = await self._store.last_assignments(member_ids)
        return [PoolView(pool, tuple(pool_members(pool, reps, last))) for pool in pools]


async def _require_reps(team: ConfigurationInTransaction, rep_ids: Sequence[str]) -> None:
    if unknown := set(rep_ids) - await team.known_rep_ids(rep_ids):
        raise UnknownRepsError(unknown)
