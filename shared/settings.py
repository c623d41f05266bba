"""The settings every service shares. Each service subclasses it with its own env prefix."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Connection and runtime settings common to all four services.

    A subclass sets `model_config = SettingsConfigDict(env_prefix="LEADFLOW_<NAME>_")`, so
    every value can be set per service, as a container orchestrator does.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:19092"
    mongo_url: str = "mongodb://127.0.0.1:27117/?directConnection=true"
    database: str = ""
    identity_database: str = "leadflow_identity"
    topic_partitions: int = Field(default=6, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"
    log_json: bool = True
    consumer_group: str = ""
    consumer_max_attempts: int = Field(default=3, ge=1)
    consumer_retry_backoff_s: float = Field(default=0.2, ge=0)
    consumer_batch_max: int = Field(default=500, ge=1)
    """Most events handled in one batch (one transaction)."""
    consumer_batch_wait_ms: int = Field(default=5, ge=0)
    """How long an idle consumer waits for records before polling again."""
    consumer_fetch_max_wait_ms: int = Field(default=500, ge=0)
    """How long the broker may hold a fetch open waiting for new records. Records that
    arrive end the wait at once; the wait only sets how often an idle consumer asks again
    (100 ms: the local broker took a third of a core with an idle stack, 500 ms: 9 %)."""
    producer_linger_ms: int = Field(default=2, ge=0)
    """How long the producer gathers records into one request (fewer, larger writes)."""
    producer_max_batch_bytes: int = Field(default=262_144, ge=1024)
    """Most bytes per partition in one produce request (the local broker stores each
    request's batch as one object: larger batches, fewer writes)."""
    consumer_session_timeout_ms: int = Field(default=10_000, ge=1000)
    """A consumer that sends no heartbeat this long is dropped from its group and its
    partitions go to the others. The local broker also holds a new member's first join for
    half of it (the real broker uses `group.initial.rebalance.delay.ms` instead)."""
    consumer_heartbeat_interval_ms: int = Field(default=3000, ge=100)
    """How often a consumer tells its group it is alive (under a third of the session)."""
    consumer_commit_interval_ms: int = Field(default=1000, ge=0)
    """Handled offsets are committed at most this often (a crash redelivers up to this
    much, which the inbox recognises)."""
    topic_retention_hours: int = Field(default=168, ge=1)
    """`retention.ms` of the topics a service creates; handled event ids are kept longer."""
    outbox_poll_interval_s: float = Field(default=0.2, gt=0)
    """How often the relay looks for events another replica committed (its own wake it)."""
    outbox_batch_size: int = Field(default=1000, ge=1)
    outbox_lease_s: float = Field(default=5.0, gt=0)
    """The relay lease: another replica takes over within this long after its holder dies."""
    outbox_audit_interval_s: float = Field(default=30.0, gt=0)
    """How often the relay checks that Kafka still holds what it published."""
    kafka_startup_grace_s: float = Field(default=15.0, ge=0)
    """A service that consumes nothing (intake) reports ready once Kafka is connected, or
    after this long if it is not: it then takes work while Kafka is down (its outbox keeps it)."""
    transaction_timeout_s: float = Field(default=15.0, gt=0)
    """A transaction (with its retries) that takes longer fails, as if the database were down."""
    api_key_cache_ttl_s: float = Field(default=30.0, ge=0)
