"""Pure report building: the query a manager asked for, and the figures of each report from
counters (hourly, UTC), the open-lead gauge and campaigns. No I/O and no clock reads.

Every report has the same shape (`Report`): headline figures, tables of flat rows, and
notes that say how a figure was computed. Money is never added across currencies: an
amount is a mapping currency -> amount (CSV spreads it into one column per currency).
"""

from __future__ import annotations

import calendar
import functools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.analytics.rules import (
    LEAD_DIMENSIONS,
    LOSS_LEVELS,
    NONE,
    SPEED_BUCKETS,
    STAGES,
    UNKNOWN,
    Campaign,
    Metric,
    OpenLeads,
)
from services.analytics.store import Bucket

Money = dict[str, float]

ONLINE_CHANNELS = frozenset({"web_form", "ad"})
LOSS_LABELS = {"1": "invalid contact", "2": "bought elsewhere", "3": "busy / not now"}
RETENTION_TARGET = 0.95
SATISFACTION_THRESHOLD = 8
AGE_BUCKETS = ((1, "lt_1d"), (3, "1d_3d"), (7, "3d_7d"), (30, "7d_30d"), (None, "gt_30d"))


class QueryError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """What a report covers: local days (both ends included) in `zone`, and filters."""

    first_day: date
    last_day: date
    zone: ZoneInfo
    filters: Mapping[str, str] = field(default_factory=dict)
    now: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    forgotten_after_days: int = 3

    @property
    def first_hour(self) -> datetime:
        return datetime.combine(self.first_day, time(), self.zone).astimezone(UTC)

    @property
    def last_hour(self) -> datetime:
        end = datetime.combine(self.last_day + timedelta(days=1), time(), self.zone)
        return end.astimezone(UTC) - timedelta(hours=1)

    def previous(self) -> ReportQuery:
        """The period just before: the previous calendar month for a whole month, else
        as many days right before."""
        first, last = self.first_day, self.last_day
        whole_month = first.day == 1 and last.day == calendar.monthrange(last.year, last.month)[1]
        if whole_month and first.month == last.month and first.year == last.year:
            end = first - timedelta(days=1)
            start = end.replace(day=1)
        else:
            days = (last - first).days + 1
            end = first - timedelta(days=1)
            start = end - timedelta(days=days - 1)
        return ReportQuery(start, end, self.zone, self.filters, self.now, self.forgotten_after_days)


def parse_query(  # noqa: PLR0912 - one check per query parameter
    *,
    first_day: date | None,
    last_day: date | None,
    month: str | None,
    timezone: str | None,
    filters: Mapping[str, str | None],
    today_in: Callable[[ZoneInfo], date],
    default_zone: ZoneInfo,
    max_days: int,
) -> ReportQuery:
    """The report query from the request's parameters; QueryError names what is wrong."""
    zone = default_zone
    if timezone is not None:
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise QueryError("tz", f"unknown time zone {timezone!r} (use an IANA name)") from error
    if month is not None:
        if first_day is not None or last_day is not None:
            raise QueryError("month", "give either 'month' or 'from'/'to', not both")
        start = _month_start(month)
        first = start
        last = start.replace(day=calendar.monthrange(start.year, start.month)[1])
    else:
        last = last_day or today_in(zone)
        first = first_day or last.replace(day=1)
    if first > last:
        raise QueryError("from", f"'from' ({first}) is after 'to' ({last})")
    days = (last - first).days + 1
    if days > max_days:
        raise QueryError("from", f"a report covers at most {max_days} days; this asks {days}")
    for day in (first, last + timedelta(days=1)):
        offset = datetime.combine(day, time(), zone).utcoffset() or timedelta()
        if offset.total_seconds() % 3600:
            raise QueryError(
                "tz",
                f"{zone.key} is {offset} from UTC on {day}: counters are hourly, so only "
                "time zones a whole number of hours from UTC can be reported in",
            )
    chosen: dict[str, str] = {}
    for name, value in filters.items():
        if name not in LEAD_DIMENSIONS:
            raise QueryError(name, f"unknown filter {name!r}")
        if value is None:
            continue
        if not value or len(value) > 128:
            raise QueryError(name, f"'{name}' must be 1 to 128 characters")
        chosen[name] = value
    return ReportQuery(first, last, zone, chosen)


def _month_start(month: str) -> date:
    """The first day of `month` (exactly YYYY-MM: strptime alone would take "2026-5")."""
    bad = QueryError("month", f"{month!r} is not a month like 2026-05")
    if len(month) != len("2026-05"):
        raise bad
    try:
        return datetime.strptime(month, "%Y-%m").date()
    except ValueError as error:
        raise bad from error


# --- the report shape ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    title: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    title: str
    query: ReportQuery
    figures: dict[str, Any]
    tables: tuple[Table, ...]
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "report": self.name,
            "title": self.title,
            "from": self.query.first_day.isoformat(),
            "to": self.query.last_day.isoformat(),
            "timezone": self.query.zone.key,
            "filters": dict(self.query.filters),
            "figures": self.figures,
            "tables": {
                table.name: {
                    "title": table.title,
                    "columns": list(table.columns),
                    "rows": table.rows,
                }
                for table in self.tables
            },
            "notes": list(self.notes),
        }


def csv_rows(table: Table) -> tuple[list[str], list[dict[str, Any]]]:
    """A table's rows flattened for CSV: a money column becomes one column per currency."""
    currencies: dict[str, set[str]] = defaultdict(set)
    for row in table.rows:
        for column in table.columns:
            value = row.get(column)
            if isinstance(value, dict):
                currencies[column].update(value)
    header: list[str] = []
    for column in table.columns:
        if column in currencies:
            header.extend(f"{column}_{cur}" for cur in sorted(currencies[column]))
        else:
            header.append(column)
    flat: list[dict[str, Any]] = []
    for row in table.rows:
        out: dict[str, Any] = {}
        for column in table.columns:
            value = row.get(column)
            if column in currencies:
                for cur in sorted(currencies[column]):
                    out[f"{column}_{cur}"] = (value or {}).get(cur, 0.0)
            else:
                out[column] = value
        flat.append(out)
    return header, flat


# --- helpers ------------------------------------------------------------------------------


def in_period(buckets: Iterable[Bucket], query: ReportQuery) -> list[Bucket]:
    """Buckets whose hour falls on one of the query's local days."""
    return [
        b
        for b in buckets
        if query.first_day <= b.hour.astimezone(query.zone).date() <= query.last_day
    ]


class Sums:
    """Counts and money of buckets, by metric and chosen dimensions."""

    def __init__(self, buckets: Iterable[Bucket]) -> None:
        self._buckets = list(buckets)

    def count(self, metric: Metric, **match: str | Callable[[str], bool]) -> int:
        return sum(b.count for b in self._select(metric, match))

    def amount(self, metric: Metric, **match: str | Callable[[str], bool]) -> float:
        return sum(b.amount for b in self._select(metric, match))

    def money(self, metric: Metric, **match: str | Callable[[str], bool]) -> Money:
        totals: defaultdict[str, float] = defaultdict(float)
        for b in self._select(metric, match):
            totals[b.dimensions.get("currency", UNKNOWN)] += b.amount
        return {cur: round(value, 2) for cur, value in sorted(totals.items()) if round(value, 2)}

    def by(self, metric: Metric, dimension: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for b in self._buckets:
            if b.metric is metric:
                counts[b.dimensions.get(dimension, NONE)] += b.count
        return counts

    def values(self, dimension: str, *metrics: Metric) -> list[str]:
        return sorted(
            {
                b.dimensions.get(dimension, NONE)
                for b in self._buckets
                if not metrics or b.metric in metrics
            }
        )

    def where(self, dimension: str, value: str) -> Sums:
        return Sums(b for b in self._buckets if b.dimensions.get(dimension, NONE) == value)

    def _select(
        self, metric: Metric, match: Mapping[str, str | Callable[[str], bool]]
    ) -> Iterable[Bucket]:
        for b in self._buckets:
            if b.metric is not metric:
                continue
            if all(
                (
                    want(b.dimensions.get(k, NONE))
                    if callable(want)
                    else b.dimensions.get(k, NONE) == want
                )
                for k, want in match.items()
            ):
                yield b


def rate(part: float, whole: float) -> float | None:
    """A share rounded to 4 places; None when there is nothing to divide by."""
    return None if not whole else round(part / whole, 4)


def change(now: float, before: float) -> float | None:
    return None if not before else round((now - before) / before, 4)


def _money_add(*amounts: Money) -> Money:
    total: defaultdict[str, float] = defaultdict(float)
    for amount in amounts:
        for cur, value in amount.items():
            total[cur] += value
    return {cur: round(value, 2) for cur, value in sorted(total.items())}


def _scale(amount: Money, factor: float) -> Money:
    return {cur: round(value * factor, 2) for cur, value in amount.items()}


# --- reports --------------------------------------------------------------------------------

SUMMARY_BY: tuple[str, ...] = ()
"""The lead dimensions a report breaks its figures down by (`<REPORT>_BY`): its counters
and gauge come added up over the others, so it reads and adds up only what it shows."""
SUMMARY_METRICS = frozenset(
    {
        Metric.LEADS_RECEIVED,
        Metric.INQUIRIES,
        Metric.REACHED,
        Metric.LEADS_LOST,
        Metric.LEADS_ENROLLED,
        Metric.LEADS_CONVERTED,
        Metric.CONVERSIONS,
    }
)


def summary(query: ReportQuery, buckets: Iterable[Bucket]) -> Report:
    s = Sums(in_period(buckets, query))
    figures = {
        "leads_received": s.count(Metric.LEADS_RECEIVED),
        "inquiries": s.count(Metric.INQUIRIES),
        "leads_assigned": s.count(Metric.REACHED, stage="assigned"),
        "leads_lost": s.count(Metric.LEADS_LOST),
        "lost_by_level": {level: s.count(Metric.LEADS_LOST, level=level) for level in LOSS_LEVELS},
        "leads_enrolled": s.count(Metric.LEADS_ENROLLED),
        "leads_converted": s.count(Metric.LEADS_CONVERTED),
        "revenue": s.money(Metric.CONVERSIONS),
    }
    row = {k: v for k, v in figures.items() if k != "lost_by_level"}
    row.update({f"lost_level_{lvl}": s.count(Metric.LEADS_LOST, level=lvl) for lvl in LOSS_LEVELS})
    table = Table("summary", "Summary", tuple(row), [row])
    return Report("summary", "Lead funnel and revenue", query, figures, (table,))


MONTHLY_BY = ("channel",)
MONTHLY_METRICS = frozenset(
    {
        Metric.INQUIRIES,
        Metric.VISITS,
        Metric.LEADS_CONVERTED,
        Metric.CONVERSIONS,
        Metric.LEADS_RECEIVED,
    }
)


def _monthly_figures(s: Sums) -> dict[str, Any]:
    return {
        "phone_inquiries": s.count(Metric.INQUIRIES, channel="phone"),
        "online_inquiries": s.count(Metric.INQUIRIES, channel=lambda c: c in ONLINE_CHANNELS),
        "walk_in_inquiries": s.count(Metric.INQUIRIES, channel="walk_in"),
        "other_inquiries": s.count(
            Metric.INQUIRIES,
            channel=lambda c: c not in ONLINE_CHANNELS and c not in ("phone", "walk_in"),
        ),
        "inquiries": s.count(Metric.INQUIRIES),
        "new_leads": s.count(Metric.LEADS_RECEIVED),
        "visits_reserved": s.count(Metric.VISITS, walk_in="no"),
        "visits_walk_in": s.count(Metric.VISITS, walk_in="yes"),
        "visits": s.count(Metric.VISITS),
        "conversions": s.count(Metric.LEADS_CONVERTED),
        "sales": s.count(Metric.CONVERSIONS),
        "new_revenue": s.money(Metric.CONVERSIONS),
    }


def monthly(query: ReportQuery, buckets: Iterable[Bucket], previous: Iterable[Bucket]) -> Report:
    """Seed 000's monthly sales report, with the change against the period before."""
    before_query = query.previous()
    this = _monthly_figures(Sums(in_period(buckets, query)))
    before = _monthly_figures(Sums(in_period(previous, before_query)))
    rows: list[dict[str, Any]] = []
    for name, value in this.items():
        if isinstance(value, dict):
            for cur in sorted(set(value) | set(before[name])):
                now_v, old_v = value.get(cur, 0.0), before[name].get(cur, 0.0)
                rows.append(
                    {
                        "figure": f"{name} {cur}",
                        "this_period": now_v,
                        "previous_period": old_v,
                        "change": round(now_v - old_v, 2),
                        "change_pct": change(now_v, old_v),
                    }
                )
            continue
        rows.append(
            {
                "figure": name,
                "this_period": value,
                "previous_period": before[name],
                "change": value - before[name],
                "change_pct": change(value, before[name]),
            }
        )
    columns = ("figure", "this_period", "previous_period", "change", "change_pct")
    notes = (
        "online = web_form + ad; other = import, referral and unknown channels",
        "visits are check-ins (reserved: booked beforehand; walk_in: not)",
        f"previous period: {before_query.first_day} to {before_query.last_day}",
        "conversions count each lead once; sales count every sale; revenue per currency",
    )
    figures = {**this, "previous": before}
    return Report(
        "monthly",
        "Monthly sales report",
        query,
        figures,
        (Table("figures", "This period against the one before", columns, rows),),
        notes,
    )


CHANNEL_BY = ("channel", "source")
CHANNEL_METRICS = frozenset(
    {
        Metric.INQUIRIES,
        Metric.LEADS_RECEIVED,
        Metric.REACHED,
        Metric.VISITS,
        Metric.LEADS_CONVERTED,
        Metric.CONVERSIONS,
        Metric.OPPORTUNITIES,
    }
)


def _attribution_rows(s: Sums, dimension: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for value in s.values(dimension, *CHANNEL_METRICS):
        part = s.where(dimension, value)
        leads = part.count(Metric.LEADS_RECEIVED)
        converted = part.count(Metric.LEADS_CONVERTED)
        rows.append(
            {
                dimension: value,
                "inquiries": part.count(Metric.INQUIRIES),
                "leads_received": leads,
                "contacted": part.count(Metric.REACHED, stage="contacted"),
                "visits": part.count(Metric.VISITS),
                "leads_converted": converted,
                "conversion_rate": rate(converted, leads),
                "revenue": part.money(Metric.CONVERSIONS),
            }
        )
    rows.sort(key=lambda r: (-int(r["inquiries"]), -int(r["leads_received"]), str(r[dimension])))
    return rows


def channels(query: ReportQuery, buckets: Iterable[Bucket]) -> Report:
    s = Sums(in_period(buckets, query))
    cols = (
        "inquiries",
        "leads_received",
        "contacted",
        "visits",
        "leads_converted",
        "conversion_rate",
        "revenue",
    )
    return Report(
        "channels",
        "Channels and sources",
        query,
        {"inquiries": s.count(Metric.INQUIRIES), "leads": s.count(Metric.LEADS_RECEIVED)},
        (
            Table("channels", "By channel", ("channel", *cols), _attribution_rows(s, "channel")),
            Table("sources", "By source", ("source", *cols), _attribution_rows(s, "source")),
        ),
        (
            "a sale counts for the channel and source the lead first came in through",
            "conversion_rate = leads converted / new leads (leads_received) of the period",
        ),
    )


CAMPAIGN_BY = ("campaign",)
CAMPAIGN_METRICS = frozenset(
    {Metric.LEADS_RECEIVED, Metric.OPPORTUNITIES, Metric.LEADS_CONVERTED, Metric.CONVERSIONS}
)


def campaign_cost(campaign: Campaign, query: ReportQuery) -> float:
    """The campaign's cost in the period: spread evenly over its days when it has a start
    and an end, else its whole cost."""
    if campaign.starts_on is None or campaign.ends_on is None:
        return round(campaign.cost, 2)
    start, end = date.fromisoformat(campaign.starts_on), date.fromisoformat(campaign.ends_on)
    days = (end - start).days + 1
    if days <= 0:
        return round(campaign.cost, 2)
    overlap = (min(end, query.last_day) - max(start, query.first_day)).days + 1
    return round(campaign.cost * max(overlap, 0) / days, 2)


def campaigns(query: ReportQuery, buckets: Iterable[Bucket], known: Sequence[Campaign]) -> Report:
    s = Sums(in_period(buckets, query))
    by_id = {c.campaign_id: c for c in known}
    ids = {v for v in s.values("campaign", *CAMPAIGN_METRICS) if v != NONE}
    wanted = query.filters.get("campaign")
    ids |= {c for c in by_id if wanted is None or c == wanted}
    rows = []
    for campaign_id in sorted(ids):
        part = s.where("campaign", campaign_id)
        info = by_id.get(campaign_id)
        leads = part.count(Metric.LEADS_RECEIVED)
        revenue = part.money(Metric.CONVERSIONS)
        cost = 0.0 if info is None else campaign_cost(info, query)
        currency = None if info is None else info.currency
        roi = None
        if cost and currency is not None and set(revenue) <= {currency}:
            roi = round((revenue.get(currency, 0.0) - cost) / cost, 4)
        rows.append(
            {
                "campaign": campaign_id,
                "name": campaign_id if info is None else info.name,
                "channel": None if info is None else info.channel,
                "leads": leads,
                "opportunities": part.count(Metric.OPPORTUNITIES),
                "opportunity_amount": part.money(Metric.OPPORTUNITIES),
                "leads_converted": part.count(Metric.LEADS_CONVERTED),
                "revenue": revenue,
                "cost": cost,
                "cost_currency": currency,
                "cost_per_lead": None if not leads or info is None else round(cost / leads, 2),
                "roi": roi,
            }
        )
    columns = (
        "campaign", "name", "channel", "leads", "opportunities", "opportunity_amount",
        "leads_converted", "revenue", "cost", "cost_currency", "cost_per_lead", "roi",
    )  # fmt: skip
    return Report(
        "campaigns",
        "Campaigns",
        query,
        {"campaigns": len(rows)},
        (Table("campaigns", "By campaign", columns, rows),),
        (
            "cost: the campaign's cost spread evenly over its days, for the days in the period "
            "(its whole cost when it has no start or end date)",
            "roi = (revenue - cost) / cost, only when all revenue is in the cost's currency",
            "a lead counts for the campaign it first came in through",
        ),
    )


REP_BY = ("rep",)
REP_METRICS = frozenset(
    {
        Metric.REACHED,
        Metric.ACTIVITIES,
        Metric.VISITS_SCHEDULED,
        Metric.VISITS,
        Metric.CONVERSIONS,
        Metric.LEADS_CONVERTED,
    }
)


def _open_counts(
    open_leads: Iterable[OpenLeads], query: ReportQuery, by: str
) -> tuple[Counter[str], Counter[str]]:
    now_hour = query.now.astimezone(UTC).strftime("%Y-%m-%dT%H")
    opened: Counter[str] = Counter()
    overdue: Counter[str] = Counter()
    for gauge in open_leads:
        value = getattr(gauge.place, by)
        opened[value] += gauge.count
        overdue[value] += sum(n for (_, due), n in gauge.awaiting.items() if due < now_hour)
    return opened, overdue


def reps(query: ReportQuery, buckets: Iterable[Bucket], open_leads: Sequence[OpenLeads]) -> Report:
    s = Sums(in_period(buckets, query))
    opened, overdue = _open_counts(open_leads, query, "rep")
    names = {v for v in s.values("rep", *REP_METRICS) if v != NONE} | {
        r for r in opened if r != NONE
    }
    rows = []
    for rep in sorted(names):
        part = s.where("rep", rep)
        calls = part.count(Metric.ACTIVITIES, activity="call")
        bookings = part.count(Metric.VISITS_SCHEDULED)
        visits = part.count(Metric.VISITS)
        sales = part.count(Metric.CONVERSIONS)
        assigned = part.count(Metric.REACHED, stage="assigned")
        converted = part.count(Metric.LEADS_CONVERTED)
        rows.append(
            {
                "rep": rep,
                "leads_assigned": assigned,
                "calls": calls,
                "visit_bookings": bookings,
                "booking_rate": rate(bookings, calls),
                "consultations": visits,
                "sales": sales,
                "close_rate": rate(sales, visits),
                "revenue": part.money(Metric.CONVERSIONS),
                "leads_converted": converted,
                "conversion_rate": rate(converted, assigned),
                "open_leads": opened[rep],
                "overdue_leads": overdue[rep],
            }
        )
    columns = (
        "rep", "leads_assigned", "calls", "visit_bookings", "booking_rate", "consultations",
        "sales", "close_rate", "revenue", "leads_converted", "conversion_rate", "open_leads",
        "overdue_leads",
    )  # fmt: skip
    return Report(
        "reps",
        "Per-rep funnel",
        query,
        {"reps": len(rows)},
        (Table("reps", "By rep", columns, rows),),
        (
            "booking_rate = visits booked / calls; close_rate = sales / consultations (visits)",
            "conversion_rate = leads converted / leads first assigned to the rep in the period",
            "open and overdue leads are as of now (overdue: first-response SLA passed without a "
            "first contact), whatever the period",
        ),
    )


SPEED_BY = ("pool", "rep")
SPEED_METRICS = frozenset({Metric.FIRST_CONTACTS, Metric.SLA_BREACHES})


def _speed_row(part: Sums) -> dict[str, Any]:
    contacted = part.count(Metric.FIRST_CONTACTS)
    known = contacted - part.count(Metric.FIRST_CONTACTS, speed="unknown")
    fast = part.count(Metric.FIRST_CONTACTS, speed="lt_5m")
    hour = fast + part.count(Metric.FIRST_CONTACTS, speed="5m_1h")
    seconds = part.amount(Metric.FIRST_CONTACTS)
    return {
        "first_contacts": contacted,
        "within_5m": rate(fast, known),
        "within_1h": rate(hour, known),
        "average_minutes": None if not known else round(seconds / known / 60, 1),
        "sla_breaches": part.count(Metric.SLA_BREACHES),
    }


def _age_bucket(days: int) -> str:
    for limit, name in AGE_BUCKETS:
        if limit is None or days < limit:
            return name
    return AGE_BUCKETS[-1][1]


def speed(query: ReportQuery, buckets: Iterable[Bucket], open_leads: Sequence[OpenLeads]) -> Report:
    s = Sums(in_period(buckets, query))
    total = _speed_row(s)
    contacted = total["first_contacts"]
    distribution = [
        {
            "bucket": bucket,
            "leads": (n := s.count(Metric.FIRST_CONTACTS, speed=bucket)),
            "share": rate(n, contacted),
        }
        for bucket in SPEED_BUCKETS
    ]
    by_pool = [
        {"pool": pool or "(none)", **_speed_row(s.where("pool", pool))}
        for pool in s.values("pool", *SPEED_METRICS)
    ]
    by_rep = [
        {"rep": rep or "(none)", **_speed_row(s.where("rep", rep))}
        for rep in s.values("rep", *SPEED_METRICS)
    ]
    today = query.now.astimezone(UTC).date()
    now_hour = query.now.astimezone(UTC).strftime("%Y-%m-%dT%H")
    ages: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    forgotten: Counter[str] = Counter()
    overdue: Counter[str] = Counter()

    # Once per distinct day, not per entry: the gauge holds a day per place and lead state.
    @functools.cache
    def age(day: str) -> str:
        return _age_bucket((today - date.fromisoformat(day)).days)

    @functools.cache
    def untouched_long(day: str) -> bool:
        return (today - date.fromisoformat(day)).days >= query.forgotten_after_days

    for gauge in open_leads:
        for day, count in gauge.received.items():
            ages[age(day)] += count
            if gauge.place.stage == "assigned":
                waiting[age(day)] += count
        for day, count in gauge.touched.items():
            if untouched_long(day):
                forgotten[gauge.place.rep or "(none)"] += count
        for (day, due), count in gauge.awaiting.items():
            if due < now_hour:
                overdue[age(day)] += count
    aging = [
        {
            "age": name,
            "open_leads": ages[name],
            "awaiting_first_contact": waiting[name],
            "overdue": overdue[name],
        }
        for _, name in AGE_BUCKETS
    ]
    forgotten_rows = [{"rep": rep, "forgotten_leads": n} for rep, n in sorted(forgotten.items())]
    figures = {
        **total,
        "open_leads": sum(ages.values()),
        "forgotten_leads": sum(forgotten.values()),
        "overdue_leads": sum(overdue.values()),
    }
    row_cols = ("first_contacts", "within_5m", "within_1h", "average_minutes", "sla_breaches")
    return Report(
        "speed",
        "Speed to lead",
        query,
        figures,
        (
            Table(
                "distribution",
                "Arrival to first contact",
                ("bucket", "leads", "share"),
                distribution,
            ),
            Table("by_pool", "By pool", ("pool", *row_cols), by_pool),
            Table("by_rep", "By rep", ("rep", *row_cols), by_rep),
            Table(
                "aging",
                "Open leads by age (now)",
                ("age", "open_leads", "awaiting_first_contact", "overdue"),
                aging,
            ),
            Table(
                "forgotten",
                "Forgotten leads by rep (now)",
                ("rep", "forgotten_leads"),
                forgotten_rows,
            ),
        ),
        (
            "first contact: the first call, email, SMS or meeting a rep logged (or one flagged "
            "first_contact); time counted from the lead's arrival",
            "within_5m / within_1h: shares of first contacts whose arrival time is known",
            f"forgotten: open leads untouched for {query.forgotten_after_days} days or more; "
            "aging, overdue and forgotten are as of now, whatever the period",
        ),
    )


LOSS_BY: tuple[str, ...] = ()
LOSS_METRICS = frozenset({Metric.LOSSES})


def losses(query: ReportQuery, buckets: Iterable[Bucket]) -> Report:
    s = Sums(in_period(buckets, query))
    total = s.count(Metric.LOSSES)
    by_level = [
        {
            "level": level,
            "meaning": LOSS_LABELS[level],
            "losses": (n := s.count(Metric.LOSSES, level=level)),
            "share": rate(n, total),
        }
        for level in LOSS_LEVELS
    ]
    reasons: Counter[tuple[str, str]] = Counter()
    for b in s._select(Metric.LOSSES, {}):
        reasons[(b.dimensions.get("level", UNKNOWN), b.dimensions.get("reason", NONE))] += b.count
    by_reason = [
        {"level": level, "reason": reason or "(none)", "losses": n}
        for (level, reason), n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return Report(
        "losses",
        "Losses by level and reason",
        query,
        {"losses": total},
        (
            Table("by_level", "By level", ("level", "meaning", "losses", "share"), by_level),
            Table("by_reason", "By reason", ("level", "reason", "losses"), by_reason),
        ),
        ("level 1 is final; levels 2 and 3 are nurtured (seed 004)",),
    )


WALK_IN_BY = ("rep",)
WALK_IN_METRICS = frozenset({Metric.WALK_IN_LEADS, Metric.SATISFACTION, Metric.VISITS})


def walk_ins(query: ReportQuery, buckets: Iterable[Bucket]) -> Report:
    s = Sums(in_period(buckets, query))
    walk_in = s.count(Metric.WALK_IN_LEADS)
    kept = s.count(Metric.WALK_IN_LEADS, contact_kept="yes")
    responses = s.count(Metric.SATISFACTION)
    scores = s.by(Metric.SATISFACTION, "score")
    total_score = sum(int(score) * n for score, n in scores.items() if score.isdigit())
    low = sum(
        n for score, n in scores.items() if score.isdigit() and int(score) < SATISFACTION_THRESHOLD
    )
    retention = rate(kept, walk_in)
    figures = {
        "walk_in_leads": walk_in,
        "contact_kept": kept,
        "retention_rate": retention,
        "retention_target": RETENTION_TARGET,
        "meets_target": None if retention is None else retention >= RETENTION_TARGET,
        "walk_in_visits": s.count(Metric.VISITS, walk_in="yes"),
        "satisfaction_responses": responses,
        "satisfaction_average": None if not responses else round(total_score / responses, 2),
        "below_8": low,
        "below_8_share": rate(low, responses),
    }
    distribution = [
        {"score": score, "responses": scores.get(str(score), 0)} for score in range(1, 11)
    ]
    by_rep = []
    for rep in s.values("rep", Metric.SATISFACTION):
        part = s.where("rep", rep)
        n = part.count(Metric.SATISFACTION)
        rep_scores = part.by(Metric.SATISFACTION, "score")
        rep_low = sum(
            c for sc, c in rep_scores.items() if sc.isdigit() and int(sc) < SATISFACTION_THRESHOLD
        )
        rep_total = sum(int(sc) * c for sc, c in rep_scores.items() if sc.isdigit())
        by_rep.append(
            {
                "rep": rep or "(none)",
                "responses": n,
                "average": None if not n else round(rep_total / n, 2),
                "below_8": rep_low,
                "below_8_share": rate(rep_low, n),
            }
        )
    return Report(
        "walk_ins",
        "Walk-in contact retention and satisfaction",
        query,
        figures,
        (
            Table(
                "retention",
                "Walk-in contact retention",
                ("walk_in_leads", "contact_kept", "retention_rate", "retention_target"),
                [
                    {
                        k: figures[k]
                        for k in (
                            "walk_in_leads",
                            "contact_kept",
                            "retention_rate",
                            "retention_target",
                        )
                    }
                ],
            ),
            Table("satisfaction", "Satisfaction scores", ("score", "responses"), distribution),
            Table(
                "satisfaction_by_rep",
                "Satisfaction by rep",
                ("rep", "responses", "average", "below_8", "below_8_share"),
                by_rep,
            ),
        ),
        (
            "retention: new walk-in leads whose phone or email was taken, against the 95 % "
            "target (seed 004)",
            "satisfaction: next-day callback scores 1-10; below 8 calls for a recall (seed 004)",
        ),
    )


NURTURE_BY: tuple[str, ...] = ()
NURTURE_METRICS = frozenset(
    {
        Metric.LEADS_ENROLLED,
        Metric.MESSAGES_SENT,
        Metric.MESSAGE_STATUS,
        Metric.MESSAGES_FAILED,
        Metric.ENGAGEMENTS,
        Metric.OPTED_OUT,
        Metric.REQUALIFIED,
        Metric.CONVERTED_AFTER_NURTURE,
    }
)
_STEP_METRICS = NURTURE_METRICS - {Metric.LEADS_ENROLLED}


def nurture(query: ReportQuery, buckets: Iterable[Bucket]) -> Report:
    s = Sums(in_period(buckets, query))
    pairs = sorted(
        {
            (b.dimensions.get("sequence", UNKNOWN), b.dimensions.get("step", NONE))
            for b in s._buckets
            if b.metric in _STEP_METRICS
        },
        key=lambda p: (p[0], int(p[1]) if p[1].isdigit() else -1),
    )
    rows = []
    for sequence, step in pairs:
        part = s.where("sequence", sequence).where("step", step)
        rows.append(
            {
                "sequence": sequence,
                "step": step,
                "sent": part.count(Metric.MESSAGES_SENT),
                "delivered": part.count(Metric.MESSAGE_STATUS, status="delivered"),
                "failed": part.count(Metric.MESSAGES_FAILED)
                + part.count(
                    Metric.MESSAGE_STATUS,
                    status=lambda v: v in ("failed", "undelivered", "bounced"),
                ),
                "opened": part.count(Metric.ENGAGEMENTS, kind="open"),
                "clicked": part.count(Metric.ENGAGEMENTS, kind="click"),
                "replied": part.count(Metric.ENGAGEMENTS, kind="reply"),
                "opted_out": part.count(Metric.OPTED_OUT),
                "requalified": part.count(Metric.REQUALIFIED),
                "converted_after_nurture": part.count(Metric.CONVERTED_AFTER_NURTURE),
                "revenue_after_nurture": part.money(Metric.CONVERTED_AFTER_NURTURE),
            }
        )
    enrolled = [
        {"sequence": seq, "enrolled": n}
        for seq, n in sorted(s.by(Metric.LEADS_ENROLLED, "sequence").items())
    ]
    columns = (
        "sequence", "step", "sent", "delivered", "failed", "opened", "clicked", "replied",
        "opted_out", "requalified", "converted_after_nurture", "revenue_after_nurture",
    )  # fmt: skip
    figures = {
        "enrolled": s.count(Metric.LEADS_ENROLLED),
        "sent": s.count(Metric.MESSAGES_SENT),
        "requalified": s.count(Metric.REQUALIFIED),
        "converted_after_nurture": s.count(Metric.CONVERTED_AFTER_NURTURE),
    }
    return Report(
        "nurture",
        "Nurture performance",
        query,
        figures,
        (
            Table("steps", "By sequence and step", columns, rows),
            Table("enrolled", "Enrolled by sequence", ("sequence", "enrolled"), enrolled),
        ),
        (
            "an event without its own sequence counts for the lead's last sequence; one "
            "without a step (opt-outs, requalifications, sales) in the sequence's row with no step",
            "converted_after_nurture: leads enrolled before their first sale; revenue per currency",
        ),
    )


FORECAST_BY: tuple[str, ...] = ()
FORECAST_METRICS = frozenset({Metric.REACHED, Metric.CONVERSIONS})


def forecast(
    query: ReportQuery, buckets: Iterable[Bucket], open_leads: Sequence[OpenLeads]
) -> Report:
    s = Sums(in_period(buckets, query))
    reached = {stage: s.count(Metric.REACHED, stage=stage) for stage in STAGES}
    converted = reached["converted"]
    funnel = []
    for i, stage in enumerate(STAGES):
        funnel.append(
            {
                "stage": stage,
                "leads": reached[stage],
                "from_previous": None if i == 0 else rate(reached[stage], reached[STAGES[i - 1]]),
                "to_sale": rate(converted, reached[stage]),
            }
        )
    pipeline_by_stage: Counter[str] = Counter()
    for gauge in open_leads:
        pipeline_by_stage[gauge.place.stage] += gauge.count
    sales = s.count(Metric.CONVERSIONS)
    revenue = s.money(Metric.CONVERSIONS)
    expected_total = 0.0
    pipeline = []
    for stage in STAGES[:-1]:
        open_n = pipeline_by_stage.get(stage, 0)
        to_sale = rate(converted, reached[stage])
        exact = converted / reached[stage] if reached[stage] else 0.0
        expected = open_n * min(exact, 1.0)
        expected_total += expected
        pipeline.append(
            {
                "stage": stage,
                "open_leads": open_n,
                "to_sale": to_sale,
                "expected_conversions": round(expected, 2),
            }
        )
    expected_revenue = _scale(revenue, expected_total / sales) if sales else {}
    figures = {
        "expected_conversions": round(expected_total, 2),
        "expected_revenue": expected_revenue,
        "open_leads": sum(pipeline_by_stage.values()),
        "average_sale": _scale(revenue, 1 / sales) if sales else {},
    }
    return Report(
        "forecast",
        "Funnel and forecast",
        query,
        figures,
        (
            Table(
                "funnel",
                "Conversion by stage",
                ("stage", "leads", "from_previous", "to_sale"),
                funnel,
            ),
            Table(
                "pipeline",
                "Open pipeline and next month's expected conversions",
                ("stage", "open_leads", "to_sale", "expected_conversions"),
                pipeline,
            ),
        ),
        (
            "method: each open lead (as of now) is weighted by the historical rate from its "
            "furthest stage to a sale, measured over the report period as leads converted / "
            "leads reaching that stage; the sum is next month's expected conversions",
            "expected revenue = expected conversions x the period's revenue per sale, per currency",
            "assumes the open pipeline closes within the next month at the period's rates",
        ),
    )


INGEST_BY: tuple[str, ...] = ()
INGEST_METRICS = frozenset({Metric.UNKNOWN_EVENTS})


def ingest(query: ReportQuery, buckets: Iterable[Bucket], events_stored: int) -> Report:
    s = Sums(in_period(buckets, query))
    counts: Counter[tuple[str, str]] = Counter()
    for b in s._select(Metric.UNKNOWN_EVENTS, {}):
        counts[(b.dimensions.get("event_type", UNKNOWN), b.dimensions.get("version", ""))] += (
            b.count
        )
    rows = [{"event_type": t, "version": v, "events": n} for (t, v), n in sorted(counts.items())]
    return Report(
        "ingest",
        "Events stored",
        query,
        {"events_stored": events_stored, "unknown_events": sum(counts.values())},
        (
            Table(
                "unknown",
                "Events of an unknown type or version",
                ("event_type", "version", "events"),
                rows,
            ),
        ),
        ("unknown events are stored raw (known: false) and counted, never parked",),
    )
