"""The sales workflow: what reps and managers do with leads, each action one transaction
that saves the lead, the reps' routing state, the timers it sets or cancels and the events
it implies together. Decisions are `rules`'; access is checked on the `Actor`."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from services.assignment.rules import (
    Activity,
    Actor,
    Conversion,
    Dealt,
    HistoryEntry,
    LastAssignment,
    Lead,
    NotFoundError,
    NotOwnerError,
    RefusedError,
    Routing,
    RoutingConfig,
    Timer,
    ask_help,
    assign_to,
    book_visit,
    check_in,
    convert_lead,
    deal,
    deal_timer,
    empty_load,
    ensure_claimable,
    ensure_returnable,
    follow_up_timers,
    join_lead,
    lead_timer_keys,
    log_activity,
    lose_lead,
    may_work,
    passed_over,
    record_satisfaction,
    reject,
    released_by,
    routed,
    satisfaction_timer,
    set_grade,
    sla_key,
    timers_after_routing,
)
from services.assignment.store import AssignmentStore, LeadQuery, LeadsInTransaction
from services.assignment.usecases import ConfigurationCache, routing_events
from shared.events import (
    ActivityLoggedV1,
    Event,
    LeadConvertedV1,
    LeadLostV1,
    LeadRejectedByRepV1,
    LeadReturnedToPoolV1,
    LossLevel,
    OpportunityOpenedV1,
    SatisfactionRecordedV1,
    SlaBreachedV1,
    VisitCheckedInV1,
    VisitScheduledV1,
)

log = structlog.get_logger(__name__)

_Act = Callable[[LeadsInTransaction, Lead, "RoutingConfig", "Changes"], Awaitable[Lead]]


@dataclass
class Changes:
    """What one transaction writes besides the leads: reps' state, timers, events."""

    loads: dict[str, LastAssignment] = field(default_factory=dict)
    changed_loads: set[str] = field(default_factory=set)
    timers: list[Timer] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def load(self, rep_id: str) -> LastAssignment:
        return self.loads.get(rep_id) or empty_load(rep_id)

    def release(self, lead: Lead) -> None:
        """The lead leaves its rep's hands (and its timers go)."""
        self.cancelled.extend(lead_timer_keys(lead))
        if lead.is_open and lead.rep_id is not None:
            self.loads[lead.rep_id] = released_by(self.load(lead.rep_id))
            self.changed_loads.add(lead.rep_id)

    def take(self, routing: Routing) -> None:
        if routing.taken is not None:
            self.loads[routing.taken.rep_id] = routing.taken
            self.changed_loads.add(routing.taken.rep_id)

    def dealt(
        self, dealt: Dealt, config: RoutingConfig, now: datetime, *, by: str | None = None
    ) -> Lead:
        """A lead went somewhere: the rep's new state, its timers, its events."""
        self.take(dealt.routing)
        self.timers.extend(timers_after_routing(dealt.lead, dealt.routing))
        self.timers.extend(follow_up_timers(dealt.lead, config.settings, now))
        self.events.extend(routing_events(dealt, by=by))
        return dealt.lead

    def capacity_freed(self, config: RoutingConfig, rep_id: str | None, now: datetime) -> None:
        """A rep has room again: their pools' queues are dealt now."""
        for pool in config.pools:
            if rep_id in pool.rep_ids:
                self.timers.append(deal_timer(pool.pool_id, now))

    async def write(self, leads: LeadsInTransaction, changed: Sequence[Lead]) -> None:
        await leads.save(changed, [self.loads[r] for r in sorted(self.changed_loads)])
        if self.cancelled:
            await leads.cancel(set(self.cancelled))
        if self.timers:
            await leads.schedule(self.timers)


async def lead_to_work(leads: LeadsInTransaction, lead_id: str, actor: Actor | str | None) -> Lead:
    lead = (await leads.leads([lead_id])).get(lead_id)
    if not isinstance(lead, Lead):  # unknown, or not received yet
        raise NotFoundError("lead", lead_id)
    if not may_work(lead, actor):
        raise NotOwnerError(lead_id)
    return lead


def _as_actor(actor: Actor | str | None) -> Actor:
    return actor if isinstance(actor, Actor) else Actor(actor)


async def redeal(
    leads: LeadsInTransaction,
    lead: Lead,
    config: RoutingConfig,
    changes: Changes,
    *,
    now: datetime,
    how: str,
    note: str,
    also_skip: Mapping[str, str] | None = None,
) -> tuple[Lead, Routing]:
    """Deal a lead again in its pool (the lead already released from its rep), passing over
    everyone who returned or rejected it: to another rep, or into the pool's queue."""
    pool = config.pool(lead.pool_id)
    skip = {**passed_over(lead), **(also_skip or {})}
    people = {*pool.rep_ids, pool.default_assignee or ""} if pool else set()
    missing = [r for r in people if r and r not in changes.loads]
    changes.loads.update(await leads.last_assignments(missing))
    turn = await leads.take_turns(1)
    routing = deal(
        pool,
        config,
        changes.loads,
        turn=turn,
        now=now,
        passing_over=skip,
        profile=lead.profile,
        note=note,
    )
    again = routed(lead, routing, config, now, how=how)
    changes.dealt(Dealt(again, routing, "reassigned", lead.rep_id), config, now)
    return again, routing


class WorkLeads:
    """What reps and managers do with leads, and what they see of them."""

    def __init__(self, store: AssignmentStore, configuration: ConfigurationCache) -> None:
        self._store = store
        self._configuration = configuration

    async def leads(self, query: LeadQuery) -> list[Lead]:
        return await self._store.list_leads(query)

    async def lead(self, lead_id: str, actor: Actor | str | None) -> Lead:
        """The lead, if `actor` may see it."""
        lead = await self._store.get_lead(lead_id)
        if lead is None:
            raise NotFoundError("lead", lead_id)
        if not may_work(lead, actor):
            raise NotOwnerError(lead_id)
        return lead

    async def _one(
        self,
        lead_id: str,
        actor: Actor | str | None,
        act: _Act,
        *,
        loads_of: Collection[str] = (),
    ) -> Lead:
        config = await self._configuration.get()

        async def work(leads: LeadsInTransaction) -> tuple[Lead, list[Event]]:
            lead = await lead_to_work(leads, lead_id, actor)
            changes = Changes()
            wanted = {*loads_of, lead.rep_id or ""} - {""}
            changes.loads.update(await leads.last_assignments(wanted))
            changed = await act(leads, lead, config, changes)
            await changes.write(leads, [changed])
            return changed, changes.events

        return await self._store.change_leads(work)

    async def mark_lost(
        self,
        lead_id: str,
        level: LossLevel,
        reason: str | None,
        actor: Actor | str | None,
        now: datetime,
    ) -> Lead:
        """Close the lead (level 1) or hand it to nurture (2, 3), announcing `LeadLostV1`."""
        by = _as_actor(actor).rep_id

        async def lose(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            lost = lose_lead(lead, level, reason, now, by=by)
            changes.release(lead)
            changes.capacity_freed(config, lead.rep_id, now)
            changes.events.append(
                LeadLostV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=lead.rep_id,
                    level=level,
                    reason=reason,
                    contact=lost.contact,
                    consent=lost.consent,
                )
            )
            return lost

        lost = await self._one(lead_id, actor, lose)
        log.info("lead lost", lead_id=lead_id, level=level, status=lost.status)
        return lost

    async def return_to_pool(
        self, lead_id: str, reason: str | None, actor: Actor | str | None, now: datetime
    ) -> Lead:
        """Give the lead back to its pool and deal it to another rep, if one is eligible."""

        async def give_back(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            ensure_returnable(lead.status)
            changes.release(lead)
            changes.capacity_freed(config, lead.rep_id, now)
            changes.events.append(
                LeadReturnedToPoolV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=lead.rep_id or "",
                    pool_id=lead.pool_id,
                    reason=reason,
                )
            )
            returned = dataclasses.replace(
                lead,
                returned_by=(*lead.returned_by, lead.rep_id or ""),
                history=(
                    *lead.history,
                    HistoryEntry(now, "returned", lead.rep_id, lead.rep_id, reason),
                ),
            )
            again, _ = await redeal(
                leads, returned, config, changes, now=now, how="routed", note="returned to the pool"
            )
            return again

        returned = await self._one(lead_id, actor, give_back)
        log.info("lead returned", lead_id=lead_id, pool_id=returned.pool_id, rep_id=returned.rep_id)
        return returned

    async def reject(
        self, lead_id: str, reason: str, actor: Actor | str | None, now: datetime
    ) -> Lead:
        """The rep refuses the lead: it is dealt to another rep, never back to a rejecter."""

        async def refuse(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            rep_id = _as_actor(actor).rep_id or lead.rep_id or ""
            rejected = reject(lead, rep_id, reason, now)
            changes.release(lead)
            changes.capacity_freed(config, lead.rep_id, now)
            changes.events.append(
                LeadRejectedByRepV1(lead_id=lead_id, occurred_at=now, rep_id=rep_id, reason=reason)
            )
            again, _ = await redeal(
                leads, rejected, config, changes, now=now, how="reassigned", note="rejected"
            )
            return again

        return await self._one(lead_id, actor, refuse)

    async def claim(self, lead_id: str, rep_id: str, now: datetime) -> Lead:
        """A rep takes a waiting lead from a claimable pool they are in."""
        config = await self._configuration.get()

        async def take(leads: LeadsInTransaction) -> tuple[Lead, list[Event]]:
            lead = (await leads.leads([lead_id])).get(lead_id)
            if not isinstance(lead, Lead):
                raise NotFoundError("lead", lead_id)
            pool = config.pool(lead.pool_id)
            ensure_claimable(
                lead, pool, rep_id, await leads.claimed_open(rep_id, lead.pool_id or "")
            )
            rep = config.reps.get(rep_id)
            if rep is None:
                raise NotFoundError("rep", rep_id)
            changes = Changes()
            changes.loads.update(await leads.last_assignments([rep_id]))
            turn = await leads.take_turns(1)
            claimed, routing = assign_to(
                lead,
                rep,
                pool,
                config,
                changes.load(rep_id),
                turn=turn,
                now=now,
                how="claimed",
                by=rep_id,
            )
            changes.dealt(Dealt(claimed, routing, "claimed"), config, now, by=rep_id)
            await changes.write(leads, [claimed])
            return claimed, changes.events

        return await self._store.change_leads(take)

    async def log_activity(  # noqa: PLR0917 - the activity's fields, as the API names them
        self,
        lead_id: str,
        kind: str,
        outcome: str | None,
        note: str | None,
        actor: Actor | str | None,
        now: datetime,
    ) -> Lead:
        """A call (with its outcome), SMS, email, visit note or TM note; the first contact
        stops the SLA clock."""
        by = _as_actor(actor).rep_id

        async def record(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            rep_id = by or lead.rep_id or ""
            activity = Activity(uuid.uuid4().hex[:12], now, rep_id, kind, outcome, note)
            worked, first = log_activity(lead, activity, config.settings)
            if first:
                changes.cancelled.append(sla_key(lead))
            changes.timers.extend(follow_up_timers(worked, config.settings, now))
            changes.events.append(
                ActivityLoggedV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=rep_id,
                    activity=kind,
                    outcome=outcome,
                    note=note,
                    first_contact=first,
                    received_at=lead.received_at,
                )
            )
            return worked

        return await self._one(lead_id, actor, record)

    async def set_grade(
        self, lead_id: str, grade: str, actor: Actor | str | None, now: datetime
    ) -> Lead:
        async def grade_it(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            graded = set_grade(lead, grade, config.settings, now)
            changes.timers.extend(follow_up_timers(graded, config.settings, now))
            return graded

        return await self._one(lead_id, actor, grade_it)

    async def book_visit(
        self, lead_id: str, when: datetime, actor: Actor | str | None, now: datetime
    ) -> Lead:
        async def book(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            visit_id = uuid.uuid4().hex[:12]
            booked = book_visit(lead, visit_id, when, lead.rep_id, now)
            changes.cancelled.append(sla_key(lead))
            changes.events.append(
                VisitScheduledV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=lead.rep_id or "",
                    visit_id=visit_id,
                    scheduled_for=when,
                )
            )
            return booked

        return await self._one(lead_id, actor, book)

    async def check_in(
        self,
        lead_id: str,
        visit_id: str | None,
        actor: Actor | str | None,
        now: datetime,
    ) -> Lead:
        """A booked visit checked in (reserved), or a walk-in when no visit id is given."""

        async def arrive(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            walk_in = visit_id is None
            rep = config.reps.get(lead.rep_id or "")
            visited, visit = check_in(lead, visit_id or uuid.uuid4().hex[:12], walk_in, rep, now)
            callback = satisfaction_timer(visited, visit)
            if callback is not None:
                changes.timers.append(callback)
            changes.cancelled.append(sla_key(lead))
            changes.events.append(
                VisitCheckedInV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=visit.rep_id,
                    visit_id=visit.visit_id,
                    walk_in=visit.walk_in,
                )
            )
            return visited

        return await self._one(lead_id, actor, arrive)

    async def record_satisfaction(  # noqa: PLR0917 - the score's fields
        self,
        lead_id: str,
        visit_id: str,
        score: int,
        note: str | None,
        actor: Actor | str | None,
        now: datetime,
    ) -> Lead:
        """The next-day callback's score (1-10); below the threshold the manager is told
        (an escalated `SlaBreachedV1` with sla "satisfaction")."""

        async def score_it(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            scored = record_satisfaction(lead, visit_id, score, note, now)
            changes.cancelled.append(f"satisfaction:{lead_id}:{visit_id}")
            changes.events.append(
                SatisfactionRecordedV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=lead.rep_id,
                    visit_id=visit_id,
                    score=score,
                    note=note,
                )
            )
            if score < config.settings.satisfaction_alert_below and lead.rep_id:
                changes.events.append(
                    SlaBreachedV1(
                        lead_id=lead_id,
                        occurred_at=now,
                        rep_id=lead.rep_id,
                        sla="satisfaction",
                        due_at=now,
                        pool_id=lead.pool_id,
                        escalated_to=config.manager_of(lead.rep_id),
                    )
                )
            return scored

        return await self._one(lead_id, actor, score_it)

    async def convert(
        self,
        lead_id: str,
        conversion: Conversion,
        actor: Actor | str | None,
    ) -> Lead:
        """Won: customer id, revenue and plan; optionally an opportunity opened with it."""
        by = _as_actor(actor).rep_id
        now = conversion.converted_at

        async def win(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            converted = convert_lead(lead, conversion, by)
            changes.release(lead)
            changes.capacity_freed(config, lead.rep_id, now)
            rep_id = lead.rep_id or ""
            if conversion.opportunity_id is not None:
                changes.events.append(
                    OpportunityOpenedV1(
                        lead_id=lead_id,
                        occurred_at=now,
                        rep_id=rep_id,
                        opportunity_id=conversion.opportunity_id,
                        amount=conversion.opportunity_amount or 0.0,
                        currency=conversion.currency,
                        stage=conversion.opportunity_stage or "open",
                    )
                )
            changes.events.append(
                LeadConvertedV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=rep_id,
                    revenue=conversion.revenue,
                    currency=conversion.currency,
                    product=lead.profile.product_line,
                    customer_id=conversion.customer_id,
                    plan=conversion.plan,
                    opportunity_id=conversion.opportunity_id,
                )
            )
            return converted

        return await self._one(lead_id, actor, win)

    async def ask_help(
        self, lead_id: str, note: str | None, actor: Actor | str | None, now: datetime
    ) -> Lead:
        """The rep asks their manager for help (notified through `SlaBreachedV1` with sla
        "help", escalated to the manager); the manager may join the lead."""

        async def ask(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            asked = ask_help(lead, note, now)
            changes.events.append(
                SlaBreachedV1(
                    lead_id=lead_id,
                    occurred_at=now,
                    rep_id=lead.rep_id or "",
                    sla="help",
                    due_at=now,
                    pool_id=lead.pool_id,
                    escalated_to=config.manager_of(lead.rep_id),
                )
            )
            return asked

        return await self._one(lead_id, actor, ask)

    async def join(self, lead_id: str, actor: Actor, now: datetime) -> Lead:
        """A manager joins as second negotiator: they see and work the lead with the rep."""
        if actor.rep_id is None:
            raise RefusedError("only a manager who is a rep (has a rep id) can join a lead")
        helper = actor.rep_id

        async def join_it(
            leads: LeadsInTransaction, lead: Lead, config: RoutingConfig, changes: Changes
        ) -> Lead:
            if not actor.manages(lead.rep_id):
                raise NotOwnerError(lead_id)
            return join_lead(lead, helper, now)

        return await self._one(lead_id, actor, join_it)

    async def reassign(
        self,
        lead_ids: Sequence[str],
        to_rep: str | None,
        actor: Actor,
        now: datetime,
        *,
        how: str = "reassigned",
    ) -> list[Lead]:
        """Give leads to a named rep (bulk assign, reassign), or deal them again by the
        rules when no rep is named (bulk return). One transaction for all of them."""
        config = await self._configuration.get()
        if to_rep is not None:
            target = config.reps.get(to_rep)
            if target is None:
                raise NotFoundError("rep", to_rep)
            if not actor.manages(to_rep) and actor.rep_id != to_rep:
                raise NotOwnerError(to_rep)

        async def work(leads: LeadsInTransaction) -> tuple[list[Lead], list[Event]]:
            found = await leads.leads(lead_ids)
            changes = Changes()
            holders = {
                lead.rep_id for lead in found.values() if isinstance(lead, Lead) and lead.rep_id
            }
            changes.loads.update(await leads.last_assignments({*holders, to_rep or ""} - {""}))
            done: list[Lead] = []
            for lead_id in lead_ids:
                lead = found.get(lead_id)
                if not isinstance(lead, Lead):
                    raise NotFoundError("lead", lead_id)
                if not (actor.is_manager or actor.manages(lead.rep_id)):
                    raise NotOwnerError(lead_id)
                changes.release(lead)
                changes.capacity_freed(config, lead.rep_id, now)
                if to_rep is None:
                    again, _ = await redeal(
                        leads,
                        lead,
                        config,
                        changes,
                        now=now,
                        how="routed",
                        note=f"{how} by {actor.rep_id or 'manager'}",
                        also_skip={lead.rep_id: "handed back"} if lead.rep_id else None,
                    )
                else:
                    turn = await leads.take_turns(1)
                    again, routing = assign_to(
                        lead,
                        config.reps[to_rep],
                        config.pool(lead.pool_id),
                        config,
                        changes.load(to_rep),
                        turn=turn,
                        now=now,
                        how=how,
                        by=actor.rep_id,
                    )
                    changes.dealt(
                        Dealt(again, routing, how, lead.rep_id), config, now, by=actor.rep_id
                    )
                done.append(again)
            await changes.write(leads, done)
            return done, changes.events

        return await self._store.change_leads(work)

    async def handover(
        self, rep_id: str, to_rep: str | None, actor: Actor, now: datetime
    ) -> list[Lead]:
        """A rep leaves: every open lead goes to `to_rep` or is dealt again by the rules
        (never back to them), their history kept; the caller deactivates the rep."""
        if not actor.manages(rep_id):
            raise NotOwnerError(rep_id)

        async def held(leads: LeadsInTransaction) -> tuple[list[str], list[Event]]:
            return [lead.lead_id for lead in await leads.open_leads_of(rep_id)], []

        lead_ids = await self._store.change_leads(held)
        if not lead_ids:
            return []
        return await self.reassign(lead_ids, to_rep, Actor(None), now, how="handover")

    async def breach_sla(
        self,
        leads: LeadsInTransaction,
        lead: Lead,
        config: RoutingConfig,
        changes: Changes,
        *,
        due_at: datetime,
        now: datetime,
    ) -> Lead:
        """The first-response SLA ran out: tell, escalate, and hand on if the pool says so."""
        pool = config.pool(lead.pool_id)
        reassign = bool(pool and pool.sla_reassign)
        changes.events.append(
            SlaBreachedV1(
                lead_id=lead.lead_id,
                occurred_at=now,
                rep_id=lead.rep_id or "",
                sla="first_response",
                due_at=due_at,
                pool_id=lead.pool_id,
                escalated_to=config.manager_of(lead.rep_id),
                reassigned=reassign,
            )
        )
        if not reassign:
            return lead
        changes.release(lead)
        again, _ = await redeal(
            leads,
            lead,
            config,
            changes,
            now=now,
            how="reassigned",
            note="first-response SLA missed",
            also_skip={lead.rep_id: "missed the SLA"} if lead.rep_id else None,
        )
        return again
