"""The raw ceiling of the local mail and SMS sinks, for bench/nurture.py's ratios, and the
duplicate count at the sinks.

    .venv/bin/python bench/nurture_sinks.py          # sinks as `leadflow up` runs them
    .venv/bin/python bench/nurture_sinks.py --in-process --messages 3000 --concurrency 16

From another benchmark: `await sinks_ceiling(mail_sink, fake_twilio)` on the sinks it runs
(or `raw_smtp_per_s` / `raw_sms_per_s` on any address), and `duplicate_sends(mail_sink,
fake_twilio)` after it; for sinks in another process (`leadflow up`'s, or `LocalInfra`'s),
`await sinks_ceiling_at(host, smtp_port, sinks_url)` and `await arrivals_at(sinks_url)`.

- email: a pre-built message sent with plain aiosmtplib over `concurrency` kept-open
  connections (no rendering, no tracking, no DKIM): messages/s the SMTP sink takes.
- SMS: plain httpx form posts to the fake Twilio's Messages.json over one pooled client,
  `concurrency` in flight: messages/s it takes. Without a StatusCallback unless one is given
  (a real send also makes the sink post three callbacks; pass the same URL for a like ceiling).

Each figure is the best of `runs` (a ceiling is what the sink can do, not what noise let it).
Loops are bounded by count; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiosmtplib
import httpx

from leadflow.localinfra import LOOPBACK, LocalInfra, free_port
from leadflow.sinks import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, FakeTwilio, MailSink, running_sinks


@dataclass(frozen=True)
class SinkCeiling:
    smtp_messages_per_s: float
    sms_posts_per_s: float
    messages: int
    concurrency: int


async def raw_smtp_per_s(
    host: str, port: int, *, messages: int = 2000, concurrency: int = 8, runs: int = 3
) -> float:
    message = EmailMessage()
    message["From"] = "bench@leadflow.example"
    message["To"] = "ceiling@example.com"
    message["Subject"] = "ceiling"
    message.set_content("x" * 1500)  # about the size of a rendered nurture email
    raw = message.as_bytes()
    best = 0.0
    for _ in range(runs):
        clients = [
            aiosmtplib.SMTP(hostname=host, port=port, start_tls=False) for _ in range(concurrency)
        ]
        await asyncio.gather(*(c.connect() for c in clients))
        share = [messages // concurrency + (i < messages % concurrency) for i in range(concurrency)]

        async def send(client: aiosmtplib.SMTP, count: int) -> None:
            for _ in range(count):
                await client.sendmail("bench@leadflow.example", ["ceiling@example.com"], raw)

        started = time.perf_counter()
        await asyncio.gather(*(send(c, n) for c, n in zip(clients, share, strict=True)))
        best = max(best, messages / (time.perf_counter() - started))
        await asyncio.gather(*(c.quit() for c in clients))
    return best


async def raw_sms_per_s(
    base_url: str,
    account_sid: str,
    auth_token: str,
    *,
    messages: int = 2000,
    concurrency: int = 8,
    runs: int = 3,
    status_callback: str | None = None,
) -> float:
    url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
    form = {"To": "+821012345678", "From": "+15005550006", "Body": "안녕하세요 " * 6}
    if status_callback:
        form["StatusCallback"] = status_callback
    best = 0.0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(auth=(account_sid, auth_token), limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def post() -> None:
            async with gate:
                response = await client.post(url, data=form)
                response.raise_for_status()

        for _ in range(runs):
            started = time.perf_counter()
            await asyncio.gather(*(post() for _ in range(messages)))
            best = max(best, messages / (time.perf_counter() - started))
    return best


async def sinks_ceiling(
    mail: MailSink, sms: FakeTwilio, *, messages: int = 2000, concurrency: int = 8, runs: int = 3
) -> SinkCeiling:
    """Both ceilings on these sinks; what the measurement sent is cleared afterwards, so the
    sinks hold only what the benchmark proper sends."""
    smtp = await raw_smtp_per_s(
        mail.host, mail.port, messages=messages, concurrency=concurrency, runs=runs
    )
    posts = await raw_sms_per_s(
        sms.base_url,
        sms.account_sid,
        sms.auth_token,
        messages=messages,
        concurrency=concurrency,
        runs=runs,
    )
    mail.clear()
    sms.clear()
    return SinkCeiling(smtp, posts, messages, concurrency)


def _message_id_of_sms(status_callback: str | None) -> str | None:
    """Our message id, from the (signed) token in an SMS's StatusCallback URL."""
    if not status_callback:
        return None
    token = parse_qs(urlsplit(status_callback).query).get("m", [""])[0]
    payload = token.rpartition(".")[0]
    try:
        body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    message_id = body.get("m")
    return str(message_id) if message_id else None


def _duplicates(email_ids: list[str | None], sms_callbacks: list[str | None]) -> dict[str, int]:
    emails = Counter(email_ids)
    texts = Counter(_message_id_of_sms(c) for c in sms_callbacks)
    return {
        "emails": sum(emails.values()),
        "email_duplicates": sum(n - 1 for n in emails.values() if n > 1),
        "texts": sum(texts.values()),
        "text_duplicates": sum(n - 1 for key, n in texts.items() if key and n > 1),
    }


def duplicate_sends(mail: MailSink, sms: FakeTwilio) -> dict[str, int]:
    """How many messages arrived more than once at the sinks (by our message id: the email's
    Message-ID, the SMS's status-callback token), and how many arrived at all."""
    return _duplicates(
        [m.message_id() for m in mail.messages], [m.status_callback for m in sms.messages]
    )


@dataclass(frozen=True)
class Arrivals:
    """What the sinks in another process (`leadflow up`'s) received, from `/sink/arrivals`:
    (our message id, arrival time) per email and per sent SMS, oldest first."""

    emails: list[tuple[str | None, str]]
    texts: list[tuple[str | None, str]]
    duplicates: dict[str, int]


def _our_id_of_email(header: str | None) -> str | None:
    """`<e000001.0@domain>` -> `e000001.0`."""
    return header.strip().strip("<>").split("@")[0] or None if header else None


async def arrivals_at(sinks_url: str) -> Arrivals:
    async with httpx.AsyncClient(base_url=sinks_url, timeout=120) as client:
        response = await client.get("/sink/arrivals")
        response.raise_for_status()
        listing = response.json()
    mail_ids = [header for header, _ in listing["mail"]]
    callbacks = [callback for callback, _ in listing["sms"]]
    return Arrivals(
        emails=[(_our_id_of_email(header), at) for header, at in listing["mail"]],
        texts=[(_message_id_of_sms(callback), at) for callback, at in listing["sms"]],
        duplicates=_duplicates(mail_ids, callbacks),
    )


async def duplicate_sends_at(sinks_url: str) -> dict[str, int]:
    """`duplicate_sends` for sinks in another process (`leadflow up`'s)."""
    return (await arrivals_at(sinks_url)).duplicates


async def sinks_ceiling_at(
    smtp_host: str,
    smtp_port: int,
    sinks_url: str,
    *,
    account_sid: str = DEV_ACCOUNT_SID,
    auth_token: str = DEV_AUTH_TOKEN,
    messages: int = 2000,
    concurrency: int = 8,
    runs: int = 3,
) -> SinkCeiling:
    """`sinks_ceiling` for sinks in another process; they are cleared afterwards
    (`POST /sink/clear`)."""
    smtp = await raw_smtp_per_s(
        smtp_host, smtp_port, messages=messages, concurrency=concurrency, runs=runs
    )
    posts = await raw_sms_per_s(
        sinks_url, account_sid, auth_token, messages=messages, concurrency=concurrency, runs=runs
    )
    async with httpx.AsyncClient(base_url=sinks_url, timeout=30) as client:
        (await client.post("/sink/clear")).raise_for_status()
    return SinkCeiling(smtp, posts, messages, concurrency)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the sinks in this process (threads) instead of as `leadflow up` runs them",
    )
    args = parser.parse_args()
    sizes = {"messages": args.messages, "concurrency": args.concurrency, "runs": args.runs}
    if args.in_process:
        with running_sinks() as (mail, sms):
            ceiling = await sinks_ceiling(mail, sms, **sizes)
    else:
        with tempfile.TemporaryDirectory(prefix="leadflow-sinks-bench-") as data_dir:
            infra = LocalInfra(
                data_dir=Path(data_dir),
                kafka_port=0,
                mongo_port=0,
                s3_port=0,
                persistent=False,
                start_kafka=False,
                start_mongo=False,
                start_sinks=True,
                smtp_sink_port=free_port(),
                sinks_http_port=free_port(),
            )
            infra.start()
            try:
                ceiling = await sinks_ceiling_at(
                    LOOPBACK, infra.smtp_sink_port, infra.sinks_url, **sizes
                )
            finally:
                infra.stop()
    figures = {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(ceiling).items()}
    print(json.dumps({**figures, "sinks": "in-process" if args.in_process else "child process"}))


if __name__ == "__main__":
    asyncio.run(main())
