"""The scripted month through the real broker and database: every report over HTTP shows
the figures the scenario computes by itself; a second analytics reading every topic from
the earliest offset into an empty database shows the same reports; an event of an unknown
type is stored and counted, not parked.

The session's broker is shared: the scenario has a month and reps, pools and campaigns of
its own, and figures that are "as of now" are compared through its own reps only.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest

from leadflow.chassis.auth import Role
from services.analytics.settings import Settings
from tests.conftest import Keys
from tests.support.analytics_scenario import Scenario, build, expected, publish_all
from tests.support.infra import Infra
from tests.support.kafka import publish_raw, read_topic
from tests.support.services import eventually, serve, settings_for

pytestmark = pytest.mark.integration

MONTH = date(2026, 9, 1)
PERIOD_REPORTS = ("monthly", "channels", "campaigns", "losses", "walk-ins", "nurture", "forecast")


@pytest.fixture(scope="module")
async def scenario(infra: Infra) -> Scenario:
    month = build(MONTH, f"s{uuid.uuid4().hex[:6]}")
    await publish_all(infra.kafka_bootstrap, month.events())
    return month


async def report(client: httpx.AsyncClient, keys: Keys, name: str, **params: str) -> dict[str, Any]:
    response = await client.get(
        f"/v1/reports/{name}",
        params={"month": MONTH.strftime("%Y-%m"), **params},
        headers=await keys.headers(Role.ANALYST),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def settled(client: httpx.AsyncClient, keys: Keys, scenario: Scenario) -> None:
    """Wait until every scenario event has been counted: the month's last sale, loss and
    nurture message are in, and the figures stop moving."""
    want = expected(scenario, datetime.now(UTC))

    async def figures() -> tuple[Any, ...]:
        monthly = await report(client, keys, "monthly")
        nurture = await report(client, keys, "nurture")
        losses = await report(client, keys, "losses")
        return (monthly["figures"], nurture["figures"]["sent"], losses["figures"]["losses"])

    sent = sum(row.get("sent", 0) for row in want["nurture"].values())
    await eventually(
        figures,
        lambda f: (
            f[0]["inquiries"] == want["monthly"]["inquiries"]
            and f[0]["sales"] == want["monthly"]["sales"]
            and f[1] == sent
            and f[2] == want["losses"]["total"]
        ),
        timeout_s=90,
        interval_s=1.0,
    )


async def snapshot(client: httpx.AsyncClient, keys: Keys, scenario: Scenario) -> dict[str, Any]:
    out = {name: await report(client, keys, name) for name in PERIOD_REPORTS}
    for rep in scenario.reps:
        out[f"reps/{rep}"] = await report(client, keys, "reps", rep=rep)
        out[f"speed/{rep}"] = await report(client, keys, "speed", rep=rep)
    return out


async def test_every_report_shows_the_scenario_figures(
    analytics: httpx.AsyncClient, keys: Keys, scenario: Scenario
) -> None:
    await settled(analytics, keys, scenario)
    got = await snapshot(analytics, keys, scenario)
    want = expected(scenario, datetime.now(UTC))
    for name, value in want["monthly"].items():
        assert got["monthly"]["figures"][name] == value, name
    for name, value in want["monthly_previous"].items():
        assert got["monthly"]["figures"]["previous"][name] == value, name
    channels = {r["channel"]: r for r in got["channels"]["tables"]["channels"]["rows"]}
    for channel, figures in want["channels"].items():
        for name, value in figures.items():
            assert channels[channel][name] == value, (channel, name)
    campaigns = {r["campaign"]: r for r in got["campaigns"]["tables"]["campaigns"]["rows"]}
    for campaign, figures in want["campaigns"].items():
        for name, value in figures.items():
            assert campaigns[campaign][name] == value, (campaign, name)
    for rep, figures in want["reps"].items():
        (row,) = got[f"reps/{rep}"]["tables"]["reps"]["rows"]
        for name, value in figures.items():
            assert row[name] == value, (rep, name)
    contacts = sum(got[f"speed/{rep}"]["figures"]["first_contacts"] for rep in scenario.reps)
    assert contacts == want["speed"]["first_contacts"]
    breaches = sum(got[f"speed/{rep}"]["figures"]["sla_breaches"] for rep in scenario.reps)
    assert breaches == want["speed"]["sla_breaches"]
    levels = {r["level"]: r["losses"] for r in got["losses"]["tables"]["by_level"]["rows"]}
    assert levels == want["losses"]["by_level"]
    for name in ("walk_in_leads", "contact_kept", "retention_rate", "below_8", "below_8_share"):
        assert got["walk-ins"]["figures"][name] == want["walk_ins"][name], name
    steps = {
        (r["sequence"], r["step"]): {
            k: r[k]
            for k in (
                "sent",
                "delivered",
                "opened",
                "clicked",
                "replied",
                "opted_out",
                "requalified",
            )
            if r[k]
        }
        for r in got["nurture"]["tables"]["steps"]["rows"]
    }
    assert steps == want["nurture"]
    funnel = {r["stage"]: r["leads"] for r in got["forecast"]["tables"]["funnel"]["rows"]}
    assert funnel == want["forecast"]["reached"]


@pytest.fixture
async def replayed(infra: Infra, run_id: str) -> AsyncIterator[httpx.AsyncClient]:
    """A second analytics on an empty database, its consumer group new: it reads every
    topic from the earliest offset."""
    fresh = uuid.uuid4().hex[:6]
    settings = settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_analytics_replay_{fresh}",
        consumer_group=f"leadflow-analytics-replay-{fresh}",
    )
    from services.analytics.app import create_app  # noqa: PLC0415

    async with serve(create_app(settings)) as client:
        yield client


def differences(got: Any, want: Any, path: str = "") -> list[str]:
    """Every leaf where `got` and `want` differ, by its path, to say what a replay changed."""
    if isinstance(got, dict) and isinstance(want, dict):
        return [
            line
            for key in sorted(set(got) | set(want), key=str)
            for line in differences(got.get(key), want.get(key), f"{path}/{key}")
        ]
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [
            line
            for n, (a, b) in enumerate(zip(got, want, strict=True))
            for line in differences(a, b, f"{path}[{n}]")
        ]
    return [] if got == want else [f"{path}: replay {got!r}, live {want!r}"]


async def test_a_replay_from_the_earliest_offset_gives_the_same_reports(
    analytics: httpx.AsyncClient, replayed: httpx.AsyncClient, keys: Keys, scenario: Scenario
) -> None:
    await settled(analytics, keys, scenario)
    # Each consumer reads each topic at its own pace, and the session's other tests have put
    # thousands of events on some of them: the two converge on the same reports, not at once.
    deadline = time.monotonic() + 120
    while True:
        live = await snapshot(analytics, keys, scenario)
        again = await snapshot(replayed, keys, scenario)
        if again == live or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    assert differences(again, live) == []


async def test_an_unknown_event_is_stored_and_counted_not_parked(
    analytics: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    topic = "assignment.lead-assigned.v1"
    today = datetime.now(UTC).date().isoformat()
    headers = await keys.headers(Role.ANALYST)

    async def unknown() -> int:
        response = await analytics.get(
            "/v1/reports/ingest", params={"from": today, "to": today}, headers=headers
        )
        assert response.status_code == 200, response.text
        return int(response.json()["figures"]["unknown_events"])

    before = await unknown()
    lead_id = f"lead-{uuid.uuid4().hex}"
    event_id = str(uuid.uuid4())
    value = json.dumps(
        {
            "event_id": event_id,
            "event_type": "lead-teleported",
            "schema_version": 3,
            "lead_id": lead_id,
            "occurred_at": datetime.now(UTC).isoformat(),
            "destination": "mars",
        }
    ).encode()
    await publish_raw(infra.kafka_bootstrap, topic, value, key=lead_id)
    await eventually(unknown, lambda n: n >= before + 1, timeout_s=30)
    timeline = await analytics.get(
        "/v1/events", params={"lead_id": lead_id}, headers=await keys.headers(Role.MANAGER)
    )
    (stored,) = timeline.json()["events"]
    assert (stored["event_id"], stored["payload"]["destination"]) == (event_id, "mars")
    metrics = (await analytics.get("/metrics")).text
    assert 'leadflow_analytics_unknown_events_total{event_type="lead-teleported",version="3"}' in (
        metrics
    )
    await asyncio.sleep(1)
    parked = await read_topic(infra.kafka_bootstrap, f"{topic}.dlq", until=10_000, timeout_s=2)
    assert not [
        v for v, h in parked if event_id.encode() in v and h.get("x-dlq-service") == "analytics"
    ]
