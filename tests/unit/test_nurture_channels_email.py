"""Building an email: unsubscribe headers, tracked links, our Message-ID, DKIM."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from datetime import UTC, datetime

import dkim  # type: ignore[import-untyped]
import pytest

from services.nurture.channels.email import (
    DkimKey,
    EmailIdentity,
    OutboundEmail,
    build_email,
    email_bytes,
)
from services.nurture.channels.tokens import LinkBuilder, TokenKind, TokenSigner
from tests.support.nurture_channels import dkim_key_pair

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SIGNER = TokenSigner("test-secret")
LINKS = LinkBuilder("https://nurture.example.com", SIGNER)
IDENTITY = EmailIdentity(
    sender="Acme Fitness <hello@acme.example>",
    message_id_domain="mail.acme.example",
    unsubscribe_mailto="unsubscribe@acme.example",
)
OUTBOUND = OutboundEmail(
    message_id="m-1",
    lead_id="lead-7",
    to="dana@example.com",
    subject="봄 프로모션: 회원권 20% 할인",
    html='<html><body><p>안녕하세요</p><a href="https://acme.example/offer?a=1&amp;b=2">offer</a>'
    "</body></html>",
    text="안녕하세요 https://acme.example/offer",
    sequence_id="loss-level-2",
    step=1,
)


def parsed(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_the_message_carries_one_click_unsubscribe_and_our_message_id() -> None:
    message = parsed(email_bytes(build_email(OUTBOUND, IDENTITY, LINKS, NOW), None))
    assert message["Message-ID"] == "<m-1@mail.acme.example>"
    assert message["Subject"] == OUTBOUND.subject
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url, mailto = (part.strip() for part in str(message["List-Unsubscribe"]).split(","))
    assert mailto == "<mailto:unsubscribe@acme.example?subject=unsubscribe>"
    assert url.startswith("<https://nurture.example.com/u/") and url.endswith(">")
    claims = SIGNER.verify(url[1:-1].rsplit("/", 1)[1], TokenKind.UNSUBSCRIBE)
    assert (claims.lead_id, claims.message_id, claims.channel, claims.sequence_id) == (
        "lead-7",
        "m-1",
        "email",
        "loss-level-2",
    )


def test_the_unsubscribe_header_is_one_unencoded_line() -> None:
    raw = email_bytes(build_email(OUTBOUND, IDENTITY, LINKS, NOW), None)
    [line] = [ln for ln in raw.split(b"\r\n") if ln.startswith(b"List-Unsubscribe:")]
    assert b"=?utf-8?" not in line
    assert line.startswith(b"List-Unsubscribe: <https://nurture.example.com/u/")


def test_text_and_html_alternatives_with_tracked_links_and_pixel() -> None:
    message = parsed(email_bytes(build_email(OUTBOUND, IDENTITY, LINKS, NOW), None))
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().strip() == OUTBOUND.text
    content = html.get_content()
    assert "https://acme.example/offer" not in content  # replaced by the click redirect
    [click] = [part.split('"')[0] for part in content.split('href="')[1:]]
    claims = SIGNER.verify(click.rsplit("/", 1)[1], TokenKind.CLICK)
    assert claims.url == "https://acme.example/offer?a=1&b=2"
    assert '<img src="https://nurture.example.com/o/' in content
    assert content.index("<img") < content.index("</body>")


def test_dkim_signature_covers_the_unsubscribe_headers_and_verifies() -> None:
    pair = dkim_key_pair()
    key = DkimKey("s1", "acme.example", pair.private_pem)
    raw = email_bytes(build_email(OUTBOUND, IDENTITY, LINKS, NOW), key)
    message = parsed(raw)
    signature = str(message["DKIM-Signature"]).replace(" ", "").replace("\t", "")
    signed = signature.split("h=")[1].split(";")[0].lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "from", "subject"} <= set(signed)
    dns = pair.dns(b"s1._domainkey.acme.example.")
    assert dkim.verify(raw, dnsfunc=dns)


def test_a_changed_unsubscribe_header_breaks_the_dkim_signature() -> None:
    pair = dkim_key_pair()
    key = DkimKey("s1", "acme.example", pair.private_pem)
    raw = email_bytes(build_email(OUTBOUND, IDENTITY, LINKS, NOW), key)
    tampered = raw.replace(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x"
    )
    assert tampered != raw
    assert not dkim.verify(tampered, dnsfunc=pair.dns(b"s1._domainkey.acme.example."))


def test_tracking_can_be_switched_off() -> None:
    plain = EmailIdentity(
        sender="hello@acme.example",
        message_id_domain="acme.example",
        track_opens=False,
        track_clicks=False,
    )
    message = parsed(email_bytes(build_email(OUTBOUND, plain, LINKS, NOW), None))
    html = message.get_body(("html",))
    assert html is not None
    assert html.get_content().strip() == OUTBOUND.html
    assert "mailto:" not in str(message["List-Unsubscribe"])


def test_a_sender_name_in_hangul_is_encoded_and_its_address_kept() -> None:
    korean = EmailIdentity(
        sender="에이크미 피트니스 <hello@acme.example>", message_id_domain="a.example"
    )
    raw = email_bytes(build_email(OUTBOUND, korean, LINKS, NOW), None)
    assert raw.isascii()
    sender = parsed(raw)["From"]
    assert (sender.addresses[0].display_name, sender.addresses[0].addr_spec) == (
        "에이크미 피트니스",
        "hello@acme.example",
    )


def test_a_line_break_in_the_subject_cannot_add_a_header() -> None:
    injected = dataclasses.replace(OUTBOUND, subject="Hi\r\nBcc: everyone@example.com")
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        email_bytes(build_email(injected, IDENTITY, LINKS, NOW), None)
