"""Sending the steps that fall due: the due-work runner's `fire` for kind "send".

One batch of claimed timers goes through three phases:

1. **Decide** (reads only): the enrollments, leads, sequences, send records of the batch's
   keys and the leads' recent sends (frequency caps); `rules.decide_step` says send, defer,
   skip, stop or drop for each. Sends over the channel's global rate are deferred a second.
2. **Send**: each message to send first gets its send record (`_id` = the step's send key,
   inserted outside any transaction). A key another replica reserved is never sent again,
   so no number of replicas or restarts sends a step twice.
3. **Commit** (one transaction): the timers are finished, the enrollments are moved on
   (or their step re-planned) from their state as read when deciding, without reading them
   again (a change since then would have voided the timer's claim: see
   `NurtureTransaction.move_on`), and `MessageSentV1` / `MessageFailedV1` go to the
   outbox. A batch with a replayed step commits from the enrollments read again in the
   transaction. Refusals are written into the send records at the same time, outside the
   transaction; accepted messages' answers only if the commit fails. If a timer was taken
   over meanwhile, the transaction aborts (LeaseLost); the replica that fires it next
   finds the send record with its answer and publishes what happened instead of sending
   again.

Each phase makes a fixed number of round trips per batch, not per message; reads and
writes that do not depend on each other go out together.

Steps may be claimed before they fall due (the runner's look-ahead): each is decided as of
its due time (send window, quiet hours, caps, the rate's second) and handed to its provider
no earlier than that, so the reads and decisions are done by the time it is due.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

import structlog
from prometheus_client import Counter, Histogram

from leadflow.chassis.clock import Clock
from leadflow.chassis.duework import ClaimedWork
from services.nurture.channels.bounces import HardBounce
from services.nurture.channels.email import OutboundEmail
from services.nurture.channels.errors import (
    HardBounceError,
    PermanentSendError,
    RecipientOptedOutError,
    RetryableSendError,
)
from services.nurture.channels.rules import SmsRecipient
from services.nurture.channels.sms import OutboundSms
from services.nurture.rules import (
    Enrollment,
    EnrollmentMovedMeanwhileError,
    EnrollmentStatus,
    LeadContact,
    NurtureChanges,
    SendPolicy,
    SendRecord,
    SendStatus,
    SequenceCatalog,
    SequenceRecord,
    Step,
    StepDecision,
    StepMove,
    StepOutcome,
    after_step,
    decide_step,
    retry_delay,
    stopped,
)
from services.nurture.store import NurtureStore, NurtureTransaction
from services.nurture.templates import RenderError, render, template_context
from services.nurture.usecases import Sequences
from shared.events import (
    Channel,
    Event,
    MessageFailedV1,
    MessageSentV1,
)

log = structlog.get_logger(__name__)

STEPS_HANDLED = Counter(
    "leadflow_nurture_steps_total", "Due steps by outcome", ["channel", "outcome"]
)

SEND_DELAY = Histogram(
    "leadflow_nurture_send_delay_seconds",
    "From the time a step was due (or put off to) to the provider accepting its message",
    ["channel"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300, 3600),
)

CAP_HISTORY = timedelta(days=8)
"""How far back sends are read for the frequency caps (a local week and a day's margin)."""


class EmailSender(Protocol):
    async def send(self, outbound: OutboundEmail) -> str:
        """The provider's message id. Raises RetryableSendError, PermanentSendError."""
        ...


class SmsSender(Protocol):
    async def send(self, outbound: OutboundSms) -> str:
        """The provider's message id. Raises RetryableSendError, PermanentSendError,
        RecipientOptedOutError."""
        ...


@dataclass(frozen=True, slots=True)
class Senders:
    email: EmailSender | None = None
    sms: SmsSender | None = None


class OptOuts(Protocol):
    """The channels' opt-out store (unsubscribe links, STOP/START): checked right before
    sending, so an opt-out counts even before nurture has consumed its event."""

    async def opted_out_of(
        self, wanted: Collection[tuple[str, Channel]]
    ) -> set[tuple[str, Channel]]:
        """Which of these (lead, channel) pairs the lead opted out of."""
        ...

    async def opted_out_phones(self, phones: Collection[str]) -> set[str]: ...

    async def suppressed_emails(self, addresses: Collection[str]) -> set[str]:
        """Addresses that hard-bounced (for whichever lead): never emailed again."""
        ...


class SendFeedback(Protocol):
    """What the send loop tells the channels: the carrier's opt-outs (Twilio 21610) and who
    was texted at which number (so a text back, STOP included, finds its lead)."""

    async def opt_out(
        self,
        lead_id: str | None,
        channel: Channel,
        reason: str,
        *,
        phone: str | None = None,
        sequence_id: str | None = None,
        opted_out: bool = True,
    ) -> bool: ...

    async def remember_sms_recipients(self, recipients: Sequence[SmsRecipient]) -> None: ...

    async def hard_bounces(self, bounces: Sequence[HardBounce]) -> int:
        """Suppress these addresses and mark their messages bounced (one transaction)."""
        ...


@dataclass(frozen=True, slots=True)
class SendSettings:
    policy: SendPolicy
    default_timezone: str
    rate_per_second: Mapping[str, int]
    """Global sends per second per channel, across replicas."""
    provider_attempts: int = 5
    retry_base: timedelta = timedelta(seconds=30)
    retry_ceiling: timedelta = timedelta(hours=1)
    concurrency: int = 32
    """Messages handed to the providers at once by one replica."""
    unknown_after: timedelta = timedelta(seconds=60)
    """A send record left 'sending' this long belongs to a replica that died mid-send."""


def message_id_of(enrollment_id: str, step: int) -> str:
    """Our id of a step's message (a valid Message-ID left part, unlike the send key)."""
    return f"{enrollment_id}.{step}"


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str | None
    text: str
    html: str | None


def render_step(
    step: Step,
    contact: LeadContact,
    sequence_name: str,
    *,
    unsubscribe_url: str | None = None,
    custom: Mapping[str, str] | None = None,
) -> Rendered:
    """The step's parts for this lead. Raises RenderError."""
    context = template_context(
        contact.contact,
        sequence_name=sequence_name,
        custom=custom,
        unsubscribe_url=unsubscribe_url if step.channel == "email" else None,
    )
    text = render("body", step.body, context)
    subject = None if step.subject is None else render("subject", step.subject, context)
    body_html = None if step.html is None else render("html", step.html, context)
    return Rendered(subject, text, body_html)


def outbound_message(
    step: Step,
    rendered: Rendered,
    lead: LeadContact,
    *,
    message_id: str,
    sequence_id: str,
    index: int,
) -> OutboundEmail | OutboundSms:
    contact = lead.contact
    if step.channel == "email":
        text_as_html = "".join(f"<p>{html.escape(p)}</p>" for p in rendered.text.split("\n\n"))
        return OutboundEmail(
            message_id=message_id,
            lead_id=lead.lead_id,
            to=(contact.email if contact else None) or "",
            subject=rendered.subject or "",
            html=rendered.html or f"<html><body>{text_as_html}</body></html>",
            text=rendered.text,
            sequence_id=sequence_id,
            step=index,
        )
    return OutboundSms(
        message_id=message_id,
        lead_id=lead.lead_id,
        to=(contact.phone if contact else None) or "",
        body=rendered.text,
        sequence_id=sequence_id,
        step=index,
    )


@dataclass
class _Item:
    claimed: ClaimedWork
    enrollment_id: str
    step: int
    enrollment: Enrollment | None
    record: SequenceRecord | None
    lead: LeadContact | None
    decision: StepDecision
    at: datetime
    """The moment this step is decided for and sent at: its due time, or when it was
    decided if that was later."""
    channel: Channel | None = None
    message: OutboundEmail | OutboundSms | None = None
    send: SendRecord | None = None
    """The send record this attempt owns, or found (sent or failed before)."""
    failure: str | None = None
    """Why this message will never go (render error, permanent provider refusal)."""
    retry_at: datetime | None = None
    opted_out: bool = False
    bounced: HardBounce | None = None
    """The server refused the address for good (SMTP 5xx at RCPT TO): told to the channels."""
    replayed: bool = False
    """Sent (or failed) by an earlier attempt that did not commit: published now, unless
    that attempt's commit did happen after all (the enrollment moved on)."""

    @property
    def key(self) -> str:
        return self.claimed.work.key


class SendDueSteps:
    """`fire` for the due-work runner: send (or defer, skip, stop) a batch of due steps."""

    def __init__(
        self,
        store: NurtureStore,
        sequences: Sequences,
        senders: Senders,
        settings: SendSettings,
        *,
        clock: Clock,
        opt_outs: OptOuts | None = None,
        feedback: SendFeedback | None = None,
    ) -> None:
        self._store = store
        self._sequences = sequences
        self._senders = senders
        self._settings = settings
        self._clock = clock
        self._opt_outs = opt_outs
        self._feedback = feedback
        self._slots = asyncio.Semaphore(max(1, settings.concurrency))
        # Batches may be in flight together (the runner's `in_flight`), but their commits
        # go one at a time, and batches sent meanwhile commit together: every commit
        # appends to the outbox, whose sequence counter makes overlapping transactions
        # conflict (one of them is done again), so fewer, larger commits waste less.
        self._committing = asyncio.Lock()
        self._to_commit: list[_SentBatch] = []

    async def __call__(self, batch: list[ClaimedWork]) -> None:
        phases: dict[str, float] = {}
        mark = time.perf_counter()

        def took(phase: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phases[phase] = round(now - mark, 3)
            mark = now

        items = await self._decide(batch)
        took("decide_s")
        await self._drop_opted_out(items)
        await self._limit_rate(items)
        took("rate_s")
        # Remembering who is texted at which number (before the texts leave) needs no
        # reservation: a number remembered for a step another replica sends is the same.
        await asyncio.gather(self._reserve(items), self._remember_recipients(items))
        took("reserve_s")
        await self._send(items)
        took("send_s")
        await self._record_and_commit(batch, items)
        took("commit_s")
        log.debug("due steps handled", count=len(items), by=_tally(items), **phases)

    async def _record_and_commit(self, batch: list[ClaimedWork], items: Sequence[_Item]) -> None:
        """Refusals go into the send records beside (not before) the commit: a retry or a
        replay needs them whatever becomes of it. An accepted message's answer is stored
        only if the commit did not land: once it has, the enrollment is past the step (its
        timer gone, never fired again) and the outbox's `MessageSentV1` carries the
        answer, so nothing would read it, and its record stays `sending` (which counts for
        the caps as `sent` does). When the commit fails (LeaseLost, an outage), every
        answer is stored before the error goes on, so the replica that fires the steps next
        publishes what happened instead of sending again or reporting an unknown outcome;
        until then it finds the record `sending` and recent, and waits. An answer that could
        not be stored leaves its record `sending`: the step is still never sent again."""
        answered = [i.send for i in items if i.message is not None and i.send is not None]
        accepted = [r for r in answered if r.status is SendStatus.SENT]
        refused = [r for r in answered if r.status is not SendStatus.SENT]

        async def tell_and_commit() -> None:
            await self._tell_channels(items)
            await self._commit(batch, items)

        recorded, committed = await asyncio.gather(
            self._store.record_outcomes(refused), tell_and_commit(), return_exceptions=True
        )
        if isinstance(committed, BaseException):
            if isinstance(committed, Exception) and accepted:
                await self._record_quietly(accepted, items)
            raise committed
        if isinstance(recorded, BaseException):
            if not isinstance(recorded, Exception):
                raise recorded
            self._not_recorded(items, recorded)

    async def _record_quietly(self, answers: Sequence[SendRecord], items: Sequence[_Item]) -> None:
        """Store these answers; a failure is logged, not raised (the batch's own error is
        what the runner needs to see)."""
        try:
            await self._store.record_outcomes(answers)
        except Exception as error:  # noqa: BLE001 - logged; the commit's error is raised
            self._not_recorded(items, error)

    @staticmethod
    def _not_recorded(items: Sequence[_Item], error: Exception) -> None:
        log.warning(
            "providers' answers not stored; their records stay sending",
            keys=[i.key for i in items][:10],
            error=repr(error),
        )

    # --- 1. decide ----------------------------------------------------------------------------

    async def _decide(self, batch: Sequence[ClaimedWork]) -> list[_Item]:
        now = self._clock()
        ids = {str(c.work.payload["enrollment_id"]) for c in batch}

        # Independent reads go out together: a round trip each, not one after another. No
        # transaction: the commit reads each enrollment again.
        (enrollments, contacts), found = await asyncio.gather(
            self._store.enrollments_with_contacts(ids),
            self._store.send_records([c.work.key for c in batch]),
        )
        catalog, history = await asyncio.gather(
            self._sequences.catalog(needing={e.sequence_id for e in enrollments.values()}),
            self._store.sends_since(contacts.keys(), now - CAP_HISTORY),
        )
        sent_times: dict[tuple[str, str], list[datetime]] = defaultdict(list)
        for lead_id, records in history.items():
            for r in records:
                if r.counts_for_caps and r.key not in found:
                    sent_times[lead_id, r.channel].append(r.reserved_at)

        items: list[_Item] = []
        for claimed in sorted(batch, key=lambda c: c.work.due_at):
            enrollment_id = str(claimed.work.payload["enrollment_id"])
            step = int(claimed.work.payload["step"])
            enrollment = enrollments.get(enrollment_id)
            record = catalog.get(enrollment.sequence_id) if enrollment else None
            lead = contacts.get(enrollment.lead_id) if enrollment else None
            at = max(now, claimed.work.due_at)
            item = _Item(claimed, enrollment_id, step, enrollment, record, lead, _DROP, at)
            item.decision = self._decision(
                item, found.get(claimed.work.key), sent_times, now, catalog
            )
            if item.decision.outcome is StepOutcome.SEND and enrollment is not None:
                self._prepare(item)
                if item.channel is not None and item.failure is None:
                    # Later steps in this batch count this one against the caps.
                    sent_times[enrollment.lead_id, item.channel].append(item.at)
            items.append(item)
        return items

    def _decision(
        self,
        item: _Item,
        known: SendRecord | None,
        sent_times: Mapping[tuple[str, str], list[datetime]],
        now: datetime,
        catalog: SequenceCatalog,
    ) -> StepDecision:
        if known is not None and known.status is not SendStatus.RETRYABLE:
            return self._already(item, known, now)
        enrollment = item.enrollment
        channel = _channel_of(item)
        sent = sent_times.get((enrollment.lead_id, channel), []) if enrollment and channel else []
        return decide_step(
            enrollment,
            item.step,
            item.record,
            item.lead,
            due_at=item.claimed.work.due_at,
            now=item.at,
            policy=self._settings.policy,
            default_timezone=self._settings.default_timezone,
            sent=sent,
        )

    def _already(self, item: _Item, known: SendRecord, now: datetime) -> StepDecision:
        """This step has a send record already: a replica sent it (or tried) and did not
        commit. Publish what happened; never send it again."""
        if (
            known.status is SendStatus.SENDING
            and now - known.reserved_at < self._settings.unknown_after
        ):
            # Maybe still in a provider call on another replica: look again later.
            return StepDecision(
                StepOutcome.DEFER, "being sent", at=now + self._settings.unknown_after
            )
        item.send = known
        item.channel = known.channel
        item.replayed = True
        if known.status is SendStatus.SENDING:
            item.failure = "outcome unknown: the replica sending it stopped; not sent again"
        elif known.status is SendStatus.FAILED:
            item.failure = known.error or "failed"
        return StepDecision(StepOutcome.SEND, "recorded before")

    def _prepare(self, item: _Item) -> None:
        enrollment, record, lead = item.enrollment, item.record, item.lead
        if enrollment is None or record is None or lead is None or item.send is not None:
            return
        sequence = record.at(enrollment.sequence_version)
        step = sequence.steps[item.step]
        item.channel = step.channel
        try:
            rendered = render_step(step, lead, sequence.name)
        except RenderError as error:
            item.failure = f"template: {error}"
            return
        item.message = outbound_message(
            step,
            rendered,
            lead,
            message_id=message_id_of(enrollment.enrollment_id, item.step),
            sequence_id=enrollment.sequence_id,
            index=item.step,
        )
        item.send = SendRecord(
            key=item.key,
            lead_id=enrollment.lead_id,
            enrollment_id=enrollment.enrollment_id,
            sequence_id=enrollment.sequence_id,
            step=item.step,
            channel=step.channel,
            status=SendStatus.SENDING,
            reserved_at=item.at,
        )

    # --- 2. send ------------------------------------------------------------------------------

    async def _drop_opted_out(self, items: Sequence[_Item]) -> None:
        sending = [i for i in items if i.message is not None]
        if self._opt_outs is None or not sending:
            return
        # Each lead only for the channel it is about to get.
        wanted = {(i.message.lead_id, i.channel) for i in sending if i.message and i.channel}
        leads_out, phones, bounced = await asyncio.gather(
            self._opt_outs.opted_out_of(wanted),
            self._opt_outs.opted_out_phones(
                {i.message.to for i in sending if isinstance(i.message, OutboundSms)}
            ),
            self._opt_outs.suppressed_emails(
                {i.message.to for i in sending if isinstance(i.message, OutboundEmail)}
            ),
        )
        for item in sending:
            message = item.message
            if message is None or item.channel is None:
                continue
            if isinstance(message, OutboundEmail) and message.to in bounced:
                item.decision = StepDecision(StepOutcome.SKIP, "the address hard-bounced")
                item.message = item.send = None
            elif (message.lead_id, item.channel) in leads_out or (
                isinstance(message, OutboundSms) and message.to in phones
            ):
                item.decision = StepDecision(StepOutcome.SKIP, f"opted out of {item.channel}")
                item.message = item.send = None

    async def _limit_rate(self, items: Sequence[_Item]) -> None:
        """Each message counts against its channel's rate in the second it is sent in."""
        wanting: dict[tuple[str, datetime], list[_Item]] = defaultdict(list)
        for item in items:
            if item.message is not None and item.channel is not None:
                wanting[item.channel, item.at.replace(microsecond=0)].append(item)
        limited = {
            window: (waiting, limit)
            for window, waiting in wanting.items()
            if (limit := self._settings.rate_per_second.get(window[0])) is not None
        }
        granted = await asyncio.gather(
            *(
                self._store.take_rate(channel, second, len(waiting), limit)
                for (channel, second), (waiting, limit) in limited.items()
            )
        )
        for ((_, second), (waiting, _)), taken in zip(limited.items(), granted, strict=True):
            for item in waiting[taken:]:
                _defer(item, second + timedelta(seconds=1), "rate limit")

    async def _reserve(self, items: Sequence[_Item]) -> None:
        wanted = [i.send for i in items if i.message is not None and i.send is not None]
        reserved = await self._store.reserve_sends(wanted)
        now = self._clock()
        for item in items:
            if item.message is None or item.send is None:
                continue
            if item.key in reserved:
                item.send = dataclasses.replace(item.send, attempts=reserved[item.key])
            else:
                # Another replica holds this step's record: it sends it, or it already did.
                _defer(item, now + self._settings.unknown_after, "reserved elsewhere")

    async def _send(self, items: Sequence[_Item]) -> None:
        sending = [i for i in items if i.message is not None]
        await asyncio.gather(*(self._send_one(item) for item in sending))

    async def _send_one(self, item: _Item) -> None:
        message, send = item.message, item.send
        if message is None or send is None:
            return
        early = (item.at - self._clock()).total_seconds()
        if early > 0:  # claimed ahead of time: not handed over before it is due
            await asyncio.sleep(early)
        now = self._clock()
        try:
            async with self._slots:
                if isinstance(message, OutboundEmail):
                    provider_id = await _need(self._senders.email, "email").send(message)
                else:
                    provider_id = await _need(self._senders.sms, "sms").send(message)
        except RetryableSendError as error:
            attempts = send.attempts
            if attempts < self._settings.provider_attempts:
                delay = retry_delay(
                    attempts, self._settings.retry_base, self._settings.retry_ceiling
                )
                item.retry_at = now + delay
                item.send = dataclasses.replace(send, status=SendStatus.RETRYABLE, error=str(error))
                log.warning(
                    "provider refused for now; retrying",
                    key=item.key,
                    attempts=attempts,
                    error=str(error),
                )
                return
            item.failure = f"gave up after {attempts} attempts: {error}"
        except RecipientOptedOutError as error:
            item.failure, item.opted_out = str(error), True
        except HardBounceError as error:
            item.failure = str(error)
            item.bounced = HardBounce(
                error.address or message.to,
                lead_id=message.lead_id,
                message_id=message.message_id,
                sequence_id=message.sequence_id,
                step=message.step,
                status=error.status,
                diagnostic=error.reason,
            )
        except PermanentSendError as error:
            item.failure = str(error)
        else:
            item.send = dataclasses.replace(
                send, status=SendStatus.SENT, sent_at=now, provider_id=provider_id
            )
            # What marketing sees: the message's delay at the provider, not the batch's
            # commit (the due-work runner's lateness, later by the database's time).
            accepted_after = self._clock() - item.claimed.work.due_at
            SEND_DELAY.labels(item.channel or "-").observe(max(0.0, accepted_after.total_seconds()))
            return
        item.send = dataclasses.replace(send, status=SendStatus.FAILED, error=item.failure)

    async def _remember_recipients(self, items: Sequence[_Item]) -> None:
        """Who is about to be texted at which number, before the text leaves: an answer
        (STOP included) may come back faster than this batch commits."""
        if self._feedback is None:
            return
        now = self._clock()
        await self._feedback.remember_sms_recipients(
            [
                SmsRecipient(
                    phone=i.message.to,
                    lead_id=i.message.lead_id,
                    at=now,
                    message_id=i.message.message_id,
                )
                for i in items
                if isinstance(i.message, OutboundSms)
            ]
        )

    async def _tell_channels(self, items: Sequence[_Item]) -> None:
        if self._feedback is None:
            return
        await self._feedback.hard_bounces([i.bounced for i in items if i.bounced is not None])
        for item in items:
            if item.opted_out and item.message is not None and item.channel is not None:
                await self._feedback.opt_out(
                    item.message.lead_id,
                    item.channel,
                    item.failure or "the carrier reports the recipient opted out",
                    phone=item.message.to if isinstance(item.message, OutboundSms) else None,
                    sequence_id=item.message.sequence_id,
                )

    # --- 3. commit ----------------------------------------------------------------------------

    async def _commit(self, batch: list[ClaimedWork], items: Sequence[_Item]) -> None:
        """Commit this batch, together with any others of this replica waiting to; its own
        failure (LeaseLost, a bad item, an outage) is raised here, for the runner."""
        sent = _SentBatch(batch, items, asyncio.get_running_loop().create_future())
        self._to_commit.append(sent)
        async with self._committing:
            if not sent.committed.done():
                group, self._to_commit = self._to_commit, []
                await self._commit_group(group)
        await sent.committed

    async def _commit_group(self, group: Sequence[_SentBatch]) -> None:
        try:
            if len(group) > 1:
                try:
                    await self._commit_batches(
                        [c for b in group for c in b.batch], [i for b in group for i in b.items]
                    )
                except Exception as error:  # noqa: BLE001 - each batch on its own, below
                    log.info("batches committed one by one after", error=repr(error))
                else:
                    for sent in group:
                        sent.committed.set_result(None)
                    return
            # One by one: each batch gets its own outcome (one's lost lease is not another's).
            for sent in group:
                try:
                    await self._commit_batches(sent.batch, sent.items)
                except Exception as error:  # noqa: BLE001 - raised in that batch's own _commit
                    sent.committed.set_exception(error)
                else:
                    sent.committed.set_result(None)
        finally:
            for sent in group:
                if not sent.committed.done():  # this commit was cancelled (a stop)
                    sent.committed.set_exception(RuntimeError("commit abandoned"))

    async def _commit_batches(self, batch: list[ClaimedWork], items: Sequence[_Item]) -> None:
        moves = self._moves_as_decided(items)
        if moves is not None:
            try:
                await self._commit_as_decided(batch, items, moves)
            except EnrollmentMovedMeanwhileError as moved:
                # Not stored as read (the store's guarantees say it cannot happen): commit
                # again from the enrollments as they are now.
                log.warning(
                    "enrollments not stored as read; committing from a re-read",
                    enrollment_ids=sorted(moved.enrollment_ids)[:10],
                )
            else:
                return
        await self._commit_reading(batch, items)

    def _moves_as_decided(self, items: Sequence[_Item]) -> list[StepMove] | None:
        """Each item's move from its enrollment as read when deciding, or None when the
        commit must read the enrollments again: a replayed step (whose own attempt may
        have committed after all), an enrollment missing, not at the step or in the batch
        twice."""
        now = self._clock()
        moves: list[StepMove] = []
        seen: set[str] = set()
        for item in items:
            enrollment = item.enrollment
            if (
                item.replayed
                or enrollment is None
                or item.record is None
                or item.enrollment_id in seen
                or not _at_its_step(enrollment, item)
            ):
                return None
            seen.add(item.enrollment_id)
            moved = self._moved(item, _outcome(item), enrollment, item.lead, now)
            if moved is not None and moved != enrollment:
                moves.append(StepMove(enrollment, moved))
        return moves

    async def _commit_as_decided(
        self, batch: list[ClaimedWork], items: Sequence[_Item], moves: Sequence[StepMove]
    ) -> None:
        """Commit the moves decided from the enrollments as read before sending, reading
        none again. The timers are finished first: a claim voided by an enrollment write
        since it was taken raises LeaseLost there, before anything is moved."""

        async def commit(transaction: NurtureTransaction) -> tuple[None, list[Event]]:
            await transaction.take_commit_turn()
            now = self._clock()
            # Timers first: finishing a claimed one then rescheduling its key is a new item.
            await transaction.finish(batch)
            await transaction.move_on(moves)
            return None, [event for item in items for event in _events_of(item, now)]

        await self._store.commit(commit)
        for item in items:
            STEPS_HANDLED.labels(item.channel or "-", _outcome(item)).inc()

    async def _commit_reading(self, batch: list[ClaimedWork], items: Sequence[_Item]) -> None:
        # From the enrollments as they are in the transaction. (Checking each write against
        # the enrollment as read when deciding was tried: its bulk replace took ~8x as long
        # on SecantusDB, likely as the whole-document filter is served from an index on a
        # field thousands of enrollments share, not by `_id`.)
        async def commit(transaction: NurtureTransaction) -> tuple[None, list[Event]]:
            await transaction.take_commit_turn()
            now = self._clock()
            current = await transaction.enrollments({i.enrollment_id for i in items})
            changed: dict[str, Enrollment] = {}
            events: list[Event] = []
            for item in items:
                enrollment = changed.get(item.enrollment_id) or current.get(item.enrollment_id)
                at_step = enrollment is not None and _at_its_step(enrollment, item)
                if item.replayed and not at_step:
                    continue  # its own attempt committed (and published) after all
                events += _events_of(item, now)
                outcome = _outcome(item)
                STEPS_HANDLED.labels(item.channel or "-", outcome).inc()
                if enrollment is None or item.record is None or not at_step:
                    continue  # moved on meanwhile (stopped, replanned): its new state stands
                moved = self._moved(
                    # The lead as read when deciding (its zone plans the next step): a
                    # contact change since then replans the enrollment when it is consumed.
                    item,
                    outcome,
                    enrollment,
                    item.lead,
                    now,
                )
                if moved is not None and moved != enrollment:
                    changed[item.enrollment_id] = moved
            # Timers first: finishing a claimed one then rescheduling its key is a new item.
            await transaction.finish(batch)
            await transaction.save(NurtureChanges(changed=tuple(changed.values())))
            return None, events

        await self._store.commit(commit)

    def _moved(
        self,
        item: _Item,
        outcome: str,
        enrollment: Enrollment,
        lead: LeadContact | None,
        now: datetime,
    ) -> Enrollment | None:
        record = item.record
        assert record is not None
        zone = self._settings.default_timezone
        match outcome:
            case "deferred":
                return dataclasses.replace(
                    enrollment, next_send_at=item.retry_at or item.decision.at
                )
            case "stopped":
                reason = item.decision.stop_reason
                return None if reason is None else stopped(enrollment, reason, now)
            case "dropped":
                return None
            case "sent":
                sent_at = item.send.sent_at if item.send and item.send.sent_at else now
                return after_step(
                    enrollment,
                    record,
                    lead,
                    sent_at=sent_at,
                    counted_from=now,
                    default_timezone=zone,
                )
        # skipped or failed: on to the next step, its delay counted from this one's due time
        return after_step(
            enrollment,
            record,
            lead,
            sent_at=None,
            counted_from=item.claimed.work.due_at,
            default_timezone=zone,
        )


@dataclass
class _SentBatch:
    """A batch past its send phase, waiting for its commit."""

    batch: list[ClaimedWork]
    items: Sequence[_Item]
    committed: asyncio.Future[None]


_DROP = StepDecision(StepOutcome.DROP)
S = TypeVar("S", EmailSender, SmsSender)


def _at_its_step(enrollment: Enrollment, item: _Item) -> bool:
    """Whether `enrollment` is still active at the step `item` fired."""
    return enrollment.current_step == item.step and enrollment.status is EnrollmentStatus.ACTIVE


def _defer(item: _Item, at: datetime, why: str) -> None:
    item.decision = StepDecision(StepOutcome.DEFER, why, at=at)
    item.message = None
    item.send = None


def _channel_of(item: _Item) -> Channel | None:
    if item.enrollment is None or item.record is None:
        return None
    steps = item.record.at(item.enrollment.sequence_version).steps
    return steps[item.step].channel if item.step < len(steps) else None


def _need(sender: S | None, channel: Channel) -> S:
    if sender is None:
        raise PermanentSendError(channel, f"no {channel} provider is configured")
    return sender


def _outcome(item: _Item) -> str:
    decision = item.decision.outcome
    if decision is StepOutcome.SEND:
        if item.retry_at is not None:
            return "deferred"
        if item.failure is not None:
            return "failed"
        return "sent" if item.send is not None and item.send.status is SendStatus.SENT else "failed"
    return {
        StepOutcome.DEFER: "deferred",
        StepOutcome.SKIP: "skipped",
        StepOutcome.STOP: "stopped",
        StepOutcome.DROP: "dropped",
    }[decision]


def _events_of(item: _Item, now: datetime) -> list[Event]:
    enrollment, send = item.enrollment, item.send
    if enrollment is None or item.decision.outcome is not StepOutcome.SEND or item.retry_at:
        return []
    channel = item.channel or "email"
    if item.failure is None and send is not None and send.status is SendStatus.SENT:
        return [
            MessageSentV1(
                lead_id=enrollment.lead_id,
                occurred_at=send.sent_at or now,
                sequence_id=enrollment.sequence_id,
                step=item.step,
                channel=channel,
                message_id=message_id_of(enrollment.enrollment_id, item.step),
                sequence_version=enrollment.sequence_version,
                due_at=item.claimed.work.due_at,
            )
        ]
    # A carrier opt-out (21610) is told to the channels too, which publish LeadOptedOutV1.
    return [
        MessageFailedV1(
            lead_id=enrollment.lead_id,
            occurred_at=now,
            sequence_id=enrollment.sequence_id,
            step=item.step,
            channel=channel,
            error=item.failure or "failed",
        )
    ]


def _tally(items: Sequence[_Item]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[_outcome(item)] += 1
    return dict(counts)
