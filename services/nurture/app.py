"""Composition root of nurture: sequences that keep not-yet-ready leads warm."""

from __future__ import annotations

from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.clock import Clock, system_clock
from leadflow.chassis.config_cache import VersionedCache
from services.nurture import api
from services.nurture.channels.runtime import build_channels
from services.nurture.handlers import register_handlers
from services.nurture.rules import DEFAULT_SEQUENCES, SequenceCatalog
from services.nurture.settings import Settings
from services.nurture.store import MongoNurtureStore
from services.nurture.usecases import ApplyLeadEvents, EnrollByHand, Sequences

SERVICE = "nurture"


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings, clock=clock)
    store = MongoNurtureStore(chassis.database, chassis.ledger)
    catalog: VersionedCache[SequenceCatalog] = VersionedCache(
        store.sequences_version, store.sequence_catalog
    )
    sequences = Sequences(store, catalog, clock=clock)
    zone = settings.default_timezone
    apply_lead_events = ApplyLeadEvents(store, sequences, default_timezone=zone, clock=clock)
    register_handlers(chassis, apply_lead_events)
    channels = build_channels(settings, chassis.database, chassis.ledger, clock=clock)

    async def startup() -> None:
        await store.ensure_indexes()
        await channels.start()
        await sequences.seed(DEFAULT_SEQUENCES)

    return chassis.build_app(
        title="leadflow nurture",
        description="Email/SMS sequences for leads that are not ready to buy: enrollment on "
        "loss level 2/3 or by marketing, stopped when sales takes the lead again.",
        version=__version__,
        routers=[api.router, channels.router],
        startup=startup,
        shutdown=channels.stop,
        store=store,
        sequences=sequences,
        enroll_by_hand=EnrollByHand(store, sequences, default_timezone=zone, clock=clock),
        apply_lead_events=apply_lead_events,
        channels=channels,
    )
