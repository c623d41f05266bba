"""Pure decisions of intake: how contact details are normalised and matched, and how a batch
of new leads becomes new leads and merges of repeat inquiries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from shared.events import (
    Attribution,
    Consent,
    Contact,
    Event,
    LeadMergedV1,
    LeadReceivedV1,
    Profile,
)

LeadChannel = Literal["phone", "walk_in", "web_form", "ad", "import", "referral"]
"""How a lead reached us; reports count each apart."""

ContactKind = Literal["phone", "email"]
ContactKey = tuple[ContactKind, str]
"""A detail that identifies a contact: ("phone", E.164) or ("email", lower-cased address)."""

NEEDS_CONTACT = "a lead needs a phone number or an email address"


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
        errors.append(FieldError("phone", NEEDS_CONTACT))
    if errors:
        return errors
    return Contact(
        name=normalise_name(name),
        phone=clean_phone,
        email=clean_email,
        timezone=timezone,
        locale=locale,
    )


def contact_keys(contact: Contact) -> list[ContactKey]:
    """The keys that identify a contact, strongest first: phone, then email."""
    keys: list[ContactKey] = []
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


# --- accepting a batch of leads -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewLead:
    """A lead as posted, its contact already normalised."""

    lead_id: str
    contact: Contact
    attribution: Attribution
    consent: Consent
    profile: Profile
    message: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Acceptance:
    """What became of one posted lead: a new lead, or an inquiry merged into a known one."""

    lead_id: str
    outcome: Literal["received", "merged"]
    matched_on: ContactKind | None = None


class LeadRejected(Exception):  # noqa: N818 - a refused lead, named like the other outcomes
    """One lead of a batch cannot be accepted; the others are."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LeadRecord:
    """A lead as intake stores it."""

    lead_id: str
    contact: Contact
    attribution: Attribution
    consent: Consent
    profile: Profile
    message: str | None
    received_at: datetime
    last_inquiry_at: datetime
    inquiries: int


@dataclass(frozen=True, slots=True)
class LeadMerge:
    """Repeat inquiries folded into a lead stored before this batch."""

    lead_id: str
    contact: Contact
    inquiries: int
    """How many inquiries this batch adds."""
    last_inquiry_at: datetime


@dataclass(frozen=True, slots=True)
class AcceptancePlan:
    """Everything a batch of leads changes, decided before anything is written."""

    outcomes: Sequence[Acceptance | LeadRejected] = ()
    """What became of each lead of the batch, in order."""
    new_leads: Sequence[LeadRecord] = ()
    merges: Sequence[LeadMerge] = ()
    new_keys: Mapping[ContactKey, str] = field(default_factory=dict)
    """Contact keys to add to the directory, each with the lead it identifies."""
    events: Sequence[Event] = ()


def plan_acceptance(
    leads: Sequence[NewLead],
    owners: Mapping[ContactKey, str],
    known_contacts: Mapping[str, Contact],
) -> AcceptancePlan:
    """Decide, in order, what each lead of a batch becomes.

    `owners` maps every contact key of the batch that is already in the directory to its
    lead; `known_contacts` gives those leads' contacts. A lead whose phone (first) or email
    is known merges into that lead; otherwise it is new and its keys identify it, so a later
    lead of the same batch with the same phone or email merges into it. A merge fills in
    missing details and claims their keys unless another lead already has them.
    """
    owner_of = dict(owners)
    contact_of = dict(known_contacts)
    new: dict[str, LeadRecord] = {}
    merges: dict[str, LeadMerge] = {}
    new_keys: dict[ContactKey, str] = {}
    outcomes: list[Acceptance | LeadRejected] = []
    events: list[Event] = []
    for lead in leads:
        keys = contact_keys(lead.contact)
        if not keys:
            outcomes.append(LeadRejected("phone", NEEDS_CONTACT))
            continue
        match = next(((key, owner_of[key]) for key in keys if key in owner_of), None)
        if match is None:
            for key in keys:
                owner_of[key] = new_keys[key] = lead.lead_id
            contact_of[lead.lead_id] = lead.contact
            new[lead.lead_id] = first_inquiry(lead)
            events.append(lead_received(lead))
            outcomes.append(Acceptance(lead.lead_id, "received"))
            continue
        (matched_on, _), target = match
        # A key without its lead would be a broken directory; the inquiry still merges.
        known = contact_of.get(target, Contact())
        merged = merge_contact(known, lead.contact)
        for key in contact_keys(merged):
            if key not in owner_of and key not in contact_keys(known):
                owner_of[key] = new_keys[key] = target
        contact_of[target] = merged
        if target in new:
            new[target] = repeat_inquiry(new[target], merged, lead.received_at)
        else:
            merges[target] = merge_inquiry(merges.get(target), target, merged, lead.received_at)
        events.append(lead_merged(lead, target, merged, matched_on))
        outcomes.append(Acceptance(target, "merged", matched_on))
    return AcceptancePlan(
        outcomes=outcomes,
        new_leads=list(new.values()),
        merges=list(merges.values()),
        new_keys=new_keys,
        events=events,
    )


def first_inquiry(lead: NewLead) -> LeadRecord:
    return LeadRecord(
        lead_id=lead.lead_id,
        contact=lead.contact,
        attribution=lead.attribution,
        consent=lead.consent,
        profile=lead.profile,
        message=lead.message,
        received_at=lead.received_at,
        last_inquiry_at=lead.received_at,
        inquiries=1,
    )


def repeat_inquiry(record: LeadRecord, contact: Contact, at: datetime) -> LeadRecord:
    return replace(
        record,
        contact=contact,
        inquiries=record.inquiries + 1,
        last_inquiry_at=max(record.last_inquiry_at, at),
    )


def merge_inquiry(
    earlier: LeadMerge | None, lead_id: str, contact: Contact, at: datetime
) -> LeadMerge:
    if earlier is None:
        return LeadMerge(lead_id, contact, inquiries=1, last_inquiry_at=at)
    return LeadMerge(
        lead_id, contact, earlier.inquiries + 1, last_inquiry_at=max(earlier.last_inquiry_at, at)
    )


def lead_received(lead: NewLead) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead.lead_id,
        occurred_at=lead.received_at,
        contact=lead.contact,
        attribution=lead.attribution,
        consent=lead.consent,
        profile=lead.profile,
        message=lead.message,
    )


def lead_merged(
    lead: NewLead, into: str, contact: Contact, matched_on: ContactKind
) -> LeadMergedV1:
    return LeadMergedV1(
        lead_id=into,
        occurred_at=lead.received_at,
        contact=contact,
        attribution=lead.attribution,
        matched_on=matched_on,
        message=lead.message,
    )
