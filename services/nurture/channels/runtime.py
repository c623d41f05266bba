"""The channels' receiving side, built from nurture's settings in `create_app`: the store
and use cases behind the webhooks, and the webhooks' router. (The senders are built in
`services/nurture/app.py`, which owns the send loop.)"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter

from leadflow.chassis.clock import Clock
from leadflow.chassis.store import Database, EventLedger
from services.nurture.channels.inbound_webhook import (
    InboundBatches,
    inbound_batches,
    inbound_email_routes,
)
from services.nurture.channels.store import MongoChannelStore
from services.nurture.channels.tokens import LinkBuilder, TokenSigner
from services.nurture.channels.usecases import ChannelFeedback, InboundEmails, SentEmails
from services.nurture.channels.webhooks import (
    LinkEngagements,
    SmsReplies,
    StatusReports,
    channel_webhooks,
    link_engagements,
    status_reports,
)
from services.nurture.settings import Settings


@dataclass
class ChannelWebhooks:
    store: MongoChannelStore
    """Batch reads for the send loop: opted_out_channels, opted_out_phones, engagements,
    message_statuses."""
    feedback: ChannelFeedback
    """opt_out (e.g. on RecipientOptedOutError), remember_sms_recipients, hard_bounces."""
    router: APIRouter
    reports: StatusReports
    engagements: LinkEngagements
    inbound_emails: InboundBatches

    async def start(self) -> None:
        await self.store.ensure_indexes()

    async def stop(self) -> None:
        """Store the reports, opens, clicks and inbound emails still queued, then refuse
        new ones (503)."""
        await self.reports.stop()
        await self.engagements.stop()
        await self.inbound_emails.stop()


def token_signer(settings: Settings) -> TokenSigner:
    return TokenSigner(
        settings.token_secret.get_secret_value(),
        [s.get_secret_value() for s in settings.token_previous_secrets],
    )


def link_builder(settings: Settings) -> LinkBuilder:
    return LinkBuilder(settings.public_url, token_signer(settings))


def build_channel_webhooks(
    settings: Settings, database: Database, ledger: EventLedger, *, clock: Clock, sent: SentEmails
) -> ChannelWebhooks:
    """`sent`: nurture's send records, which name the lead of each message id we sent (an
    inbound reply or bounce names the message)."""
    store = MongoChannelStore(database, ledger)
    feedback = ChannelFeedback(store, clock=clock)
    reports = status_reports(feedback)
    engagements = link_engagements(feedback)
    router = channel_webhooks(
        feedback,
        token_signer(settings),
        twilio_auth_token=settings.twilio_auth_token.get_secret_value(),
        public_url=settings.public_url,
        site_origins=settings.site_origins,
        replies=SmsReplies(
            help=settings.sms_help_reply,
            opt_in=settings.sms_opt_in_reply,
            opt_out=settings.sms_opt_out_reply,
        ),
        reports=reports,
        engagements=engagements,
    )
    inbound = inbound_batches(InboundEmails(store, sent, clock=clock))
    router.include_router(
        inbound_email_routes(
            inbound,
            secrets=[
                s.get_secret_value()
                for s in (settings.email_inbound_secret, *settings.email_inbound_previous_secrets)
            ],
            message_id_domain=settings.email_message_id_domain,
            max_bytes=settings.email_inbound_max_bytes,
        )
    )
    return ChannelWebhooks(store, feedback, router, reports, engagements, inbound)
