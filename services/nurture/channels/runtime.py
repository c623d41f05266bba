"""The channels' parts, built from nurture's settings in `create_app`: senders for the send
loop, the store and use cases behind the webhooks, and the webhooks' router."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter

from leadflow.chassis.clock import Clock
from leadflow.chassis.store import Database, EventLedger
from services.nurture.channels.email import DkimKey, EmailIdentity, SmtpConfig, SmtpEmailSender
from services.nurture.channels.sms import TwilioConfig, TwilioSmsSender
from services.nurture.channels.store import MongoChannelStore
from services.nurture.channels.tokens import LinkBuilder, TokenSigner
from services.nurture.channels.usecases import ChannelFeedback
from services.nurture.channels.webhooks import SmsReplies, channel_webhooks
from services.nurture.settings import Settings


@dataclass
class Channels:
    store: MongoChannelStore
    feedback: ChannelFeedback
    links: LinkBuilder
    email: SmtpEmailSender
    sms: TwilioSmsSender
    router: APIRouter

    async def start(self) -> None:
        await self.store.ensure_indexes()

    async def stop(self) -> None:
        await self.email.close()
        await self.sms.close()


def dkim_key(settings: Settings) -> DkimKey | None:
    """The DKIM key when selector, domain and key file are all set."""
    if not (settings.dkim_selector and settings.dkim_domain and settings.dkim_private_key_path):
        return None
    pem = Path(settings.dkim_private_key_path).read_bytes()
    return DkimKey(settings.dkim_selector, settings.dkim_domain, pem)


def build_channels(
    settings: Settings, database: Database, ledger: EventLedger, *, clock: Clock
) -> Channels:
    signer = TokenSigner(
        settings.token_secret.get_secret_value(),
        [s.get_secret_value() for s in settings.token_previous_secrets],
    )
    links = LinkBuilder(settings.public_url, signer)
    store = MongoChannelStore(database, ledger)
    feedback = ChannelFeedback(store, clock=clock)
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
        dkim_key=dkim_key(settings),
    )
    auth_token = settings.twilio_auth_token.get_secret_value()
    sms = TwilioSmsSender(
        TwilioConfig(
            base_url=settings.twilio_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=auth_token,
            from_number=settings.twilio_from_number or None,
            messaging_service_sid=settings.twilio_messaging_service_sid or None,
            timeout_s=settings.twilio_timeout_s,
        ),
        links,
    )
    router = channel_webhooks(
        feedback,
        signer,
        twilio_auth_token=auth_token,
        public_url=settings.public_url,
        replies=SmsReplies(
            help=settings.sms_help_reply,
            opt_in=settings.sms_opt_in_reply,
            opt_out=settings.sms_opt_out_reply,
        ),
    )
    return Channels(store, feedback, links, email, sms, router)
