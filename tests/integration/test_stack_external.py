"""`leadflow up` pointed at an existing Kafka and MongoDB uses them and starts neither."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from leadflow.config import SERVICES, StackSettings
from leadflow.localinfra import free_port
from leadflow.supervisor import Stack
from tests.support.infra import Infra

pytestmark = pytest.mark.integration

RETRIES = 4
"""Tries of the lead's POST while intake answers 503 (the database busy a moment)."""


def test_up_uses_an_external_kafka_and_mongodb_and_starts_neither(
    infra: Infra, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4().hex[:8]
    for service in SERVICES:
        prefix = f"LEADFLOW_{service.upper()}_"
        monkeypatch.setenv(f"{prefix}PORT", str(free_port()))
        monkeypatch.setenv(f"{prefix}DATABASE", f"leadflow_{service}_external_{run}")
        monkeypatch.setenv(f"{prefix}CONSUMER_GROUP", f"leadflow-{service}-external-{run}")
    # The sinks on ports of their own, not the defaults another stack may hold.
    monkeypatch.setenv("LEADFLOW_MAIL_SINK_PORT", str(free_port()))
    monkeypatch.setenv("LEADFLOW_SINKS_HTTP_PORT", str(free_port()))
    settings = StackSettings(
        data_dir=tmp_path,
        kafka_bootstrap=infra.kafka_bootstrap,
        mongo_url=infra.mongo_url,
        identity_database=f"leadflow_identity_external_{run}",
    )
    stack = Stack(settings)
    try:
        ready = stack.start()
        # No broker, no database started: only the local mail and SMS sinks.
        assert [child.name for child in stack.infra.children] == ["sinks (mail + SMS)"]
        assert ready.kafka_bootstrap == infra.kafka_bootstrap
        assert ready.mongo_url == infra.mongo_url
        assert ready.kafka_storage == "external"
        for url in ready.services.values():
            assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        # The session's database is shared with every other test's services: a busy
        # moment there is not what this test is about. Intake then answers 503 with
        # Retry-After (nothing stored), and a client sends the lead again, as here.
        for _ in range(RETRIES):
            posted = httpx.post(
                f"{ready.services['intake']}/v1/leads",
                json={"email": f"{run}@example.com"},
                headers={"X-API-Key": ready.admin_key},
                timeout=60,
            )
            if posted.status_code != 503:
                break
            time.sleep(float(posted.headers["Retry-After"]))
        assert posted.status_code == 201, posted.text
    finally:
        stack.stop()
    assert all(not service.child.alive() for service in stack.services)
