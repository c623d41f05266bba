"""Analytics' HTTP routes: reports as JSON or CSV, and a lead's event timeline."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import BaseModel, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.clock import Clock
from leadflow.chassis.http import from_state, unprocessable
from services.analytics.rules import (
    CHANNEL_METRICS,
    LOSS_LEVELS,
    SUMMARY_METRICS,
    ChannelFigures,
    Period,
    PeriodError,
    figures_by_channel,
    report_period,
    summarise,
)
from services.analytics.settings import Settings
from services.analytics.store import AnalyticsStore

router = APIRouter(prefix="/v1", tags=["reports"])

ReportReader = Annotated[Principal, Depends(require(Role.MANAGER, Role.ANALYST, Role.MARKETING))]
TimelineReader = Annotated[Principal, Depends(require(Role.MANAGER, Role.ANALYST))]


StoreDep = Annotated[AnalyticsStore, Depends(from_state("store"))]
SettingsDep = Annotated[Settings, Depends(from_state("settings"))]
ClockDep = Annotated[Clock, Depends(from_state("clock"))]


def get_period(
    settings: SettingsDep,
    clock: ClockDep,
    first_day: Annotated[
        date | None,
        Query(alias="from", description="first day, inclusive (default: first of the month)"),
    ] = None,
    last_day: Annotated[
        date | None, Query(alias="to", description="last day, inclusive (default: today)")
    ] = None,
) -> Period:
    """The report period from `from`/`to`, as days in the report time zone."""
    today = clock().astimezone(settings.report_timezone).date()
    try:
        return report_period(first_day, last_day, today=today, max_days=settings.max_report_days)
    except PeriodError as error:
        raise unprocessable((("query", error.field), error.reason)) from error


def wants_csv(
    output: Annotated[
        Literal["json", "csv"] | None,
        Query(alias="format", description="json or csv; default: from the Accept header"),
    ] = None,
    accept: Annotated[str | None, Header()] = None,
) -> bool:
    if output is not None:
        return output == "csv"
    media_types = (part.split(";", 1)[0].strip().lower() for part in (accept or "").split(","))
    return "text/csv" in media_types


PeriodDep = Annotated[Period, Depends(get_period)]
CsvDep = Annotated[bool, Depends(wants_csv)]

CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with ?format=csv"},
    422: {"description": "a bad date, or 'from' after 'to'; the body names the field"},
}


class SummaryReport(BaseModel):
    first_day: date = Field(serialization_alias="from")
    last_day: date = Field(serialization_alias="to")
    leads_received: int = Field(description="new leads (repeat inquiries not included)")
    inquiries: int = Field(description="new leads plus repeat inquiries merged into a lead")
    leads_assigned: int = Field(description="leads assigned for the first time")
    leads_lost: int
    lost_by_level: dict[str, int] = Field(
        description="1 invalid contact, 2 bought elsewhere, 3 not now"
    )
    leads_enrolled: int = Field(description="leads enrolled in nurture for the first time")
    leads_converted: int
    revenue: float = Field(description="revenue of every sale in the period")


class ChannelReport(BaseModel):
    first_day: date = Field(serialization_alias="from")
    last_day: date = Field(serialization_alias="to")
    channels: list[ChannelFigures] = Field(description="busiest channel first")


class RecordedEvent(BaseModel):
    event_id: str
    event_type: str
    occurred_at: datetime
    payload: dict[str, Any]


class LeadTimeline(BaseModel):
    lead_id: str
    events: list[RecordedEvent]


def csv_response(
    name: str, period: Period, header: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> Response:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({column: csv_cell(value) for column, value in row.items()} for row in rows)
    filename = f"{name}_{period.first_day}_{period.last_day}.csv"
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def csv_cell(value: Any) -> Any:
    """Money with two decimals; text that a spreadsheet would run as a formula (a channel
    named "=HYPERLINK(..)" can arrive from a public form) prefixed with a quote (OWASP)."""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@router.get(
    "/reports/summary",
    response_model=SummaryReport,
    summary="Lead funnel and revenue for a period",
    responses=CSV_RESPONSE,
)
async def get_summary(
    _: ReportReader, store: StoreDep, period: PeriodDep, as_csv: CsvDep
) -> SummaryReport | Response:
    summary = summarise(await store.buckets(SUMMARY_METRICS, period))
    report = SummaryReport(
        first_day=period.first_day, last_day=period.last_day, **dataclasses.asdict(summary)
    )
    if not as_csv:
        return report
    # One row; the loss levels become columns of their own.
    row: dict[str, Any] = {}
    for name, value in report.model_dump(mode="json", by_alias=True).items():
        if name == "lost_by_level":
            row.update({f"lost_level_{level}": value.get(level, 0) for level in LOSS_LEVELS})
        else:
            row[name] = value
    return csv_response("summary", period, list(row), [row])


@router.get(
    "/reports/channels",
    response_model=ChannelReport,
    summary="Inquiries, new leads, conversions and revenue per channel",
    responses=CSV_RESPONSE,
)
async def get_channels(
    _: ReportReader, store: StoreDep, period: PeriodDep, as_csv: CsvDep
) -> ChannelReport | Response:
    figures = figures_by_channel(await store.buckets(CHANNEL_METRICS, period))
    if as_csv:
        header = [column.name for column in dataclasses.fields(ChannelFigures)]
        return csv_response("channels", period, header, map(dataclasses.asdict, figures))
    return ChannelReport(first_day=period.first_day, last_day=period.last_day, channels=figures)


@router.get(
    "/events",
    response_model=LeadTimeline,
    summary="A lead's events, oldest first",
    responses={422: {"description": "lead_id missing or too long"}},
)
async def get_lead_timeline(
    _: TimelineReader,
    store: StoreDep,
    lead_id: Annotated[str, Query(min_length=1, max_length=64)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> LeadTimeline:
    documents = await store.timeline(lead_id, limit=limit)
    return LeadTimeline(
        lead_id=lead_id,
        events=[
            RecordedEvent(
                event_id=doc["_id"],
                event_type=doc["event_type"],
                occurred_at=doc["occurred_at"],
                payload=doc["payload"],
            )
            for doc in documents
        ],
    )
