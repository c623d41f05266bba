"""The steps of notifications: plan from events, deliver due jobs, follow the live feed.

- `PlanNotifications` plans batches of assignment's own events and intake's repeat
  inquiries (read back from Kafka and queued by the handler as one due-work item each, so
  the consumer that routes leads spends one write on them) in one transaction per claimed
  batch: the events not planned before, the owners of leads asked about again and the
  people concerned with one query per collection, the plan in memory
  (`rules.plan_notifications`), stream entries and delivery jobs written in bulk.
  Routing itself writes nothing for notifications.
- `RecordNotices` does the same for notices no event carries (help requested, follow-up
  overdue), inside the transaction of the workflow step that raises them.
- `DeliverNotifications` is the due-work runner's `fire`: it sends a claimed batch through
  the senders concurrently, then records every outcome and finishes the jobs that are done
  in one transaction; a temporary failure is given back with exponential back-off, the
  last failed attempt is recorded as `failed` (visible to managers).
- `LiveFeed` follows the stream entries every replica commits (one query per poll for all
  of this replica's listeners) and hands each listener its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import structlog
from prometheus_client import Counter

from leadflow.chassis.clock import Clock
from leadflow.chassis.duework import ClaimedWork
from leadflow.chassis.store import Session
from leadflow.chassis.tasks import stop_requested
from services.assignment.notifications.channels import DeliveryError, EmailSender, WebhookSender
from services.assignment.notifications.rules import (
    Delivery,
    DeliveryStatus,
    FeedEntry,
    Notice,
    NotificationPlan,
    Person,
    add_notice,
    email_for,
    feed_entry_for,
    leads_concerned,
    managers_concerned,
    people_concerned,
    plan_notifications,
    pools_concerned,
    retry_at,
    webhook_request,
)
from services.assignment.notifications.store import (
    NotificationsInTransaction,
    NotificationStore,
    Outcome,
    StoredDelivery,
)
from shared.events import Event

log = structlog.get_logger(__name__)

NOTIFICATION_ATTEMPTS = Counter(
    "leadflow_notification_attempts_total",
    "Notification delivery attempts by channel and outcome (sent, retrying, failed)",
    ["channel", "outcome"],
)


class PlanNotifications:
    def __init__(
        self,
        store: NotificationStore,
        *,
        clock: Clock,
        sla_warning_before: timedelta,
        max_event_age: timedelta | None = None,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._sla_warning_before = sla_warning_before
        self._max_event_age = max_event_age
        self._on_recorded = on_recorded

    async def fire(self, batch: list[ClaimedWork]) -> None:
        """The `notify-plan` runner's `fire`: plan the queued batches, and finish them in
        the same transaction."""
        await self._plan(self._store.queued_events(batch), finish=batch)

    async def __call__(self, events: Sequence[Event]) -> NotificationPlan | None:
        """Plan and record a batch now; None when every event was planned before."""
        return await self._plan(events, finish=())

    async def _plan(
        self, events: Sequence[Event], *, finish: Sequence[ClaimedWork]
    ) -> NotificationPlan | None:
        now = self._clock()

        async def plan(tx: NotificationsInTransaction, fresh: list[Event]) -> NotificationPlan:
            owners = await tx.lead_owners(leads_concerned(fresh))
            owner_ids = {owner.rep_id for owner in owners.values()}
            people = await tx.people(people_concerned(fresh) | owner_ids)
            pool_managers = await tx.pool_managers(pools_concerned(fresh))
            if managers := managers_concerned(people, pool_managers):
                people = {**people, **await tx.people(managers)}
            decided = plan_notifications(
                fresh,
                people,
                pool_managers,
                now=now,
                sla_warning_before=self._sla_warning_before,
                max_age=self._max_event_age,
                owners=owners,
            )
            await tx.record(decided, now)
            return decided

        decided = await self._store.plan_batch(events, plan, finish=finish)
        if decided is None:
            log.info("events already planned", events=len(events))
            return None
        _log_plan(decided, events=len(events))
        self._on_recorded()
        return decided


class RecordNotices:
    """For a workflow step whose notice no event carries: call it with the step's own
    transaction session, so the notice is recorded if and only if the step commits."""

    def __init__(self, store: NotificationStore, *, on_recorded: Callable[[], None]) -> None:
        self._store = store
        self._on_recorded = on_recorded

    async def __call__(
        self, session: Session, notices: Sequence[Notice], now: datetime
    ) -> NotificationPlan:
        tx = self._store.in_transaction(session)
        people = await tx.people({notice.person_id for notice in notices})
        plan = NotificationPlan()
        for notice in notices:
            person = people.get(notice.person_id)
            if person is None:
                plan.unaddressed.append(notice)
            else:
                add_notice(plan, notice, person, now=now)
        await tx.record(plan, now)
        _log_plan(plan, events=0)
        # Woken before the caller's commit: the runner and the feed then find nothing
        # yet and look again on their next poll, a fraction of a second later.
        self._on_recorded()
        return plan


def _log_plan(plan: NotificationPlan, *, events: int) -> None:
    for notice in plan.unaddressed:
        log.warning(
            "nobody to notify",
            kind=notice.kind.value,
            lead_id=notice.lead_id,
            person_id=notice.person_id or None,
        )
    if plan.stale:
        log.info("events too old to notify about", events=plan.stale)
    if plan.feed or plan.deliveries or plan.cancelled:
        log.info(
            "notifications planned",
            events=events,
            stream_entries=len(plan.feed),
            deliveries=len(plan.deliveries),
            cancelled=len(plan.cancelled),
        )


# --- delivery ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base_s: float
    max_s: float


class DeliverNotifications:
    """The `fire` of the `notify` due-work runner.

    A batch's sends run concurrently (at most `email_concurrency` SMTP sessions and
    `webhook_concurrency` requests at once per replica). Those done within `patience_s`
    (nearly all) are recorded together in one transaction. A send still waiting on a slow
    receiver is recorded when it ends, with the other late ones (one transaction at a
    time), so one dead webhook (waited on up to its timeout) holds up neither the runner
    nor the deliveries claimed after it. Its job stays claimed meanwhile: the lease
    (`notify_lease_s`) must outlast the slowest send.
    """

    def __init__(
        self,
        store: NotificationStore,
        *,
        email: EmailSender,
        webhook: WebhookSender,
        clock: Clock,
        retry: RetryPolicy,
        email_concurrency: int = 20,
        webhook_concurrency: int = 50,
        patience_s: float = 1.0,
    ) -> None:
        self._store = store
        self._email = email
        self._webhook = webhook
        self._clock = clock
        self._retry = retry
        self._slots = {
            "email": asyncio.Semaphore(email_concurrency),
            "webhook": asyncio.Semaphore(webhook_concurrency),
        }
        self._patience_s = patience_s
        self._late: list[tuple[Outcome, FeedEntry | None]] = []
        self._still_sending: set[asyncio.Future[tuple[Outcome, FeedEntry | None]]] = set()
        self._late_settler: asyncio.Task[None] | None = None

    async def __call__(self, batch: list[ClaimedWork]) -> None:
        stored = await self._store.deliveries([c.work.key for c in batch])
        people = await self._store.people({d.delivery.notice.person_id for d in stored.values()})
        attempts = [
            asyncio.ensure_future(self._attempt(claimed, stored.get(claimed.work.key), people))
            for claimed in batch
        ]
        done, slow = await asyncio.wait(attempts, timeout=self._patience_s)
        for attempt in slow:
            self._still_sending.add(attempt)
            attempt.add_done_callback(self._landed)
        await self._settle([attempt.result() for attempt in attempts if attempt in done])

    def _landed(self, attempt: asyncio.Future[tuple[Outcome, FeedEntry | None]]) -> None:
        self._still_sending.discard(attempt)
        if attempt.cancelled():
            return  # shutting down: the lease lapses and it is claimed again
        self._late.append(attempt.result())
        if self._late_settler is None or self._late_settler.done():
            self._late_settler = asyncio.create_task(self._settle_late())

    async def _settle_late(self) -> None:
        while self._late:
            results, self._late = self._late, []
            try:
                await self._settle(results)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - their leases lapse; tried again
                log.warning("late deliveries could not be recorded", error=repr(error))

    async def _settle(self, results: Sequence[tuple[Outcome, FeedEntry | None]]) -> None:
        if not results:
            return
        outcomes = [outcome for outcome, _ in results]
        feed = [entry for _, entry in results if entry is not None]
        await self._store.settle(outcomes, feed, self._clock())
        for outcome in outcomes:
            _log_outcome(outcome)

    async def drain(self, timeout_s: float) -> None:
        """On shutdown: let slow sends end and be recorded, for at most `timeout_s`."""
        if self._still_sending:
            await asyncio.wait(set(self._still_sending), timeout=timeout_s)
        if self._late_settler is not None:
            await asyncio.wait({self._late_settler}, timeout=timeout_s)

    async def _attempt(
        self,
        claimed: ClaimedWork,
        stored: StoredDelivery | None,
        people: Mapping[str, Person],
    ) -> tuple[Outcome, FeedEntry | None]:
        if stored is None or stored.status is not DeliveryStatus.PENDING:
            # Cancelled (or unknown): the job is simply done.
            return Outcome(claimed), None
        delivery = stored.delivery
        if delivery.channel == "sse":
            return Outcome(claimed), feed_entry_for(delivery.notice)
        person = people.get(delivery.notice.person_id)
        try:
            async with self._slots[delivery.channel]:
                await self._send(delivery, person)
        except DeliveryError as error:
            return self._failed(claimed, error.reason, permanent=error.permanent), None
        except Exception as error:
            # A fault of ours (not the receiver's) must not fail the whole batch, whose
            # other sends have gone out: this one is retried like a temporary failure.
            log.exception("sending a notification failed", delivery_id=delivery.delivery_id)
            return self._failed(claimed, repr(error), permanent=False), None
        return Outcome(claimed), None

    def _failed(self, claimed: ClaimedWork, reason: str, *, permanent: bool) -> Outcome:
        attempts = claimed.attempts + 1
        last = permanent or attempts >= self._retry.max_attempts
        return Outcome(claimed, reason, permanent, None if last else self._retry_at(attempts))

    def _retry_at(self, attempts: int) -> datetime:
        return retry_at(attempts, self._clock(), base_s=self._retry.base_s, max_s=self._retry.max_s)

    async def _send(self, delivery: Delivery, person: Person | None) -> None:
        notify = person.notify if person else None
        if delivery.channel == "email":
            if notify is None or not notify.email:
                raise DeliveryError("the recipient has no email address now", permanent=True)
            message = email_for(delivery.notice, notify.email, delivery_id=delivery.delivery_id)
            await self._email.send(message)
        else:
            if notify is None or not notify.webhook_url:
                raise DeliveryError("the recipient has no webhook now", permanent=True)
            request = webhook_request(
                delivery.notice, notify, delivery_id=delivery.delivery_id, now=self._clock()
            )
            await self._webhook.send(request)


def _log_outcome(outcome: Outcome) -> None:
    key = outcome.claimed.work.key
    attempts = outcome.claimed.attempts + 1
    channel = key.rsplit(":", 1)[-1]
    result = "sent" if outcome.error is None else "retrying" if outcome.retry_at else "failed"
    NOTIFICATION_ATTEMPTS.labels(channel, result).inc()
    if outcome.error is None:
        log.debug("notification delivered", delivery_id=key, attempts=attempts)
    elif outcome.retry_at is not None:
        log.info(
            "notification not delivered yet; will retry",
            delivery_id=key,
            attempts=attempts,
            error=outcome.error,
            retry_at=outcome.retry_at.isoformat(),
        )
    else:
        log.error(
            "notification failed for good",
            delivery_id=key,
            attempts=attempts,
            error=outcome.error,
            permanent=outcome.permanent,
        )


# --- live feed -----------------------------------------------------------------------------


class StreamOverflowError(Exception):
    """A listener fell too far behind: its stream ends and the client reconnects with
    `Last-Event-ID`, reading what it missed from the feed."""


@dataclass(eq=False)
class _Listener:
    person_id: str
    queue: asyncio.Queue[tuple[int, FeedEntry] | None]


class FeedSource(Protocol):
    """What the live feed reads (a `NotificationStore` is one)."""

    async def feed_after(
        self, position: int, *, person_id: str | None = None, limit: int = 500
    ) -> list[tuple[int, FeedEntry]]: ...
    async def feed_position(self) -> int: ...


class LiveFeed:
    """Stream entries for the listeners on this replica, whichever replica committed them."""

    def __init__(
        self, store: FeedSource, *, poll_interval_s: float, listener_backlog: int = 1000
    ) -> None:
        self._store = store
        self._poll_interval_s = poll_interval_s
        self._backlog = listener_backlog
        self._listeners: dict[str, set[_Listener]] = {}
        self._position: int | None = None
        self._nudge = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Entries were committed on this replica: read them now, not at the next poll."""
        self._nudge.set()

    async def run(self) -> None:
        while not self._stopping and not stop_requested():
            self._nudge.clear()
            if self._listeners:
                try:
                    await self._poll()
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - the feed outlives an outage
                    log.warning("live feed poll failed", error=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), timeout=self._poll_interval_s)

    async def stop(self) -> None:
        self._stopping = True
        self._nudge.set()
        for listeners in list(self._listeners.values()):
            for listener in listeners:
                listener.queue.put_nowait(None)

    async def _poll(self) -> None:
        if self._position is None:
            self._position = await self._store.feed_position()
            return
        while True:
            entries = await self._store.feed_after(self._position, limit=500)
            for number, entry in entries:
                for listener in list(self._listeners.get(entry.person_id, ())):
                    try:
                        listener.queue.put_nowait((number, entry))
                    except asyncio.QueueFull:
                        self._drop(listener)
                        listener.queue.get_nowait()
                        listener.queue.put_nowait(None)
            if entries:
                self._position = entries[-1][0]
            if len(entries) < 500:
                return

    def _drop(self, listener: _Listener) -> None:
        listeners = self._listeners.get(listener.person_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[listener.person_id]

    async def follow(
        self, person_id: str, *, after: int | None
    ) -> AsyncGenerator[tuple[int, FeedEntry]]:
        """The person's entries from now on (or from after `after`, a `Last-Event-ID`),
        each once, in commit order. Raises `StreamOverflowError` if the reader lags."""
        listener = _Listener(person_id, asyncio.Queue(self._backlog))
        # Listening before reading the missed entries, so none falls between the two.
        self._listeners.setdefault(person_id, set()).add(listener)
        if self._position is None:
            self._position = await self._store.feed_position()
        self.wake()
        try:
            last = after if after is not None else self._position
            if after is not None:
                for number, entry in await self._store.feed_after(
                    after, person_id=person_id, limit=self._backlog
                ):
                    last = number
                    yield number, entry
            while True:
                item = await listener.queue.get()
                if item is None:
                    if self._stopping:
                        return
                    raise StreamOverflowError(person_id)
                number, entry = item
                if number > last:
                    last = number
                    yield number, entry
        finally:
            self._drop(listener)

    @property
    def listeners(self) -> int:
        return sum(len(listeners) for listeners in self._listeners.values())
