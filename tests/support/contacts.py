"""Contact details for integration tests that share one database across a module."""

from __future__ import annotations

import itertools
import random

_LINES = itertools.count(random.randrange(10_000))


def unique_phone(prefix: str) -> str:
    """`prefix` and four digits no other call of this test run gave (for its first 10,000
    calls): random digits collided now and then, and two leads sharing a phone are one
    lead with two inquiries."""
    return f"{prefix}{next(_LINES) % 10_000:04d}"
