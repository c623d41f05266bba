"""How many SMS segments a text costs: GSM-7 when every character is in the GSM 03.38
alphabet, UCS-2 otherwise (Korean and Chinese texts are always UCS-2).

Pure functions: templates show the count at save and preview time, and the send loop can
refuse a text that would be split into too many parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 basic character set (one septet each).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each costs two septets (the escape and the character).
GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE = 160
GSM7_PART = 153  # a concatenated part loses 7 septets to its user-data header
UCS2_SINGLE = 70
UCS2_PART = 67


@dataclass(frozen=True, slots=True)
class SegmentCount:
    encoding: Encoding
    units: int
    """Septets for GSM-7 (extension characters count 2), UTF-16 code units for UCS-2."""
    segments: int
    per_segment: int
    """How many units each segment of this text holds (single or concatenated)."""


def sms_encoding(text: str) -> Encoding:
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text):
        return "GSM-7"
    return "UCS-2"


def count_segments(text: str) -> SegmentCount:
    """The encoding, length and number of segments `text` is sent as (0 for empty).

    A GSM-7 extension character (escape + character) or a UCS-2 surrogate pair is never
    split across two parts, so a long text may need one part more than units / per-part.
    """
    encoding = sms_encoding(text)
    if encoding == "GSM-7":
        sizes = [2 if ch in GSM7_EXTENDED else 1 for ch in text]
        single, part = GSM7_SINGLE, GSM7_PART
    else:
        # UTF-16: characters outside the BMP (most emoji) take two code units.
        sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
        single, part = UCS2_SINGLE, UCS2_PART
    units = sum(sizes)
    if units == 0:
        return SegmentCount(encoding, 0, 0, single)
    if units <= single:
        return SegmentCount(encoding, units, 1, single)
    segments, filled = 1, 0
    for size in sizes:
        if filled + size > part:
            segments, filled = segments + 1, 0
        filled += size
    return SegmentCount(encoding, units, segments, part)
