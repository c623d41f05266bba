from pydantic import field_validator
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
