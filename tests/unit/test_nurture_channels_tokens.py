"""Signed link tokens: unsubscribe, open, click (no open redirect), status callbacks."""

from __future__ import annotations

import pytest

from services.nurture.channels.tokens import (
    BadTokenError,
    LinkBuilder,
    LinkClaims,
    TokenKind,
    TokenSigner,
    with_visit_token,
)

pytestmark = pytest.mark.unit

CLAIMS = LinkClaims(
    kind=TokenKind.UNSUBSCRIBE,
    lead_id="lead-1",
    message_id="m-1",
    channel="email",
    sequence_id="seq",
    step=2,
)


def test_a_token_round_trips_its_claims() -> None:
    signer = TokenSigner("s3cret")
    assert signer.verify(signer.sign(CLAIMS), TokenKind.UNSUBSCRIBE) == CLAIMS


def test_an_altered_token_is_refused() -> None:
    signer = TokenSigner("s3cret")
    token = signer.sign(CLAIMS)
    payload, mac = token.split(".")
    other = signer.sign(LinkClaims(kind=TokenKind.UNSUBSCRIBE, lead_id="lead-2"))
    forged = f"{other.split('.')[0]}.{mac}"  # someone else's lead with this mac
    for bad in (forged, payload, f"{payload}.", f"{payload}.{mac[:-2]}", "", "."):
        with pytest.raises(BadTokenError):
            signer.verify(bad, TokenKind.UNSUBSCRIBE)


def test_a_token_of_one_kind_is_not_valid_as_another() -> None:
    signer = TokenSigner("s3cret")
    open_token = signer.sign(LinkClaims(kind=TokenKind.OPEN, lead_id="lead-1"))
    with pytest.raises(BadTokenError):
        signer.verify(open_token, TokenKind.UNSUBSCRIBE)


def test_another_secret_does_not_verify_but_a_previous_one_does() -> None:
    old = TokenSigner("old")
    token = old.sign(CLAIMS)
    with pytest.raises(BadTokenError):
        TokenSigner("new").verify(token, TokenKind.UNSUBSCRIBE)
    rotated = TokenSigner("new", previous_secrets=["old"])
    assert rotated.verify(token, TokenKind.UNSUBSCRIBE) == CLAIMS


def test_a_click_token_names_its_one_destination() -> None:
    signer = TokenSigner("s3cret")
    links = LinkBuilder("https://n.example.com/", signer)
    url = links.click_url(CLAIMS, "https://acme.example/offer?x=1")
    assert url.startswith("https://n.example.com/c/")
    claims = signer.verify(url.rsplit("/", 1)[1], TokenKind.CLICK)
    assert claims.url == "https://acme.example/offer?x=1"


@pytest.mark.parametrize("url", ["javascript:alert(1)", "//evil.example", "ftp://x.example", ""])
def test_only_web_urls_can_be_signed_for_a_click(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        TokenSigner("s").sign(LinkClaims(kind=TokenKind.CLICK, lead_id="l", url=url))


def test_links_in_html_go_through_the_click_redirect_but_unsubscribe_does_not() -> None:
    signer = TokenSigner("s3cret")
    links = LinkBuilder("https://n.example.com", signer)
    unsubscribe = links.unsubscribe_url(CLAIMS)
    html = (
        "<a href=\"https://acme.example/a\">a</a> <a href='http://acme.example/b'>b</a> "
        f'<a href="mailto:x@acme.example">m</a> <a href="{unsubscribe}">u</a>'
    )
    tracked = links.track_links(html, CLAIMS)
    assert "https://acme.example/a" not in tracked
    assert "http://acme.example/b" not in tracked
    assert 'href="mailto:x@acme.example"' in tracked
    assert f'href="{unsubscribe}"' in tracked
    assert tracked.count("https://n.example.com/c/") == 2


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        TokenSigner("")


def test_the_visit_token_goes_only_to_our_own_sites_and_replaces_an_old_one() -> None:
    sites = ("https://acme.example", "https://shop.acme.example:8443/")
    assert (
        with_visit_token("https://acme.example/offer?plan=gold&lf=old", "T.k", sites)
        == "https://acme.example/offer?plan=gold&lf=T.k"
    )
    assert (
        with_visit_token("https://SHOP.acme.example:8443/a", "T", sites)
        == "https://SHOP.acme.example:8443/a?lf=T"
    )
    for foreign in (
        "https://evil.example/a",
        "http://acme.example/a",
        "https://acme.example.evil/",
    ):
        assert with_visit_token(foreign, "T", sites) == foreign


def test_a_visit_token_is_its_own_kind() -> None:
    signer = TokenSigner("s3cret")
    visit = signer.sign(LinkClaims(TokenKind.VISIT, "lead-1"))
    assert signer.verify(visit, TokenKind.VISIT).lead_id == "lead-1"
    with pytest.raises(BadTokenError):
        signer.verify(signer.sign(CLAIMS), TokenKind.VISIT)
