"""Two assignment processes on one broker and database, as ops would run them: every lead
assigned once and fairly, with the pool made on one replica and used by both.
(Two replicas firing each SLA timer once is tested with an injected clock in
tests/integration/test_assignment_http_workflow.py: here it would mean waiting a minute.)

Its own broker and database (in memory); leads are published straight to
`intake.lead-received.v1`, so only assignment runs.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from leadflow.chassis.auth import Role
from leadflow.keys import create_key
from leadflow.localinfra import LocalInfra, running
from leadflow.replicas import ReplicaSet
from shared.events import (
    Attribution,
    Contact,
    LeadAssignedV1,
    LeadReceivedV1,
    Profile,
)
from shared.topics import topic_for
from tests.support.kafka import read_all
from tests.support.services import eventually, quick_join_environment

pytestmark = pytest.mark.e2e

LEADS = 200
REPS = [f"rep-{n}" for n in range(4)]


@pytest.fixture
def infra(tmp_path: Path) -> Iterator[LocalInfra]:
    with running(tmp_path / "infra", persistent=False) as local:
        yield local


@pytest.fixture
def replicas(infra: LocalInfra, tmp_path: Path) -> Iterator[ReplicaSet]:
    replica_set = ReplicaSet(
        infra.kafka_bootstrap,
        infra.mongo_url,
        uuid.uuid4().hex[:8],
        tmp_path / "logs",
        extra_env=quick_join_environment("assignment"),
    )
    try:
        replica_set.start("assignment", 2)
        replica_set.wait_ready()
        yield replica_set
    finally:
        replica_set.stop()


async def publish(bootstrap: str, events: list[LeadReceivedV1]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:
            await producer.send(
                topic_for(event), event.model_dump_json().encode(), key=event.lead_id.encode()
            )
        await producer.flush()
    finally:
        await producer.stop()


async def events_on(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(value) for value, _ in await read_all(bootstrap, topic)]


async def test_two_replicas_assign_each_lead_once_and_fairly(
    replicas: ReplicaSet,
) -> None:
    issued = await create_key(
        replicas.mongo_url, f"leadflow_identity_{replicas.run_id}", Role.ADMIN, "replica test"
    )
    first, second = (replica.url for replica in replicas.of("assignment"))
    async with httpx.AsyncClient(headers={"X-API-Key": issued.key}, timeout=30) as client:
        for rep_id in REPS:
            created = await client.post(f"{first}/v1/reps", json={"rep_id": rep_id, "name": rep_id})
            assert created.status_code == 201, created.text
        # The pool is made on the other replica: both route on it within a second.
        pool = await client.post(
            f"{second}/v1/pools",
            json={
                "pool_id": "all",
                "name": "All",
                "rep_ids": REPS,
                "is_default": True,
            },
        )
        assert pool.status_code == 201, pool.text

    events = [
        LeadReceivedV1(
            lead_id=f"lead-{n}-{uuid.uuid4().hex[:6]}",
            contact=Contact(name=f"Lead {n}"),
            attribution=Attribution(source="e2e", channel="web_form"),
            profile=Profile(region="anywhere"),
        )
        for n in range(LEADS)
    ]
    await publish(replicas.kafka_bootstrap, events)
    bootstrap = replicas.kafka_bootstrap

    assigned = await eventually(
        lambda: events_on(bootstrap, topic_for(LeadAssignedV1)),
        lambda found: len({e["lead_id"] for e in found}) >= LEADS,
        timeout_s=180,
        interval_s=1.0,
    )
    per_lead = Counter(event["lead_id"] for event in assigned)
    assert set(per_lead) == {e.lead_id for e in events}
    assert set(per_lead.values()) == {1}  # no lead assigned twice
    per_rep = Counter(event["rep_id"] for event in assigned)
    assert all(abs(count - LEADS / len(REPS)) <= 1 for count in per_rep.values()), per_rep
