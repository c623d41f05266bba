"""Analytics against the real Kafka-wire broker and MongoDB-wire server.

The session's analytics database is shared by every test that publishes events, so tests
compare a report before and after their own events, or use channels and leads of their own.
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from leadflow.chassis.auth import Role
from shared.events import (
    Attribution,
    Contact,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadEnrolledV1,
    LeadErasedV1,
    LeadLostV1,
    LeadMergedV1,
    LeadReceivedV1,
    VisitScheduledV1,
)
from shared.topics import dead_letter_topic, topic_for
from tests.conftest import Keys
from tests.support.infra import Infra
from tests.support.kafka import publish_event, publish_raw, read_topic
from tests.support.services import eventually

pytestmark = pytest.mark.integration

COUNTS = (
    "leads_received",
    "inquiries",
    "leads_assigned",
    "leads_lost",
    "leads_enrolled",
    "leads_converted",
)


def new_lead_id() -> str:
    return f"lead-{uuid.uuid4().hex}"


def lead_received(
    lead_id: str, at: datetime, channel: str = "web_form", name: str = "Dana Kim"
) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead_id,
        occurred_at=at,
        contact=Contact(name=name, email=f"{lead_id}@example.com"),
        attribution=Attribution(source="website", channel=channel, campaign="spring"),
        message="call me after six",
    )


def lead_merged(lead_id: str, at: datetime, channel: str = "web_form") -> LeadMergedV1:
    return LeadMergedV1(
        lead_id=lead_id,
        occurred_at=at,
        contact=Contact(email=f"{lead_id}@example.com"),
        attribution=Attribution(source="website", channel=channel),
        matched_on="email",
    )


async def summary_for(
    analytics: httpx.AsyncClient, keys: Keys, day: date, role: Role = Role.MANAGER
) -> dict[str, Any]:
    response = await analytics.get(
        "/v1/reports/summary",
        params={"from": day.isoformat(), "to": day.isoformat()},
        headers=await keys.headers(role),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return {**body["figures"], "from": body["from"], "to": body["to"]}


async def settled_summary(analytics: httpx.AsyncClient, keys: Keys, day: date) -> dict[str, Any]:
    """Today's summary once analytics has caught up with what other tests published.

    The session shares one broker: analytics may still be consuming other tests' events
    when a test starts, so a baseline is taken only when it stops moving.
    """
    previous = await summary_for(analytics, keys, day)
    for _ in range(60):
        await asyncio.sleep(1.0)
        current = await summary_for(analytics, keys, day)
        if current == previous:
            return current
        previous = current
    raise AssertionError("analytics never caught up with the events already published")


async def publish_all(infra: Infra, events: list[Event]) -> None:
    for event in events:
        await publish_event(infra.kafka_bootstrap, event)


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    moved: dict[str, Any] = {name: after[name] - before[name] for name in COUNTS}
    moved["lost_by_level"] = {
        level: after["lost_by_level"][level] - before["lost_by_level"][level]
        for level in ("1", "2", "3")
    }
    moved["revenue"] = {
        cur: round(after["revenue"].get(cur, 0.0) - before["revenue"].get(cur, 0.0), 2)
        for cur in set(after["revenue"]) | set(before["revenue"])
    }
    return moved


async def test_summary_counts_each_lead_once_per_stage(
    analytics: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    now = datetime.now(UTC)
    before = await settled_summary(analytics, keys, now.date())
    received, reassigned, lost, enrolled, sold = (new_lead_id() for _ in range(5))
    await publish_all(
        infra,
        [
            lead_received(received, now),
            lead_merged(received, now),
            LeadAssignedV1(lead_id=reassigned, occurred_at=now, rep_id="rep-a", strategy="rr"),
            LeadAssignedV1(
                lead_id=reassigned,
                occurred_at=now,
                rep_id="rep-b",
                strategy="reject",
                previous_rep_id="rep-a",
            ),
            LeadLostV1(lead_id=lost, occurred_at=now, rep_id="rep-a", level=2),
            LeadEnrolledV1(lead_id=enrolled, occurred_at=now, sequence_id="s1", reason="lost"),
            LeadConvertedV1(lead_id=sold, occurred_at=now, rep_id="rep-b", revenue=1250.5),
        ],
    )
    expected = {
        "leads_received": 1,
        "inquiries": 2,
        "leads_assigned": 1,
        "leads_lost": 1,
        "lost_by_level": {"1": 0, "2": 1, "3": 0},
        "leads_enrolled": 1,
        "leads_converted": 1,
        "revenue": {"USD": 1250.5},
    }

    async def moved() -> dict[str, Any]:
        return delta(await summary_for(analytics, keys, now.date()), before)

    assert await eventually(moved, lambda d: d == expected) == expected


async def test_the_same_event_twice_counts_once(
    analytics: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    now = datetime.now(UTC)
    before = await settled_summary(analytics, keys, now.date())
    lead_id = new_lead_id()
    event = lead_received(lead_id, now)
    # Same lead and topic, so the same partition: once the marker is recorded, so is
    # whatever the copy before it did.
    marker = lead_received(lead_id, now)
    await publish_all(infra, [event, event, marker])
    headers = await keys.headers(Role.ANALYST)

    async def recorded() -> list[str]:
        response = await analytics.get("/v1/events", params={"lead_id": lead_id}, headers=headers)
        return [e["event_id"] for e in response.json()["events"]]

    stored = await eventually(recorded, lambda ids: str(marker.event_id) in ids)
    assert sorted(stored) == sorted([str(event.event_id), str(marker.event_id)])
    moved = delta(await summary_for(analytics, keys, now.date()), before)
    assert (moved["leads_received"], moved["inquiries"]) == (1, 2)
    # A copy is recognised, not failed and parked.
    parked = await read_topic(
        infra.kafka_bootstrap, dead_letter_topic(topic_for(event)), until=10_000, timeout_s=2
    )
    assert not [
        value
        for value, headers in parked
        if str(event.event_id).encode() in value and headers.get("x-dlq-service") == "analytics"
    ]


async def test_garbage_goes_to_the_dead_letter_topic_and_later_events_still_count(
    analytics: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    topic = topic_for(LeadReceivedV1)
    garbage = f"not an event {uuid.uuid4().hex}".encode()
    lead_id = new_lead_id()
    await publish_raw(infra.kafka_bootstrap, topic, garbage, key=lead_id)
    now = datetime.now(UTC)
    before = await settled_summary(analytics, keys, now.date())
    await publish_event(infra.kafka_bootstrap, lead_received(lead_id, now))

    async def parked() -> list[tuple[bytes, dict[str, str]]]:
        return await read_topic(
            infra.kafka_bootstrap, dead_letter_topic(topic), until=10_000, timeout_s=2
        )

    def ours(found: list[tuple[bytes, dict[str, str]]]) -> list[dict[str, str]]:
        # Every service consuming the topic parks its own copy; find analytics' one.
        return [h for v, h in found if v == garbage and h.get("x-dlq-service") == "analytics"]

    [headers] = ours(await eventually(parked, lambda found: bool(ours(found))))
    assert headers["x-dlq-original-topic"] == topic
    assert headers["x-dlq-error"].startswith("not JSON")

    async def received_since() -> int:
        after = await summary_for(analytics, keys, now.date())
        moved: int = after["leads_received"] - before["leads_received"]
        return moved

    await eventually(received_since, lambda n: n >= 1)


async def test_csv_reports_match_their_json(
    analytics: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    now = datetime.now(UTC)
    channel = f"=cmd-{uuid.uuid4().hex[:8]}"  # a channel a spreadsheet would run
    first, second = new_lead_id(), new_lead_id()
    await publish_all(
        infra,
        [
            lead_received(first, now, channel),
            lead_merged(first, now, channel),
            lead_received(second, now, channel),
        ],
    )
    day = now.date().isoformat()
    headers = await keys.headers(Role.MARKETING)
    params = {"from": day, "to": day}

    async def channel_row() -> dict[str, Any] | None:
        response = await analytics.get("/v1/reports/channels", params=params, headers=headers)
        table = response.json()["tables"]["channels"]["rows"]
        rows = [r for r in table if r["channel"] == channel]
        return rows[0] if rows else None

    await eventually(channel_row, lambda r: r is not None and r["leads_received"] == 2)
    # The sale travels on another topic; published after the lead is known, as in life,
    # it is credited to the lead's channel.
    sale = LeadConvertedV1(lead_id=first, occurred_at=now, rep_id="rep-a", revenue=99.9)
    await publish_event(infra.kafka_bootstrap, sale)
    row = await eventually(channel_row, lambda r: r is not None and r["leads_converted"] == 1)
    assert row == {
        "channel": channel,
        "inquiries": 3,
        "leads_received": 2,
        "contacted": 0,
        "visits": 0,
        "leads_converted": 1,
        "conversion_rate": 0.5,
        "revenue": {"USD": 99.9},
    }

    channels_csv = await analytics.get(
        "/v1/reports/channels", params={**params, "format": "csv"}, headers=headers
    )
    assert channels_csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in channels_csv.headers["content-disposition"]
    csv_rows = list(csv.DictReader(io.StringIO(channels_csv.text)))
    ours = [r for r in csv_rows if r["channel"] == "'" + channel]
    assert len(ours) == 1
    wanted = ("inquiries", "leads_received", "leads_converted", "revenue_USD")
    assert {k: ours[0][k] for k in wanted} == {
        "inquiries": "3",
        "leads_received": "2",
        "leads_converted": "1",
        "revenue_USD": "99.90",
    }

    summary_json = await summary_for(analytics, keys, now.date(), Role.MARKETING)
    summary_csv = await analytics.get(
        "/v1/reports/summary", params=params, headers={**headers, "Accept": "text/csv"}
    )
    assert summary_csv.headers["content-type"].startswith("text/csv")
    (summary_row,) = list(csv.DictReader(io.StringIO(summary_csv.text)))
    assert summary_json["from"] == summary_json["to"] == day
    assert "summary_summary_" + day in summary_csv.headers["content-disposition"]
    # Other tests' events may land between the two reads; they only ever add.
    for name in COUNTS:
        assert int(summary_row[name]) >= summary_json[name]
    for level in ("1", "2", "3"):
        assert int(summary_row[f"lost_level_{level}"]) >= summary_json["lost_by_level"][level]
    assert float(summary_row["revenue_USD"]) >= summary_json["revenue"]["USD"]


async def test_summary_defaults_to_month_to_date(analytics: httpx.AsyncClient, keys: Keys) -> None:
    response = await analytics.get("/v1/reports/summary", headers=await keys.headers(Role.ANALYST))
    assert response.status_code == 200
    body = response.json()
    today = datetime.now(UTC).date()
    assert body["to"] in {today.isoformat(), (today + timedelta(days=1)).isoformat()}
    assert body["from"] == date.fromisoformat(body["to"]).replace(day=1).isoformat()


async def test_lead_timeline_lists_events_oldest_first_and_forgets_erased_personal_data(
    analytics: httpx.AsyncClient, keys: Keys, infra: Infra
) -> None:
    lead_id = new_lead_id()
    start = datetime.now(UTC) - timedelta(hours=3)
    visit = VisitScheduledV1(
        lead_id=lead_id,
        occurred_at=start + timedelta(hours=2),
        rep_id="rep-a",
        visit_id="v1",
        scheduled_for=start + timedelta(days=1),
    )
    assignment = LeadAssignedV1(
        lead_id=lead_id, occurred_at=start + timedelta(hours=1), rep_id="rep-a", strategy="rr"
    )
    received = lead_received(lead_id, start)
    # Published newest first, on three topics: the timeline orders by when things happened.
    await publish_all(infra, [visit, assignment, received])
    headers = await keys.headers(Role.ANALYST)

    async def timeline() -> list[dict[str, Any]]:
        response = await analytics.get("/v1/events", params={"lead_id": lead_id}, headers=headers)
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    events = await eventually(timeline, lambda found: len(found) == 3)
    assert [e["event_type"] for e in events] == [
        "lead-received",
        "lead-assigned",
        "visit-scheduled",
    ]
    assert [e["event_id"] for e in events] == [
        str(received.event_id),
        str(assignment.event_id),
        str(visit.event_id),
    ]
    assert events[0]["payload"]["contact"]["name"] == "Dana Kim"
    assert events[0]["payload"]["attribution"]["channel"] == "web_form"

    await publish_event(infra.kafka_bootstrap, LeadErasedV1(lead_id=lead_id))
    after = await eventually(timeline, lambda found: len(found) == 4)
    stored = next(e for e in after if e["event_type"] == "lead-received")
    assert "contact" not in stored["payload"]
    assert "message" not in stored["payload"]
    assert stored["payload"]["attribution"]["channel"] == "web_form"


async def test_reports_need_a_key_with_a_reporting_role(
    analytics: httpx.AsyncClient, keys: Keys
) -> None:
    for path in ("/v1/reports/summary", "/v1/reports/channels", "/v1/events?lead_id=x"):
        assert (await analytics.get(path)).status_code == 401, path
        for role in (Role.REP, Role.INGEST):
            headers = await keys.headers(role, "rep-a" if role is Role.REP else None)
            response = await analytics.get(path, headers=headers)
            assert response.status_code == 403, (path, role)
    marketing = await keys.headers(Role.MARKETING)
    assert (await analytics.get("/v1/reports/channels", headers=marketing)).status_code == 200
    timeline = await analytics.get("/v1/events?lead_id=x", headers=marketing)
    assert timeline.status_code == 403


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"from": "2026-13-01"}, "from", "date"),
        ({"to": "yesterday"}, "to", "date"),
        ({"from": "2026-05-02", "to": "2026-05-01"}, "from", "after"),
        ({"from": "2000-01-01", "to": "2026-01-01"}, "from", "at most"),
        ({"format": "xml"}, "format", "json"),
        ({"month": "2026-5"}, "month", "not a month"),
        ({"month": "2026-05", "from": "2026-05-01"}, "month", "not both"),
        ({"tz": "Nowhere/Else"}, "tz", "unknown time zone"),
        ({"tz": "Asia/Kathmandu"}, "tz", "whole number of hours"),
        ({"format": "csv", "table": "nope"}, "table", "has the tables"),
    ],
)
async def test_bad_report_query_is_a_422_naming_the_field(
    analytics: httpx.AsyncClient, keys: Keys, params: dict[str, str], field: str, reason: str
) -> None:
    headers = await keys.headers(Role.MANAGER)
    for path in ("/v1/reports/summary", "/v1/reports/channels", "/v1/reports/monthly"):
        response = await analytics.get(path, params=params, headers=headers)
        assert response.status_code == 422, response.text
        errors = response.json()["detail"]
        assert any(e["loc"] == ["query", field] and reason in e["msg"] for e in errors), errors


async def test_timeline_needs_a_lead_id(analytics: httpx.AsyncClient, keys: Keys) -> None:
    response = await analytics.get("/v1/events", headers=await keys.headers(Role.MANAGER))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "lead_id"]
