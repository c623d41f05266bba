"""The channel store contract (opt-outs, delivery statuses, engagements, SMS recipients),
on MongoDB and in memory, driven through the channel use cases."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest

from services.nurture.channels.bounces import HardBounce
from services.nurture.channels.rules import InboundIntent, SmsRecipient
from services.nurture.channels.store import ChannelStore, MongoChannelStore
from services.nurture.channels.tokens import LinkClaims, TokenKind
from services.nurture.channels.usecases import (
    ChannelFeedback,
    InboundSms,
    SmsStatusReport,
    UnknownStatusError,
)
from shared.events import (
    Channel,
    EngagementRecordedV1,
    Event,
    LeadOptedInV1,
    LeadOptedOutV1,
    MessageStatusUpdatedV1,
)
from shared.topics import EVENT_ON
from tests.contract.conftest import NOW, STORE_KINDS, mongo_parts
from tests.fakes.nurture_channels import InMemoryChannelStore

PHONE = "+821012345678"


@dataclass
class Subject:
    store: ChannelStore
    outbox: Callable[[], Awaitable[list[Event]]]


@pytest.fixture(params=STORE_KINDS)
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        memory = InMemoryChannelStore()

        async def in_memory() -> list[Event]:
            return list(memory.ledger.outbox)

        yield Subject(memory, in_memory)
        return
    async with mongo_parts(request) as parts:
        mongo = MongoChannelStore(parts.database, parts.ledger)
        await mongo.ensure_indexes()

        async def in_mongo() -> list[Event]:
            return [
                EVENT_ON[record.topic].model_validate_json(record.payload)
                for record in await parts.ledger.pending(10_000)
            ]

        yield Subject(mongo, in_mongo)


def feedback(store: ChannelStore, minutes: int = 0) -> ChannelFeedback:
    return ChannelFeedback(store, clock=lambda: NOW + timedelta(minutes=minutes))


def claims(kind: TokenKind, lead_id: str = "lead-1", **extra: object) -> LinkClaims:
    return LinkClaims(
        kind=kind,
        lead_id=lead_id,
        message_id=str(extra.get("message_id", "m-1")),
        channel="sms" if kind is TokenKind.SMS_STATUS else "email",
        sequence_id="seq",
        step=0,
        url=extra.get("url"),  # type: ignore[arg-type]
    )


async def test_one_click_unsubscribe_opts_out_of_email_only_and_once(subject: Subject) -> None:
    channels = feedback(subject.store)
    assert await channels.unsubscribe_email(claims(TokenKind.UNSUBSCRIBE))
    assert not await channels.unsubscribe_email(claims(TokenKind.UNSUBSCRIBE))  # again: no-op
    assert await subject.store.opted_out_channels(["lead-1", "lead-2"]) == {
        "lead-1": frozenset({"email"})
    }
    [event] = await subject.outbox()
    assert isinstance(event, LeadOptedOutV1)
    assert (event.lead_id, event.channel, event.reason, event.sequence_id) == (
        "lead-1",
        "email",
        "one_click",
        "seq",
    )


async def test_stop_opts_the_number_and_its_lead_out_of_sms_only(subject: Subject) -> None:
    channels = feedback(subject.store)
    await channels.remember_sms_recipients([SmsRecipient(PHONE, "lead-1", NOW, "m-1")])
    stop = await channels.inbound_sms(InboundSms("SM1", PHONE, "stop"))
    assert (stop.intent, stop.lead_id, stop.changed) == (InboundIntent.OPT_OUT, "lead-1", True)
    assert await subject.store.opted_out_channels(["lead-1"]) == {"lead-1": frozenset({"sms"})}
    assert await subject.store.opted_out_phones([PHONE, "+821000000000"]) == {PHONE}
    again = await channels.inbound_sms(InboundSms("SM2", PHONE, "STOP"))
    assert not again.changed
    events = await subject.outbox()
    assert [(type(e), e.lead_id) for e in events] == [(LeadOptedOutV1, "lead-1")]

    start = await channels.inbound_sms(InboundSms("SM3", PHONE, "Start"))
    assert (start.intent, start.changed) == (InboundIntent.OPT_IN, True)
    assert await subject.store.opted_out_channels(["lead-1"]) == {}
    assert await subject.store.opted_out_phones([PHONE]) == set()
    # Nurture learned the STOP from its event: it learns the START the same way, once.
    assert not (await channels.inbound_sms(InboundSms("SM4", PHONE, "yes"))).changed
    *_, opted_in = await subject.outbox()
    assert isinstance(opted_in, LeadOptedInV1)
    assert (opted_in.lead_id, opted_in.channel, opted_in.reason) == (
        "lead-1",
        "sms",
        "sms_keyword",
    )
    assert [type(e) for e in await subject.outbox()] == [LeadOptedOutV1, LeadOptedInV1]


async def test_an_email_unsubscribe_and_an_sms_stop_are_independent(subject: Subject) -> None:
    channels = feedback(subject.store)
    both: list[tuple[str, Channel]] = [("both", "email"), ("both", "sms"), ("other", "sms")]
    await channels.remember_sms_recipients([SmsRecipient(PHONE, "both", NOW)])
    await channels.unsubscribe_email(claims(TokenKind.UNSUBSCRIBE, "both"))
    await channels.inbound_sms(InboundSms("SM9", PHONE, "START"))  # opting in SMS ...
    assert await subject.store.opted_out_channels(["both"]) == {"both": frozenset({"email"})}
    assert await subject.store.opted_out_of(both) == {("both", "email")}
    await channels.inbound_sms(InboundSms("SM10", PHONE, "STOP"))
    await channels.opt_out("both", "email", "one_click", opted_out=False)
    assert await subject.store.opted_out_channels(["both"]) == {"both": frozenset({"sms"})}
    assert await subject.store.opted_out_of(both) == {("both", "sms")}
    assert await subject.store.opted_out_of([("both", "email")]) == set()


async def test_stop_from_an_unknown_number_blocks_the_number(subject: Subject) -> None:
    outcome = await feedback(subject.store).inbound_sms(InboundSms("SMx", PHONE, "STOP"))
    assert (outcome.lead_id, outcome.changed) == (None, True)
    assert await subject.store.opted_out_phones([PHONE]) == {PHONE}
    assert await subject.outbox() == []  # no lead to name in an event


async def test_a_reply_is_an_engagement_once_per_inbound_message(subject: Subject) -> None:
    channels = feedback(subject.store)
    await channels.remember_sms_recipients([SmsRecipient(PHONE, "lead-r", NOW, "m-7")])
    first = await channels.inbound_sms(InboundSms("SMr", PHONE, "Saturday works for me"))
    redelivered = await channels.inbound_sms(InboundSms("SMr", PHONE, "Saturday works for me"))
    assert (first.intent, first.changed, redelivered.changed) == (InboundIntent.REPLY, True, False)
    [reply] = await subject.store.engagements(["lead-r"])
    assert (reply.kind, reply.channel, reply.message_id) == ("reply", "sms", "m-7")
    [event] = await subject.outbox()
    assert isinstance(event, EngagementRecordedV1) and event.kind == "reply"


async def test_help_changes_nothing(subject: Subject) -> None:
    channels = feedback(subject.store)
    await channels.remember_sms_recipients([SmsRecipient(PHONE, "lead-h", NOW)])
    outcome = await channels.inbound_sms(InboundSms("SMh", PHONE, "HELP"))
    assert (outcome.intent, outcome.lead_id, outcome.changed) == (
        InboundIntent.HELP,
        "lead-h",
        False,
    )
    assert await subject.store.engagements(["lead-h"]) == []
    assert await subject.outbox() == []


async def test_the_number_belongs_to_the_lead_texted_last(subject: Subject) -> None:
    channels = feedback(subject.store)
    await channels.remember_sms_recipients(
        [SmsRecipient(PHONE, "newer", NOW + timedelta(hours=1)), SmsRecipient(PHONE, "older", NOW)]
    )
    await channels.remember_sms_recipients([SmsRecipient(PHONE, "stale", NOW)])
    outcome = await channels.inbound_sms(InboundSms("SMn", PHONE, "hi"))
    assert outcome.lead_id == "newer"


async def test_replicas_remembering_one_number_at_once_leave_the_newest(
    subject: Subject,
) -> None:
    channels = feedback(subject.store)
    texted = [SmsRecipient(PHONE, f"lead-{n}", NOW + timedelta(minutes=n)) for n in range(5)]
    await asyncio.gather(*(channels.remember_sms_recipients([r]) for r in reversed(texted)))
    assert (await channels.inbound_sms(InboundSms("SMr", PHONE, "hi"))).lead_id == "lead-4"
    await asyncio.gather(*(channels.remember_sms_recipients([r]) for r in texted[:4]))
    assert (await channels.inbound_sms(InboundSms("SMs", PHONE, "hi"))).lead_id == "lead-4"


async def test_delivery_reports_never_move_backwards(subject: Subject) -> None:
    status_claims = claims(TokenKind.SMS_STATUS)
    channels = feedback(subject.store)
    for status in ("sent", "queued", "delivered", "sent", "undelivered"):
        await channels.record_sms_status(status_claims, SmsStatusReport("SMp", status, PHONE))
    record = (await subject.store.message_statuses(["m-1"]))["m-1"]
    assert (record.status, record.provider_id, record.lead_id) == ("delivered", "SMp", "lead-1")
    published = [e for e in await subject.outbox() if isinstance(e, MessageStatusUpdatedV1)]
    assert [e.status for e in published] == ["sent", "delivered"]
    # The status callback also tells which lead has that number.
    outcome = await channels.inbound_sms(InboundSms("SMq", PHONE, "thanks"))
    assert outcome.lead_id == "lead-1"


async def test_an_unknown_status_is_refused(subject: Subject) -> None:
    with pytest.raises(UnknownStatusError):
        await feedback(subject.store).record_sms_status(
            claims(TokenKind.SMS_STATUS), SmsStatusReport("SMu", "teleported")
        )
    assert await subject.store.message_statuses(["m-1"]) == {}


async def test_a_carrier_opt_out_in_a_report_opts_out_of_sms(subject: Subject) -> None:
    channels = feedback(subject.store)
    report = SmsStatusReport("SMc", "failed", PHONE, error_code="21610")
    await channels.record_sms_status(claims(TokenKind.SMS_STATUS, "lead-c"), report)
    assert await subject.store.opted_out_channels(["lead-c"]) == {"lead-c": frozenset({"sms"})}
    assert await subject.store.opted_out_phones([PHONE]) == {PHONE}
    kinds = [(type(e).__name__, getattr(e, "reason", None)) for e in await subject.outbox()]
    assert kinds == [
        ("MessageStatusUpdatedV1", None),
        ("LeadOptedOutV1", "carrier_opt_out"),
    ]


async def test_the_first_open_and_first_click_per_link_count(subject: Subject) -> None:
    channels = feedback(subject.store)
    opened = claims(TokenKind.OPEN, "lead-e")
    assert await channels.record_engagement(opened, "open")
    assert not await feedback(subject.store, 5).record_engagement(opened, "open")
    for url in ("https://a.example/1", "https://a.example/2", "https://a.example/1"):
        await feedback(subject.store, 10).record_engagement(
            claims(TokenKind.CLICK, "lead-e", url=url), "click"
        )
    found = await subject.store.engagements(["lead-e", "nobody"])
    assert [(e.kind, e.url) for e in found] == [
        ("open", None),
        ("click", "https://a.example/1"),
        ("click", "https://a.example/2"),
    ]
    assert (
        await subject.store.engagements(["lead-e"], since=NOW + timedelta(minutes=1)) == found[1:]
    )
    assert len(await subject.outbox()) == 3


async def test_reads_for_many_leads_at_once(subject: Subject) -> None:
    channels = feedback(subject.store)
    leads = [f"many-{i}" for i in range(60)]  # more than one chunk of ids
    for lead_id in leads[::3]:
        await channels.opt_out(lead_id, "email", "by_hand")
        await channels.record_engagement(
            claims(TokenKind.OPEN, lead_id, message_id=f"m-{lead_id}"), "open"
        )
    out = await subject.store.opted_out_channels(leads)
    assert sorted(out) == sorted(leads[::3])
    assert {e.lead_id for e in await subject.store.engagements(leads)} == set(leads[::3])


# --- races ----------------------------------------------------------------------------------


async def test_reports_racing_out_of_order_end_at_the_furthest_status(subject: Subject) -> None:
    status_claims = claims(TokenKind.SMS_STATUS, message_id="m-race")
    channels = feedback(subject.store)
    reports = ["delivered", "queued", "sent", "sent", "queued", "delivered"]
    await asyncio.gather(
        *(
            channels.record_sms_status(status_claims, SmsStatusReport("SMz", s, PHONE))
            for s in reports
        )
    )
    assert (await subject.store.message_statuses(["m-race"]))["m-race"].status == "delivered"
    published = [e.status for e in await subject.outbox() if isinstance(e, MessageStatusUpdatedV1)]
    order = {"queued": 0, "sent": 1, "delivered": 2}
    assert published[-1] == "delivered"
    assert [order[s] for s in published] == sorted({order[s] for s in published})


async def test_the_same_text_delivered_twice_at_once_counts_once(subject: Subject) -> None:
    channels = feedback(subject.store)
    await channels.remember_sms_recipients([SmsRecipient(PHONE, "lead-d", NOW)])
    outcomes = await asyncio.gather(
        *(channels.inbound_sms(InboundSms("SMdup", PHONE, "call me")) for _ in range(4))
    )
    assert sorted(o.changed for o in outcomes) == [False, False, False, True]
    assert len(await subject.store.engagements(["lead-d"])) == 1
    assert len(await subject.outbox()) == 1


async def test_reports_stored_together_keep_their_order_and_their_own_errors(
    subject: Subject,
) -> None:
    one = claims(TokenKind.SMS_STATUS, "lead-b1", message_id="m-b1")
    two = claims(TokenKind.SMS_STATUS, "lead-b2", message_id="m-b2")
    results = await feedback(subject.store).record_sms_statuses(
        [
            (one, SmsStatusReport("SM1", "queued", PHONE)),
            (two, SmsStatusReport("SM2", "sent")),
            (one, SmsStatusReport("SM1", "teleported")),
            (one, SmsStatusReport("SM1", "delivered", PHONE)),
            (one, SmsStatusReport("SM1", "sent", PHONE)),  # late: old news
        ]
    )
    assert [getattr(r, "status", None) for r in results] == [
        "queued",
        "sent",
        None,
        "delivered",
        None,
    ]
    assert isinstance(results[2], UnknownStatusError)
    assert results[4] is None
    stored = await subject.store.message_statuses(["m-b1", "m-b2"])
    assert {m: r.status for m, r in stored.items()} == {"m-b1": "delivered", "m-b2": "sent"}
    published = [
        (e.message_id, e.status)
        for e in await subject.outbox()
        if isinstance(e, MessageStatusUpdatedV1)
    ]
    assert published == [("m-b1", "queued"), ("m-b2", "sent"), ("m-b1", "delivered")]


async def test_opens_and_clicks_stored_together_count_once_each(subject: Subject) -> None:
    opened = claims(TokenKind.OPEN, "lead-g", message_id="m-g")
    clicked = claims(TokenKind.CLICK, "lead-g", message_id="m-g", url="https://a.example/x")
    results = await feedback(subject.store).record_engagements(
        [(opened, "open"), (opened, "open"), (clicked, "click"), (clicked, "click")]
    )
    assert results == [True, False, True, False]
    again = await feedback(subject.store).record_engagements([(opened, "open")])
    assert again == [False]
    assert sorted(e.kind for e in await subject.store.engagements(["lead-g"])) == ["click", "open"]
    assert [type(e) for e in await subject.outbox()] == [EngagementRecordedV1] * 2


async def test_a_hard_bounce_suppresses_the_address_and_marks_the_message_bounced_once(
    subject: Subject,
) -> None:
    channels = feedback(subject.store)
    bounce = HardBounce(
        "Dana@Example.com", lead_id="lead-b", message_id="enr-b.0", sequence_id="seq", step=0
    )
    assert await channels.hard_bounces([dataclasses.replace(bounce, status="5.1.1")]) == 1
    assert await channels.hard_bounces([bounce, bounce]) == 0  # reported again: no change
    assert await subject.store.suppressed_emails(
        ["dana@example.com", "DANA@example.COM", "dan@example.com"]
    ) == {"dana@example.com", "DANA@example.COM"}
    record = (await subject.store.message_statuses(["enr-b.0"]))["enr-b.0"]
    assert (record.status, record.lead_id, record.channel, record.error_code) == (
        "bounced",
        "lead-b",
        "email",
        "5.1.1",
    )
    [event] = await subject.outbox()  # no LeadOptedOutV1: nobody chose to leave
    assert isinstance(event, MessageStatusUpdatedV1)
    assert (event.lead_id, event.status, event.message_id, event.step) == (
        "lead-b",
        "bounced",
        "enr-b.0",
        0,
    )
    # The address is suppressed, not the lead: the lead's other channel (and a new address
    # it may give later) stays usable.
    assert await subject.store.opted_out_channels(["lead-b"]) == {}


async def test_a_bounce_naming_no_known_message_still_suppresses_the_address(
    subject: Subject,
) -> None:
    assert await feedback(subject.store).hard_bounces([HardBounce("gone@example.com")]) == 0
    assert await subject.store.suppressed_emails(["gone@example.com"]) == {"gone@example.com"}
    assert await subject.outbox() == []


async def test_an_email_bounce_and_an_sms_stop_are_kept_apart(
    subject: Subject,
) -> None:
    channels = feedback(subject.store)
    await channels.inbound_sms(InboundSms("SMz", PHONE, "STOP"))
    await channels.hard_bounces([HardBounce("z@example.com", "lead-z", "enr-z.1", step=1)])
    assert await subject.store.opted_out_phones([PHONE]) == {PHONE}
    assert await subject.store.suppressed_emails(["z@example.com", PHONE]) == {"z@example.com"}
