"""Intake's pure rules: contact normalisation and the keys contacts are matched on."""

from __future__ import annotations

import pytest

from services.intake.rules import (
    FieldError,
    contact_keys,
    merge_contact,
    normalise_contact,
    normalise_email,
    normalise_phone,
)
from shared.events import Contact

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+1 (415) 555-0100", "US", "+14155550100"),
        ("415.555.0100", "US", "+14155550100"),
        ("010-1234-5678", "KR", "+821012345678"),
        ("+82 10 1234 5678", "US", "+821012345678"),
    ],
)
def test_phones_are_stored_in_e164(raw: str, region: str, e164: str) -> None:
    assert normalise_phone(raw, region) == e164


@pytest.mark.parametrize("raw", ["12", "call me", "+1 555", "+999 1234567"])
def test_things_that_are_not_phone_numbers_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="phone number"):
        normalise_phone(raw, "US")


def test_emails_are_lower_cased_and_checked_without_network() -> None:
    assert normalise_email("Dana.Kim@Example.COM") == "dana.kim@example.com"
    with pytest.raises(ValueError, match="@"):
        normalise_email("dana.example.com")


def contact(**fields: str | None) -> Contact | list[FieldError]:
    values: dict[str, str | None] = {"name": None, "phone": None, "email": None}
    values.update(fields)
    return normalise_contact(**values, timezone=None, locale=None, default_region="US")


def test_every_bad_field_is_reported_at_once() -> None:
    assert contact(phone="12", email="nope") == [
        FieldError("phone", contact(phone="12")[0].reason),  # type: ignore[index]
        FieldError("email", contact(email="nope")[0].reason),  # type: ignore[index]
    ]


def test_a_lead_needs_a_phone_or_an_email() -> None:
    assert contact(name="Only A Name") == [
        FieldError("phone", "a lead needs a phone number or an email address")
    ]
    assert contact(phone="   ") == [
        FieldError("phone", "a lead needs a phone number or an email address")
    ]


def test_names_lose_stray_whitespace() -> None:
    result = contact(name="  Dana \t Kim ", email="d@example.com")
    assert isinstance(result, Contact)
    assert result.name == "Dana Kim"


def test_phone_is_matched_before_email() -> None:
    both = Contact(phone="+14155550100", email="d@example.com")
    assert contact_keys(both) == [("phone", "+14155550100"), ("email", "d@example.com")]
    assert contact_keys(Contact(email="d@example.com")) == [("email", "d@example.com")]


def test_a_repeat_inquiry_fills_gaps_but_never_overwrites() -> None:
    known = Contact(name="Dana Kim", phone="+14155550100")
    incoming = Contact(name="D. Kim", phone="+14155550100", email="d@example.com")
    assert merge_contact(known, incoming) == Contact(
        name="Dana Kim", phone="+14155550100", email="d@example.com"
    )
