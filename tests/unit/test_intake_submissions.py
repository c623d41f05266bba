"""Intake's submissions end to end on the in-memory store: cleaning, consent, the fit score,
form mapping, the batch entry point, idempotent requests and cached configuration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.intake.models import (
    CampaignDefinition,
    ConsentGiven,
    ConsentIn,
    FormDefinition,
    ProfileIn,
    SourceDefinition,
    Submission,
    Utm,
)
from services.intake.rules import (
    FieldError,
    IdealCustomerProfile,
    NewLead,
    clean_submission,
    form_submission,
    is_spam,
    merge_consent,
    score_fit,
)
from services.intake.usecases import (
    AcceptLeads,
    AcceptSubmissions,
    Answer,
    Configuration,
    IdempotencyKeyReused,
    IdempotentRequests,
    ItemResult,
    accept_documents,
)
from shared.events import (
    Attribution,
    CampaignSavedV1,
    Consent,
    ConsentRecord,
    Contact,
    LeadMergedV1,
    LeadReceivedV1,
    Profile,
)
from tests.fakes.intake import InMemoryIntakeStore

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def clean(submission: Submission, region: str = "US") -> NewLead:
    lead = clean_submission(submission, lead_id="l1", now=NOW, default_region=region)
    assert isinstance(lead, NewLead), lead
    return lead


# --- cleaning ------------------------------------------------------------------------------


def test_a_submission_is_cleaned_with_its_attribution_consent_and_profile() -> None:
    lead = clean(
        Submission(
            name="  Kim   Min-ji ",
            phone="010-1234-5678",
            email="Min@Example.COM",
            source=" friend  referral ",
            channel="referral",
            utm=Utm(source="naver", campaign="spring"),
            landing_page="https://example.com/trial",
            form_id="f1",
            consent=ConsentIn(email=True, sms=False, wording="Send me offers"),
            profile=ProfileIn(country="kr", custom={" 意向程度 ": " 高 ", "empty": " "}),
            message="  ",
        ),
        region="KR",
    )
    assert lead.contact == Contact(
        name="Kim Min-ji", phone="+821012345678", email="min@example.com"
    )
    assert lead.attribution.source == "friend referral"
    assert lead.attribution.campaign == "spring"  # from the UTM when not given
    assert lead.attribution.landing_page == "https://example.com/trial"
    assert lead.profile.country == "KR"
    assert lead.profile.custom == {"意向程度": "高"}
    assert lead.message is None
    assert (lead.consent.email, lead.consent.sms, lead.consent.phone) == (True, False, True)
    assert lead.consent.records == (
        ConsentRecord(channel="email", granted=True, at=NOW, source="f1", wording="Send me offers"),
        ConsentRecord(channel="sms", granted=False, at=NOW, source="f1", wording="Send me offers"),
    )


def test_the_submissions_own_region_and_time_win() -> None:
    at = NOW - timedelta(hours=3)
    lead = clean(Submission(phone="010-1234-5678", default_region="KR", received_at=at))
    assert lead.contact.phone == "+821012345678"
    assert lead.received_at == at


def test_every_bad_contact_field_is_named() -> None:
    assert clean_submission(
        Submission(phone="12", email="nope"), lead_id="l", now=NOW, default_region="US"
    ) == [
        FieldError("phone", "not a valid phone number for its country"),
        FieldError("email", "An email address must have an @-sign."),
    ]


def test_the_latest_consent_record_of_a_channel_decides() -> None:
    earlier = Consent(
        email=True,
        records=(ConsentRecord(channel="email", granted=True, at=NOW, source="form"),),
    )
    withdrawn = ConsentRecord(channel="email", granted=False, at=NOW + timedelta(1), source="desk")
    merged = merge_consent(earlier, Consent(records=(withdrawn,)))
    assert merged.email is False
    assert [r.source for r in merged.records] == ["form", "desk"]
    stale = ConsentRecord(channel="email", granted=True, at=NOW - timedelta(1), source="import")
    assert merge_consent(merged, Consent(records=(stale,))).email is False


def test_consent_records_keep_their_own_time_and_source() -> None:
    given = ConsentGiven(channel="sms", at=NOW - timedelta(days=2), source="paper form")
    lead = clean(Submission(phone="+14155550100", consent=ConsentIn(records=[given])))
    assert lead.consent.sms is True
    assert lead.consent.records[0].at == NOW - timedelta(days=2)
    assert lead.consent.records[0].source == "paper form"


# --- fit score -----------------------------------------------------------------------------

ICP = IdealCustomerProfile(
    industries=["Fitness"],
    company_size_min=10,
    company_size_max=200,
    regions=["KR", "west"],
    sources=["homepage"],
)
FULL = Contact(name="A", phone="+14155550100", email="a@example.com")


def test_a_lead_matching_every_criterion_scores_100_grade_a() -> None:
    profile = Profile(industry="fitness", company_size=40, country="KR", region="x", company="C")
    fit = score_fit(FULL, profile, Attribution(source="homepage", channel="web_form"), ICP)
    assert fit.score == 100
    assert fit.grade == "A"
    assert fit.factors == {
        "industry": 30,
        "company_size": 25,
        "region": 20,
        "source": 10,
        "completeness": 15,
    }


def test_missed_criteria_lower_the_grade() -> None:
    profile = Profile(industry="retail", company_size=5000, region="west")
    fit = score_fit(FULL, profile, Attribution(source="flyer", channel="walk_in"), ICP)
    assert fit.factors["industry"] == fit.factors["company_size"] == fit.factors["source"] == 0
    assert fit.factors["region"] == 20
    assert fit.grade == "C"
    assert 25 <= fit.score < 50


def test_an_empty_profile_scores_completeness_only() -> None:
    fit = score_fit(
        Contact(phone="+14155550100"),
        Profile(),
        Attribution(source="x", channel="phone"),
        IdealCustomerProfile(),
    )
    assert fit.factors == {"completeness": 2}
    assert fit.score == 13
    assert fit.grade == "D"


# --- forms ---------------------------------------------------------------------------------

FORM = FormDefinition(
    form_key="f_1",
    name="Trial",
    allowed_origins=["https://example.com"],
    honeypot_field="website",
    fields={"full_name": "name", "tel": "phone", "size": "profile.company_size", "x": "ignore"},
    source="homepage",
    campaign="spring",
    consent_wording="Texts ok",
    default_region="KR",
)


def test_a_form_post_maps_to_a_submission() -> None:
    document = form_submission(
        FORM,
        {
            "full_name": "Kim",
            "tel": "010-1234-5678",
            "size": "40",
            "x": "dropped",
            "industry": "fitness",
            "utm_source": "naver",
            "consent_sms": "on",
            "consent_email": "",
            "企业规模": "50-100",
            "_csrf": "t",
            "website": "",
        },
        referrer="https://example.com/p",
    )
    submission = Submission.model_validate(document)
    assert submission.name == "Kim"
    assert submission.phone == "010-1234-5678"
    assert submission.default_region == "KR"
    assert submission.form_id == "f_1"
    assert (submission.source, submission.campaign) == ("homepage", "spring")
    assert submission.referrer == "https://example.com/p"
    assert submission.profile.company_size == 40
    assert submission.profile.industry == "fitness"
    assert submission.profile.custom == {"企业规模": "50-100"}
    assert submission.utm.source == "naver"
    assert submission.consent == ConsentIn(sms=True, wording="Texts ok")


def test_the_honeypot_tells_spam() -> None:
    assert is_spam(FORM, {"website": "http://spam"})
    assert not is_spam(FORM, {"website": " "})
    assert not is_spam(FORM.model_copy(update={"honeypot_field": None}), {"website": "x"})


# --- the batch entry point -----------------------------------------------------------------


def accept_submissions(
    store: InMemoryIntakeStore, icp: IdealCustomerProfile = ICP
) -> AcceptSubmissions:
    async def current_icp() -> IdealCustomerProfile:
        return icp

    return AcceptSubmissions(
        AcceptLeads(store, icp=current_icp), default_region="US", clock=lambda: NOW
    )


async def test_each_submission_of_a_batch_gets_its_own_result() -> None:
    store = InMemoryIntakeStore()
    accept = accept_submissions(store)
    results = await accept(
        [
            Submission(phone="+14155550100", external_id="meta:1", source="homepage"),
            Submission(phone="12"),
            Submission(phone="(415) 555-0100", email="dana@example.com"),
            Submission(email="lee@example.com", external_id="meta:1"),
        ]
    )
    first = results[0].lead_id
    assert results == [
        ItemResult(0, "created", first),
        ItemResult(
            1, "rejected", errors=(FieldError("phone", "not a valid phone number for its country"),)
        ),
        ItemResult(2, "merged", first, "phone"),
        ItemResult(3, "duplicate", first),
    ]
    # Later, in another batch: the external id is still known, the email now too.
    again = await accept(
        [
            Submission(email="DANA@example.com"),
            Submission(phone="+1 415 555 0199", external_id="meta:1"),
        ]
    )
    assert again == [ItemResult(0, "merged", first, "email"), ItemResult(1, "duplicate", first)]
    received = [e for e in store.ledger.outbox if isinstance(e, LeadReceivedV1)]
    assert len(received) == 1
    assert received[0].fit is not None
    assert received[0].fit_score == received[0].fit.score
    merged = [e for e in store.ledger.outbox if isinstance(e, LeadMergedV1)]
    assert [m.matched_on for m in merged] == ["phone", "email"]
    assert merged[0].contact.email == "dana@example.com"


async def test_a_repeat_with_another_email_keeps_the_known_one_and_claims_nothing() -> None:
    store = InMemoryIntakeStore()
    accept = accept_submissions(store)
    [created] = await accept([Submission(phone="+14155550100", email="first@example.com")])
    [merged] = await accept([Submission(phone="+14155550100", email="second@example.com")])
    assert merged == ItemResult(0, "merged", created.lead_id, "phone")
    assert created.lead_id is not None
    assert (await store.get(created.lead_id) or {})["contact"]["email"] == "first@example.com"
    assert "email:second@example.com" not in store.tables.keys
    # The second address is free: a new inquiry from it alone is a new lead.
    [other] = await accept([Submission(email="second@example.com")])
    assert other.outcome == "created"


async def test_documents_that_are_not_submissions_are_rejected_naming_each_field() -> None:
    store = InMemoryIntakeStore()
    results = await accept_documents(
        accept_submissions(store),
        [
            {"phone": "+14155550100"},
            {"phone": "+14155550101", "channel": "carrier_pigeon", "profile": {"company_size": -1}},
            "not an object",
            {"email": "x@example.com"},
        ],
    )
    assert [(r.index, r.outcome) for r in results] == [
        (0, "created"),
        (1, "rejected"),
        (2, "rejected"),
        (3, "created"),
    ]
    assert {e.field for e in results[1].errors} == {"channel", "profile.company_size"}


async def test_more_than_a_thousand_go_in_several_transactions() -> None:
    store = InMemoryIntakeStore()
    submissions = [Submission(email=f"p{n}@example.com") for n in range(1001)]
    results = await accept_submissions(store)(submissions)
    assert [r.index for r in results] == list(range(1001))
    assert all(r.outcome == "created" for r in results)


# --- idempotent requests -------------------------------------------------------------------


async def test_concurrent_requests_with_one_key_are_handled_once() -> None:
    store = InMemoryIntakeStore()
    requests = IdempotentRequests(store, clock=lambda: NOW, poll_s=0.001)
    calls = 0

    async def handle() -> Answer:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return Answer(201, {"lead_id": "x"})

    answers = await asyncio.gather(*(requests.run("k:1", "f", handle) for _ in range(5)))
    assert calls == 1
    assert [a.replayed for a in answers].count(False) == 1
    assert {(a.status_code, a.body["lead_id"]) for a in answers} == {(201, "x")}
    with pytest.raises(IdempotencyKeyReused):
        await requests.run("k:1", "another body", handle)


async def test_a_failed_request_is_handled_again_when_retried() -> None:
    store = InMemoryIntakeStore()
    requests = IdempotentRequests(store, clock=lambda: NOW)

    async def fail() -> Answer:
        raise RuntimeError("database went away")

    async def succeed() -> Answer:
        return Answer(200, {"ok": True})

    with pytest.raises(RuntimeError):
        await requests.run("k:2", "f", fail)
    answer = await requests.run("k:2", "f", succeed)
    assert (answer.status_code, answer.replayed) == (200, False)


# --- configuration -------------------------------------------------------------------------


async def test_configuration_is_cached_until_it_changes() -> None:
    store = InMemoryIntakeStore()
    configuration = Configuration(store, max_age_s=3600)
    assert (await configuration.get()).forms == {}
    await configuration.save_form(FORM)
    assert await configuration.form("f_1") == FORM
    # Saved through another replica: a miss looks at the version again.
    await Configuration(store, max_age_s=3600).save_form(
        FORM.model_copy(update={"form_key": "f_2"})
    )
    assert await configuration.form("f_2") is not None
    assert await configuration.form("nope") is None


async def test_a_saved_campaign_is_published_keyed_by_the_campaign() -> None:
    store = InMemoryIntakeStore()
    configuration = Configuration(store, max_age_s=0)
    campaign = CampaignDefinition(campaign_id="spring", name="Spring", channel="meta", cost=99.5)
    await configuration.save_campaign(campaign, NOW)
    [event] = store.ledger.outbox
    assert isinstance(event, CampaignSavedV1)
    assert (event.lead_id, event.cost, event.occurred_at) == ("campaign:spring", 99.5, NOW)
    assert (await configuration.get()).campaigns == {"spring": campaign}


async def test_a_phone_is_read_in_its_sources_region_unless_the_submission_names_one() -> None:
    store = InMemoryIntakeStore()
    configuration = Configuration(store, max_age_s=0)
    await configuration.save_source(
        SourceDefinition(source_id="seoul-flyer", name="Seoul flyer", default_region="KR")
    )
    accept = AcceptSubmissions(
        AcceptLeads(store), default_region="US", clock=lambda: NOW, sources=configuration.sources
    )
    results = await accept(
        [
            Submission(phone="010-1234-5678", source="seoul flyer"),
            Submission(phone="(415) 555-0100", source="website"),
            Submission(phone="020 7946 0958", source="Seoul flyer", default_region="GB"),
        ]
    )
    assert [r.outcome for r in results] == ["created"] * 3
    phones = sorted(store.tables.keys)
    assert phones == ["phone:+14155550100", "phone:+442079460958", "phone:+821012345678"]


@pytest.mark.parametrize(
    ("origins", "redirect"),
    [
        (["https://x.example"], "https://x.example/\r\nSet-Cookie: a=b"),
        (["https://x.example"], "javascript:alert(1)"),
        (["https://x.example/path"], None),
        (["*"], None),
    ],
)
def test_a_form_takes_only_web_origins_and_an_http_redirect(
    origins: list[str], redirect: str | None
) -> None:
    with pytest.raises(ValidationError):
        FormDefinition(form_key="f", name="n", allowed_origins=origins, redirect_url=redirect)
