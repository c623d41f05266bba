"""The sinks as `leadflow up` runs them: one child process on loopback, a page and JSON
listing what arrived, kept across a restart when the stack is persistent."""

from __future__ import annotations

import tempfile
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import pytest

from leadflow.localinfra import LocalInfra, free_port
from leadflow.sinks import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN

pytestmark = pytest.mark.integration


def sinks_only(data_dir: Path, smtp_port: int, http_port: int) -> LocalInfra:
    return LocalInfra(
        data_dir=data_dir,
        kafka_port=0,
        mongo_port=0,
        s3_port=0,
        persistent=True,
        start_kafka=False,
        start_mongo=False,
        start_sinks=True,
        smtp_sink_port=smtp_port,
        sinks_http_port=http_port,
    )


async def test_the_sinks_child_keeps_and_lists_what_was_sent_across_a_restart() -> None:
    smtp_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="leadflow-sinks-") as tmp:
        infra = sinks_only(Path(tmp), smtp_port, http_port)
        infra.start(timeout_s=30)
        try:
            assert infra.sinks is not None and infra.sinks.alive()
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = (
                "a@example.com",
                "b@example.com",
                "hello sink",
            )
            message.set_content("body")
            await aiosmtplib.send(message, hostname="127.0.0.1", port=smtp_port)
            async with httpx.AsyncClient(base_url=infra.sinks_url) as client:
                created = await client.post(
                    f"/2010-04-01/Accounts/{DEV_ACCOUNT_SID}/Messages.json",
                    data={"To": "+821012345678", "From": "+15005550006", "Body": "hi"},
                    auth=(DEV_ACCOUNT_SID, DEV_AUTH_TOKEN),
                )
                assert created.status_code == 201 and created.json()["sid"].startswith("SM")
        finally:
            infra.stop()
        assert infra.sinks is None

        again = sinks_only(Path(tmp), smtp_port, http_port)
        again.start(timeout_s=30)
        try:
            async with httpx.AsyncClient(base_url=again.sinks_url) as client:
                page = await client.get("/")
                mail = (await client.get("/sink/mail")).json()
                sms = (await client.get("/sink/sms")).json()
        finally:
            again.stop()
    assert page.status_code == 200
    assert "hello sink" in page.text and "+821012345678" in page.text
    assert [m["subject"] for m in mail] == ["hello sink"]
    assert [(m["to"], m["body"]) for m in sms] == [("+821012345678", "hi")]


def test_the_sinks_listen_on_loopback_only() -> None:
    smtp_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="leadflow-sinks-") as tmp:
        infra = sinks_only(Path(tmp), smtp_port, http_port)
        infra.start(timeout_s=30)
        try:
            listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
            local = {
                (line.split()[1].split(":")[0], int(line.split()[1].split(":")[1], 16))
                for line in listening
                if line.split()[3] == "0A"  # LISTEN
            }
            for port in (smtp_port, http_port):
                addresses = {address for address, p in local if p == port}
                assert addresses == {"0100007F"}  # 127.0.0.1, little-endian hex
        finally:
            infra.stop()
