"""Wiring of the ad webhooks inside intake's app: built when the app starts (its router's
lifespan), from what `create_app` put on `app.state`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import structlog
from fastapi import FastAPI

from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.clock import Clock
from leadflow.chassis.config_cache import VersionedCache
from leadflow.chassis.duework import DueWorkRunner
from leadflow.chassis.store import Document, MongoDueWork
from services.intake.settings import Settings
from services.intake.webhooks.graph import GraphClient
from services.intake.webhooks.rules import key_digest
from services.intake.webhooks.store import AD_LEAD_WORK, AdDelivery, AdLeadStore, MongoAdLeadStore
from services.intake.webhooks.submissions import SubmitLeads
from services.intake.webhooks.usecases import RecordAdLeads, RetryPolicy, SettleAdLeads

log = structlog.get_logger(__name__)

DUE_WORK_COLLECTION = "due_work"


@dataclass
class AdWebhooks:
    """What the webhook routes use."""

    store: AdLeadStore
    settings: Settings
    clock: Clock
    recorder: RecordAdLeads
    forms: VersionedCache[dict[str, Document]]

    async def record(self, deliveries: Sequence[AdDelivery]) -> list[str]:
        return await self.recorder(deliveries)

    async def google_key_digest(self, form_id: str) -> str | None:
        """The SHA-256 of the form's key: registered through the API, else in settings."""
        stored = (await self.forms.get()).get(form_id)
        if stored is not None:
            return str(stored["key_sha256"])
        configured = self.settings.google_lead_form_keys.get(form_id)
        return None if configured is None else key_digest(configured.get_secret_value())

    async def save_google_form(self, form_id: str, digest: str, source: str | None) -> None:
        await self.store.save_google_form(form_id, digest, source, self.clock())
        self.forms.invalidate()


@contextlib.asynccontextmanager
async def ad_webhooks_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the chassis' lifespan: the database is connected, the intake store ready."""
    chassis: ServiceChassis = app.state.chassis
    settings: Settings = app.state.settings
    clock: Clock = app.state.clock
    due_work = MongoDueWork(chassis.database, DUE_WORK_COLLECTION)
    store = MongoAdLeadStore(chassis.database, chassis.ledger, due_work)
    await store.ensure_indexes()
    graph = GraphClient(
        base_url=settings.meta_graph_base_url,
        version=settings.meta_graph_version,
        access_token=settings.meta_page_access_token.get_secret_value(),
        timeout_s=settings.meta_graph_timeout_s,
    )
    settle = SettleAdLeads(
        store,
        graph,
        SubmitLeads(app.state.accept_submissions),
        clock,
        RetryPolicy(
            base_s=settings.ad_lead_retry_base_s,
            max_s=settings.ad_lead_retry_max_s,
            max_attempts=settings.ad_lead_max_attempts,
        ),
    )
    runner = DueWorkRunner(
        due_work,
        kinds={AD_LEAD_WORK},
        fire=settle,
        clock=clock,
        batch_size=settings.ad_lead_batch_size,
        lease_s=settings.ad_lead_lease_s,
        retry_backoff_s=settings.ad_lead_retry_base_s,
        max_attempts=settings.ad_lead_max_attempts,
        max_backoff_s=settings.ad_lead_retry_max_s,
    )
    app.state.ad_webhooks = AdWebhooks(
        store=store,
        settings=settings,
        clock=clock,
        recorder=RecordAdLeads(store, clock, runner.wake),
        forms=VersionedCache(store.google_forms_version, store.google_forms, max_age_s=1.0),
    )
    task = asyncio.create_task(runner.run(), name="intake-ad-leads")
    try:
        yield
    finally:
        await runner.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await graph.close()
