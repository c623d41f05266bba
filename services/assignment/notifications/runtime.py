"""The notification parts of one assignment process, built once in `create_app`.

`NotificationRuntime` holds the store, the planner the Kafka handler calls, the delivery
runner (chassis due work, kind `notify`) and the live feed, and starts and stops the
runner and the feed with the service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta

import httpx
import structlog

from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.clock import Clock
from leadflow.chassis.duework import DueWorkRunner, DueWorkStore
from leadflow.chassis.store import MongoDueWork
from services.assignment.notifications.channels import (
    EmailSender,
    SmtpServer,
    WebhookSender,
)
from services.assignment.notifications.rules import PLANNED_EVENTS
from services.assignment.notifications.store import NOTIFY, NOTIFY_PLAN, MongoNotificationStore
from services.assignment.notifications.usecases import (
    DeliverNotifications,
    LiveFeed,
    PlanNotifications,
    RecordNotices,
    RetryPolicy,
)
from services.assignment.settings import Settings
from shared.events import Event

log = structlog.get_logger(__name__)


class NotificationRuntime:
    def __init__(
        self,
        chassis: ServiceChassis,
        settings: Settings,
        *,
        clock: Clock,
        due_work: DueWorkStore | None = None,
    ) -> None:
        due_work = due_work or MongoDueWork(chassis.database)
        self.store = MongoNotificationStore(chassis.database, chassis.ledger, due_work)
        self.heartbeat_s = settings.stream_heartbeat_s
        self.feed = LiveFeed(self.store, poll_interval_s=settings.stream_poll_interval_s)
        self._http = httpx.AsyncClient(follow_redirects=False)
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        self._deliver = deliver = DeliverNotifications(
            self.store,
            email=EmailSender(
                SmtpServer(
                    host=settings.smtp_host,
                    port=settings.smtp_port,
                    sender=settings.smtp_from,
                    username=settings.smtp_username,
                    password=password,
                    security=settings.smtp_security,
                    timeout_s=settings.smtp_timeout_s,
                    validate_certs=settings.smtp_validate_certs,
                )
            ),
            webhook=WebhookSender(self._http, timeout_s=settings.webhook_timeout_s),
            clock=clock,
            retry=RetryPolicy(
                max_attempts=settings.notify_max_attempts,
                base_s=settings.notify_retry_base_s,
                max_s=settings.notify_retry_max_s,
            ),
        )
        self.runner = DueWorkRunner(
            due_work,
            kinds={NOTIFY},
            fire=deliver,
            clock=clock,
            batch_size=settings.notify_batch_size,
            lease_s=settings.notify_lease_s,
            idle_poll_s=settings.notify_poll_s,
            retry_backoff_s=settings.notify_retry_base_s,
            max_backoff_s=settings.notify_retry_max_s,
            # Delivery failures are handled per delivery by `deliver`; the runner's own
            # retries only cover a batch that could not be recorded at all.
            max_attempts=settings.notify_max_attempts,
        )
        self.plan = PlanNotifications(
            self.store,
            clock=clock,
            sla_warning_before=timedelta(seconds=settings.sla_warning_before_s),
            max_event_age=timedelta(seconds=settings.notify_max_event_age_s),
            on_recorded=self._recorded,
        )
        self.planner = DueWorkRunner(
            due_work,
            kinds={NOTIFY_PLAN},
            fire=self.plan.fire,
            clock=clock,
            # Two queued chunks (up to 100 events each) per planning transaction.
            batch_size=2,
            lease_s=settings.notify_lease_s,
            idle_poll_s=settings.notify_poll_s,
            retry_backoff_s=settings.notify_retry_base_s,
            max_backoff_s=settings.notify_retry_max_s,
            max_attempts=settings.notify_max_attempts,
        )
        self._clock = clock
        self.record_notices = RecordNotices(self.store, on_recorded=self._recorded)
        """For workflow steps whose notice no event carries (help requested, follow-up
        overdue): `await record_notices(session, [notice], now)` inside their transaction."""
        self._tasks: list[asyncio.Task[None]] = []

    def _recorded(self) -> None:
        self.runner.wake()
        self.feed.wake()

    async def handle(self, events: Sequence[Event]) -> None:
        """The Kafka handler's share: assignment's own events and intake's repeat inquiries,
        queued for planning (one write: the consumer that routes leads is not kept
        waiting). Queued after routing has committed the batch, so planning finds a lead's
        owner as routing left it."""
        ours = [event for event in events if isinstance(event, PLANNED_EVENTS)]
        if ours:
            await self.store.enqueue(ours, self._clock())
            self.planner.wake()

    async def start(self) -> None:
        await self.store.ensure_indexes()
        self._tasks = [
            asyncio.create_task(self.planner.run(), name="assignment-notify-planner"),
            asyncio.create_task(self.runner.run(), name="assignment-notify-runner"),
            asyncio.create_task(self.feed.run(), name="assignment-live-feed"),
        ]

    async def stop(self) -> None:
        await self.feed.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.planner.stop(), timeout=10.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.runner.stop(), timeout=10.0)
        await self._deliver.drain(timeout_s=5.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()
