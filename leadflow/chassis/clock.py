"""Where "now" comes from. Composition roots pass a clock in; nothing else reads the time,
so use cases and rules are tested without sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from shared.events import utc_now

Clock = Callable[[], datetime]

system_clock: Clock = utc_now
