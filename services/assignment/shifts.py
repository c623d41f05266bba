"""Working time, pure: a rep's shifts in their own time zone, public holidays of their
country (the `holidays` package), company and personal days off, away periods.

No I/O and no clock reads (the holiday calendars are computed, and memoised per country
and year). `rules` asks these questions when it deals leads and sets timers:

- is the rep working at `now`? (`off_duty_reason`)
- when does their next shift begin? (`next_shift_start`: a queued lead's wake-up time)
- what is `start` plus N minutes of their working time? (`add_working_time`: SLA deadlines)
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

_SEARCH_DAYS = 31
"""How far ahead a next shift is looked for: past it a rep is as good as never back."""


@dataclass(frozen=True, slots=True)
class Shift:
    """One working stretch on one weekday (0 = Monday), in the rep's time zone.
    `end` is exclusive; a night shift is written as two shifts."""

    weekday: int
    start: time
    end: time


@dataclass(frozen=True, slots=True)
class AwayPeriod:
    starts_at: datetime
    ends_at: datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class WorkingTime:
    """Everything that says when one rep works. No shifts means every hour of every day."""

    timezone: str = "UTC"
    shifts: tuple[Shift, ...] = ()
    holiday_country: str | None = None
    holiday_subdivision: str | None = None
    days_off: frozenset[date] = frozenset()
    away: tuple[AwayPeriod, ...] = ()


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@functools.lru_cache(maxsize=512)
def public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    """The country's public holidays in `year` (memoised: building a calendar takes ~0.1 s)."""
    calendar = holidays.country_holidays(country, subdiv=subdivision, years=year)
    return frozenset(calendar.keys())


def is_known_country(country: str, subdivision: str | None = None) -> bool:
    try:
        holidays.country_holidays(country, subdiv=subdivision)
    except NotImplementedError:
        return False
    return True


def day_off_reason(
    working: WorkingTime, local_day: date, company_days_off: Collection[date]
) -> str | None:
    """Why `local_day` is not a working day for the rep, or None when it is."""
    if local_day in company_days_off:
        return "company day off"
    if local_day in working.days_off:
        return "day off"
    if working.holiday_country is not None and local_day in public_holidays(
        working.holiday_country, working.holiday_subdivision, local_day.year
    ):
        return "public holiday"
    return None


def away_at(working: WorkingTime, at: datetime) -> AwayPeriod | None:
    return next((p for p in working.away if p.starts_at <= at < p.ends_at), None)


def off_duty_reason(
    working: WorkingTime, at: datetime, company_days_off: Collection[date] = ()
) -> str | None:
    """Why the rep is not working at `at` (away, holiday, day off, off shift), or None."""
    period = away_at(working, at)
    if period is not None:
        return f"away until {period.ends_at.isoformat()}"
    local = at.astimezone(zone(working.timezone))
    reason = day_off_reason(working, local.date(), company_days_off)
    if reason is not None:
        return reason
    if not working.shifts:
        return None
    clock = local.time().replace(tzinfo=None)
    weekday = local.weekday()
    if any(s.weekday == weekday and s.start <= clock < s.end for s in working.shifts):
        return None
    return "off shift"


def _working_spans(
    working: WorkingTime, after: datetime, company_days_off: Collection[date], days: int
) -> Iterator[tuple[datetime, datetime]]:
    """The rep's working stretches (UTC, in order) that end after `after`, for `days` days,
    before away periods are taken out."""
    local = zone(working.timezone)
    first = after.astimezone(local).date()
    for offset in range(days + 1):
        day = first + timedelta(days=offset)
        if day_off_reason(working, day, company_days_off) is not None:
            continue
        spans: list[tuple[time, time | None]]
        if not working.shifts:
            spans = [(time(0), None)]
        else:
            spans = [
                (s.start, s.end)
                for s in sorted(working.shifts, key=lambda s: s.start)
                if s.weekday == day.weekday()
            ]
        for start, end in spans:
            begins = datetime.combine(day, start, local).astimezone(UTC)
            ends = (
                datetime.combine(day + timedelta(days=1), time(0), local)
                if end is None
                else datetime.combine(day, end, local)
            ).astimezone(UTC)
            if ends > after:
                yield begins, ends


def _without_away(
    working: WorkingTime, spans: Iterator[tuple[datetime, datetime]]
) -> Iterator[tuple[datetime, datetime]]:
    for begins, ends in spans:
        pieces = [(begins, ends)]
        for period in working.away:
            cut: list[tuple[datetime, datetime]] = []
            for b, e in pieces:
                if period.ends_at <= b or period.starts_at >= e:
                    cut.append((b, e))
                    continue
                if b < period.starts_at:
                    cut.append((b, period.starts_at))
                if period.ends_at < e:
                    cut.append((period.ends_at, e))
            pieces = cut
        yield from pieces


def next_shift_start(
    working: WorkingTime, after: datetime, company_days_off: Collection[date] = ()
) -> datetime | None:
    """The first moment at or after `after` the rep is working, within a month; None if
    they do not work in that time."""
    spans = _without_away(working, _working_spans(working, after, company_days_off, _SEARCH_DAYS))
    for begins, ends in spans:
        if ends > after:
            return max(begins, after)
    return None


def add_working_time(
    working: WorkingTime,
    start: datetime,
    duration: timedelta,
    company_days_off: Collection[date] = (),
) -> datetime:
    """`start` plus `duration` of the rep's working time: a 60-minute SLA given at 17:30 on
    a 9-to-18 Friday is due at 09:30 on Monday. A rep with no working time within a month
    gets plain clock time (the deadline must exist)."""
    left = duration
    spans = _without_away(working, _working_spans(working, start, company_days_off, _SEARCH_DAYS))
    for span_start, ends in spans:
        begins = max(span_start, start)
        if ends <= begins:
            continue
        if ends - begins >= left:
            return begins + left
        left -= ends - begins
    return start + duration
