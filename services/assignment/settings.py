from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEADFLOW_ASSIGNMENT_", extra="ignore", frozen=True
    )

    database: str = "leadflow_assignment"
    port: int = 8002
    configuration_max_age_s: float = Field(default=1.0, ge=0)
    """How stale reps and pools may be when routing: a change made on another replica is
    routed on within this long (a change on this replica at once)."""

    # --- notifications (services/assignment/notifications) ---
    smtp_host: str = "127.0.0.1"
    """SMTP server that sends notification emails."""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "leadflow@localhost"
    """The From address of notification emails."""
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    """`starttls` upgrades a plain connection (port 587), `tls` is TLS from the start (465)."""
    smtp_validate_certs: bool = True
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    """How long an outgoing webhook may take to answer before the attempt counts as failed."""
    notify_max_attempts: int = Field(default=8, ge=1)
    """Attempts per delivery before it is recorded as failed (`/v1/notifications?status=failed`)."""
    notify_retry_base_s: float = Field(default=5.0, gt=0)
    notify_retry_max_s: float = Field(default=1800.0, gt=0)
    """Back-off between attempts: base, doubling, capped at max."""
    notify_batch_size: int = Field(default=50, ge=1)
    notify_poll_s: float = Field(default=1.0, gt=0)
    """How often a replica looks for deliveries another replica planned (its own wake it)."""
    notify_lease_s: float = Field(default=60.0, gt=0)
    """How long a replica holds the deliveries it claimed; longer than the slowest send."""
    notify_max_event_age_s: float = Field(default=3600.0, gt=0)
    """Events older than this tell nobody anything: a new consumer group reads assignment's
    topics from their start, and reps must not get a week of old news."""
    sla_warning_before_s: float = Field(default=300.0, ge=0)
    """The rep is warned this long before a first response is due (half way for shorter SLAs)."""
    stream_poll_interval_s: float = Field(default=0.25, gt=0)
    """How often a replica with live streams open reads entries other replicas committed."""
    stream_heartbeat_s: float = Field(default=15.0, gt=0)
    """A comment line on idle streams, so proxies keep them open and clients see they live."""
    timer_poll_s: float = Field(default=0.5, gt=0)
    """The longest the timer runner sleeps without looking for due timers (SLA, follow-up,
    queue dealing): timers fire at most about this late."""
    timer_batch_size: int = Field(default=200, ge=1)
    timer_lease_s: float = Field(default=30.0, gt=0)
    """How long a replica holds the timers it claimed before another may take them over."""
