from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEADFLOW_ASSIGNMENT_", extra="ignore", frozen=True
    )

    database: str = "leadflow_assignment"
    port: int = 8002
