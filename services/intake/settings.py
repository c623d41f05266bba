from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEADFLOW_INTAKE_", extra="ignore", frozen=True)

    database: str = "leadflow_intake"
    port: int = 8001
    default_region: str = "US"
    """ISO 3166 region used to read phone numbers written without a country code."""

    # --- ad-platform webhooks (services/intake/webhooks) ----------------------------------
    meta_app_secret: SecretStr = SecretStr("")
    """The Meta app's secret: `X-Hub-Signature-256` is its HMAC-SHA256 of the raw body.
    Empty: every Meta delivery is refused (403)."""
    meta_verify_token: SecretStr = SecretStr("")
    """The token typed into the app's webhook settings; echoed check of `hub.verify_token`."""
    meta_graph_base_url: str = "https://graph.facebook.com"
    meta_graph_version: str = "v21.0"
    meta_page_access_token: SecretStr = SecretStr("")
    """A page access token with `leads_retrieval`, used to fetch each lead's answers."""
    meta_graph_timeout_s: float = Field(default=10.0, gt=0)
    google_lead_form_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """Google Ads lead forms accepted without registering them through the API: a JSON
    object form_id -> google_key (forms registered through the API take precedence)."""
    ad_lead_batch_size: int = Field(default=50, ge=1)
    """Most delivered leads fetched and accepted together (one intake transaction)."""
    ad_lead_lease_s: float = Field(default=60.0, gt=0)
    """How long one replica holds a batch of delivered leads before another may take it."""
    ad_lead_retry_base_s: float = Field(default=5.0, gt=0)
    ad_lead_retry_max_s: float = Field(default=3600.0, gt=0)
    """A failed Graph fetch is retried after base, 2x, 4x, ... seconds, at most this apart."""
    ad_lead_max_attempts: int = Field(default=40, ge=1)
    """Fetch attempts before a lead's work is parked (kept, visible, no longer retried):
    with the defaults, about a day and a half, as long as Meta itself retries."""

    # --- CSV import (services/intake/imports) ---------------------------------------------
    import_chunk_rows: int = Field(default=500, ge=1, le=1000)
    """Rows accepted per transaction; progress is recorded after each chunk. Smaller chunks
    keep each transaction short on a slow database (and redo less after an interruption)."""
    import_max_bytes: int = Field(default=512 * 1024 * 1024, ge=1)

    # --- intake core ---------------------------------------------------------------------
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    """Largest request body (a batch of 1,000 leads fits); larger ones get 413. The CSV
    upload has its own limit (`import_max_bytes`)."""
    form_rate_limit: str = "10/minute"
    """Posts per form key and client address (`limits` notation: "10/minute", "100/hour"),
    counted in MongoDB so every replica shares the counters."""
    trust_forwarded_for: bool = False
    """Take the client address of form posts from X-Forwarded-For (behind a proxy)."""
    configuration_max_age_s: float = Field(default=1.0, ge=0)
    """How soon a form, campaign, source or ICP change made on another replica is seen."""
