"""Composition root of intake: the front door for leads."""

from __future__ import annotations

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.batching import GroupCommit
from leadflow.chassis.clock import Clock, system_clock
from services.intake import api, config_api, forms_api
from services.intake.handlers import register_handlers
from services.intake.http import FORM_TYPES, JSON_TYPES, BodyGuard, BodyRule
from services.intake.imports import api as imports_api
from services.intake.ratelimit import LimitsFormRateLimit
from services.intake.settings import Settings
from services.intake.store import MongoIntakeStore
from services.intake.usecases import (
    AcceptLeads,
    AcceptSubmissions,
    Configuration,
    IdempotentRequests,
    RecordConversions,
)
from services.intake.webhooks import api as webhooks_api

SERVICE = "intake"

ACCEPT_MAX_BATCH = 500
"""Most leads accepted in one transaction (a burst beyond it goes in several)."""


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or Settings()
    # Intake takes leads while Kafka is down (its outbox keeps them): its one consumer
    # (conversions, for look-ups) must not hold readiness back.
    chassis = ServiceChassis(SERVICE, settings, clock=clock, ready_while_kafka_down=True)
    store = MongoIntakeStore(chassis.database, chassis.ledger)
    configuration = Configuration(store, max_age_s=settings.configuration_max_age_s)
    accept_leads = AcceptLeads(store, icp=configuration.icp)
    lead_acceptor: api.LeadAcceptor = GroupCommit(
        accept_leads, max_batch=ACCEPT_MAX_BATCH, name="accept-leads"
    )
    # The batch entry point of every channel (see AcceptSubmissions).
    accept_submissions = AcceptSubmissions(
        accept_leads,
        default_region=settings.default_region,
        clock=clock,
        sources=configuration.sources,
    )
    form_rate_limit = LimitsFormRateLimit.on_mongodb(
        settings.mongo_url, chassis.database.name, settings.form_rate_limit
    )
    register_handlers(chassis, RecordConversions(store))

    async def shutdown() -> None:
        # Before the chassis closes the database the committer writes to.
        await lead_acceptor.stop()
        form_rate_limit.close()

    app = chassis.build_app(
        title="leadflow intake",
        description="Accepts leads from forms, ad platforms and front desks; normalises, "
        "de-duplicates, scores and publishes them.",
        version=__version__,
        routers=[
            api.router,
            forms_api.router,
            config_api.router,
            webhooks_api.router,
            imports_api.router,
        ],
        startup=store.ensure_indexes,
        shutdown=shutdown,
        store=store,
        lead_acceptor=lead_acceptor,
        accept_submissions=accept_submissions,
        configuration=configuration,
        idempotent_requests=IdempotentRequests(store, clock=clock),
        form_rate_limit=form_rate_limit,
    )
    app.add_middleware(
        BodyGuard,
        default=BodyRule("/", settings.max_body_bytes, JSON_TYPES),
        rules=[
            BodyRule("/v1/forms/", settings.max_body_bytes, FORM_TYPES, "/submissions"),
            # The webhooks check their own bodies (signatures over the raw bytes); the
            # CSV upload takes files far larger than a JSON request.
            BodyRule("/v1/webhooks/", settings.max_body_bytes, None),
            BodyRule("/v1/imports", settings.import_max_bytes, None, streamed=True),
        ],
    )
    return app
