"""Composition root of nurture: sequences that keep not-yet-ready leads warm."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import structlog
from fastapi import FastAPI

from leadflow import __version__
from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.clock import Clock, system_clock
from leadflow.chassis.config_cache import VersionedCache
from leadflow.chassis.duework import DueWorkRunner
from leadflow.chassis.tasks import cancel_and_wait
from services.nurture import api
from services.nurture.channels.email import (
    DkimKey,
    EmailIdentity,
    SmtpConfig,
    SmtpEmailSender,
)
from services.nurture.channels.runtime import build_channel_webhooks, link_builder, token_signer
from services.nurture.channels.sms import TwilioConfig, TwilioSmsSender
from services.nurture.channels.tokens import LinkBuilder
from services.nurture.handlers import register_handlers
from services.nurture.rules import (
    DEFAULT_SEQUENCES,
    SEND_KIND,
    FrequencyCap,
    QuietHours,
    ScoringPolicy,
    SendPolicy,
    SequenceCatalog,
)
from services.nurture.sending import SendDueSteps, Senders, SendSettings
from services.nurture.settings import Settings
from services.nurture.store import MongoNurtureStore
from services.nurture.usecases import (
    ApplyLeadEvents,
    EnrollByHand,
    EnrollInBulk,
    RecordWebVisit,
    Sequences,
)

SERVICE = "nurture"

log = structlog.get_logger(__name__)


def send_settings(settings: Settings) -> SendSettings:
    quiet = (
        None
        if settings.quiet_hours_start is None
        else QuietHours(settings.quiet_hours_start, settings.quiet_hours_end)
    )
    return SendSettings(
        policy=SendPolicy(
            max_lateness=timedelta(seconds=settings.send_max_lateness_s),
            quiet_hours=quiet,
            caps={
                "email": FrequencyCap(settings.email_cap_per_day, settings.email_cap_per_week),
                "sms": FrequencyCap(settings.sms_cap_per_day, settings.sms_cap_per_week),
            },
        ),
        default_timezone=settings.default_timezone,
        rate_per_second={"email": settings.email_rate_per_s, "sms": settings.sms_rate_per_s},
        provider_attempts=settings.provider_attempts,
        retry_base=timedelta(seconds=settings.provider_retry_s),
        concurrency=settings.send_concurrency,
        unknown_after=timedelta(seconds=settings.scheduler_lease_s),
    )


def scoring_policy(settings: Settings) -> ScoringPolicy:
    return ScoringPolicy(
        weights={
            "open": settings.score_weight_open,
            "click": settings.score_weight_click,
            "reply": settings.score_weight_reply,
            "web_visit": settings.score_weight_web_visit,
        },
        half_life=timedelta(days=settings.score_half_life_days),
        warm_at=settings.score_warm_at,
        hot_at=settings.score_hot_at,
        high_intent_paths=settings.high_intent_paths,
    )


def provider_senders(settings: Settings, links: LinkBuilder, clock: Clock) -> Senders:
    dkim_key = None
    if settings.dkim_selector and settings.dkim_domain and settings.dkim_private_key_path:
        dkim_key = DkimKey(
            settings.dkim_selector,
            settings.dkim_domain,
            Path(settings.dkim_private_key_path).read_bytes(),
        )
    email = SmtpEmailSender(
        SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=settings.smtp_password.get_secret_value() or None,
            use_tls=settings.smtp_use_tls,
            start_tls=settings.smtp_starttls,
            timeout_s=settings.smtp_timeout_s,
            connections=settings.smtp_connections,
        ),
        EmailIdentity(
            sender=settings.email_from,
            message_id_domain=settings.email_message_id_domain,
            unsubscribe_mailto=settings.email_unsubscribe_mailto or None,
            track_opens=settings.email_track_opens,
            track_clicks=settings.email_track_clicks,
        ),
        links,
        clock=clock,
        dkim_key=dkim_key,
    )
    sms = TwilioSmsSender(
        TwilioConfig(
            base_url=settings.twilio_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from_number or None,
            messaging_service_sid=settings.twilio_messaging_service_sid or None,
            timeout_s=settings.twilio_timeout_s,
        ),
        links,
    )
    return Senders(email=email, sms=sms)


def create_app(
    settings: Settings | None = None, *, clock: Clock = system_clock, senders: Senders | None = None
) -> FastAPI:
    """The nurture service. `senders` replaces the SMTP and Twilio senders the settings
    describe (benchmarks point them at their own sinks)."""
    settings = settings or Settings()
    chassis = ServiceChassis(SERVICE, settings, clock=clock)
    store = MongoNurtureStore(chassis.database, chassis.ledger)
    catalog: VersionedCache[SequenceCatalog] = VersionedCache(
        store.sequences_version, store.sequence_catalog
    )
    sequences = Sequences(store, catalog, clock=clock)
    zone = settings.default_timezone
    apply_lead_events = ApplyLeadEvents(
        store, sequences, default_timezone=zone, clock=clock, scoring=scoring_policy(settings)
    )
    register_handlers(chassis, apply_lead_events)
    webhooks = build_channel_webhooks(
        settings, chassis.database, chassis.ledger, clock=clock, sent=store
    )
    links = link_builder(settings)
    senders = senders or provider_senders(settings, links, clock)
    send_due_steps = SendDueSteps(
        store,
        sequences,
        senders,
        send_settings(settings),
        clock=clock,
        opt_outs=webhooks.store,
        feedback=webhooks.feedback,
    )
    runner = DueWorkRunner(
        store.due,
        kinds={SEND_KIND},
        fire=send_due_steps,
        clock=clock,
        batch_size=settings.scheduler_batch_size,
        lease_s=settings.scheduler_lease_s,
        idle_poll_s=settings.scheduler_idle_poll_s,
        in_flight=settings.scheduler_batches_in_flight,
        lookahead_s=settings.scheduler_lookahead_s,
    )
    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        await store.ensure_indexes()
        await webhooks.start()
        await sequences.seed(DEFAULT_SEQUENCES)
        if settings.scheduler_enabled:
            tasks.append(asyncio.create_task(runner.run(), name="nurture-scheduler"))

    async def shutdown() -> None:
        await webhooks.stop()  # status reports still queued are stored first
        await runner.stop()
        await cancel_and_wait(tasks)  # a no-op once the runner returned; ends a hung call
        for sender in (senders.email, senders.sms):
            close = getattr(sender, "close", None)
            if close is not None:
                await close()

    return chassis.build_app(
        title="leadflow nurture",
        description="Email/SMS sequences for leads that are not ready to buy: enrollment on "
        "loss level 2/3, return to the pool, routing to nurture or by marketing; sent on time "
        "in each lead's time zone, stopped when the lead replies, opts out or sales takes it "
        "again; warmed leads handed back to sales.",
        version=__version__,
        routers=[api.router, api.beacon_router, webhooks.router],
        startup=startup,
        shutdown=shutdown,
        store=store,
        sequences=sequences,
        enroll_by_hand=EnrollByHand(store, sequences, default_timezone=zone, clock=clock),
        enroll_in_bulk=EnrollInBulk(store, sequences, default_timezone=zone, clock=clock),
        record_web_visit=RecordWebVisit(store, clock=clock),
        visit_signer=token_signer(settings),
        site_origins=settings.site_origins,
        apply_lead_events=apply_lead_events,
        send_due_steps=send_due_steps,
        scheduler=runner,
        senders=senders,
        links=links,
        channel_webhooks=webhooks,
    )
