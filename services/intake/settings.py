from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEADFLOW_INTAKE_", extra="ignore", frozen=True)

    database: str = "leadflow_intake"
    port: int = 8001
    default_region: str = "US"
    """ISO 3166 region used to read phone numbers written without a country code."""
