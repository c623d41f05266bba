"""Nurture's pure rules: who is enrolled, on which channels, and when each step is due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.nurture.rules import (
    DEFAULT_SEQUENCES,
    FieldError,
    FrequencyCap,
    LeadScore,
    LossEnrollment,
    NurtureSequence,
    QuietHours,
    ScoringPolicy,
    SendWindow,
    Step,
    allowed_channels,
    decayed,
    enrollment_for_loss,
    lead_time_zone,
    next_allowed_time,
    next_send_time,
    phone_time_zone,
    plan_step,
    requalification_reason,
    scored,
    sequence_errors,
)
from shared.events import Consent, Contact, LossLevel

pytestmark = pytest.mark.unit

SEOUL = "Asia/Seoul"  # UTC+9, no daylight saving
OFFICE = SendWindow(start_hour=9, end_hour=18)
WEEKDAYS = (0, 1, 2, 3, 4)


def utc(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    """A moment in March 2025 (the 3rd is a Monday)."""
    return datetime(2025, month, day, hour, minute, tzinfo=UTC)


def email(delay_hours: int = 0) -> Step:
    return Step(channel="email", delay_hours=delay_hours, subject="Hi", body="Hello {{name}}")


def sms(delay_hours: int = 0) -> Step:
    return Step(channel="sms", delay_hours=delay_hours, body="Hi {{name}}")


# --- next_send_time -------------------------------------------------------------------------


def test_without_window_or_weekdays_a_step_is_due_after_its_delay() -> None:
    assert next_send_time(email(36), utc(3, 10), "UTC", None, None) == utc(4, 22)


def test_a_step_due_inside_the_window_goes_at_once() -> None:
    # 01:30 UTC is 10:30 in Seoul, inside 09-18.
    assert next_send_time(email(0), utc(3, 1, 30), SEOUL, OFFICE, WEEKDAYS) == utc(3, 1, 30)


def test_a_step_due_before_the_window_waits_for_it_to_open_in_the_lead_zone() -> None:
    # 22:00 UTC Sunday is 07:00 Monday in Seoul: wait until 09:00 Seoul = 00:00 UTC.
    assert next_send_time(email(0), utc(2, 22), SEOUL, OFFICE, WEEKDAYS) == utc(3, 0)


def test_a_step_due_after_the_window_moves_across_midnight_to_the_next_morning() -> None:
    # 10:00 UTC Monday is 19:00 in Seoul, after 18:00: next day 09:00 Seoul = 00:00 UTC Tuesday.
    assert next_send_time(email(0), utc(3, 10), SEOUL, OFFICE, WEEKDAYS) == utc(4, 0)


def test_the_delay_counts_from_the_previous_send() -> None:
    # Monday 10:00 Seoul + 24 h = Tuesday 10:00 Seoul, inside the window.
    assert next_send_time(sms(24), utc(3, 1), SEOUL, OFFICE, WEEKDAYS) == utc(4, 1)


def test_weekend_is_skipped_until_the_next_allowed_weekday() -> None:
    # Friday 17:30 Seoul + 1 h is after the window; Saturday and Sunday are not allowed.
    friday_evening = utc(7, 8, 30)
    assert next_send_time(email(1), friday_evening, SEOUL, OFFICE, WEEKDAYS) == utc(10, 0)


def test_weekday_is_read_in_the_lead_zone_not_in_utc() -> None:
    # 20:00 UTC Sunday is already Monday 05:00 in Seoul; only Mondays allowed.
    monday_only = (0,)
    assert next_send_time(email(0), utc(2, 20), SEOUL, OFFICE, monday_only) == utc(3, 0)
    # 16:00 UTC Monday is Tuesday 01:00 in Seoul: the next Monday is a week later.
    assert next_send_time(email(0), utc(3, 16), SEOUL, OFFICE, monday_only) == utc(10, 0)


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (utc(3, 6), utc(3, 14)),  # before DST, New York is UTC-5: 09:00 is 14:00 UTC
        (utc(10, 6), utc(10, 13)),  # the day after DST starts, UTC-4: 09:00 is 13:00 UTC
    ],
)
def test_window_follows_daylight_saving_time(since: datetime, expected: datetime) -> None:
    assert next_send_time(email(0), since, "America/New_York", OFFICE, WEEKDAYS) == expected


@pytest.mark.parametrize(
    ("local_hour", "expected_local_hour"),
    [(23, 23), (1, 1), (3, 22), (21, 22)],
)
def test_overnight_window_spans_midnight(local_hour: int, expected_local_hour: int) -> None:
    overnight = SendWindow(start_hour=22, end_hour=2)
    since = datetime(2025, 3, 4, local_hour, tzinfo=UTC)
    due = next_send_time(email(0), since, "UTC", overnight, None)
    assert due == datetime(2025, 3, 4, expected_local_hour, tzinfo=UTC)


def test_window_ending_at_24_runs_until_midnight() -> None:
    late = SendWindow(start_hour=20, end_hour=24)
    assert next_send_time(email(0), utc(3, 23, 59), "UTC", late, None) == utc(3, 23, 59)


def test_no_allowed_weekday_is_an_error() -> None:
    with pytest.raises(ValueError, match="no weekday"):
        next_send_time(email(0), utc(3, 10), "UTC", None, ())


def test_unknown_or_missing_lead_zone_falls_back_to_the_default() -> None:
    assert lead_time_zone("Asia/Seoul", "UTC") == "Asia/Seoul"
    assert lead_time_zone("Mars/Olympus", "Europe/Berlin") == "Europe/Berlin"
    assert lead_time_zone("../etc/passwd", "UTC") == "UTC"
    assert lead_time_zone(None, "UTC") == "UTC"


# --- who is nurtured, where -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (1, None),
        (2, LossEnrollment(sequence_id="loss-level-2", reason="lost-level-2")),
        (3, LossEnrollment(sequence_id="loss-level-3", reason="lost-level-3")),
    ],
)
def test_only_loss_levels_2_and_3_are_nurtured(
    level: LossLevel, expected: LossEnrollment | None
) -> None:
    assert enrollment_for_loss(level) == expected


def test_every_loss_sequence_is_seeded_and_valid() -> None:
    seeded = {s.sequence_id: s for s in DEFAULT_SEQUENCES}
    for level in (2, 3):
        loss = enrollment_for_loss(level)
        assert loss is not None
        assert sequence_errors(seeded[loss.sequence_id]) == []


# --- channels by consent --------------------------------------------------------------------

REACHABLE = Contact(phone="+821012345678", email="dana@example.com")


@pytest.mark.parametrize(
    ("contact", "consent", "expected"),
    [
        (REACHABLE, Consent(email=True, sms=True), ("email", "sms")),
        (REACHABLE, Consent(email=True, sms=False), ("email",)),
        (REACHABLE, Consent(email=False, sms=False), ()),
        (Contact(phone="+821012345678"), Consent(email=True, sms=True), ("sms",)),
        (Contact(email="dana@example.com"), Consent(email=True, sms=True), ("email",)),
        (None, Consent(email=True, sms=True), ()),
        (REACHABLE, None, ()),
    ],
)
def test_only_consented_and_reachable_channels_are_allowed(
    contact: Contact | None, consent: Consent | None, expected: tuple[str, ...]
) -> None:
    assert allowed_channels(contact, consent) == expected


def test_plan_starts_at_the_first_step_in_the_lead_zone_with_its_channels() -> None:
    sequence = NurtureSequence("s", "S", (email(24), sms(48)), OFFICE, WEEKDAYS)
    contact = Contact(email="dana@example.com", timezone=SEOUL)
    # Monday 19:00 Seoul + 24 h = Tuesday 19:00, after the window: Wednesday 09:00 Seoul.
    plan = plan_step(
        sequence,
        0,
        utc(3, 10),
        contact=contact,
        consent=Consent(email=True),
        default_timezone="UTC",
    )
    assert plan.channels == ("email",)
    assert plan.next_send_at == utc(5, 0)


def test_plan_uses_the_default_zone_for_a_lead_without_one() -> None:
    sequence = NurtureSequence("s", "S", (email(0),), OFFICE, None)
    plan = plan_step(
        sequence, 0, utc(3, 1), contact=None, consent=None, default_timezone="Europe/Berlin"
    )
    assert plan.channels == ()
    assert plan.next_send_at == utc(3, 8)  # 09:00 in Berlin (UTC+1)


def test_plan_past_the_last_step_has_nothing_due() -> None:
    sequence = NurtureSequence("s", "S", (email(0),), None, None)
    plan = plan_step(sequence, 1, utc(3, 1), contact=None, consent=None, default_timezone="UTC")
    assert plan.next_send_at is None


# --- sequence validation --------------------------------------------------------------------


def sequence(
    *steps: Step, window: SendWindow | None = None, weekdays: tuple[int, ...] | None = None
) -> NurtureSequence:
    return NurtureSequence("s", "S", steps, window, weekdays)


def test_a_valid_sequence_has_no_errors() -> None:
    assert sequence_errors(sequence(email(0), sms(24), window=OFFICE, weekdays=WEEKDAYS)) == []


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        (sequence(), FieldError(("steps",), "a sequence needs at least one step")),
        (
            sequence(email(0), Step(channel="sms", delay_hours=1, subject="Hi", body="b")),
            FieldError(("steps", 1, "subject"), "an SMS step has no subject"),
        ),
        (
            sequence(Step(channel="email", delay_hours=0, body="b")),
            FieldError(("steps", 0, "subject"), "an email step needs a subject"),
        ),
        (
            sequence(email(0), window=SendWindow(9, 9)),
            FieldError(
                ("send_window", "end_hour"),
                "the window opens and closes at the same hour; leave send_window out to send "
                "at any hour",
            ),
        ),
        (
            sequence(email(0), weekdays=()),
            FieldError(("weekdays",), "at least one weekday is needed; leave weekdays out for all"),
        ),
    ],
)
def test_invalid_sequence_names_the_field(candidate: NurtureSequence, expected: FieldError) -> None:
    assert sequence_errors(candidate) == [expected]


def test_overnight_and_whole_day_windows_are_valid() -> None:
    assert sequence_errors(sequence(email(0), window=SendWindow(22, 2))) == []
    assert sequence_errors(sequence(email(0), window=SendWindow(0, 24))) == []


# --- when a due step may go out: quiet hours, caps, DST ---------------------------------------

QUIET = QuietHours(21, 8)


def test_quiet_hours_hold_a_message_until_they_end_in_the_lead_zone() -> None:
    # 22:00 in Seoul is quiet: 08:00 the next morning, Seoul time.
    at = next_allowed_time(utc(3, 13), SEOUL, send_window=None, weekdays=None, quiet_hours=QUIET)
    assert at == utc(3, 23)


def test_quiet_hours_and_the_window_both_hold() -> None:
    # Window opens at 07:00, but quiet hours last until 08:00.
    at = next_allowed_time(
        utc(3, 21), SEOUL, send_window=SendWindow(7, 12), weekdays=None, quiet_hours=QUIET
    )
    assert at == utc(3, 23)


def test_a_daily_cap_moves_the_message_to_the_next_allowed_slot() -> None:
    sent = [utc(3, 1), utc(3, 2)]  # two emails today (Monday, Seoul)
    at = next_allowed_time(
        utc(3, 3),
        SEOUL,
        send_window=OFFICE,
        weekdays=None,
        quiet_hours=QUIET,
        sent=sent,
        cap=FrequencyCap(per_day=2, per_week=10),
    )
    assert at == utc(4, 0)  # Tuesday 09:00 Seoul


def test_a_weekly_cap_moves_the_message_to_next_week() -> None:
    sent = [utc(3, 1), utc(4, 1), utc(5, 1)]  # Monday to Wednesday
    at = next_allowed_time(
        utc(6, 1),
        SEOUL,
        send_window=OFFICE,
        weekdays=None,
        quiet_hours=None,
        sent=sent,
        cap=FrequencyCap(per_day=1, per_week=3),
    )
    assert at == utc(10, 0)  # next Monday 09:00 Seoul


def test_quiet_hours_follow_daylight_saving_time() -> None:
    # New York: 30 March 2025 is after the switch (UTC-4). 22:00 local is 02:00 UTC;
    # quiet until 08:00 local = 12:00 UTC (13:00 UTC before the switch).
    before = next_allowed_time(
        datetime(2025, 3, 5, 3, 0, tzinfo=UTC),
        "America/New_York",
        send_window=None,
        weekdays=None,
        quiet_hours=QUIET,
    )
    after = next_allowed_time(
        datetime(2025, 3, 31, 2, 0, tzinfo=UTC),
        "America/New_York",
        send_window=None,
        weekdays=None,
        quiet_hours=QUIET,
    )
    assert (before, after) == (
        datetime(2025, 3, 5, 13, 0, tzinfo=UTC),
        datetime(2025, 3, 31, 12, 0, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("phone", "zone"),
    [
        ("+821012345678", "Asia/Seoul"),
        ("+8613800138000", "Asia/Shanghai"),
        ("+447911123456", "Europe/London"),
        ("+12125551234", "America/New_York"),
        ("+15005550006", None),  # a +1 number whose area spans clocks
        ("not a number", None),
    ],
)
def test_time_zone_is_inferred_from_the_phone_number_when_it_pins_one(
    phone: str, zone: str | None
) -> None:
    assert phone_time_zone(phone) == zone
    assert lead_time_zone(None, "UTC", phone) == (zone or "UTC")


def test_an_explicit_zone_wins_over_the_phone() -> None:
    assert lead_time_zone("Europe/Berlin", "UTC", "+821012345678") == "Europe/Berlin"


# --- score, decay, requalification ---------------------------------------------------------------

SCORING = ScoringPolicy(
    weights={"open": 1, "click": 3, "reply": 10, "web_visit": 4},
    half_life=timedelta(days=14),
    warm_at=5,
    hot_at=12,
    high_intent_paths=("/pricing",),
)


def test_score_halves_every_half_life() -> None:
    assert decayed(8.0, utc(3, 0), utc(17, 0), timedelta(days=14)) == pytest.approx(4.0)
    assert decayed(8.0, utc(3, 0), utc(3, 0), timedelta(days=14)) == 8.0


def test_incremental_score_equals_the_sum_of_decayed_weights() -> None:
    times = [utc(3, 0), utc(5, 0), utc(10, 0)]
    score = None
    for at in times:
        score = scored(score, "l", "click", at, SCORING)
    assert score is not None
    expected = sum(3 * 0.5 ** ((times[-1] - t) / timedelta(days=14)) for t in times)
    assert score.score == pytest.approx(expected)
    assert score.temperature == "warm"


def test_crossing_into_hot_requalifies_once() -> None:
    warm = LeadScore("l", 10.0, utc(3, 0), "warm")
    hot = scored(warm, "l", "click", utc(3, 0), SCORING)
    assert hot.temperature == "hot"
    assert requalification_reason(warm, hot, "click", None, SCORING) is not None
    hotter = scored(hot, "l", "open", utc(3, 0), SCORING)
    assert requalification_reason(hot, hotter, "open", None, SCORING) is None


def test_a_reply_or_a_high_intent_page_requalifies_at_once() -> None:
    cold = scored(None, "l", "web_visit", utc(3, 0), SCORING)
    assert requalification_reason(None, cold, "reply", None, SCORING) == "replied"
    reason = requalification_reason(
        None, cold, "web_visit", "https://acme.example/pricing/gold?x=1", SCORING
    )
    assert reason is not None and "/pricing" in reason
    assert (
        requalification_reason(None, cold, "web_visit", "https://acme.example/pricingx", SCORING)
        is None
    )
