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
    outbox_poll_interval_s: float = Field(default=0.5, gt=0)
    outbox_batch_size: int = Field(default=200, ge=1)
    api_key_cache_ttl_s: float = Field(default=30.0, ge=0)
