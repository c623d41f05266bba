"""The service chassis on in-memory parts: outbox relay, dead letters, API keys."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import httpx
import pytest
from bson import ObjectId
from fastapi import Depends, FastAPI
from faststream.kafka import KafkaMessage, TestKafkaBroker
from pydantic import Field
from pymongo.errors import ConnectionFailure

from leadflow.chassis.auth import Authenticator, Principal, Role, hash_key, issue_key, require
from leadflow.chassis.kafka import KafkaRuntime
from leadflow.chassis.outbox import OutboxRelay
from leadflow.chassis.store import Document, OutboxRecord
from shared.events import Attribution, Contact, LeadLostV1, LeadReceivedV1
from shared.settings import ServiceSettings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
Message = tuple[str, bytes, bytes | None, dict[str, str]]


# --- outbox relay ---------------------------------------------------------------------------


class FakeLedger:
    def __init__(self, count: int) -> None:
        self.records = [
            OutboxRecord(
                ObjectId(),
                "intake.lead-received.v1",
                f"L{i}",
                f"e{i}",
                "lead-received",
                f'{{"n": {i}}}'.encode(),
            )
            for i in range(count)
        ]
        self.published: set[object] = set()

    async def pending(self, limit: int) -> list[OutboxRecord]:
        return [r for r in self.records if r.record_id not in self.published][:limit]

    async def mark_published(self, record_ids: Sequence[object], now: datetime) -> None:
        self.published.update(record_ids)


class FlakyKafka:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[Message] = []
        self.all_sent = asyncio.Event()
        self.expected = 0

    async def publish_batch(self, messages: list[Message]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("kafka is down")
        self.sent.extend(messages)
        if len(self.sent) >= self.expected:
            self.all_sent.set()


def relay_for(ledger: FakeLedger, kafka: FlakyKafka, batch_size: int = 2) -> OutboxRelay:
    return OutboxRelay(
        "test",
        ledger,
        kafka.publish_batch,
        poll_interval_s=0.01,
        batch_size=batch_size,
        clock=lambda: NOW,
    )


async def test_relay_publishes_in_commit_order_keyed_by_lead() -> None:
    ledger, kafka = FakeLedger(5), FlakyKafka(failures=0)
    relay = relay_for(ledger, kafka)
    while await relay.relay_once():
        pass
    assert [m[2] for m in kafka.sent] == [b"L0", b"L1", b"L2", b"L3", b"L4"]
    assert kafka.sent[0][3]["event-id"] == "e0"
    assert len(ledger.published) == 5


async def test_events_wait_in_the_outbox_while_kafka_is_down() -> None:
    ledger, kafka = FakeLedger(3), FlakyKafka(failures=2)
    kafka.expected = 3
    relay = relay_for(ledger, kafka, batch_size=10)
    ready = asyncio.Event()
    ready.set()
    task = asyncio.create_task(relay.run(ready))
    try:
        await asyncio.wait_for(kafka.all_sent.wait(), timeout=5)
    finally:
        task.cancel()
    assert [m[2] for m in kafka.sent] == [b"L0", b"L1", b"L2"]
    assert len(ledger.published) == 3


# --- dead letters -----------------------------------------------------------------------------

Consumed = Annotated[LeadReceivedV1 | LeadLostV1, Field(discriminator="event_type")]


def lead_received(lead_id: str) -> bytes:
    event = LeadReceivedV1(
        lead_id=lead_id, contact=Contact(name="x"), attribution=Attribution(source="s", channel="c")
    )
    return event.model_dump_json().encode()


async def test_poison_messages_are_parked_and_the_consumer_carries_on() -> None:
    runtime = KafkaRuntime(
        "test", ServiceSettings(consumer_max_attempts=3, consumer_retry_backoff_s=0)
    )
    handled: list[str] = []
    attempts: dict[str, int] = {}

    @runtime.subscriber("intake.lead-received.v1", "assignment.lead-lost.v1")
    async def on_event(event: Consumed) -> None:
        attempts[event.lead_id] = attempts.get(event.lead_id, 0) + 1
        if event.lead_id == "always-fails":
            raise RuntimeError("database on fire")
        handled.append(event.lead_id)

    parked: list[tuple[bytes, dict[str, str]]] = []

    @runtime.broker.subscriber("intake.lead-received.v1.dlq", "assignment.lead-lost.v1.dlq")
    async def on_dead_letter(message: KafkaMessage) -> None:
        parked.append((message.body, message.headers))

    headers = {"content-type": "application/json"}
    async with TestKafkaBroker(runtime.broker) as broker:
        await broker.publish(b"{not json", "intake.lead-received.v1", headers=headers)
        await broker.publish(
            b'{"lead_id": "L9", "level": 7, "event_type": "lead-lost"}',
            "assignment.lead-lost.v1",
            headers=headers,
        )
        await broker.publish(
            lead_received("always-fails"), "intake.lead-received.v1", headers=headers
        )
        await broker.publish(lead_received("fine"), "intake.lead-received.v1", headers=headers)

    assert handled == ["fine"]
    assert attempts["always-fails"] == 3
    assert [body[:9] for body, _ in parked] == [b"{not json", b'{"lead_id', b'{"event_i']
    errors = [headers["x-dlq-error"] for _, headers in parked]
    assert errors[0].startswith("not JSON")
    assert "level" in errors[1]
    assert errors[2] == "RuntimeError: database on fire"
    assert [headers["x-dlq-attempts"] for _, headers in parked] == ["1", "1", "3"]
    assert parked[1][1]["x-dlq-original-topic"] == "assignment.lead-lost.v1"


async def test_an_unreachable_database_makes_events_wait_instead_of_parking_them() -> None:
    runtime = KafkaRuntime(
        "test", ServiceSettings(consumer_max_attempts=1, consumer_retry_backoff_s=0)
    )
    outages = [ConnectionFailure("mongo is restarting")] * 3
    handled: list[str] = []

    @runtime.subscriber("intake.lead-received.v1")
    async def on_event(event: LeadReceivedV1) -> None:
        if outages:
            raise outages.pop()
        handled.append(event.lead_id)

    parked: list[bytes] = []

    @runtime.broker.subscriber("intake.lead-received.v1.dlq")
    async def on_dead_letter(message: KafkaMessage) -> None:
        parked.append(message.body)

    async with TestKafkaBroker(runtime.broker) as broker:
        await broker.publish(
            lead_received("L1"),
            "intake.lead-received.v1",
            headers={"content-type": "application/json"},
        )
    assert handled == ["L1"]
    assert parked == []


# --- API keys -------------------------------------------------------------------------------


class FakeKeyStore:
    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}
        self.lookups = 0

    async def find(self, key_hash: str) -> Document | None:
        self.lookups += 1
        return self.documents.get(key_hash)


def test_a_rep_key_must_name_its_rep_and_only_a_rep_key_may() -> None:
    with pytest.raises(ValueError, match="rep-id"):
        issue_key(Role.REP, "no rep", None, NOW)
    with pytest.raises(ValueError, match="rep-id"):
        issue_key(Role.MANAGER, "manager", "r1", NOW)
    issued, document = issue_key(Role.REP, "Rita", "r1", NOW)
    assert issued.principal.rep_id == "r1"
    assert document["_id"] == hash_key(issued.key) != issued.key
    assert issued.key not in str(document)


async def test_keys_are_cached_for_their_ttl() -> None:
    store = FakeKeyStore()
    issued, document = issue_key(Role.ANALYST, "Ann", None, NOW)
    store.documents[document["_id"]] = document
    clock = [0.0]
    authenticator = Authenticator(store, ttl_s=30, clock=lambda: clock[0])
    assert (await authenticator.principal_for(issued.key)) == issued.principal
    assert (await authenticator.principal_for(issued.key)) == issued.principal
    assert store.lookups == 1
    clock[0] = 31
    await authenticator.principal_for(issued.key)
    assert store.lookups == 2
    assert await authenticator.principal_for("lf_unknown") is None


async def test_missing_key_is_401_wrong_role_403_right_role_and_admin_pass() -> None:
    store = FakeKeyStore()
    keys = {}
    for role in (Role.MANAGER, Role.REP, Role.ADMIN):
        issued, document = issue_key(role, str(role), "r1" if role is Role.REP else None, NOW)
        store.documents[document["_id"]] = document
        keys[role] = issued.key
    app = FastAPI()
    app.state.authenticator = Authenticator(store, ttl_s=0)

    @app.get("/pools")
    async def pools(who: Annotated[Principal, Depends(require(Role.MANAGER))]) -> str:
        return who.role.value

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/pools")).status_code == 401
        assert (await client.get("/pools", headers={"X-API-Key": "lf_x_y"})).status_code == 401
        rep = await client.get("/pools", headers={"X-API-Key": keys[Role.REP]})
        assert rep.status_code == 403
        assert "role 'rep'" in rep.json()["detail"]
        for role in (Role.MANAGER, Role.ADMIN):
            ok = await client.get("/pools", headers={"X-API-Key": keys[role]})
            assert ok.json() == role.value
