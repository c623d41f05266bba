from zoneinfo import ZoneInfo

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEADFLOW_ANALYTICS_", extra="ignore", frozen=True)

    database: str = "leadflow_analytics"
    port: int = 8004
    report_timezone: ZoneInfo = ZoneInfo("UTC")
    """IANA zone (e.g. "Asia/Seoul") whose calendar days and months the reports count in.
    Events are bucketed when they arrive: changing it later does not move what was counted."""
    max_report_days: int = Field(default=1096, ge=1)
    """The longest period one report may cover (three years by default)."""
