"""`leadflow analytics rebuild` (the real command, in its own process) rebuilds every
roll-up from the event store: reports after a rebuild of damaged roll-ups equal the ones
recorded live."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from leadflow.chassis.store import Database, EventLedger, connect
from services.analytics.reports import ReportQuery
from services.analytics.store import MongoAnalyticsStore
from services.analytics.usecases import REPORTS, BuildReport, RecordEvents
from tests.support.analytics_scenario import build
from tests.support.infra import Infra

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MONTH = date(2026, 7, 1)
NOW = datetime(2026, 8, 3, 12, tzinfo=UTC)


@pytest.fixture
async def database(infra: Infra) -> AsyncIterator[Database]:
    client = connect(infra.mongo_url, app_name="rebuild-test")
    db = client[f"leadflow_analytics_rebuild_{uuid.uuid4().hex[:8]}"]
    try:
        yield db
    finally:
        await client.drop_database(db.name)
        await client.close()


async def reports(store: MongoAnalyticsStore) -> dict[str, Any]:
    query = ReportQuery(MONTH, date(2026, 7, 31), ZoneInfo("UTC"), {}, now=NOW)
    build_report = BuildReport(store)
    return {name: (await build_report(name, query)).as_json() for name in REPORTS}


async def test_the_rebuild_command_restores_every_rollup(infra: Infra, database: Database) -> None:
    ledger = EventLedger(
        database.client, database, handled_retention=timedelta(days=8), clock=lambda: NOW
    )
    store = MongoAnalyticsStore(database, ledger, clock=lambda: NOW)
    await store.ensure_indexes()
    events = build(MONTH, "r").events()
    record = RecordEvents(store, clock=lambda: NOW)
    for start in range(0, len(events), 200):
        await record(events[start : start + 200])
    live = await reports(store)
    assert live["monthly"]["figures"]["inquiries"] > 0

    # Damaged roll-ups: counters gone (folded and waiting), a lead's facts gone.
    await store.compact(max_batches=2)
    await database["counters"].delete_many({})
    await database["month_counters"].delete_many({})
    await database["counter_deltas"].delete_many({})
    await database["lead_facts"].delete_one({})
    assert (await reports(store))["monthly"]["figures"]["inquiries"] == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env.update(
        {
            "LEADFLOW_ANALYTICS_MONGO_URL": infra.mongo_url,
            "LEADFLOW_ANALYTICS_DATABASE": database.name,
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "leadflow",
        "analytics",
        "rebuild",
        "--chunk",
        "150",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode == 0, output.decode()
    assert f"from {len(events)} stored events" in output.decode()
    assert await reports(store) == live


async def test_month_rollups_give_the_figures_of_the_hourly_counters(
    infra: Infra, database: Database
) -> None:
    """Whole months of the report zone are read from the month roll-ups, folded batch by
    batch into the same months; a store built for another zone reads the hourly counters
    only, and every report, with and without a filter, is the same either way."""
    ledger = EventLedger(
        database.client, database, handled_retention=timedelta(days=8), clock=lambda: NOW
    )
    seoul = ZoneInfo("Asia/Seoul")
    store = MongoAnalyticsStore(database, ledger, clock=lambda: NOW, month_zone=seoul)
    await store.ensure_indexes()
    scenario = build(MONTH, "m")
    events = scenario.events()
    record = RecordEvents(store, clock=lambda: NOW)
    for start in range(0, len(events), 40):
        await record(events[start : start + 40])
        await store.compact(max_batches=5)
    while await store.compact(max_batches=5):
        pass
    assert await database["month_counters"].count_documents({"zone": "Asia/Seoul"}) > 0
    hourly_only = MongoAnalyticsStore(
        database, ledger, clock=lambda: NOW, month_zone=ZoneInfo("UTC")
    )
    await hourly_only.ensure_indexes()

    for filters in ({}, {"rep": scenario.reps[0]}):
        query = ReportQuery(MONTH, date(2026, 7, 31), seoul, filters, now=NOW)
        for name in REPORTS:
            via_months = (await BuildReport(store)(name, query)).as_json()
            via_hours = (await BuildReport(hourly_only)(name, query)).as_json()
            assert via_months == via_hours, (name, filters)
    whole = ReportQuery(MONTH, date(2026, 7, 31), seoul, {}, now=NOW)
    assert (await BuildReport(store)("monthly", whole)).as_json()["figures"]["inquiries"] > 0
