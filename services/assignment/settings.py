from pydantic import Field
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
