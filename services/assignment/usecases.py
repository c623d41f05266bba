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

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar, cast

import structlog

from leadflow.chassis.clock import Clock
from leadflow.chassis.config_cache import VersionedCache
from services.assignment.rules import (
    ROUND_ROBIN,
    BatchOutcome,
    Dealt,
    Lead,
    NotFoundError,
    Pool,
    PoolChanges,
    PoolMember,
    Rep,
    RepChanges,
    Routing,
    RoutingConfig,
    RoutingSettings,
    TerritoryRule,
    UnknownPoolError,
    UnknownRepsError,
    changed_pool,
    changed_rep,
    deal_timer,
    pool_members,
    reps_who_may_be_dealt,
    route_lead,
    take_in_batch,
)
from services.assignment.store import (
    AssignmentStore,
    ConfigurationInTransaction,
    ConfigurationWork,
    LeadsInTransaction,
)
from shared.events import (
    Attribution,
    Event,
    LeadAssignedV1,
    LeadMergedV1,
    LeadQueuedV1,
    LeadReceivedV1,
    LeadRequalifiedV1,
    LeadRoutedToNurtureV1,
    Profile,
)

log = structlog.get_logger(__name__)

AssignedHow = Literal[
    "routed", "claimed", "reassigned", "bulk", "handover", "repeat", "requalified"
]

T = TypeVar("T")

ConfigurationCache = VersionedCache[RoutingConfig]


def configuration_cache(store: AssignmentStore, *, max_age_s: float) -> ConfigurationCache:
    """Reps and pools as routing reads them, reloaded only when their version moves."""
    return VersionedCache(
        store.configuration_version, store.load_configuration, max_age_s=max_age_s
    )


def assigned_event(
    lead: Lead,
    previous_rep_id: str | None = None,
    *,
    how: AssignedHow = "routed",
    by: str | None = None,
) -> LeadAssignedV1:
    if lead.rep_id is None or lead.assigned_at is None:
        raise ValueError(f"lead '{lead.lead_id}' is not assigned")
    return LeadAssignedV1(
        lead_id=lead.lead_id,
        occurred_at=lead.assigned_at,
        rep_id=lead.rep_id,
        pool_id=lead.pool_id,
        strategy=(lead.why.strategy if lead.why else None) or ROUND_ROBIN,
        previous_rep_id=previous_rep_id,
        received_at=lead.received_at,
        how=how,
        why=lead.why,
        sla_due_at=lead.sla_due_at,
        assigned_by=by,
    )


def routing_events(dealt: Dealt, *, by: str | None = None) -> list[Event]:
    """What one routing decision announces: assigned, queued or sent to nurture."""
    lead, routing = dealt.lead, dealt.routing
    if routing.rep is not None:
        how = cast("AssignedHow", dealt.how)
        return [assigned_event(lead, dealt.previous_rep_id, how=how, by=by)]
    if routing.nurture:
        return [
            LeadRoutedToNurtureV1(
                lead_id=lead.lead_id,
                occurred_at=lead.updated_at or lead.received_at,
                reason=(routing.why.note if routing.why else None) or "below the fit threshold",
                contact=lead.contact,
                consent=lead.consent,
                why=routing.why,
            )
        ]
    if routing.pool is not None:
        return [
            LeadQueuedV1(
                lead_id=lead.lead_id,
                occurred_at=lead.updated_at or lead.received_at,
                pool_id=routing.pool.pool_id,
                reason=lead.queue_reason or "nobody eligible",
                why=routing.why,
            )
        ]
    return []


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
            known = await leads.leads({event.lead_id for event in fresh})
            dealable = reps_who_may_be_dealt(fresh, config, known)
            routable = sum(
                isinstance(event, LeadReceivedV1 | LeadMergedV1 | LeadRequalifiedV1)
                for event in fresh
            )
            # Every routing transaction takes turns: two replicas routing at once conflict
            # on that counter and run one after the other.
            first_turn = await leads.take_turns(routable) if dealable else 0
            last = await leads.last_assignments(dealable)
            outcome = take_in_batch(fresh, known, config, last, first_turn=first_turn, now=now)
            await leads.save(outcome.leads, outcome.last_assignments)
            await leads.schedule(outcome.timers)
            await leads.cancel(outcome.cancelled)
            return outcome, [e for dealt in outcome.dealt for e in routing_events(dealt)]

        outcome = await self._store.handle_batch(events, take_in)
        if outcome is None:
            log.info("events already handled", events=len(events))
            return None
        for lead_id in outcome.received_twice:
            log.warning("lead received twice; its first routing stands", lead_id=lead_id)
        for lead in outcome.unassigned:
            log.info(
                "lead waits for a rep",
                lead_id=lead.lead_id,
                pool_id=lead.pool_id,
                reason=lead.queue_reason if lead.pool_id else "no pool matches",
            )
        log.info(
            "intake events handled",
            events=len(events),
            changed_leads=len(outcome.leads),
            assigned=len(outcome.assigned),
            unassigned=len(outcome.unassigned),
        )
        return outcome


# --- reps and pools ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool and its members in the order its next leads go to them."""

    pool: Pool
    members: tuple[PoolMember, ...]


class ManageTeam:
    """The configuration routing reads: reps, pools, territory rules, settings.

    A change that may let a waiting lead be dealt (a rep back, more capacity, a pool's
    members) schedules the affected pools' queues to be dealt now, in its transaction.
    """

    def __init__(
        self, store: AssignmentStore, configuration: ConfigurationCache, *, clock: Clock
    ) -> None:
        self._store = store
        self._configuration = configuration
        self._clock = clock

    async def reps(self) -> list[Rep]:
        return await self._store.list_reps()

    async def rep(self, rep_id: str) -> Rep:
        rep = await self._store.get_rep(rep_id)
        if rep is None:
            raise NotFoundError("rep", rep_id)
        return rep

    async def add_rep(self, rep: Rep, now: datetime) -> Rep:
        async def add(team: ConfigurationInTransaction) -> Rep:
            await _require_manager(team, rep.rep_id, rep.manager_id)
            await team.add_rep(rep, now)
            return rep

        return await self._change(add, "rep added", rep_id=rep.rep_id)

    async def change_rep(self, rep_id: str, changes: RepChanges, now: datetime) -> Rep:
        pools = await self._store.list_pools()

        async def change(team: ConfigurationInTransaction) -> Rep:
            rep = await team.rep(rep_id)
            if rep is None:
                raise NotFoundError("rep", rep_id)
            changed = changed_rep(rep, changes)
            await _require_manager(team, rep_id, changed.manager_id)
            await team.save_rep(changed, now)
            # Back from away, more room, new hours: whatever waits for them may go now.
            await team.schedule([deal_timer(p.pool_id, now) for p in pools if rep_id in p.rep_ids])
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
            await _require_pool_reps(team, pool)
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
            await _require_pool_reps(team, changed)
            if changes.get("is_default"):
                await team.demote_default_pools(keeping=pool_id)
            await team.save_pool(changed, now)
            await team.schedule([deal_timer(pool_id, now)])
            return changed

        changed = await self._change(
            change, "pool changed", pool_id=pool_id, fields=sorted(changes)
        )
        [view] = await self._views([changed])
        return view

    async def rules(self) -> list[TerritoryRule]:
        """Territory rules in the order they are tried (highest priority first)."""
        return await self._store.list_rules()

    async def add_rule(self, rule: TerritoryRule, now: datetime) -> TerritoryRule:
        async def add(team: ConfigurationInTransaction) -> TerritoryRule:
            await _require_rule_target(team, rule)
            await team.add_rule(rule, now)
            return rule

        return await self._change(add, "territory rule added", rule_id=rule.rule_id)

    async def replace_rule(self, rule: TerritoryRule, now: datetime) -> TerritoryRule:
        async def replace(team: ConfigurationInTransaction) -> TerritoryRule:
            if await team.rule(rule.rule_id) is None:
                raise NotFoundError("rule", rule.rule_id)
            await _require_rule_target(team, rule)
            await team.save_rule(rule, now)
            return rule

        return await self._change(replace, "territory rule replaced", rule_id=rule.rule_id)

    async def delete_rule(self, rule_id: str) -> None:
        async def delete(team: ConfigurationInTransaction) -> None:
            if not await team.delete_rule(rule_id):
                raise NotFoundError("rule", rule_id)

        await self._change(delete, "territory rule deleted", rule_id=rule_id)

    async def settings(self) -> RoutingSettings:
        return await self._store.get_settings()

    async def change_settings(self, settings: RoutingSettings, now: datetime) -> RoutingSettings:
        async def save(team: ConfigurationInTransaction) -> RoutingSettings:
            if settings.fallback_pool_id and await team.pool(settings.fallback_pool_id) is None:
                raise UnknownPoolError(settings.fallback_pool_id, "fallback_pool_id")
            await team.save_settings(settings, now)
            return settings

        return await self._change(save, "routing settings changed")

    async def dry_run(
        self, profile: Profile, attribution: Attribution, fit_grade: str | None
    ) -> Routing:
        """Where a lead like this would go now, and why; nothing is stored or taken."""
        config = await self._configuration.get()
        people = {rep_id for pool in config.pools for rep_id in pool.rep_ids}
        people.update(r.rep_id for r in config.rules if r.rep_id)
        loads = await self._store.last_assignments(people)
        return route_lead(profile, attribution, fit_grade, config, loads, turn=0, now=self._clock())

    async def _change(self, work: ConfigurationWork[T], what: str, **context: object) -> T:
        result = await self._store.change_configuration(work)
        self._configuration.invalidate()
        log.info(what, **context)
        return result

    async def _views(self, pools: Sequence[Pool]) -> list[PoolView]:
        member_ids = {rep_id for pool in pools for rep_id in pool.rep_ids}
        settings = await self._store.get_settings()
        reps = {rep.rep_id: rep for rep in await self._store.list_reps()} if member_ids else {}
        last = await self._store.last_assignments(member_ids)
        now = self._clock()
        return [
            PoolView(pool, tuple(pool_members(pool, reps, last, now=now, settings=settings)))
            for pool in pools
        ]


async def _require_reps(
    team: ConfigurationInTransaction, rep_ids: Collection[str], field: str = "rep_ids"
) -> None:
    if unknown := set(rep_ids) - await team.known_rep_ids(rep_ids):
        raise UnknownRepsError(unknown, field)


async def _require_pool_reps(team: ConfigurationInTransaction, pool: Pool) -> None:
    await _require_reps(team, pool.rep_ids)
    if pool.default_assignee is not None:
        await _require_reps(team, [pool.default_assignee], "default_assignee")
    if pool.manager_id is not None:
        await _require_reps(team, [pool.manager_id], "manager_id")
    if strangers := set(pool.weights) - set(pool.rep_ids):
        raise UnknownRepsError(strangers, "weights")


async def _require_manager(
    team: ConfigurationInTransaction, rep_id: str, manager_id: str | None
) -> None:
    if manager_id is None:
        return
    if manager_id == rep_id:
        raise UnknownRepsError([manager_id], "manager_id")
    await _require_reps(team, [manager_id], "manager_id")


async def _require_rule_target(team: ConfigurationInTransaction, rule: TerritoryRule) -> None:
    if rule.pool_id is not None and await team.pool(rule.pool_id) is None:
        raise UnknownPoolError(rule.pool_id)
    if rule.rep_id is not None:
        await _require_reps(team, [rule.rep_id], "rep_id")
