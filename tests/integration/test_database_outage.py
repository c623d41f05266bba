"""MongoDB dies and comes back: requests get 503 with Retry-After, consumers pause and resume.

The scenario kills the database process itself, so it runs on its own broker and database
(kept on disk, as `leadflow up` keeps them).
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from leadflow.chassis.auth import Role
from leadflow.keys import create_key
from leadflow.localinfra import ChildProcess, LocalInfra, running
from services.analytics.app import create_app as analytics_app
from services.analytics.settings import Settings as AnalyticsSettings
from services.intake.app import create_app as intake_app
from services.intake.settings import Settings as IntakeSettings
from shared.events import Attribution, Contact, LeadReceivedV1
from shared.topics import ALL_TOPICS, dead_letter_topic
from tests.support.infra import Infra
from tests.support.kafka import publish_event, read_topics
from tests.support.services import eventually, serve, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInfra]:
    with running(
        tmp_path_factory.mktemp("db-outage"),
        persistent=True,
    ) as infra:
        yield infra


def mongo_of(infra: LocalInfra) -> ChildProcess:
    [mongo] = [c for c in infra.children if c.name.startswith("mongodb")]
    return mongo


def crash(child: ChildProcess) -> None:
    assert child.process is not None
    os.kill(child.process.pid, signal.SIGKILL)
    child.process.wait(timeout=10)


async def test_intake_answers_503_with_retry_after_while_the_database_is_down(
    own_infra: LocalInfra,
) -> None:
    infra = Infra("local", own_infra.kafka_bootstrap, own_infra.mongo_url)
    settings = settings_for(IntakeSettings, infra, uuid.uuid4().hex[:8], transaction_timeout_s=3)
    issued = await create_key(infra.mongo_url, settings.identity_database, Role.INGEST, "form")
    headers = {"X-API-Key": issued.key}
    mongo = mongo_of(own_infra)
    async with serve(intake_app(settings)) as intake:
        before = await intake.post("/v1/leads", json={"phone": "+14155550111"}, headers=headers)
        assert before.status_code == 201, before.text
        crash(mongo)
        try:
            during = await intake.post("/v1/leads", json={"phone": "+14155550112"}, headers=headers)
            assert during.status_code == 503, during.text
            assert during.headers["Retry-After"] == "5"
            assert "database" in during.json()["detail"]
        finally:
            mongo.start()
            mongo.wait_until_listening(30)
        after = await eventually(
            lambda: intake.post("/v1/leads", json={"phone": "+14155550112"}, headers=headers),
            lambda response: response.status_code != 503,
            timeout_s=30,
        )
        assert after.status_code == 201, after.text
        found = await intake.get(f"/v1/leads/{before.json()['lead_id']}", headers=headers)
        assert found.status_code == 200  # accepted before the crash, still there


async def test_events_wait_while_the_database_is_down_and_none_is_parked(
    own_infra: LocalInfra,
) -> None:
    infra = Infra("local", own_infra.kafka_bootstrap, own_infra.mongo_url)
    run_id = uuid.uuid4().hex[:8]
    settings = settings_for(AnalyticsSettings, infra, run_id, transaction_timeout_s=3)
    issued = await create_key(infra.mongo_url, settings.identity_database, Role.ANALYST, "a")
    headers = {"X-API-Key": issued.key}
    mongo = mongo_of(own_infra)
    channel = f"outage-{run_id}"
    today = datetime.now(UTC).date().isoformat()

    async def received_on_channel() -> int:
        response = await analytics.get(
            "/v1/reports/channels", params={"from": today, "to": today}, headers=headers
        )
        rows = [row for row in response.json()["channels"] if row["channel"] == channel]
        return rows[0]["leads_received"] if rows else 0

    async with serve(analytics_app(settings)) as analytics:
        crash(mongo)
        try:
            for n in range(5):
                await publish_event(
                    infra.kafka_bootstrap,
                    LeadReceivedV1(
                        lead_id=f"outage-{run_id}-{n}",
                        contact=Contact(name="Dana"),
                        attribution=Attribution(source="website", channel=channel),
                    ),
                )
            ready = await analytics.get("/readyz")
            assert ready.status_code == 503  # the database check fails meanwhile
        finally:
            mongo.start()
            mongo.wait_until_listening(30)
        assert await eventually(received_on_channel, lambda count: count == 5, timeout_s=60) == 5
    parked = await read_topics(infra.kafka_bootstrap, map(dead_letter_topic, ALL_TOPICS))
    for records in parked.values():
        assert [value for value, _ in records if channel.encode() in value] == []
