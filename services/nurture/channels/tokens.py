"""Signed tokens in the links nurture puts in its messages: unsubscribe, open pixel, click.

A token is `<payload>.<mac>`: the payload is compact JSON (URL-safe base64) naming the
lead, the message and, for a click, the one URL it may redirect to; the mac is HMAC-SHA256
under a key derived from the secret and the token's kind, so an open token can never serve
as an unsubscribe token and a click can only ever lead where the sender pointed it (no open
redirect). Verification tries the current secret and then any previous ones, so a secret
can be rotated without breaking links already delivered. Stdlib only, in the manner of
itsdangerous.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.events import Channel


class TokenKind(StrEnum):
    UNSUBSCRIBE = "unsubscribe"
    OPEN = "open"
    CLICK = "click"
    SMS_STATUS = "sms-status"
    """Rides in an SMS's StatusCallback URL: which of our messages a delivery report is about."""
    VISIT = "visit"
    """Per lead, appended as `lf` to landing URLs on our own site by the click redirect: the
    browser beacon (`/v/{token}.gif`, `/v1/web-visits/beacon`) records that lead's visits
    with it instead of an API key."""


class BadTokenError(ValueError):
    """Not a token we signed (forged, altered, truncated, or of another kind)."""


@dataclass(frozen=True, slots=True)
class LinkClaims:
    """What a token vouches for."""

    kind: TokenKind
    lead_id: str
    message_id: str | None = None
    channel: Channel | None = None
    sequence_id: str | None = None
    step: int | None = None
    url: str | None = None
    """Click tokens only: where the click leads."""


_FIELDS = {
    "l": "lead_id",
    "m": "message_id",
    "c": "channel",
    "s": "sequence_id",
    "n": "step",
    "u": "url",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_web_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


VISIT_PARAMETER = "lf"
"""The query parameter the visit token rides in on a landing URL."""


def origin_of(url: str) -> str:
    """`scheme://host[:port]`, lower case: what a browser sends as `Origin`."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def with_visit_token(url: str, token: str, site_origins: Collection[str]) -> str:
    """`url` with the visit token as `lf` when it lands on one of our own sites (never
    handed to anyone else's), else `url` unchanged."""
    if origin_of(url) not in {origin.rstrip("/").lower() for origin in site_origins}:
        return url
    parts = urlsplit(url)
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != VISIT_PARAMETER
    ]
    query.append((VISIT_PARAMETER, token))
    return urlunsplit(parts._replace(query=urlencode(query)))


class TokenSigner:
    def __init__(self, secret: str, previous_secrets: Sequence[str] = ()) -> None:
        if not secret:
            raise ValueError("the token secret must not be empty")
        self._secrets = [s.encode() for s in (secret, *previous_secrets) if s]

    @staticmethod
    def _key(secret: bytes, kind: TokenKind) -> bytes:
        return hmac.new(secret, f"leadflow.nurture.{kind.value}".encode(), hashlib.sha256).digest()

    def _mac(self, secret: bytes, kind: TokenKind, payload: str) -> str:
        digest = hmac.new(self._key(secret, kind), payload.encode(), hashlib.sha256).digest()
        return _b64(digest)

    def sign(self, claims: LinkClaims) -> str:
        if claims.kind is TokenKind.CLICK and (claims.url is None or not is_web_url(claims.url)):
            raise ValueError(f"a click token needs an http(s) URL, not {claims.url!r}")
        body: dict[str, Any] = {
            short: getattr(claims, name)
            for short, name in _FIELDS.items()
            if getattr(claims, name) is not None
        }
        payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{payload}.{self._mac(self._secrets[0], claims.kind, payload)}"

    def verify(self, token: str, kind: TokenKind) -> LinkClaims:
        """The claims of a token of `kind` signed with one of our secrets; BadTokenError
        otherwise."""
        payload, dot, mac = token.rpartition(".")
        if not dot or not payload:
            raise BadTokenError("malformed token")
        if not any(
            hmac.compare_digest(self._mac(secret, kind, payload), mac) for secret in self._secrets
        ):
            raise BadTokenError(f"not a valid {kind.value} token")
        try:
            body = json.loads(_unb64(payload))
            values = {name: body.get(short) for short, name in _FIELDS.items()}
            claims = LinkClaims(kind=kind, **values)
        except (ValueError, TypeError) as error:  # signed by us, so only a bug gets here
            raise BadTokenError("unreadable token payload") from error
        if not isinstance(claims.lead_id, str) or not claims.lead_id:
            raise BadTokenError("token names no lead")
        return claims


class LinkBuilder:
    """The public URLs of the tracking and unsubscribe endpoints, with signed tokens."""

    def __init__(self, public_url: str, signer: TokenSigner) -> None:
        self._base = public_url.rstrip("/")
        self._signer = signer

    def unsubscribe_url(self, claims: LinkClaims) -> str:
        return f"{self._base}/u/{self._signer.sign(_as(claims, TokenKind.UNSUBSCRIBE))}"

    def open_pixel_url(self, claims: LinkClaims) -> str:
        return f"{self._base}/o/{self._signer.sign(_as(claims, TokenKind.OPEN))}.gif"

    def click_url(self, claims: LinkClaims, url: str) -> str:
        token = self._signer.sign(_as(claims, TokenKind.CLICK, url=url))
        return f"{self._base}/c/{token}"

    def sms_status_callback_url(self, claims: LinkClaims) -> str:
        token = self._signer.sign(_as(claims, TokenKind.SMS_STATUS))
        return f"{self._base}/v1/sms/status?m={token}"

    def track_links(self, html: str, claims: LinkClaims) -> str:
        """`html` with every http(s) `href` sent through the click redirect."""

        def rewrite(match: re.Match[str]) -> str:
            quote, url = match.group(1), match.group(2)
            if not is_web_url(url) or url.startswith(self._base + "/u/"):
                return match.group(0)
            return f"href={quote}{self.click_url(claims, _unescape(url))}{quote}"

        return _HREF.sub(rewrite, html)


_HREF = re.compile(r"""href=(["'])(https?://[^"']+)\1""", re.IGNORECASE)


def _unescape(url: str) -> str:
    return url.replace("&amp;", "&")


def _as(claims: LinkClaims, kind: TokenKind, url: str | None = None) -> LinkClaims:
    return LinkClaims(
        kind=kind,
        lead_id=claims.lead_id,
        message_id=claims.message_id,
        channel=claims.channel,
        sequence_id=claims.sequence_id,
        step=claims.step,
        url=url,
    )
