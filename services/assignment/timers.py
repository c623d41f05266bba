"""Assignment's timers, fired by the chassis' `DueWorkRunner`: one transaction per batch
does every effect, publishes the events and completes the timers (`finish`), so a timer
two replicas both claimed (a lapsed lease) commits its effects once.

- `sla`: the first-response SLA ran out (business time) -> `SlaBreachedV1` escalated to the
  manager, and the lead dealt to the next rep if the pool says so;
- `deal`: deal a pool's queue (a shift starts, capacity freed, a rep came back);
- `forgotten`: an open lead without activity for N days -> the rep is reminded
  (`SlaBreachedV1` with sla "forgotten"), then the manager `escalate_after_hours` later;
- `follow-up`: the grade's follow-up is overdue -> the rep is reminded, then the manager;
- `satisfaction`: the next-day callback after a visit is due -> a task on the lead.

Every firing re-checks the lead's state, so a timer whose reason went away (first contact
made, lead closed, follow-up done) does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog

from leadflow.chassis.clock import Clock
from leadflow.chassis.duework import ClaimedWork
from services.assignment.rules import (
    Dealt,
    Lead,
    RoutingConfig,
    Timer,
    TimerKind,
    deal,
    deal_timer,
    open_callback,
    routed,
)
from services.assignment.store import AssignmentStore, LeadsInTransaction
from services.assignment.usecases import ConfigurationCache
from services.assignment.workflow import Changes, WorkLeads
from shared.events import Event, SlaBreachedV1

log = structlog.get_logger(__name__)

TIMER_KINDS = tuple(kind.value for kind in TimerKind)
QUEUE_BATCH = 200
"""Most waiting leads one `deal` firing deals (the rest are dealt by the next)."""


class FireTimers:
    def __init__(
        self,
        store: AssignmentStore,
        configuration: ConfigurationCache,
        workflow: WorkLeads,
        *,
        clock: Clock,
    ) -> None:
        self._store = store
        self._configuration = configuration
        self._workflow = workflow
        self._clock = clock

    async def __call__(self, batch: list[ClaimedWork]) -> None:
        config = await self._configuration.get()
        now = self._clock()

        async def fire(leads: LeadsInTransaction) -> tuple[int, list[Event]]:
            changes = Changes()
            lead_ids = {
                str(c.work.payload["lead_id"]) for c in batch if "lead_id" in c.work.payload
            }
            found = {k: v for k, v in (await leads.leads(lead_ids)).items() if isinstance(v, Lead)}
            # Reps' routing state is needed only where a lead may change hands (an SLA that
            # reassigns); a plain breach or reminder reads none.
            holders = {
                lead.rep_id
                for lead in found.values()
                if lead.rep_id and _may_reassign(lead, config)
            }
            changes.loads.update(await leads.last_assignments(holders))
            changed: dict[str, Lead] = {}
            for claimed in batch:
                work = claimed.work
                if work.kind == TimerKind.DEAL:
                    for lead in await self._deal_queue(
                        leads, str(work.payload["pool_id"]), config, changes, now
                    ):
                        changed[lead.lead_id] = lead
                    continue
                lead_id = str(work.payload.get("lead_id"))
                current = changed.get(lead_id) or found.get(lead_id)
                if current is None:
                    continue
                after = await self._fire_on_lead(
                    leads=leads,
                    claimed=claimed,
                    lead=current,
                    config=config,
                    changes=changes,
                    now=now,
                )
                if after is not current:
                    changed[after.lead_id] = after
            # The fired timers are completed by `finish`: cancelling or rescheduling one of
            # them here would void this very claim.
            firing = {claimed.work.key for claimed in batch}
            changes.cancelled = [key for key in changes.cancelled if key not in firing]
            changes.timers = [timer for timer in changes.timers if timer.key not in firing]
            await changes.write(leads, list(changed.values()))
            await leads.finish(batch)
            return len(changes.events), changes.events

        published = await self._store.change_leads(fire)
        log.info("timers fired", timers=len(batch), events=published)

    async def _fire_on_lead(
        self,
        *,
        leads: LeadsInTransaction,
        claimed: ClaimedWork,
        lead: Lead,
        config: RoutingConfig,
        changes: Changes,
        now: datetime,
    ) -> Lead:
        work = claimed.work
        match work.kind:
            case TimerKind.SLA:
                number = int(work.key.rsplit(":", 1)[-1])
                if not lead.is_open or lead.first_contact_at is not None:
                    return lead
                if lead.assignments != number:
                    return lead  # dealt again since: that assignment has its own clock
                return await self._workflow.breach_sla(
                    leads, lead, config, changes, due_at=work.due_at, now=now
                )
            case TimerKind.FORGOTTEN:
                return self._forgotten(claimed, lead, config, changes, now)
            case TimerKind.FOLLOW_UP:
                return self._follow_up(claimed, lead, config, changes, now)
            case TimerKind.SATISFACTION:
                return open_callback(lead, str(work.payload["visit_id"]), now)
            case _:
                log.warning("timer of an unknown kind ignored", key=work.key, kind=work.kind)
                return lead

    def _forgotten(
        self,
        claimed: ClaimedWork,
        lead: Lead,
        config: RoutingConfig,
        changes: Changes,
        now: datetime,
    ) -> Lead:
        """Like a follow-up: the rep is reminded, then the manager after
        `escalate_after_hours` if the lead is still untouched."""
        work = claimed.work
        last = lead.last_activity_at or lead.assigned_at
        days = config.settings.forgotten_after_days
        if not lead.is_open or last is None or days is None:
            return lead
        if last + timedelta(days=days) > now + timedelta(seconds=1):
            return lead  # worked on since; the newer timer stands
        if work.payload.get("stage") == "manager":
            if work.payload.get("since") != last.isoformat():
                return lead  # worked on (and forgotten again) since the rep was reminded
            manager = config.manager_of(lead.rep_id)
            due_at = datetime.fromisoformat(str(work.payload.get("due", work.due_at.isoformat())))
            changes.events.append(_reminder(lead, "forgotten", due_at, now, manager))
            return lead
        changes.events.append(_reminder(lead, "forgotten", work.due_at, now, None))
        changes.timers.append(
            Timer(
                # Keyed by the activity it counts from: one manager reminder per silence.
                f"{TimerKind.FORGOTTEN}:{lead.lead_id}:manager:{last.isoformat()}",
                TimerKind.FORGOTTEN,
                now + timedelta(hours=config.settings.escalate_after_hours),
                {
                    "lead_id": lead.lead_id,
                    "stage": "manager",
                    "since": last.isoformat(),
                    "due": work.due_at.isoformat(),
                },
            )
        )
        return lead

    def _follow_up(
        self,
        claimed: ClaimedWork,
        lead: Lead,
        config: RoutingConfig,
        changes: Changes,
        now: datetime,
    ) -> Lead:
        due = lead.next_follow_up_at
        if not lead.is_open or due is None or due > now + timedelta(seconds=1):
            return lead
        if claimed.work.payload.get("stage") == "manager":
            if claimed.work.payload.get("due") != due.isoformat():
                return lead  # followed up (and due again) since the rep was reminded
            manager = config.manager_of(lead.rep_id)
            changes.events.append(_reminder(lead, "follow_up", due, now, manager))
            return lead
        changes.events.append(_reminder(lead, "follow_up", due, now, None))
        changes.timers.append(
            Timer(
                f"{TimerKind.FOLLOW_UP}:{lead.lead_id}:manager:{due.isoformat()}",
                TimerKind.FOLLOW_UP,
                now + timedelta(hours=config.settings.escalate_after_hours),
                {"lead_id": lead.lead_id, "stage": "manager", "due": due.isoformat()},
            )
        )
        return lead

    async def _deal_queue(
        self,
        leads: LeadsInTransaction,
        pool_id: str,
        config: RoutingConfig,
        changes: Changes,
        now: datetime,
    ) -> Sequence[Lead]:
        """Deal the pool's waiting leads, longest waiting first, while reps can take them."""
        pool = config.pool(pool_id)
        if pool is None:
            return []
        waiting = await leads.queued(pool_id, QUEUE_BATCH)
        if not waiting:
            return []
        people = {*pool.rep_ids, pool.default_assignee or ""} - {""}
        missing = [r for r in people if r not in changes.loads]
        changes.loads.update(await leads.last_assignments(missing))
        turn = await leads.take_turns(len(waiting))
        dealt: list[Lead] = []
        wake_at: datetime | None = None
        for lead in waiting:
            routing = deal(
                pool,
                config,
                changes.loads,
                turn=turn,
                now=now,
                passing_over={
                    **{r: "returned this lead" for r in lead.returned_by},
                    **{r: "rejected this lead" for r in lead.rejected_by},
                },
                profile=lead.profile,
                note="dealt from the pool's queue",
            )
            if routing.rep is None:
                wake_at = routing.wake_at if wake_at is None else wake_at
                continue
            turn += 1
            again = routed(lead, routing, config, now, how="routed")
            dealt.append(changes.dealt(Dealt(again, routing, "routed"), config, now))
        if wake_at is not None and wake_at > now:
            changes.timers.append(deal_timer(pool_id, wake_at))
        if len(waiting) == QUEUE_BATCH and dealt:
            changes.timers.append(deal_timer(pool_id, now + timedelta(milliseconds=1)))
        return dealt


def _may_reassign(lead: Lead, config: RoutingConfig) -> bool:
    pool = config.pool(lead.pool_id)
    return pool is not None and pool.sla_reassign


def _reminder(
    lead: Lead, sla: str, due_at: datetime, now: datetime, escalated_to: str | None
) -> SlaBreachedV1:
    return SlaBreachedV1(
        lead_id=lead.lead_id,
        occurred_at=now,
        rep_id=lead.rep_id or "",
        sla=sla,
        due_at=due_at,
        pool_id=lead.pool_id,
        escalated_to=escalated_to,
    )
