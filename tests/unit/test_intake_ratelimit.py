"""The form rate limit's shared counters cost nothing until a form is posted."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

NEVER_ANSWERS = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=60000"


def test_a_process_that_never_posted_a_form_exits_without_touching_the_database() -> None:
    # limits' own clean-up connected on exit, and the interpreter hung there.
    program = (
        "from services.intake.ratelimit import LimitsFormRateLimit\n"
        f"limit = LimitsFormRateLimit.on_mongodb({NEVER_ANSWERS!r}, 'db', '5/minute')\n"
        "limit.close()\n"
        f"other = LimitsFormRateLimit.on_mongodb({NEVER_ANSWERS!r}, 'db', '5/minute')\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", program], timeout=30, capture_output=True, check=False
    )
    assert finished.returncode == 0, finished.stderr.decode()
