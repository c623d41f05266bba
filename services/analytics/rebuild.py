"""`leadflow analytics rebuild`: every roll-up again from the event store.

Run it with analytics stopped (or scaled to zero): a consumer recording events while the
roll-ups are rebuilt would count its events twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from leadflow.chassis.app import HANDLED_MARGIN
from leadflow.chassis.clock import system_clock
from leadflow.chassis.store import EventLedger, connect
from services.analytics.settings import Settings
from services.analytics.store import MongoAnalyticsStore
from services.analytics.usecases import RebuildRollups


async def rebuild_rollups(
    settings: Settings,
    *,
    on_total: Callable[[int], None] = lambda _: None,
    on_progress: Callable[[int], None] = lambda _: None,
    chunk: int = 1000,
) -> int:
    """Rebuild analytics' roll-ups in `settings.database`; returns the events tallied."""
    client = connect(settings.mongo_url, app_name="leadflow-analytics-rebuild")
    try:
        database = client[settings.database]
        ledger = EventLedger(
            client,
            database,
            handled_retention=timedelta(hours=settings.topic_retention_hours) + HANDLED_MARGIN,
            clock=system_clock,
            transaction_timeout_s=max(settings.transaction_timeout_s, 60.0),
        )
        store = MongoAnalyticsStore(
            database, ledger, clock=system_clock, month_zone=settings.report_timezone
        )
        await store.ensure_indexes()
        on_total(await store.events_stored())
        return await RebuildRollups(store, clock=system_clock, chunk=chunk)(on_progress)
    finally:
        await client.close()
