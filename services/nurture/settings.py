from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.nurture.rules import is_time_zone
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEADFLOW_NURTURE_", extra="ignore", frozen=True)

    database: str = "leadflow_nurture"
    port: int = 8003
    default_timezone: str = "UTC"
    """IANA zone for the send windows of leads whose own time zone is unknown or not valid."""

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not is_time_zone(value):
            raise ValueError(f"not an IANA time zone: {value!r}")
        return value

    # --- channels (services/nurture/channels): links, email over SMTP, SMS via Twilio ---------
    public_url: str = "http://127.0.0.1:8003"
    """Where people and providers reach this service from outside: the base of unsubscribe,
    open and click links and of the Twilio webhooks (signatures are computed over it)."""
    token_secret: SecretStr = SecretStr("leadflow-dev-only-change-me")
    """Signs the unsubscribe / open / click / status-callback tokens. Set a long random value
    in production, the same on every replica."""
    token_previous_secrets: tuple[SecretStr, ...] = ()
    """Earlier secrets still accepted (JSON list), so rotating does not break sent links."""
    site_origins: tuple[str, ...] = ()
    """Our own websites (JSON list of origins, e.g. ["https://acme.example"]): a click
    landing there carries the lead's signed visit token as `lf`, and pages served from
    there may call the browser beacon (`POST /v1/web-visits/beacon`, CORS)."""
    email_from: str = "leadflow <nurture@leadflow.example>"
    email_message_id_domain: str = "leadflow.example"
    email_unsubscribe_mailto: str = ""
    """Optional address for mail-based unsubscribes, listed after the one-click URL."""
    email_track_opens: bool = True
    email_track_clicks: bool = True
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_use_tls: bool = False
    """Implicit TLS (port 465)."""
    smtp_starttls: bool | None = None
    """True: require STARTTLS; False: never; unset: use it when offered."""
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    smtp_connections: int = Field(default=4, ge=1, le=64)
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_private_key_path: str = ""
    """PEM RSA key; DKIM signing is on when selector, domain and key are all set."""
    twilio_base_url: str = "http://127.0.0.1:8025"
    """https://api.twilio.com in production; the local fake provider by default."""
    twilio_account_sid: str = "AC00000000000000000000000000000001"
    twilio_auth_token: SecretStr = SecretStr("leadflow-fake-twilio-token")
    twilio_from_number: str = "+15005550006"
    twilio_messaging_service_sid: str = ""
    twilio_timeout_s: float = Field(default=10.0, gt=0)
    sms_help_reply: str = "leadflow: reply STOP to stop texts, START to receive them again."
    sms_opt_in_reply: str = "You will receive our texts again. Reply STOP to stop."
    sms_opt_out_reply: str = ""
    """Empty: no answer to STOP (Twilio's Advanced Opt-Out sends its own confirmation)."""
    email_inbound_secret: SecretStr = SecretStr("leadflow-dev-inbound-email-change-me")
    """Shared with the relay that posts inbound mail (replies, bounces) to /v1/email/inbound:
    its `X-Leadflow-Signature` is HMAC-SHA256 of the request body under this secret. Set a
    long random value in production."""
    email_inbound_previous_secrets: tuple[SecretStr, ...] = ()
    """Earlier inbound secrets still accepted (JSON list), while the relay is switched over."""
    email_inbound_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    """Largest inbound email taken (413 above it): a DSN returns the whole original."""

    # --- scheduler: when due steps really go out --------------------------------------------
    scheduler_enabled: bool = True
    """Run the send loop in this replica (any number of replicas may: no step is sent twice)."""
    scheduler_batch_size: int = Field(default=200, ge=1, le=5000)
    scheduler_lease_s: float = Field(default=60.0, gt=0)
    """A claimed batch must be sent and committed within this long, or another replica
    takes it over (and finds the send records instead of sending again)."""
    scheduler_idle_poll_s: float = Field(default=1.0, gt=0)
    scheduler_batches_in_flight: int = Field(default=2, ge=1, le=16)
    """Batches one replica has in hand at once: the next is claimed and decided while the
    earlier ones wait on the providers; their commits still go one at a time."""
    scheduler_lookahead_s: float = Field(default=2.0, ge=0, le=10)
    """Steps are claimed this long before they fall due, read and decided (as of their due
    time) meanwhile, and handed to the provider when due: they leave on time although a
    batch's reads take a while. Also how early a lead's opt-out must be stored to stop a
    step already claimed (the channels' opt-outs are checked when it is claimed)."""

    @model_validator(mode="after")
    def _claims_ahead_within_the_lease(self) -> "Settings":
        if self.scheduler_lookahead_s >= self.scheduler_lease_s:
            raise ValueError(
                f"scheduler_lookahead_s ({self.scheduler_lookahead_s}) must be shorter than "
                f"scheduler_lease_s ({self.scheduler_lease_s}): a step claimed ahead is held "
                "under its lease until it is sent"
            )
        return self

    send_max_lateness_s: float = Field(default=6 * 3600.0, gt=0)
    """After downtime, steps due longer ago than this are skipped, not sent late."""
    send_concurrency: int = Field(default=32, ge=1, le=1000)
    email_rate_per_s: int = Field(default=100, ge=1)
    """Global emails per second across replicas (the provider's limit)."""
    sms_rate_per_s: int = Field(default=30, ge=1)
    """Global texts per second across replicas (the provider's / number's limit)."""
    quiet_hours_start: int | None = Field(default=21, ge=0, le=23)
    """Local hour (the recipient's zone) from which nothing is sent; unset: no quiet hours."""
    quiet_hours_end: int = Field(default=8, ge=0, le=23)
    email_cap_per_day: int = Field(default=2, ge=1)
    """Emails per lead per local day across all sequences; over it, a message waits."""
    email_cap_per_week: int = Field(default=5, ge=1)
    sms_cap_per_day: int = Field(default=1, ge=1)
    sms_cap_per_week: int = Field(default=3, ge=1)
    provider_attempts: int = Field(default=5, ge=1)
    """Temporary provider refusals before a message is given up (MessageFailedV1)."""
    provider_retry_s: float = Field(default=30.0, gt=0)
    """First back-off after a temporary refusal; doubled each time, up to an hour."""

    # --- engagement score and requalification ----------------------------------------------
    score_weight_open: float = 1.0
    score_weight_click: float = 3.0
    score_weight_reply: float = 10.0
    score_weight_web_visit: float = 4.0
    score_half_life_days: float = Field(default=14.0, gt=0)
    score_warm_at: float = Field(default=5.0, gt=0)
    score_hot_at: float = Field(default=12.0, gt=0)
    high_intent_paths: tuple[str, ...] = ("/pricing", "/book", "/contact")
    """Web pages (path prefixes) whose visit by a nurtured lead hands it back to sales."""
