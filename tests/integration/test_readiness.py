"""Readiness means the first request is served at full speed, not merely that a port is open.

A service that consumes reports ready only once its consumer group has joined; intake, which
consumes nothing, once its Kafka producer is connected, or (so it still takes leads when
Kafka is down) after a grace period. Before this, intake said ready before its producer had
connected, and the first lead after `up` took seconds to go out.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from asgi_lifespan import LifespanManager

from leadflow.localinfra import free_port
from services.intake.app import create_app
from services.intake.settings import Settings
from tests.support.infra import Infra
from tests.support.services import eventually, serve, settings_for

pytestmark = pytest.mark.integration


async def test_intake_is_ready_only_once_kafka_is_connected(infra: Infra) -> None:
    settings = settings_for(Settings, infra, uuid.uuid4().hex[:8])
    async with LifespanManager(create_app(settings), startup_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first_ready = await eventually(
                lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout_s=45
            )
    assert first_ready.json()["checks"]["kafka"] is True


async def test_intake_without_kafka_is_ready_after_its_grace_period(infra: Infra) -> None:
    nowhere = Infra(infra.kind, f"127.0.0.1:{free_port()}", infra.mongo_url)
    settings = settings_for(Settings, nowhere, uuid.uuid4().hex[:8], kafka_startup_grace_s=2)
    async with LifespanManager(create_app(settings), startup_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            early = await client.get("/readyz")
            assert early.status_code == 503
            assert early.json()["checks"]["kafka"] is False
            late = await eventually(
                lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout_s=10
            )
            assert late.json()["checks"]["mongodb"] is True


async def test_a_consumer_is_ready_only_once_its_group_has_joined(infra: Infra) -> None:
    from services.analytics.app import create_app as analytics_app  # noqa: PLC0415
    from services.analytics.settings import Settings as AnalyticsSettings  # noqa: PLC0415

    settings = settings_for(AnalyticsSettings, infra, uuid.uuid4().hex[:8])
    async with serve(analytics_app(settings)) as analytics:
        ready = await analytics.get("/readyz")
        assert ready.json()["checks"] == {"mongodb": True, "kafka": True, "consumer_group": True}
