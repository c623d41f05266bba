"""A busy service stops promptly on SIGTERM (what Ctrl-C on `up` and every orchestrator send).

Nurture and analytics are started as processes, handed a few thousand events, and sent
SIGTERM while they work through them. Each must exit on its own, well before
the supervisor's 20 s kill; what it had not committed is delivered again to whoever
consumes next, and the inbox recognises what was handled.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from leadflow.localinfra import LocalInfra, running
from leadflow.replicas import ReplicaSet
from shared.events import Attribution, Contact, LeadLostV1, LeadReceivedV1
from shared.topics import topic_for

pytestmark = pytest.mark.e2e

EVENTS = 3_000
PROMPT_EXIT_S = 10.0


@pytest.fixture
def infra(tmp_path: Path) -> Iterator[LocalInfra]:
    with running(tmp_path / "infra", persistent=False) as local:
        yield local


async def flood(bootstrap: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        pending = []
        for n in range(count):
            lead_id = f"busy-{n}-{uuid.uuid4().hex[:6]}"
            received = LeadReceivedV1(
                lead_id=lead_id,
                contact=Contact(name="Dana", email=f"{lead_id}@example.com"),
                attribution=Attribution(source="website", channel="web_form"),
            )
            lost = LeadLostV1(lead_id=lead_id, level=3, rep_id="r1")
            for event in (received, lost):
                pending.append(
                    await producer.send(
                        topic_for(event), event.model_dump_json().encode(), key=lead_id.encode()
                    )
                )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def test_busy_consumers_exit_promptly_on_sigterm(infra: LocalInfra, tmp_path: Path) -> None:
    replicas = ReplicaSet(
        infra.kafka_bootstrap, infra.mongo_url, uuid.uuid4().hex[:8], tmp_path / "logs"
    )
    try:
        replicas.start("nurture", 1)
        replicas.start("analytics", 1)
        replicas.wait_ready()
        asyncio.run(flood(infra.kafka_bootstrap, EVENTS // 2))
        time.sleep(2)  # well into the backlog
        stopping = {r.child.name: r.child.process for r in replicas if r.child.process}
        started = time.monotonic()
        for process in stopping.values():
            assert process is not None
            process.send_signal(signal.SIGTERM)
        took = {}
        for name, process in stopping.items():
            assert process is not None
            remaining = max(0.1, started + 30 - time.monotonic())
            code = process.wait(timeout=remaining)
            took[name] = time.monotonic() - started
            # uvicorn shuts down gracefully, then re-raises the signal it caught, so the
            # parent sees "ended by SIGTERM" rather than a plain 0.
            assert code in (0, -signal.SIGTERM), f"{name} exited with {code}; see the logs"
        slow = {name: round(s, 1) for name, s in took.items() if s > PROMPT_EXIT_S}
        assert slow == {}, f"slow to stop after SIGTERM: {slow}"
    finally:
        replicas.stop()
