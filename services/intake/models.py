"""The one shape every intake channel maps its input to: a `Submission`.

The JSON API takes it as the body, form posts are mapped onto it through the form's field
mapping, and the ad-platform webhooks and CSV import (services/intake/webhooks*, imports*)
build it from their payloads. Values are raw here (a phone as typed, an email with capitals);
`rules.clean_submission` normalises them and names every field that is wrong.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.events import ConsentChannel, InquiryChannel

Text = Annotated[str, Field(min_length=1, max_length=200)]
LongText = Annotated[str, Field(max_length=2000)]
Region = Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")]
"""An ISO 3166-1 alpha-2 region ("US", "KR", "CN")."""

MAX_CUSTOM_FIELDS = 50


class Utm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Text | None = None
    medium: Text | None = None
    campaign: Text | None = None
    term: Text | None = None
    content: Text | None = None


class ConsentGiven(BaseModel):
    """One consent given (or refused) on one channel, as the person saw it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: ConsentChannel
    granted: bool = True
    at: AwareDatetime | None = None
    """When it was given; the submission's time when absent."""
    source: Text | None = None
    """Where it was given (a form id, "desk", "meta:<form>"); the submission's source if absent."""
    wording: LongText | None = None
    """The exact text shown next to the checkbox or read out on the phone."""


class ConsentIn(BaseModel):
    """Consent per channel: flags (as checkboxes post them) and/or full records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: bool | None = None
    sms: bool | None = None
    phone: bool | None = None
    wording: LongText | None = None
    """The wording behind the flags given above (one text for the whole form)."""
    records: Annotated[list[ConsentGiven], Field(max_length=20)] = []


class ProfileIn(BaseModel):
    """What the person told us about themselves; routing and the fit score read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    industry: Text | None = None
    region: Text | None = None
    country: Region | None = None
    postal_code: Annotated[str, Field(min_length=1, max_length=20)] | None = None
    company: Text | None = None
    company_size: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    """Employees."""
    product_line: Text | None = None
    """The product the person is interested in."""
    language: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    custom: Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=100)], LongText],
        Field(max_length=MAX_CUSTOM_FIELDS),
    ] = {}
    """Per-source questions by their label (seed 002: "意向程度", "企业规模")."""


class Submission(BaseModel):
    """One inquiry as a channel hands it to intake. A phone or an email is required."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "Dana Kim",
                    "phone": "+1 415 555 0100",
                    "email": "dana@example.com",
                    "source": "website",
                    "channel": "web_form",
                    "campaign": "spring-trial",
                    "utm": {"source": "google", "medium": "cpc"},
                    "landing_page": "https://example.com/trial",
                    "consent": {"email": True, "sms": False, "wording": "Send me offers"},
                    "profile": {"industry": "fitness", "region": "west", "company_size": 40},
                }
            ]
        },
    )

    name: Text | None = None
    phone: Annotated[str, Field(max_length=40)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    timezone: Annotated[str, Field(max_length=64)] | None = None
    locale: Annotated[str, Field(max_length=16)] | None = None

    source: Text = "website"
    """A built-in or custom source ("friend referral", "promotion", "meta", "csv:<file>")."""
    channel: InquiryChannel = "web_form"
    campaign: Text | None = None
    campaign_id: Text | None = None
    utm: Utm = Utm()
    referrer: LongText | None = None
    landing_page: LongText | None = None
    form_id: Text | None = None
    ad_platform: Literal["meta", "google"] | None = None
    ad_ids: Annotated[
        dict[Annotated[str, Field(max_length=50)], Annotated[str, Field(max_length=200)]],
        Field(max_length=20),
    ] = {}
    """Platform ids as strings: leadgen_id, ad_id, adset_id, campaign_id, gcl_id, ..."""

    consent: ConsentIn = ConsentIn()
    profile: ProfileIn = ProfileIn()
    message: Annotated[str, Field(max_length=4000)] | None = None
    """What the person wrote, or the desk's consultation note."""
    is_test: bool = False
    """A platform's test lead: stored and published marked as test (kept out of reports)."""
    received_at: AwareDatetime | None = None
    """When the person submitted (an ad platform's submit time); now when absent."""
    default_region: Region | None = None
    """Region for phone numbers written without +<country code>; the service's when absent."""
    external_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """A channel's own id of this submission ("meta:<leadgen_id>", "google:<lead_id>",
    "csv:<file>:<line>"): a second submission with the same id is a `duplicate`, not a
    second inquiry, however long after the first it comes."""


# --- configuration managed through the API ---------------------------------------------------

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Origin = Annotated[str, Field(max_length=200, pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$")]
"""A web origin: scheme, host and port, as browsers send it in `Origin`."""
RedirectUrl = Annotated[str, Field(max_length=2000, pattern=r"^https?://[^\s]+$")]


class CampaignDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign_id: Identifier
    name: Text
    channel: Text
    """Where it runs: "meta", "google", "flyer", "banner", "blog", ..."""
    cost: float = Field(default=0, ge=0, allow_inf_nan=False)
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    starts_on: date | None = None
    ends_on: date | None = None


class SourceDefinition(BaseModel):
    """A custom source ("friend referral", "promotion"): a name reports group leads by."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_id: Identifier
    name: Text
    channel: InquiryChannel | None = None
    """The channel its leads usually arrive on, if it has one."""
    default_region: Region | None = None


FORM_TARGETS = (
    "name, phone, email, message, timezone, locale, referrer, landing_page, "
    "profile.<industry|region|country|postal_code|company|company_size|product_line|language>, "
    "utm.<source|medium|campaign|term|content>, consent.<email|sms|phone>, custom.<label>, ignore"
)


class FormDefinition(BaseModel):
    """An HTML form posting to `POST /v1/forms/{form_key}/submissions`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    form_key: Identifier
    """Public (it is in the page's HTML); it identifies the form, it is not a secret."""
    name: Text
    allowed_origins: Annotated[list[Origin], Field(max_length=50)]
    """Origins whose pages may post (CORS is answered for these only), e.g.
    "https://www.example.com"."""
    redirect_url: RedirectUrl | None = None
    """Where the browser goes after posting (303); without one the answer is 202 JSON."""
    honeypot_field: Annotated[str, Field(max_length=100)] | None = None
    """A field hidden from people: a post that fills it is spam."""
    default_region: Region | None = None
    fields: Annotated[
        dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=120)]],
        Field(max_length=100),
    ] = {}
    """Posted field name -> where it goes (see FORM_TARGETS); a field not listed goes to
    the submission field of the same name, or else to a custom answer under its name."""
    source: Text = "website"
    campaign: Text | None = None
    consent_wording: LongText | None = None
    """The consent text shown on the form, stored with each consent it collects."""
