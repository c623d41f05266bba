"""`leadflow up` starts the mail sink and fake SMS provider, points nurture at them, and the
page lists what was sent: a lead texting STOP through the fake provider reaches nurture's
signed webhook and is answered."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.test_stack import process_exists, stack_environment, start_stack

pytestmark = pytest.mark.e2e


def test_up_starts_the_sinks_and_nurture_answers_a_text_through_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = stack_environment(data_dir)
    env["LEADFLOW_PERSISTENT"] = "false"
    stack = start_stack(env, data_dir, run=1)
    try:
        page_url = stack.state["sinks_page"]
        assert page_url == f"http://127.0.0.1:{env['LEADFLOW_SINKS_HTTP_PORT']}/"
        assert "sinks (mail + SMS)" in stack.state["infra"]
        with httpx.Client(base_url=page_url, timeout=20) as sinks:
            assert "Messages leadflow" in sinks.get("/").text
            # A lead texts HELP: the fake provider signs it with the auth token nurture was
            # given and posts it to nurture's public URL; nurture verifies and answers.
            answered = sinks.post(
                "/sink/sms/inbound",
                data={"From": "+821012345678", "Body": "HELP"},
                headers={"Accept": "application/json"},
            )
            assert answered.status_code == 200, answered.text
            body = answered.json()
            assert body["webhook_status"] == 200
            assert body["replies"] and "STOP" in body["replies"][0]
            listed = sinks.get("/sink/sms").json()
        assert [(m["direction"], m["body"]) for m in listed][-2:] == [
            ("inbound", "HELP"),
            ("reply", body["replies"][0]),
        ]
        assert "emails and texts nurture" in stack.output_path.read_text()
    finally:
        assert stack.interrupt() == 0
    assert not any(process_exists(pid) for pid in stack.pids())
