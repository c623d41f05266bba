"""Settings of the local stack (`leadflow up`); each service has its own settings class."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("intake", "assignment", "nurture", "analytics")


class StackSettings(BaseSettings):
    """`LEADFLOW_*` environment variables read by `leadflow up` and `leadflow keys`."""

    model_config = SettingsConfigDict(env_prefix="LEADFLOW_", extra="ignore", frozen=True)

    data_dir: Path = Path(".leadflow")
    kafka_bootstrap: str | None = None
    """An external Kafka to use; when unset, `up` starts a local Kafka-wire broker."""
    mongo_url: str | None = None
    """An external MongoDB to use; when unset, `up` starts a local MongoDB-wire server."""
    kafka_port: int = Field(default=19092, ge=1, le=65535)
    mongo_port: int = Field(default=27117, ge=1, le=65535)
    s3_port: int = Field(default=19000, ge=1, le=65535)
    """S3 API of the SeaweedFS server that keeps the local Kafka's log (persistent only)."""
    persistent: bool = True
    """Keep Kafka and MongoDB data under `data_dir` across restarts."""
    identity_database: str = "leadflow_identity"
    topic_partitions: int = Field(default=6, ge=1)
    startup_timeout_s: float = Field(default=90.0, gt=0)
    sinks: bool = True
    """Start the local mail sink and fake SMS provider, and point nurture at them."""
    mail_sink_port: int = Field(default=1025, ge=1, le=65535)
    """SMTP port of the local mail sink."""
    sinks_http_port: int = Field(default=8025, ge=1, le=65535)
    """The fake Twilio API and the page listing the messages "sent"."""

    def local_mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/?directConnection=true"

    def effective_mongo_url(self) -> str:
        return self.mongo_url or self.local_mongo_url()
