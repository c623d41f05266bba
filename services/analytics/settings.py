from zoneinfo import ZoneInfo

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEADFLOW_ANALYTICS_", extra="ignore", frozen=True)

    database: str = "leadflow_analytics"
    port: int = 8004
    report_timezone: ZoneInfo = ZoneInfo("UTC")
    """IANA zone (e.g. "Asia/Seoul") whose days and months reports count in by default; a
    report can ask for another with `tz` (counters are hourly, in UTC)."""
    max_report_days: int = Field(default=1096, ge=1)
    """The longest period one report may cover (three years by default)."""
    forgotten_after_days: int = Field(default=3, ge=1)
    """An open lead nobody touched for this many days counts as forgotten."""
    compaction_interval_s: float = Field(default=1.0, gt=0)
    """How often recorded batches' counter deltas are folded into the roll-ups (at once
    while batches wait); reports add the ones not folded yet, so this is not a delay."""
    record_parts: int = Field(default=1, ge=1, le=8)
    """Transactions a consumed batch is recorded in at once, split by lead: with 2, a
    replica tallies one part while the database writes the other. Measured on the local
    server (docs/BENCHMARKS.md): with two replicas 1 part did better than 2 (the replicas
    overlap each other; fewer transactions at once cost the server less an event), with
    one replica the two were within the noise."""
