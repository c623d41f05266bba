"""Kafka plumbing every service needs: the broker, topics, dead letters, readiness.

Consumers start new groups from `earliest` (a new group would otherwise skip what was
published before its first partition assignment) and commit after handling, so a crash
re-delivers; handlers are idempotent on `event_id`, which makes re-delivery harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from aiokafka import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faststream import BaseMiddleware, ContextRepo
from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy
from prometheus_client import Counter
from pydantic import ValidationError

from leadflow.chassis.store import DEPENDENCY_DOWN
from shared.settings import ServiceSettings
from shared.topics import ALL_TOPICS, EVENT_ON, dead_letter_topic, owned_by

log = structlog.get_logger(__name__)

EVENTS_CONSUMED = Counter(
    "leadflow_events_consumed_total",
    "Events taken off Kafka, by outcome (handled, dead_lettered)",
    ["service", "topic", "outcome"],
)


async def ensure_topics(
    bootstrap: str, partitions: int, topics: Iterable[str] = ALL_TOPICS
) -> list[str]:
    """Create every topic and its dead-letter topic with `partitions` partitions.

    Producing to a missing topic would auto-create it with the broker's defaults, so topics
    are made explicitly first. Returns the topics that were newly created.
    """
    wanted = [name for topic in topics for name in (topic, dead_letter_topic(topic))]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
            except TopicAlreadyExistsError:
                # Another service created some of them first; that is the outcome we want.
                log.debug("topics already exist", topics=missing)
        return missing
    finally:
        await admin.close()


class GroupMembership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Remembers whether a consumer has joined its group (its first assignment is done)."""

    def __init__(self) -> None:
        self.joined = asyncio.Event()
        self.partitions: set[Any] = set()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.partitions -= set(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.partitions |= set(assigned)
        self.joined.set()


Publish = Callable[[str, bytes, bytes | None, dict[str, str]], Awaitable[None]]


class DeadLetters:
    """Middleware: retry a failing message a bounded number of times, then park it.

    A message that does not validate is parked at once (retrying cannot fix it). The
    parked copy goes to `<topic>.dlq` with the error in its headers, and the consumer
    commits and carries on with the next message. While the service's database is
    unreachable nothing is parked: the message waits, and is finally handed back to Kafka
    uncommitted (redelivered), as it is when parking it fails.
    """

    def __init__(
        self,
        service: str,
        *,
        max_attempts: int,
        backoff_s: float,
        publish: Publish,
        outage_limit_s: float = 120.0,
    ) -> None:
        self.service = service
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.publish = publish
        self.outage_limit_s = outage_limit_s

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _DeadLetterScope:
        return _DeadLetterScope(msg, context=context, policy=self)


class _DeadLetterScope(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: ContextRepo, policy: DeadLetters) -> None:
        super().__init__(msg, context=context)
        self.policy = policy

    async def consume_scope(
        self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        record = msg.raw_message
        topic: str = record.topic
        policy = self.policy
        attempt = 0
        outage_started: float | None = None
        while True:
            attempt += 1
            try:
                result = await call_next(msg)
            except DEPENDENCY_DOWN as error:
                # The database is unreachable: the event is not poison, so it is not parked.
                # Wait for the database; past the limit, give the message back to Kafka
                # (not committed: it is delivered again).
                now = time.monotonic()
                outage_started = outage_started or now
                if now - outage_started > policy.outage_limit_s:
                    raise
                attempt -= 1
                log.warning("database unreachable; event waits", topic=topic, error=repr(error))
                await asyncio.sleep(min(policy.backoff_s * 2**attempt, 5.0) or 0.1)
                continue
            except ValidationError as error:
                reason = f"invalid event: {error.errors(include_url=False)}"
                break
            except json.JSONDecodeError as error:
                reason = f"not JSON: {error}"
                break
            except Exception as error:  # noqa: BLE001 - any handler failure is retried, then parked
                reason = f"{type(error).__name__}: {error}"
                log.warning(
                    "event handling failed",
                    topic=topic,
                    offset=record.offset,
                    attempt=attempt,
                    error=reason,
                )
                if attempt >= policy.max_attempts:
                    break
                await asyncio.sleep(policy.backoff_s * 2 ** (attempt - 1))
            else:
                EVENTS_CONSUMED.labels(policy.service, topic, "handled").inc()
                return result
        headers = {
            "x-dlq-error": reason[:4000],
            "x-dlq-original-topic": topic,
            "x-dlq-partition": str(record.partition),
            "x-dlq-offset": str(record.offset),
            "x-dlq-attempts": str(attempt),
            "x-dlq-service": policy.service,
        }
        await policy.publish(dead_letter_topic(topic), record.value, record.key, headers)
        EVENTS_CONSUMED.labels(policy.service, topic, "dead_lettered").inc()
        log.error(
            "event parked on dead-letter topic", topic=topic, offset=record.offset, error=reason
        )
        return None


class KafkaRuntime:
    """One service's broker, its subscribers' group membership and topic set-up."""

    def __init__(self, service: str, settings: ServiceSettings) -> None:
        self.service = service
        self.settings = settings
        self.group_id = settings.consumer_group or f"leadflow-{service}"
        self.memberships: list[GroupMembership] = []
        self.connected = asyncio.Event()
        dead_letters = DeadLetters(
            service,
            max_attempts=settings.consumer_max_attempts,
            backoff_s=settings.consumer_retry_backoff_s,
            publish=self.publish,
        )
        self.broker = KafkaBroker(
            settings.kafka_bootstrap,
            client_id=f"leadflow-{service}",
            acks="all",
            enable_idempotence=False,  # fails on the local broker; consumers de-duplicate
            middlewares=[dead_letters],
            graceful_timeout=10.0,
            logger=logging.getLogger(f"leadflow.{service}.kafka"),
            log_level=logging.DEBUG,
            description=f"leadflow {service} service",
        )
        self._document_publications()

    def _document_publications(self) -> None:
        """Declare what this service publishes, so its AsyncAPI document shows it.

        Events leave through the outbox relay, not through these publishers.
        """
        for topic in owned_by(self.service):
            self.broker.publisher(
                topic,
                title=f"to_{topic.split('.')[1].replace('-', '_')}",
                schema=EVENT_ON[topic],
                description=(EVENT_ON[topic].__doc__ or "").strip() or None,
            )

    def subscriber(
        self, *topics: str, title: str | None = None
    ) -> Callable[[Callable[..., Awaitable[None]]], object]:
        """Subscribe this service's consumer group to `topics` (decorator).

        Call it once per service, with every topic the service consumes, and type the
        handler's argument as a union of the events discriminated by `event_type`: each
        subscriber is its own group member, and on a new group each one's first partition
        assignment takes seconds, one after another.
        """
        membership = GroupMembership()
        self.memberships.append(membership)
        subscriber: Callable[[Callable[..., Awaitable[None]]], object] = self.broker.subscriber(
            *topics,
            group_id=self.group_id,
            auto_offset_reset="earliest",
            # Commit after handling; on an exception that escapes (database down too long,
            # dead-letter topic unreachable) seek back so the message is delivered again.
            ack_policy=AckPolicy.NACK_ON_ERROR,
            listener=membership,
            title=title,
        )
        return subscriber

    async def publish(
        self, topic: str, payload: bytes, key: bytes | None, headers: dict[str, str]
    ) -> None:
        await self.broker.publish(payload, topic, key=key, headers=headers)

    async def publish_many(
        self, messages: list[tuple[str, bytes, bytes | None, dict[str, str]]]
    ) -> None:
        """Publish in order without waiting for each acknowledgement, then wait for all."""
        pending = [
            await self.broker.publish(payload, topic, key=key, headers=headers, no_confirm=True)
            for topic, payload, key, headers in messages
        ]
        await asyncio.gather(*pending)

    async def connect(self, *, retry_s: float = 1.0) -> None:
        """Create topics and start the broker, retrying until Kafka answers."""
        while True:
            try:
                created = await ensure_topics(
                    self.settings.kafka_bootstrap, self.settings.topic_partitions
                )
                if created:
                    log.info("created topics", count=len(created))
                await self.broker.start()
            except (KafkaError, OSError) as error:
                log.warning("kafka not reachable yet", error=repr(error), retry_in_s=retry_s)
                await self.broker.stop()
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 10.0)
            else:
                self.connected.set()
                return

    async def close(self) -> None:
        await self.broker.stop()

    async def ready(self) -> dict[str, bool]:
        if not self.connected.is_set():
            return {"kafka": False, "consumer_groups": False}
        reachable = await self.broker.ping(timeout=2.0)
        joined = all(m.joined.is_set() for m in self.memberships)
        return {"kafka": reachable, "consumer_groups": joined}
