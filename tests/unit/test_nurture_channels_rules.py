"""Pure channel rules: SMS segments, inbound keywords, delivery-report ordering."""

from __future__ import annotations

import pytest

from services.nurture.channels.rules import (
    InboundIntent,
    inbound_intent,
    moves_forward,
    sms_status,
)
from services.nurture.channels.segments import count_segments

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 0),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # extension characters count two
        ("€" * 81, "GSM-7", 162, 2),
        ("{}[]~|^\\" * 10, "GSM-7", 160, 1),
        ("가" * 70, "UCS-2", 70, 1),  # Korean: UCS-2
        ("가" * 71, "UCS-2", 71, 2),
        ("你好" * 67, "UCS-2", 134, 2),  # Chinese: UCS-2, 67 per part
        ("你" * 135, "UCS-2", 135, 3),
        ("Hello 안녕", "UCS-2", 8, 1),  # one non-GSM character makes the whole text UCS-2
        ("😀" * 35, "UCS-2", 70, 1),  # outside the BMP: two UTF-16 units each
    ],
)
def test_segment_count(text: str, encoding: str, units: int, segments: int) -> None:
    count = count_segments(text)
    assert (count.encoding, count.units, count.segments) == (encoding, units, segments)


def test_an_extension_character_is_not_split_across_parts() -> None:
    # 152 plain septets, then '€' (2 septets) would straddle the 153-septet boundary.
    text = "a" * 152 + "€" + "a" * 152
    count = count_segments(text)
    assert count.units == 306  # fits 2 x 153 by arithmetic ...
    assert count.segments == 3  # ... but the escape pair moves to the second part


def test_a_surrogate_pair_is_not_split_across_parts() -> None:
    count = count_segments("가" * 66 + "😀" + "가" * 66)
    assert (count.units, count.segments) == (134, 3)


@pytest.mark.parametrize(
    ("body", "intent"),
    [
        ("STOP", InboundIntent.OPT_OUT),
        ("stop", InboundIntent.OPT_OUT),
        ("  Stop \n", InboundIntent.OPT_OUT),
        ("StopAll", InboundIntent.OPT_OUT),
        ("unsubscribe", InboundIntent.OPT_OUT),
        ("CANCEL", InboundIntent.OPT_OUT),
        ("end", InboundIntent.OPT_OUT),
        ("quit", InboundIntent.OPT_OUT),
        ("revoke", InboundIntent.OPT_OUT),
        ("optout", InboundIntent.OPT_OUT),
        ("START", InboundIntent.OPT_IN),
        ("unstop", InboundIntent.OPT_IN),
        ("Yes", InboundIntent.OPT_IN),
        ("help", InboundIntent.HELP),
        ("INFO", InboundIntent.HELP),
        ("please stop", InboundIntent.REPLY),
        ("STOP!", InboundIntent.REPLY),
        ("stop stop", InboundIntent.REPLY),
        ("opt out", InboundIntent.REPLY),
        ("yes please, call me", InboundIntent.REPLY),
        ("그만", InboundIntent.REPLY),
        ("", InboundIntent.REPLY),
    ],
)
def test_keywords_count_only_as_the_whole_message(body: str, intent: InboundIntent) -> None:
    assert inbound_intent(body) is intent


def test_delivery_reports_never_move_a_message_backwards() -> None:
    ranks = {name: sms_status(name) for name in ("queued", "sent", "delivered", "failed")}
    queued, sent, delivered, failed = (ranks[n] for n in ("queued", "sent", "delivered", "failed"))
    assert queued is not None and sent is not None and delivered is not None and failed
    assert moves_forward(None, queued[1])
    assert moves_forward(queued[1], sent[1])
    assert moves_forward(sent[1], delivered[1])
    assert not moves_forward(delivered[1], sent[1])
    assert not moves_forward(sent[1], queued[1])
    assert not moves_forward(delivered[1], failed[1])  # the first final status stays
    assert not moves_forward(sent[1], sent[1])


def test_twilio_statuses_map_to_the_ones_we_publish() -> None:
    assert sms_status("accepted") == ("queued", 0)
    assert sms_status("Delivered") == ("delivered", 2)
    assert sms_status("canceled") == ("failed", 2)
    assert sms_status("teleported") is None
