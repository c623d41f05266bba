"""The flows behind the channel webhooks: load, decide (`channels.rules`), save with the
events they imply, in one transaction each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from leadflow.chassis.clock import Clock
from services.nurture.channels.rules import (
    CARRIER_OPT_OUT_CODES,
    Engagement,
    EngagementKind,
    InboundIntent,
    MessageStatusRecord,
    OptOut,
    SmsRecipient,
    click_key,
    inbound_intent,
    lead_opt_out_key,
    moves_forward,
    open_key,
    opt_out_change,
    phone_key,
    reply_key,
    sms_status,
)
from services.nurture.channels.store import ChannelStore, ChannelTransaction
from services.nurture.channels.tokens import LinkClaims
from shared.events import (
    Channel,
    EngagementRecordedV1,
    Event,
    LeadOptedOutV1,
    MessageStatusUpdatedV1,
)

log = structlog.get_logger(__name__)


class UnknownStatusError(ValueError):
    """A delivery report with a status Twilio does not document."""


@dataclass(frozen=True, slots=True)
class SmsStatusReport:
    """One Twilio status callback, its signature checked."""

    provider_id: str
    status: str
    to: str | None = None
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class InboundSms:
    inbound_id: str
    """Twilio's MessageSid: the same text delivered twice counts once."""
    from_phone: str
    body: str


@dataclass(frozen=True, slots=True)
class InboundOutcome:
    intent: InboundIntent
    lead_id: str | None
    changed: bool
    """Whether anything was stored (False for HELP, a repeat, or an unknown number)."""


class ChannelFeedback:
    """What people and providers tell us about the messages: unsubscribes, delivery
    reports, texts back, opens and clicks."""

    def __init__(self, store: ChannelStore, *, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def opt_out(
        self,
        lead_id: str | None,
        channel: Channel,
        reason: str,
        *,
        phone: str | None = None,
        sequence_id: str | None = None,
        opted_out: bool = True,
    ) -> bool:
        """Opt a lead (and for SMS its number) out of, or back into, one channel only.

        Used by the unsubscribe link (email), STOP/START (SMS) and the send loop when the
        provider says the recipient opted out at the carrier (Twilio 21610). True if it
        changed anything; an opt-out publishes LeadOptedOutV1 once per change."""
        now = self._clock()

        async def work(tx: ChannelTransaction) -> tuple[bool, list[Event]]:
            changed = await _set_opt_out(
                tx, lead_id, channel, reason, now, phone=phone, opted_out=opted_out
            )
            events: list[Event] = []
            if changed and opted_out and lead_id is not None:
                events.append(
                    LeadOptedOutV1(
                        lead_id=lead_id,
                        occurred_at=now,
                        channel=channel,
                        reason=reason,
                        sequence_id=sequence_id,
                    )
                )
            return changed, events

        return await self._store.commit(work)

    async def unsubscribe_email(self, claims: LinkClaims) -> bool:
        return await self.opt_out(
            claims.lead_id, "email", "one_click", sequence_id=claims.sequence_id
        )

    async def record_sms_status(
        self, claims: LinkClaims, report: SmsStatusReport
    ) -> MessageStatusRecord | None:
        """Store a delivery report unless an equal or later one came first; the stored
        record, or None when it was old news. Raises UnknownStatusError."""
        [result] = await self.record_sms_statuses([(claims, report)])
        if isinstance(result, Exception):
            raise result
        return result

    async def record_sms_statuses(
        self, reports: Sequence[tuple[LinkClaims, SmsStatusReport]]
    ) -> list[MessageStatusRecord | Exception | None]:
        """Delivery reports, in the order they arrived, in one transaction: for each, the
        record it stored, None when it was old news, or UnknownStatusError."""
        now = self._clock()

        async def work(
            tx: ChannelTransaction,
        ) -> tuple[list[MessageStatusRecord | Exception | None], list[Event]]:
            ids = {claims.message_id or report.provider_id for claims, report in reports}
            current: dict[str, MessageStatusRecord] = await tx.statuses(ids)
            results: list[MessageStatusRecord | Exception | None] = []
            changed: dict[str, MessageStatusRecord] = {}
            events: list[Event] = []
            recipients: list[SmsRecipient] = []
            for claims, report in reports:
                record = _advanced(current, claims, report, now)
                results.append(record)
                if not isinstance(record, MessageStatusRecord):
                    continue
                current[record.message_id] = changed[record.message_id] = record
                events.append(_status_event(record, now))
                if report.to:
                    recipients.append(
                        SmsRecipient(report.to, claims.lead_id, now, record.message_id)
                    )
                if report.error_code in CARRIER_OPT_OUT_CODES:
                    events += await self._carrier_opt_out(tx, claims, report.to, now)
            await tx.save_statuses(list(changed.values()))
            await _remember(tx, recipients)
            return results, events

        return await self._store.commit(work)

    @staticmethod
    async def _carrier_opt_out(
        tx: ChannelTransaction, claims: LinkClaims, phone: str | None, now: datetime
    ) -> list[Event]:
        reason = "carrier_opt_out"
        if not await _set_opt_out(tx, claims.lead_id, "sms", reason, now, phone=phone):
            return []
        return [
            LeadOptedOutV1(
                lead_id=claims.lead_id,
                occurred_at=now,
                channel="sms",
                reason=reason,
                sequence_id=claims.sequence_id,
            )
        ]

    async def inbound_sms(self, inbound: InboundSms) -> InboundOutcome:
        intent = inbound_intent(inbound.body)
        now = self._clock()
        phone = inbound.from_phone

        async def work(tx: ChannelTransaction) -> tuple[InboundOutcome, list[Event]]:
            recipient = (await tx.recipients([phone])).get(phone)
            lead_id = None if recipient is None else recipient.lead_id
            if intent is InboundIntent.HELP:
                return InboundOutcome(intent, lead_id, changed=False), []
            if intent in (InboundIntent.OPT_OUT, InboundIntent.OPT_IN):
                opting_out = intent is InboundIntent.OPT_OUT
                reason = "sms_keyword"
                changed = await _set_opt_out(
                    tx, lead_id, "sms", reason, now, phone=phone, opted_out=opting_out
                )
                events: list[Event] = []
                if changed and opting_out and lead_id is not None:
                    events.append(
                        LeadOptedOutV1(
                            lead_id=lead_id, occurred_at=now, channel="sms", reason=reason
                        )
                    )
                return InboundOutcome(intent, lead_id, changed), events
            if recipient is None:
                log.warning(
                    "a text from a number nurture never texted", inbound_id=inbound.inbound_id
                )
                return InboundOutcome(intent, None, changed=False), []
            reply = Engagement(
                key=reply_key(inbound.inbound_id),
                lead_id=recipient.lead_id,
                kind="reply",
                at=now,
                message_id=recipient.message_id,
                channel="sms",
            )
            added = await _add_engagements(tx, [reply])
            return InboundOutcome(intent, lead_id, bool(added)), _engagement_events(added)

        return await self._store.commit(work)

    async def record_engagement(self, claims: LinkClaims, kind: EngagementKind) -> bool:
        """An open or click from a signed link; the first open of a message and the first
        click of each of its links count, later ones are repeats (image proxies, re-reads).
        True if it counted."""
        [counted] = await self.record_engagements([(claims, kind)])
        return counted

    async def record_engagements(
        self, clicks_and_opens: Sequence[tuple[LinkClaims, EngagementKind]]
    ) -> list[bool]:
        """Several opens and clicks in one transaction; for each, whether it counted."""
        now = self._clock()
        engagements = [_link_engagement(claims, kind, now) for claims, kind in clicks_and_opens]

        async def work(tx: ChannelTransaction) -> tuple[list[bool], list[Event]]:
            added = await _add_engagements(tx, engagements)
            # Of several equal keys in the batch, the first is the one added (and counted).
            counted = {id(e) for e in added}
            return [id(e) in counted for e in engagements], _engagement_events(added)

        return await self._store.commit(work)

    async def remember_sms_recipients(self, recipients: Sequence[SmsRecipient]) -> None:
        """Who was texted at which number (the send loop, once per batch of sends), so a
        text back is attributed even before any delivery report arrives."""

        async def work(tx: ChannelTransaction) -> tuple[None, list[Event]]:
            await _remember(tx, recipients)
            return None, []

        if recipients:
            await self._store.commit(work)


async def _set_opt_out(
    tx: ChannelTransaction,
    lead_id: str | None,
    channel: Channel,
    reason: str,
    now: datetime,
    *,
    phone: str | None = None,
    opted_out: bool = True,
) -> bool:
    """Store the change for the lead and, for SMS, the number; True if the lead's (or, with
    no lead, the number's) state changed."""
    wanted: list[OptOut] = []
    if lead_id is not None:
        wanted.append(OptOut(channel, opted_out, reason, now, lead_id=lead_id))
    if channel == "sms" and phone:
        wanted.append(OptOut(channel, opted_out, reason, now, phone=phone))
    if not wanted:
        return False
    keys = [lead_opt_out_key(lead_id, channel)] if lead_id else []
    keys += [phone_key(phone)] if channel == "sms" and phone else []
    current = await tx.opt_outs(keys)
    changes = [c for w in wanted if (c := opt_out_change(current.get(w.key), w)) is not None]
    await tx.save_opt_outs(changes)
    return bool(changes) and changes[0].key == wanted[0].key


async def _add_engagements(
    tx: ChannelTransaction, engagements: Sequence[Engagement]
) -> list[Engagement]:
    known = await tx.known_engagements([e.key for e in engagements])
    fresh: dict[str, Engagement] = {}
    for engagement in engagements:
        if engagement.key not in known:
            fresh.setdefault(engagement.key, engagement)
    await tx.add_engagements(list(fresh.values()))
    return list(fresh.values())


async def _remember(tx: ChannelTransaction, recipients: Sequence[SmsRecipient]) -> None:
    newest: dict[str, SmsRecipient] = {}
    for recipient in recipients:
        if recipient.phone not in newest or newest[recipient.phone].at <= recipient.at:
            newest[recipient.phone] = recipient
    stored = await tx.recipients(list(newest))
    await tx.save_recipients(
        [r for phone, r in newest.items() if phone not in stored or stored[phone].at <= r.at]
    )


def _engagement_events(engagements: Sequence[Engagement]) -> list[Event]:
    return [
        EngagementRecordedV1(
            lead_id=e.lead_id,
            occurred_at=e.at,
            kind=e.kind,
            message_id=e.message_id,
            sequence_id=e.sequence_id,
            step=e.step,
            channel=e.channel,
            url=e.url,
        )
        for e in engagements
    ]


def _advanced(
    current: dict[str, MessageStatusRecord],
    claims: LinkClaims,
    report: SmsStatusReport,
    now: datetime,
) -> MessageStatusRecord | Exception | None:
    """The record a report moves its message to; None if it is old news."""
    mapped = sms_status(report.status)
    if mapped is None:
        return UnknownStatusError(report.status)
    status, rank = mapped
    message_id = claims.message_id or report.provider_id
    before = current.get(message_id)
    if not moves_forward(None if before is None else before.rank, rank):
        return None
    return MessageStatusRecord(
        message_id=message_id,
        lead_id=claims.lead_id,
        channel="sms",
        status=status,
        rank=rank,
        updated_at=now,
        provider_id=report.provider_id,
        error_code=report.error_code,
        sequence_id=claims.sequence_id,
        step=claims.step,
    )


def _status_event(record: MessageStatusRecord, now: datetime) -> MessageStatusUpdatedV1:
    return MessageStatusUpdatedV1(
        lead_id=record.lead_id,
        occurred_at=now,
        sequence_id=record.sequence_id,
        step=record.step,
        channel=record.channel,
        message_id=record.message_id,
        status=record.status,
        error_code=record.error_code,
    )


def _link_engagement(claims: LinkClaims, kind: EngagementKind, now: datetime) -> Engagement:
    if kind == "open":
        key = open_key(claims.message_id, claims.lead_id)
    else:
        key = click_key(claims.message_id, claims.lead_id, claims.url or "")
    return Engagement(
        key=key,
        lead_id=claims.lead_id,
        kind=kind,
        at=now,
        message_id=claims.message_id,
        channel=claims.channel,
        sequence_id=claims.sequence_id,
        step=claims.step,
        url=claims.url,
    )
