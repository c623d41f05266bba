"""Pure decisions of intake: how a submission is cleaned, how contacts are matched, how a
lead fits the ideal-customer profile, and how a batch of submissions becomes new leads and
merges of repeat inquiries. No I/O and no clock: callers pass `now`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field

from services.intake.models import FormDefinition, SourceDefinition, Submission
from shared.events import (
    Attribution,
    Consent,
    ConsentRecord,
    Contact,
    Event,
    FitGrade,
    FitScore,
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


def merge_profile(known: Profile, incoming: Profile) -> Profile:
    """A repeat inquiry fills in what the known profile lacks; custom answers are added
    under labels not answered before."""
    update: dict[str, object] = {
        name: value
        for name, value in incoming.model_dump(exclude={"custom"}).items()
        if value is not None and getattr(known, name) is None
    }
    if incoming.custom:
        update["custom"] = {**incoming.custom, **known.custom}
    return known.model_copy(update=update)


def merge_consent(known: Consent, incoming: Consent) -> Consent:
    """Both histories, in time order; each channel's flag follows its latest record (a
    channel without records keeps its flag)."""
    if not incoming.records:
        return known
    records = tuple(sorted((*known.records, *incoming.records), key=lambda r: r.at))
    return consent_from(records, base=known)


def consent_from(records: Sequence[ConsentRecord], *, base: Consent | None = None) -> Consent:
    base = base or Consent()
    flags = {"email": base.email, "sms": base.sms, "phone": base.phone}
    for record in sorted(records, key=lambda r: r.at):
        flags[record.channel] = record.granted
    return Consent(**flags, records=tuple(records))


# --- cleaning a submission ------------------------------------------------------------------


def clean_text(raw: str | None) -> str | None:
    if raw is None:
        return None
    text = " ".join(raw.split())
    return text or None


def clean_submission(
    submission: Submission, *, lead_id: str, now: datetime, default_region: str
) -> NewLead | list[FieldError]:
    """The normalised lead of a submission, or every field that is wrong and why.

    `default_region` (the form's, the source's or the service's) reads phone numbers written
    without a country code, unless the submission names its own.
    """
    contact = normalise_contact(
        name=submission.name,
        phone=submission.phone,
        email=submission.email,
        timezone=submission.timezone,
        locale=submission.locale,
        default_region=submission.default_region or default_region,
    )
    if isinstance(contact, list):
        return contact
    at = submission.received_at or now
    return NewLead(
        lead_id=lead_id,
        contact=contact,
        attribution=attribution_of(submission),
        consent=consent_of(submission, at),
        profile=profile_of(submission),
        message=submission.message.strip() or None if submission.message else None,
        received_at=at,
        is_test=submission.is_test,
        external_id=submission.external_id,
    )


def region_for(
    submission: Submission, sources: Mapping[str, SourceDefinition], fallback: str
) -> str:
    """Where a phone written without +<code> is read: the submission's own region (a
    form's goes there), else its source's (matched by id or name), else `fallback`."""
    if submission.default_region:
        return submission.default_region
    wanted = submission.source.strip().casefold()
    for source in sources.values():
        if source.default_region and wanted in {
            source.source_id.casefold(),
            source.name.casefold(),
        }:
            return source.default_region
    return fallback


def attribution_of(submission: Submission) -> Attribution:
    utm = submission.utm
    return Attribution(
        source=clean_text(submission.source) or "website",
        channel=submission.channel,
        campaign=clean_text(submission.campaign or utm.campaign),
        campaign_id=submission.campaign_id,
        utm_source=utm.source,
        utm_medium=utm.medium,
        utm_campaign=utm.campaign,
        utm_term=utm.term,
        utm_content=utm.content,
        referrer=submission.referrer,
        landing_page=submission.landing_page,
        form_id=submission.form_id,
        ad_platform=submission.ad_platform,
        ad_ids=dict(submission.ad_ids),
    )


def consent_of(submission: Submission, at: datetime) -> Consent:
    """Flags become records stamped with the submission's time, source and wording."""
    given = submission.consent
    source = submission.form_id or submission.source
    records = [
        ConsentRecord(channel=channel, granted=granted, at=at, source=source, wording=given.wording)
        for channel, granted in (("email", given.email), ("sms", given.sms), ("phone", given.phone))
        if granted is not None
    ]
    records.extend(
        ConsentRecord(
            channel=r.channel,
            granted=r.granted,
            at=r.at or at,
            source=r.source or source,
            wording=r.wording or given.wording,
        )
        for r in given.records
    )
    return consent_from(records)


def profile_of(submission: Submission) -> Profile:
    given = submission.profile
    return Profile(
        industry=clean_text(given.industry),
        region=clean_text(given.region),
        country=given.country.upper() if given.country else None,
        product_line=clean_text(given.product_line),
        company_size=given.company_size,
        company=clean_text(given.company),
        postal_code=clean_text(given.postal_code),
        language=given.language,
        custom={
            label: value
            for raw_label, raw_value in given.custom.items()
            if (label := clean_text(raw_label)) and (value := clean_text(raw_value))
        },
    )


# --- fit against the ideal-customer profile ------------------------------------------------


class FitWeights(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    industry: int = Field(default=30, ge=0, le=100)
    company_size: int = Field(default=25, ge=0, le=100)
    region: int = Field(default=20, ge=0, le=100)
    source: int = Field(default=10, ge=0, le=100)
    completeness: int = Field(default=15, ge=0, le=100)


class IdealCustomerProfile(BaseModel):
    """Who the business sells to best. A criterion left empty is not scored (its weight
    does not count); completeness is always scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    industries: list[Annotated[str, Field(min_length=1, max_length=200)]] = []
    company_size_min: int | None = Field(default=None, ge=0)
    company_size_max: int | None = Field(default=None, ge=0)
    regions: list[Annotated[str, Field(min_length=1, max_length=200)]] = []
    """Matched against the lead's region and its country."""
    sources: list[Annotated[str, Field(min_length=1, max_length=200)]] = []
    weights: FitWeights = FitWeights()
    grade_a: int = Field(default=75, ge=0, le=100)
    grade_b: int = Field(default=50, ge=0, le=100)
    grade_c: int = Field(default=25, ge=0, le=100)


COMPLETENESS_FIELDS = ("name", "phone", "email", "company", "industry", "company_size", "region")


def score_fit(
    contact: Contact, profile: Profile, attribution: Attribution, icp: IdealCustomerProfile
) -> FitScore:
    """0-100 against `icp`, its grade, and the points each factor gave."""
    w = icp.weights
    factors: dict[str, int] = {}
    possible = 0

    def criterion(name: str, weight: int, applies: bool, matches: bool) -> None:
        nonlocal possible
        if applies and weight:
            possible += weight
            factors[name] = weight if matches else 0

    def folded(values: Sequence[str]) -> set[str]:
        return {v.casefold() for v in values}

    industry = (profile.industry or "").casefold()
    criterion("industry", w.industry, bool(icp.industries), industry in folded(icp.industries))
    size = profile.company_size
    bounded = icp.company_size_min is not None or icp.company_size_max is not None
    criterion(
        "company_size",
        w.company_size,
        bounded,
        size is not None
        and (icp.company_size_min is None or size >= icp.company_size_min)
        and (icp.company_size_max is None or size <= icp.company_size_max),
    )
    places = {(profile.region or "").casefold(), (profile.country or "").casefold()} - {""}
    criterion("region", w.region, bool(icp.regions), bool(places & folded(icp.regions)))
    source = attribution.source.casefold()
    criterion("source", w.source, bool(icp.sources), source in folded(icp.sources))
    if w.completeness:
        values = {**contact.model_dump(), **profile.model_dump()}
        present = sum(1 for name in COMPLETENESS_FIELDS if values.get(name) not in (None, ""))
        possible += w.completeness
        factors["completeness"] = round(w.completeness * present / len(COMPLETENESS_FIELDS))
    score = round(100 * sum(factors.values()) / possible) if possible else 0
    return FitScore(score=score, grade=grade_of(score, icp), factors=factors)


def grade_of(score: int, icp: IdealCustomerProfile) -> FitGrade:
    if score >= icp.grade_a:
        return "A"
    if score >= icp.grade_b:
        return "B"
    if score >= icp.grade_c:
        return "C"
    return "D"


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
    is_test: bool = False
    external_id: str | None = None


Outcome = Literal["received", "merged", "duplicate"]


@dataclass(frozen=True, slots=True)
class Acceptance:
    """What became of one posted lead: a new lead, an inquiry merged into a known one, or a
    submission seen before (same `external_id`: nothing changed)."""

    lead_id: str
    outcome: Outcome
    matched_on: ContactKind | None = None


class LeadRejected(Exception):  # noqa: N818 - a refused lead, named like the other outcomes
    """One lead of a batch cannot be accepted; the others are."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KnownLead:
    """What a merge needs of a lead stored before this batch."""

    contact: Contact
    profile: Profile = field(default_factory=Profile)
    consent: Consent = field(default_factory=Consent)


@dataclass(frozen=True, slots=True)
class Inquiry:
    """One inquiry in a lead's history: when, how and what was said."""

    at: datetime
    channel: str
    source: str
    campaign: str | None = None
    form_id: str | None = None
    message: str | None = None


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
    history: tuple[Inquiry, ...] = ()
    fit: FitScore | None = None
    is_test: bool = False


@dataclass(frozen=True, slots=True)
class LeadMerge:
    """Repeat inquiries folded into a lead stored before this batch."""

    lead_id: str
    contact: Contact
    inquiries: int
    """How many inquiries this batch adds."""
    last_inquiry_at: datetime
    profile: Profile | None = None
    consent: Consent | None = None
    history: tuple[Inquiry, ...] = ()
    """The inquiries this batch adds, to append to the lead's history."""


@dataclass(frozen=True, slots=True)
class AcceptancePlan:
    """Everything a batch of leads changes, decided before anything is written."""

    outcomes: Sequence[Acceptance | LeadRejected] = ()
    """What became of each lead of the batch, in order."""
    new_leads: Sequence[LeadRecord] = ()
    merges: Sequence[LeadMerge] = ()
    new_keys: Mapping[ContactKey, str] = field(default_factory=dict)
    """Contact keys to add to the directory, each with the lead it identifies."""
    new_external_ids: Mapping[str, str] = field(default_factory=dict)
    """Channels' submission ids seen for the first time, each with the lead it went to."""
    events: Sequence[Event] = ()


def plan_acceptance(
    leads: Sequence[NewLead],
    owners: Mapping[ContactKey, str],
    known_leads: Mapping[str, KnownLead],
    *,
    seen_external_ids: Mapping[str, str] | None = None,
    icp: IdealCustomerProfile | None = None,
) -> AcceptancePlan:
    """Decide, in order, what each lead of a batch becomes.

    `owners` maps every contact key of the batch that is already in the directory to its
    lead; `known_leads` gives those leads. A lead whose `external_id` was seen before is a
    duplicate and changes nothing. A lead whose phone (first) or email is known merges into
    that lead; otherwise it is new (scored against `icp`) and its keys identify it, so a
    later lead of the same batch with the same phone or email merges into it. A merge fills
    in missing details and claims their keys unless another lead already has them.
    """
    owner_of = dict(owners)
    known = dict(known_leads)
    seen = dict(seen_external_ids or {})
    new: dict[str, LeadRecord] = {}
    merges: dict[str, LeadMerge] = {}
    new_keys: dict[ContactKey, str] = {}
    new_external: dict[str, str] = {}
    outcomes: list[Acceptance | LeadRejected] = []
    events: list[Event] = []
    for lead in leads:
        if lead.external_id is not None and lead.external_id in seen:
            outcomes.append(Acceptance(seen[lead.external_id], "duplicate"))
            continue
        keys = contact_keys(lead.contact)
        if not keys:
            outcomes.append(LeadRejected("phone", NEEDS_CONTACT))
            continue
        match = next(((key, owner_of[key]) for key in keys if key in owner_of), None)
        if match is None:
            target = lead.lead_id
            for key in keys:
                owner_of[key] = new_keys[key] = target
            known[target] = KnownLead(lead.contact, lead.profile, lead.consent)
            fit = (
                None
                if icp is None
                else score_fit(lead.contact, lead.profile, lead.attribution, icp)
            )
            new[target] = first_inquiry(lead, fit)
            events.append(lead_received(lead, fit))
            outcomes.append(Acceptance(target, "received"))
        else:
            (matched_on, _), target = match
            # A key without its lead would be a broken directory; the inquiry still merges.
            before = known.get(target, KnownLead(Contact()))
            after = KnownLead(
                merge_contact(before.contact, lead.contact),
                merge_profile(before.profile, lead.profile),
                merge_consent(before.consent, lead.consent),
            )
            # The details the merge added identify the lead too (its own keys are stored).
            for key in contact_keys(after.contact):
                if key not in owner_of and key not in contact_keys(before.contact):
                    owner_of[key] = new_keys[key] = target
            known[target] = after
            if target in new:
                new[target] = repeat_inquiry(new[target], lead, after)
            else:
                merges[target] = merge_inquiry(merges.get(target), target, lead, after)
            events.append(lead_merged(lead, target, after, matched_on))
            outcomes.append(Acceptance(target, "merged", matched_on))
        if lead.external_id is not None:
            seen[lead.external_id] = new_external[lead.external_id] = target
    return AcceptancePlan(
        outcomes=outcomes,
        new_leads=list(new.values()),
        merges=list(merges.values()),
        new_keys=new_keys,
        new_external_ids=new_external,
        events=events,
    )


def inquiry_of(lead: NewLead) -> Inquiry:
    return Inquiry(
        at=lead.received_at,
        channel=lead.attribution.channel,
        source=lead.attribution.source,
        campaign=lead.attribution.campaign,
        form_id=lead.attribution.form_id,
        message=lead.message,
    )


def first_inquiry(lead: NewLead, fit: FitScore | None = None) -> LeadRecord:
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
        history=(inquiry_of(lead),),
        fit=fit,
        is_test=lead.is_test,
    )


def repeat_inquiry(record: LeadRecord, lead: NewLead, merged: KnownLead) -> LeadRecord:
    return replace(
        record,
        contact=merged.contact,
        profile=merged.profile,
        consent=merged.consent,
        inquiries=record.inquiries + 1,
        last_inquiry_at=max(record.last_inquiry_at, lead.received_at),
        history=(*record.history, inquiry_of(lead)),
    )


def merge_inquiry(
    earlier: LeadMerge | None, lead_id: str, lead: NewLead, merged: KnownLead
) -> LeadMerge:
    at = lead.received_at
    return LeadMerge(
        lead_id,
        merged.contact,
        inquiries=1 if earlier is None else earlier.inquiries + 1,
        last_inquiry_at=at if earlier is None else max(earlier.last_inquiry_at, at),
        profile=merged.profile,
        consent=merged.consent,
        history=(*(earlier.history if earlier else ()), inquiry_of(lead)),
    )


def lead_received(lead: NewLead, fit: FitScore | None = None) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead.lead_id,
        occurred_at=lead.received_at,
        contact=lead.contact,
        attribution=lead.attribution,
        consent=lead.consent,
        profile=lead.profile,
        message=lead.message,
        fit=fit,
        fit_score=None if fit is None else fit.score,
        is_test=lead.is_test,
    )


def lead_merged(
    lead: NewLead, into: str, merged: KnownLead, matched_on: ContactKind
) -> LeadMergedV1:
    return LeadMergedV1(
        lead_id=into,
        occurred_at=lead.received_at,
        contact=merged.contact,
        attribution=lead.attribution,
        matched_on=matched_on,
        message=lead.message,
        consent=merged.consent,
        profile=merged.profile,
        is_test=lead.is_test,
    )


# --- HTML form posts -------------------------------------------------------------------------

DIRECT_FORM_FIELDS = frozenset(
    {"name", "phone", "email", "message", "timezone", "locale", "referrer", "landing_page"}
)
PROFILE_FIELDS = frozenset(
    {"industry", "region", "country", "postal_code", "company", "company_size", "product_line"}
    | {"language"}
)
UTM_FIELDS = frozenset({"source", "medium", "campaign", "term", "content"})
CONSENT_FIELDS = frozenset({"email", "sms", "phone"})
CHECKED = frozenset({"on", "true", "yes", "1", "y", "checked"})


def is_spam(form: FormDefinition, fields: Mapping[str, str]) -> bool:
    """A person never fills the hidden honeypot field; a bot filling every field does."""
    return bool(form.honeypot_field and fields.get(form.honeypot_field, "").strip())


def form_submission(
    form: FormDefinition, fields: Mapping[str, str], *, referrer: str | None
) -> dict[str, Any]:
    """The submission document a form post maps to (validated as `Submission` after).

    Each posted field goes where the form's mapping says; unmapped fields go to the
    submission field of the same name ("utm_source" to utm.source, "company" to the
    profile), anything else to a custom answer under its name. Empty values are dropped.
    """
    document: dict[str, Any] = {
        "source": form.source,
        "channel": "web_form",
        "form_id": form.form_key,
        "campaign": form.campaign,
        "referrer": referrer,
        "default_region": form.default_region,
    }
    profile: dict[str, Any] = {}
    custom: dict[str, str] = {}
    utm: dict[str, str] = {}
    consent: dict[str, Any] = {}
    for name, raw in fields.items():
        value = raw.strip()
        if not value or name == form.honeypot_field or name.startswith("_"):
            continue
        target = form.fields.get(name) or default_target(name)
        section, _, key = target.partition(".")
        if target == "ignore":
            continue
        if target in DIRECT_FORM_FIELDS:
            document[target] = value
        elif section == "profile" and key:
            profile[key] = value
        elif section == "utm" and key:
            utm[key] = value
        elif section == "consent" and key:
            consent[key] = value.lower() in CHECKED
        else:
            custom[key if section == "custom" and key else name] = value
    if custom:
        profile["custom"] = custom
    if consent:
        consent["wording"] = form.consent_wording
    document.update(profile=profile, utm=utm, consent=consent)
    return {k: v for k, v in document.items() if v is not None}


def default_target(name: str) -> str:
    if name in DIRECT_FORM_FIELDS:
        return name
    if name in PROFILE_FIELDS:
        return f"profile.{name}"
    prefix, _, rest = name.partition("_")
    if prefix == "utm" and rest in UTM_FIELDS:
        return f"utm.{rest}"
    if prefix == "consent" and rest in CONSENT_FIELDS:
        return f"consent.{rest}"
    return f"custom.{name}"
