"""Pure decisions of intake: how contact details are normalised and matched."""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from shared.events import Contact


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    reason: str


def normalise_phone(raw: str, default_region: str) -> str:
    """E.164 form of `raw`; raises ValueError with the reason when it is not a phone number."""
    try:
        number = phonenumbers.parse(raw, default_region.upper())
    except phonenumbers.NumberParseException as error:
        raise ValueError(f"not a phone number: {error}") from error
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(raw: str) -> str:
    try:
        result = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from error
    return result.normalized.lower()


def normalise_name(raw: str | None) -> str | None:
    if raw is None:
        return None
    name = " ".join(raw.split())
    return name or None


def normalise_contact(
    *,
    name: str | None,
    phone: str | None,
    email: str | None,
    timezone: str | None,
    locale: str | None,
    default_region: str,
) -> Contact | list[FieldError]:
    """The normalised contact, or every field that is wrong and why."""
    errors: list[FieldError] = []
    clean_phone = clean_email = None
    if phone is not None and phone.strip():
        try:
            clean_phone = normalise_phone(phone, default_region)
        except ValueError as error:
            errors.append(FieldError("phone", str(error)))
    if email is not None and email.strip():
        try:
            clean_email = normalise_email(email.strip())
        except ValueError as error:
            errors.append(FieldError("email", str(error)))
    if not errors and clean_phone is None and clean_email is None:
        errors.append(FieldError("phone", "a lead needs a phone number or an email address"))
    if errors:
        return errors
    return Contact(
        name=normalise_name(name),
        phone=clean_phone,
        email=clean_email,
        timezone=timezone,
        locale=locale,
    )


def contact_keys(contact: Contact) -> list[tuple[str, str]]:
    """The (kind, value) pairs that identify a contact, strongest first: phone, then email."""
    keys: list[tuple[str, str]] = []
    if contact.phone:
        keys.append(("phone", contact.phone))
    if contact.email:
        keys.append(("email", contact.email))
    return keys


def merge_contact(known: Contact, incoming: Contact) -> Contact:
    """A repeat inquiry fills in what the known contact lacks; it never overwrites."""
    return known.model_copy(
        update={
            field: value
            for field, value in incoming.model_dump().items()
            if value is not None and getattr(known, field) is None
        }
    )
