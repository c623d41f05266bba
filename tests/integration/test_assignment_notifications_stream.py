"""`GET /v1/me/stream` and `GET /v1/notifications` over real HTTP (uvicorn on loopback),
read by an httpx streaming client, on the real broker and database.

The app here is the chassis with the notification routes and runtime only, so the stream
is tested apart from routing; `test_assignment_notifications_service` follows a lead
routed by the whole service.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.auth import Role
from leadflow.chassis.clock import system_clock
from leadflow.chassis.store import connect
from leadflow.sinks import MailSink
from services.assignment.notifications import api as notifications_api
from services.assignment.notifications.runtime import NotificationRuntime
from services.assignment.settings import Settings
from shared.events import LeadAssignedV1, SlaBreachedV1, utc_now
from tests.conftest import Keys
from tests.support.infra import Infra
from tests.support.services import settings_for
from tests.support.sse import over_http, read_events

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sink() -> Iterator[MailSink]:
    with MailSink() as running:
        yield running


@dataclass
class Stack:
    client: httpx.AsyncClient
    runtime: NotificationRuntime
    settings: Settings


@pytest.fixture
async def stack(infra: Infra, run_id: str, sink: MailSink) -> AsyncIterator[Stack]:
    settings = settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_assignment_{run_id}_{uuid.uuid4().hex[:6]}",
        smtp_host=sink.host,
        smtp_port=sink.port,
        stream_poll_interval_s=0.1,
        stream_heartbeat_s=0.5,
        notify_poll_s=0.2,
    )
    chassis = ServiceChassis("assignment", settings, clock=system_clock)
    runtime = NotificationRuntime(chassis, settings, clock=system_clock)
    app = chassis.build_app(
        title="notifications",
        description="the notification routes alone",
        version=__version__,
        routers=[notifications_api.router],
        startup=runtime.start,
        shutdown=runtime.stop,
        store=runtime.store,
        notifications=runtime,
    )
    client = connect(settings.mongo_url, app_name="test")
    await client[settings.database]["reps"].insert_many(
        [
            {"_id": "rita", "name": "Rita", "manager_id": "mona", "notify": {"channels": []}},
            {"_id": "sam", "name": "Sam", "manager_id": "mona"},
            {
                "_id": "mona",
                "name": "Mona",
                "notify": {"email": "mona@example.com", "channels": ["email"]},
            },
        ]
    )
    await client.close()
    async with over_http(app) as http:
        yield Stack(http, runtime, settings)


def assigned(rep_id: str) -> LeadAssignedV1:
    return LeadAssignedV1(lead_id=unique("lead"), rep_id=rep_id, pool_id="p", strategy="rr")


async def test_a_rep_follows_their_own_queue_as_server_sent_events(
    stack: Stack, keys: Keys
) -> None:
    rita = await keys.headers(Role.REP, rep_id="rita")
    for_rita, for_sam = assigned("rita"), assigned("sam")
    comments: list[str] = []

    async with stack.client.stream("GET", "/v1/me/stream", headers=rita) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        reading = asyncio.ensure_future(read_events(lines, count=1, comments=comments))
        await asyncio.sleep(0.5)
        await stack.runtime.plan([for_sam, for_rita])
        [event] = await asyncio.wait_for(reading, timeout=10)
        comments_seen = list(comments)
        more: list[str] = []
        await asyncio.wait_for(read_heartbeat(lines, more), timeout=5)

    assert event.event == "lead-assigned"
    assert event.data["lead_id"] == for_rita.lead_id
    assert event.id is not None and event.id.isdigit()
    assert comments_seen[0] == "following rita"
    assert "heartbeat" in more


async def read_heartbeat(lines: AsyncIterator[str], seen: list[str]) -> None:
    async for line in lines:
        if line.startswith(":"):
            seen.append(line[1:].strip())
            if "heartbeat" in seen:
                return


async def test_a_client_reconnecting_with_last_event_id_gets_what_it_missed(
    stack: Stack, keys: Keys
) -> None:
    rita = await keys.headers(Role.REP, rep_id="rita")
    first, missed = assigned("rita"), assigned("rita")

    async with stack.client.stream("GET", "/v1/me/stream", headers=rita) as response:
        reading = asyncio.ensure_future(read_events(response.aiter_lines(), count=1))
        await asyncio.sleep(0.5)
        await stack.runtime.plan([first])
        [seen] = await asyncio.wait_for(reading, timeout=10)
    await stack.runtime.plan([missed])  # while the client is away

    resume = {**rita, "Last-Event-ID": str(seen.id)}
    async with stack.client.stream("GET", "/v1/me/stream", headers=resume) as response:
        [caught_up] = await asyncio.wait_for(
            read_events(response.aiter_lines(), count=1), timeout=10
        )

    assert caught_up.data["lead_id"] == missed.lead_id
    assert int(str(caught_up.id)) > int(str(seen.id))


async def test_a_manager_follows_a_named_reps_queue(stack: Stack, keys: Keys) -> None:
    manager = await keys.headers(Role.MANAGER)
    lead = assigned("sam")

    async with stack.client.stream(
        "GET", "/v1/me/stream", params={"rep_id": "sam"}, headers=manager
    ) as response:
        reading = asyncio.ensure_future(read_events(response.aiter_lines(), count=1))
        await asyncio.sleep(0.5)
        await stack.runtime.plan([lead])
        [event] = await asyncio.wait_for(reading, timeout=10)

    assert event.data["lead_id"] == lead.lead_id


async def test_a_rep_who_manages_a_team_follows_a_team_members_queue(
    stack: Stack, keys: Keys
) -> None:
    mona = await keys.headers(Role.REP, rep_id="mona")  # rita and sam name mona as manager
    lead = assigned("sam")

    async with stack.client.stream(
        "GET", "/v1/me/stream", params={"rep_id": "sam"}, headers=mona
    ) as response:
        assert response.status_code == 200
        reading = asyncio.ensure_future(read_events(response.aiter_lines(), count=1))
        await asyncio.sleep(0.5)
        await stack.runtime.plan([lead])
        [event] = await asyncio.wait_for(reading, timeout=10)

    assert event.data["lead_id"] == lead.lead_id


async def test_who_may_follow_which_stream(stack: Stack, keys: Keys) -> None:
    rita = await keys.headers(Role.REP, rep_id="rita")
    manager = await keys.headers(Role.MANAGER)
    analyst = await keys.headers(Role.ANALYST)
    get = stack.client.get

    assert (await get("/v1/me/stream")).status_code == 401
    assert (await get("/v1/me/stream", headers=analyst)).status_code == 403
    assert (await get("/v1/me/stream", params={"rep_id": "sam"}, headers=rita)).status_code == 403
    assert (await get("/v1/me/stream", params={"rep_id": "mona"}, headers=rita)).status_code == 403
    no_rep = await get("/v1/me/stream", headers=manager)
    assert no_rep.status_code == 422
    assert no_rep.json()["detail"][0]["loc"] == ["query", "rep_id"]
    bad_resume = await get("/v1/me/stream", headers={**rita, "Last-Event-ID": "yesterday"})
    assert bad_resume.status_code == 422
    assert bad_resume.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]


async def test_failed_deliveries_are_listed_for_managers_and_a_rep_sees_only_their_own(
    stack: Stack, keys: Keys, sink: MailSink
) -> None:
    sink.refused["mona@example.com"] = 550
    manager = await keys.headers(Role.MANAGER)
    rita = await keys.headers(Role.REP, rep_id="rita")
    low = SlaBreachedV1(lead_id=unique("lead"), rep_id="rita", sla="satisfaction", due_at=utc_now())

    await stack.runtime.plan([low])

    async def failed() -> list[dict[str, Any]]:
        response = await stack.client.get(
            "/v1/notifications", params={"status": "failed"}, headers=manager
        )
        assert response.status_code == 200
        return list(response.json())

    deadline = asyncio.get_running_loop().time() + 15
    listed = await failed()
    while not any(n["lead_id"] == low.lead_id for n in listed):
        assert asyncio.get_running_loop().time() < deadline, listed
        await asyncio.sleep(0.2)
        listed = await failed()
    [delivery] = [n for n in listed if n["lead_id"] == low.lead_id]
    assert delivery["person_id"] == "mona"
    assert delivery["kind"] == "low-satisfaction"
    assert delivery["channel"] == "email"
    assert "550" in delivery["last_error"]
    own = await stack.client.get("/v1/notifications", headers=rita)
    assert own.status_code == 200
    assert all(n["person_id"] == "rita" for n in own.json())
    bad = await stack.client.get("/v1/notifications", params={"status": "lost"}, headers=manager)
    assert bad.status_code == 422
