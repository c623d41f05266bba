"""Analytics' HTTP routes: reports as JSON or CSV, a lead's event timeline, the dashboard."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Coroutine
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response, status
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.clock import Clock
from leadflow.chassis.http import from_state, unprocessable
from services.analytics.reports import QueryError, Report, ReportQuery, csv_rows, parse_query
from services.analytics.settings import Settings
from services.analytics.store import AnalyticsStore
from services.analytics.usecases import REPORTS, BuildReport

router = APIRouter(prefix="/v1", tags=["reports"])
dashboard_router = APIRouter(tags=["dashboard"])

DASHBOARD_DIR = Path(__file__).parent / "dashboard"

ReportReader = Annotated[Principal, Depends(require(Role.MANAGER, Role.ANALYST, Role.MARKETING))]
TimelineReader = Annotated[Principal, Depends(require(Role.MANAGER, Role.ANALYST))]

StoreDep = Annotated[AnalyticsStore, Depends(from_state("store"))]
SettingsDep = Annotated[Settings, Depends(from_state("settings"))]
ClockDep = Annotated[Clock, Depends(from_state("clock"))]

Filter = Annotated[str | None, Query(max_length=128)]


def get_query(  # noqa: PLR0917 - one argument per query parameter
    settings: SettingsDep,
    clock: ClockDep,
    first_day: Annotated[
        date | None,
        Query(alias="from", description="first day, inclusive (default: first of the month)"),
    ] = None,
    last_day: Annotated[
        date | None, Query(alias="to", description="last day, inclusive (default: today)")
    ] = None,
    month: Annotated[
        str | None, Query(description="a whole month, e.g. 2026-05 (instead of from/to)")
    ] = None,
    tz: Annotated[
        str | None,
        Query(description="IANA time zone whose days are counted (default: the setting)"),
    ] = None,
    pool: Filter = None,
    rep: Filter = None,
    source: Filter = None,
    channel: Filter = None,
    campaign: Filter = None,
) -> ReportQuery:
    """The report's days and filters; 422 naming the parameter that is wrong."""
    now = clock()
    try:
        query = parse_query(
            first_day=first_day,
            last_day=last_day,
            month=month,
            timezone=tz,
            filters={
                "pool": pool,
                "rep": rep,
                "source": source,
                "channel": channel,
                "campaign": campaign,
            },
            today_in=lambda zone: now.astimezone(zone).date(),
            default_zone=settings.report_timezone,
            max_days=settings.max_report_days,
        )
    except QueryError as error:
        raise unprocessable((("query", error.field), error.reason)) from error
    return ReportQuery(
        query.first_day,
        query.last_day,
        query.zone,
        query.filters,
        now=now,
        forgotten_after_days=settings.forgotten_after_days,
    )


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


QueryDep = Annotated[ReportQuery, Depends(get_query)]
CsvDep = Annotated[bool, Depends(wants_csv)]
TableDep = Annotated[
    str | None,
    Query(
        alias="table",
        max_length=64,
        description="with format=csv: which of the report's tables (default: the first)",
    ),
]

CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with ?format=csv"},
    422: {"description": "a bad date, month, time zone, filter or table; the body names it"},
}


class ReportTable(BaseModel):
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]


class ReportBody(BaseModel):
    # The summary also has its figures, and the channel report its channel rows, at the
    # top level, where the first version of these two reports had them.
    model_config = ConfigDict(extra="allow")

    report: str
    title: str
    first_day: date = Field(serialization_alias="from")
    last_day: date = Field(serialization_alias="to")
    timezone: str
    filters: dict[str, str]
    figures: dict[str, Any] = Field(description="headline figures; money as {currency: amount}")
    tables: dict[str, ReportTable]
    notes: list[str] = Field(description="how the figures were computed")


def report_body(report: Report) -> ReportBody:
    data = report.as_json()
    data["first_day"] = data.pop("from")
    data["last_day"] = data.pop("to")
    if report.name == "summary":
        data.update(report.figures)
    elif report.name == "channels":
        data["channels"] = data["tables"]["channels"]["rows"]
    return ReportBody.model_validate(data)


def csv_response(report: Report, table_name: str | None) -> Response:
    tables = {table.name: table for table in report.tables}
    name = table_name or report.tables[0].name
    if name not in tables:
        raise unprocessable(
            (("query", "table"), f"{report.name} has the tables {', '.join(tables)}; not {name!r}")
        )
    header, rows = csv_rows(tables[name])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({column: csv_cell(value) for column, value in row.items()} for row in rows)
    filename = f"{report.name}_{name}_{report.query.first_day}_{report.query.last_day}.csv"
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
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


ReportRoute = Callable[..., Coroutine[Any, Any, ReportBody | Response]]


def _report_route(name: str) -> ReportRoute:
    async def get_report(
        _: ReportReader, store: StoreDep, query: QueryDep, as_csv: CsvDep, table: TableDep = None
    ) -> ReportBody | Response:
        report = await BuildReport(store)(name, query)
        if as_csv:
            return csv_response(report, table)
        return report_body(report)

    get_report.__name__ = f"get_{name.replace('-', '_')}_report"
    return get_report


for _name, _summary in REPORTS.items():
    router.add_api_route(
        f"/reports/{_name}",
        _report_route(_name),
        methods=["GET"],
        response_model=ReportBody,
        summary=_summary,
        responses=CSV_RESPONSE,
    )


class ReportIndex(BaseModel):
    reports: dict[str, str]


@router.get("/reports", response_model=ReportIndex, summary="The reports there are")
async def list_reports(_: ReportReader) -> ReportIndex:
    return ReportIndex(reports=REPORTS)


class RecordedEvent(BaseModel):
    event_id: str
    event_type: str
    occurred_at: datetime
    payload: dict[str, Any]


class LeadTimeline(BaseModel):
    lead_id: str
    events: list[RecordedEvent]


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
                event_id=doc["event_id"],
                event_type=doc["event_type"],
                occurred_at=doc["occurred_at"],
                payload=doc["payload"],
            )
            for doc in documents
        ],
    )


# --- dashboard: static files; the page asks for an API key and calls the reports --------

_STATIC = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "chart.umd.min.js": "text/javascript",
}


@dashboard_router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> FileResponse:
    return FileResponse(DASHBOARD_DIR / "index.html", media_type="text/html")


@dashboard_router.get("/dashboard/{name}", include_in_schema=False)
async def dashboard_file(name: str) -> FileResponse:
    if name not in _STATIC:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dashboard file {name!r}")
    return FileResponse(DASHBOARD_DIR / name, media_type=_STATIC[name])
