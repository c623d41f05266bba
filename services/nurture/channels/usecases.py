"""The flows behind the channel webhooks: load, decide (`channels.rules`), save with the
events they imply, in one transaction each."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from leadflow.chassis.clock import Clock
from services.nurture.channels.bounces import (
    BOUNCED_RANK,
    HARD_BOUNCE_REASON,
    HardBounce,
    normalize_address,
)
from services.nurture.channels.inbound_email import InboundMail, MailKind, send_key_of
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
from services.nurture.rules import SendRecord
from shared.events import (
    Channel,
    EngagementRecordedV1,
    Event,
    LeadOptedInV1,
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
        changed anything; each change publishes LeadOptedOutV1 or LeadOptedInV1 once."""
        now = self._clock()

        async def work(tx: ChannelTransaction) -> tuple[bool, list[Event]]:
            changed = await _set_opt_out(
                tx, lead_id, channel, reason, now, phone=phone, opted_out=opted_out
            )
            events: list[Event] = []
            if changed and lead_id is not None:
                events.append(_opt_event(lead_id, channel, reason, now, opted_out, sequence_id))
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
                # START after STOP is told too: nurture's own state learned the opt-out
                # from the event, and only an event can lift it again.
                events: list[Event] = []
                if changed and lead_id is not None:
                    events.append(_opt_event(lead_id, "sms", reason, now, opting_out))
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

    async def hard_bounces(self, bounces: Sequence[HardBounce]) -> int:
        """Addresses that will never take our mail (an SMTP 5xx at send time, or a DSN),
        in one transaction: see `record_hard_bounces`. How many messages became bounced."""
        if not bounces:
            return 0
        now = self._clock()

        async def work(tx: ChannelTransaction) -> tuple[int, list[Event]]:
            events, _ = await record_hard_bounces(tx, bounces, now)
            return len(events), events

        return await self._store.commit(work)

    async def remember_sms_recipients(self, recipients: Sequence[SmsRecipient]) -> None:
        """Who was texted at which number (the send loop, once per batch of sends), so a
        text back is attributed even before any delivery report arrives. No transaction:
        it implies no event, and each number keeps its newest recipient."""
        await self._store.remember_recipients(_newest_per_phone(recipients))


class SentEmails(Protocol):
    """Nurture's send records (`NurtureStore.send_records`): which lead, sequence and step
    each of our message ids was."""

    async def send_records(self, keys: Collection[str]) -> Mapping[str, SendRecord]: ...


@dataclass(frozen=True, slots=True)
class InboundEmailOutcome:
    kind: MailKind
    lead_id: str | None
    message_id: str | None
    """Ours, that the email was about (None: it named none we sent)."""
    changed: bool
    """Whether anything was stored (False for a repeat, an auto-reply, a report that is no
    hard bounce, or a reply to no message of ours)."""


class InboundEmails:
    """Emails that came back: replies become `reply` engagements (nurture's consumer ends
    the lead's enrollments and may hand it back to sales), hard bounces suppress the
    address and mark the message bounced; auto-replies and other reports change nothing."""

    def __init__(self, store: ChannelStore, sent: SentEmails, *, clock: Clock) -> None:
        self._store = store
        self._sent = sent
        self._clock = clock

    async def record(self, mails: Sequence[InboundMail]) -> list[InboundEmailOutcome]:
        """Several inbound emails in one transaction (one read of the send records they
        name); an outcome for each, in order."""
        keys = {key for m in mails for i in m.our_message_ids if (key := send_key_of(i))}
        records = await self._sent.send_records(keys) if keys else {}
        about = [_message_of(mail, records) for mail in mails]
        now = self._clock()

        async def work(tx: ChannelTransaction) -> tuple[list[InboundEmailOutcome], list[Event]]:
            replies: dict[int, Engagement] = {}
            bounces: list[HardBounce] = []
            for index, (mail, (message_id, record)) in enumerate(zip(mails, about, strict=True)):
                if mail.kind is MailKind.REPLY and message_id and record:
                    replies[index] = _email_reply(mail, message_id, record, now)
                elif mail.kind is MailKind.HARD_BOUNCE:
                    bounces += _hard_bounces(mail, message_id, record)
            added = await _add_engagements(tx, list(replies.values()))
            bounce_events, suppressed = await record_hard_bounces(tx, bounces, now)
            counted = {id(e) for e in added}
            bounced = {e.message_id for e in bounce_events if isinstance(e, MessageStatusUpdatedV1)}
            outcomes: list[InboundEmailOutcome] = []
            for index, (mail, (message_id, record)) in enumerate(zip(mails, about, strict=True)):
                if index in replies:
                    changed = id(replies[index]) in counted
                elif mail.kind is MailKind.HARD_BOUNCE:
                    changed = message_id in bounced or any(
                        r.address in suppressed for r in mail.hard_bounced
                    )
                else:
                    changed = False
                lead_id = None if record is None else record.lead_id
                outcomes.append(InboundEmailOutcome(mail.kind, lead_id, message_id, changed))
            return outcomes, [*_engagement_events(added), *bounce_events]

        return await self._store.commit(work)


def _message_of(
    mail: InboundMail, records: Mapping[str, SendRecord]
) -> tuple[str | None, SendRecord | None]:
    """The first of our emails the inbound one names that we really sent."""
    for message_id in mail.our_message_ids:
        key = send_key_of(message_id)
        record = None if key is None else records.get(key)
        if record is not None and record.channel == "email":
            return message_id, record
    return None, None


def _email_reply(
    mail: InboundMail, message_id: str, record: SendRecord, now: datetime
) -> Engagement:
    return Engagement(
        # By the reply's own Message-ID: a relay posting it twice counts it once.
        key=reply_key(f"email:{mail.inbound_id}"),
        lead_id=record.lead_id,
        kind="reply",
        at=now,
        message_id=message_id,
        channel="email",
        sequence_id=record.sequence_id,
        step=record.step,
    )


def _hard_bounces(
    mail: InboundMail, message_id: str | None, record: SendRecord | None
) -> list[HardBounce]:
    return [
        HardBounce(
            recipient.address,
            lead_id=None if record is None else record.lead_id,
            message_id=message_id if record is not None else None,
            sequence_id=None if record is None else record.sequence_id,
            step=None if record is None else record.step,
            status=recipient.status,
            diagnostic=recipient.diagnostic,
        )
        for recipient in mail.hard_bounced
    ]


async def record_hard_bounces(
    tx: ChannelTransaction, bounces: Sequence[HardBounce], now: datetime
) -> tuple[list[Event], set[str]]:
    """Suppress each address (an email opt-out of the address itself, reason
    `hard_bounce`, so no lead with it is emailed again) and mark each known message
    `bounced`; the MessageStatusUpdatedV1 events to publish, one per message newly bounced
    (nurture's consumer then blocks the lead's email and ends enrollments left with no
    channel). No LeadOptedOutV1: the person chose nothing, the address is just dead. A
    second report of the same bounce changes nothing and publishes nothing. Also returns
    the addresses newly suppressed (normalized)."""
    wanted: dict[str, OptOut] = {}
    for bounce in bounces:
        if bounce.address:
            state = OptOut("email", True, HARD_BOUNCE_REASON, now, email=bounce.address)
            wanted.setdefault(state.key, state)
    current = await tx.opt_outs(list(wanted))
    suppressed = [
        c for w in wanted.values() if (c := opt_out_change(current.get(w.key), w)) is not None
    ]
    await tx.save_opt_outs(suppressed)
    known = [b for b in bounces if b.message_id and b.lead_id]
    statuses = await tx.statuses({b.message_id for b in known if b.message_id})
    changed: dict[str, MessageStatusRecord] = {}
    for bounce in known:
        assert bounce.message_id is not None and bounce.lead_id is not None
        before = changed.get(bounce.message_id) or statuses.get(bounce.message_id)
        if not moves_forward(None if before is None else before.rank, BOUNCED_RANK):
            continue
        changed[bounce.message_id] = MessageStatusRecord(
            message_id=bounce.message_id,
            lead_id=bounce.lead_id,
            channel="email",
            status="bounced",
            rank=BOUNCED_RANK,
            updated_at=now,
            error_code=bounce.status,
            sequence_id=bounce.sequence_id,
            step=bounce.step,
        )
    await tx.save_statuses(list(changed.values()))
    events: list[Event] = [_status_event(record, now) for record in changed.values()]
    return events, {normalize_address(s.email or "") for s in suppressed}


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


def _newest_per_phone(recipients: Sequence[SmsRecipient]) -> list[SmsRecipient]:
    newest: dict[str, SmsRecipient] = {}
    for recipient in recipients:
        if recipient.phone not in newest or newest[recipient.phone].at <= recipient.at:
            newest[recipient.phone] = recipient
    return list(newest.values())


async def _remember(tx: ChannelTransaction, recipients: Sequence[SmsRecipient]) -> None:
    """As `ChannelStore.remember_recipients`, inside a transaction that changes more."""
    newest = _newest_per_phone(recipients)
    stored = await tx.recipients([r.phone for r in newest])
    await tx.save_recipients(
        [r for r in newest if r.phone not in stored or stored[r.phone].at <= r.at]
    )


def _opt_event(  # noqa: PLR0917 - the parts of one opt change, in their order
    lead_id: str,
    channel: Channel,
    reason: str,
    now: datetime,
    opted_out: bool,
    sequence_id: str | None = None,
) -> Event:
    if opted_out:
        return LeadOptedOutV1(
            lead_id=lead_id,
            occurred_at=now,
            channel=channel,
            reason=reason,
            sequence_id=sequence_id,
        )
    return LeadOptedInV1(lead_id=lead_id, occurred_at=now, channel=channel, reason=reason)


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
