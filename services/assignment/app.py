"""Composition root of assignment: routing leads to reps and the sales workflow."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.clock import Clock, system_clock
from leadflow.chassis.duework import DueWorkRunner
from leadflow.chassis.tasks import cancel_and_wait
from services.assignment import api
from services.assignment.handlers import register_handlers
from services.assignment.notifications import api as notifications_api
from services.assignment.notifications.runtime import NotificationRuntime
from services.assignment.settings import Settings
from services.assignment.store import MongoAssignmentStore
from services.assignment.timers import TIMER_KINDS, FireTimers
from services.assignment.usecases import ManageTeam, RouteLeads, configuration_cache
from services.assignment.workflow import WorkLeads

SERVICE = "assignment"


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings, clock=clock)
    store = MongoAssignmentStore(chassis.database, chassis.ledger)
    configuration = configuration_cache(store, max_age_s=settings.configuration_max_age_s)
    notifications = NotificationRuntime(chassis, settings, clock=clock, due_work=store.due_work)
    register_handlers(chassis, RouteLeads(store, configuration, clock=clock), notifications)
    workflow = WorkLeads(store, configuration)
    runner = DueWorkRunner(
        store.due_work,
        kinds=TIMER_KINDS,
        fire=FireTimers(store, configuration, workflow, clock=clock),
        clock=clock,
        batch_size=settings.timer_batch_size,
        lease_s=settings.timer_lease_s,
        idle_poll_s=settings.timer_poll_s,
    )
    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        await store.ensure_indexes()
        await notifications.start()
        tasks.append(asyncio.create_task(runner.run(), name="assignment-timers"))

    async def shutdown() -> None:
        await notifications.stop()
        await runner.stop()
        await cancel_and_wait(tasks)

    return chassis.build_app(
        title="leadflow assignment",
        description="Routes each lead to the right rep within seconds and runs the sales "
        "workflow: reps, pools, territory rules, fair routing in working hours, the rep's and "
        "manager's work on leads, and timers (SLA, follow-ups, reminders, callbacks).",
        version=__version__,
        routers=[api.router, notifications_api.router],
        startup=startup,
        shutdown=shutdown,
        store=store,
        team=ManageTeam(store, configuration, clock=clock),
        leads=workflow,
        timers=runner,
        notifications=notifications,
        configuration=configuration,
    )
