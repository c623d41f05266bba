"""Nurture's send loop: enrollment steps falling due, sent to the local SMTP and SMS sinks by
two scheduler replicas; sends/s against the sinks' own raw ceiling in the same run, send-time
drift (arrival at the sink - due time) p50/p99, and duplicates counted at the sinks.

    .venv/bin/python bench/nurture.py                          # 20,000 steps at 250/s
    .venv/bin/python bench/nurture.py --steps 100000 --rate 250
    .venv/bin/python bench/nurture.py --steps 5000 --rate 400 --storage memory

What runs (all on 127.0.0.1, in this process unless said):
- SecantusDB as `leadflow up` runs it (on disk, --sync-on-commit) in a child process, or in
  memory with `--storage memory`;
- the sinks (`leadflow.sinks`: MailSink over SMTP, FakeTwilio over HTTP) in threads;
- two replicas, each its own MongoDB client, `MongoNurtureStore`, `SendDueSteps` (the real
  SMTP and Twilio senders) and `DueWorkRunner`, as two nurture processes would run them.

The steps: `--steps` leads, each enrolled in a one-step sequence (half email, half SMS), their
steps due evenly over `--steps / --rate` seconds starting a few seconds after seeding. The
seeding writes documents in bulk (contacts, enrollments, timers), as many consumed events
would, and is not timed as sending. Caps, quiet hours and the global rate are set out of the
way: this measures the loop, not the policy.

Ceiling: `bench/nurture_sinks.py`'s plain aiosmtplib sends/s and plain httpx posts/s to the
same sinks, best of three, in the same run. Every wait is bounded (`--deadline`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from nurture_sinks import (  # the sinks' ceiling and duplicate count, as 9A measures them
    _message_id_of_sms,
    duplicate_sends,
    sinks_ceiling,
)
from pymongo import InsertOne

from leadflow.chassis.config_cache import VersionedCache
from leadflow.chassis.duework import DueWork, DueWorkRunner
from leadflow.chassis.store import EventLedger, MongoDueWork, connect
from leadflow.localinfra import LocalInfra, free_port
from leadflow.sinks import FakeTwilio, MailSink, running_sinks
from services.nurture.channels.email import (
    EmailIdentity,
    SmtpConfig,
    SmtpEmailSender,
)
from services.nurture.channels.sms import TwilioConfig, TwilioSmsSender
from services.nurture.channels.tokens import LinkBuilder, TokenSigner
from services.nurture.rules import (
    SEND_KIND,
    Enrollment,
    EnrollmentStatus,
    FrequencyCap,
    LeadContact,
    NurtureSequence,
    SendPolicy,
    SequenceCatalog,
    SequenceRecord,
    Step,
    send_key,
)
from services.nurture.sending import SendDueSteps, Senders, SendSettings
from services.nurture.store import (
    MongoNurtureStore,
    contact_document,
    enrollment_document,
)
from services.nurture.usecases import Sequences
from shared.events import Consent, Contact, utc_now

DOMAIN = "bench.leadflow.example"
SEQUENCES = {
    "email": NurtureSequence(
        "bench-email",
        "Bench email",
        (
            Step(
                channel="email",
                delay_hours=0,
                subject="Hi {{ first_name }}",
                body="Hello {{ name }}, here is this week's offer.",
                html="<p>Hello <b>{{ name }}</b>, <a href='https://acme.example/o'>offer</a></p>",
            ),
        ),
    ),
    "sms": NurtureSequence(
        "bench-sms",
        "Bench SMS",
        (Step(channel="sms", delay_hours=0, body="Hi {{ first_name }}, 10% off this week"),),
    ),
}


@dataclass
class Replica:
    runner: DueWorkRunner
    senders: Senders
    close: Any


def replica(
    url: str, database: str, sinks: tuple[MailSink, FakeTwilio], *, name: str, batch: int
) -> Replica:
    mail, sms = sinks
    client = connect(url, app_name=f"nurture-bench-{name}")
    db = client[database]
    ledger = EventLedger(client, db, handled_retention=timedelta(days=8), clock=utc_now)
    store = MongoNurtureStore(db, ledger)
    cache: VersionedCache[SequenceCatalog] = VersionedCache(
        store.sequences_version, store.sequence_catalog
    )
    links = LinkBuilder("http://127.0.0.1:9", TokenSigner("bench-secret"))
    email = SmtpEmailSender(
        SmtpConfig(host=mail.host, port=mail.port, start_tls=False, connections=8),
        EmailIdentity(sender="Bench <bench@leadflow.example>", message_id_domain=DOMAIN),
        links,
        clock=utc_now,
    )
    text = TwilioSmsSender(
        TwilioConfig(
            base_url=sms.base_url,
            account_sid=sms.account_sid,
            auth_token=sms.auth_token,
            from_number="+15005550006",
        ),
        links,
    )
    senders = Senders(email=email, sms=text)
    send = SendDueSteps(
        store,
        Sequences(store, cache, clock=utc_now),
        senders,
        SendSettings(
            policy=SendPolicy(
                max_lateness=timedelta(hours=1),
                quiet_hours=None,
                caps={"email": FrequencyCap(1000, 1000), "sms": FrequencyCap(1000, 1000)},
            ),
            default_timezone="UTC",
            rate_per_second={"email": 100_000, "sms": 100_000},
            concurrency=32,
        ),
        clock=utc_now,
    )
    runner = DueWorkRunner(
        store.due,
        kinds={SEND_KIND},
        fire=send,
        clock=utc_now,
        batch_size=batch,
        lease_s=60,
        idle_poll_s=0.25,
    )

    async def close() -> None:
        await email.close()
        await text.close()
        await client.close()

    return Replica(runner, senders, close)


async def seed(
    url: str, database: str, steps: int, first_due: datetime, rate: float
) -> dict[str, datetime]:
    """Contacts, enrollments and timers for `steps` leads, in bulk; each message id's due time."""
    client = connect(url, app_name="nurture-bench-seed")
    db = client[database]
    ledger = EventLedger(client, db, handled_retention=timedelta(days=8), clock=utc_now)
    store = MongoNurtureStore(db, ledger)
    await store.ensure_indexes()
    now = utc_now()
    await store.insert_missing_sequences(
        [SequenceRecord(s, 1, now, now) for s in SEQUENCES.values()]
    )
    due_of: dict[str, datetime] = {}
    chunk = 1000
    for start in range(0, steps, chunk):
        contacts, enrollments, timers = [], [], []
        for i in range(start, min(steps, start + chunk)):
            channel = "email" if i % 2 == 0 else "sms"
            lead_id = f"bench-{i:06}"
            due = first_due + timedelta(seconds=i / rate)
            contact = LeadContact(
                lead_id,
                contact=Contact(
                    name=f"Lead {i}",
                    email=f"{lead_id}@example.com",
                    phone=f"+8210{i:08}",
                    timezone="UTC",
                ),
                contact_as_of=now,
                consent=Consent(email=True, sms=True),
                consent_as_of=now,
            )
            enrollment_id = f"e{i:06}"
            enrollment = Enrollment(
                enrollment_id=enrollment_id,
                lead_id=lead_id,
                sequence_id=SEQUENCES[channel].sequence_id,
                sequence_version=1,
                reason="bench",
                status=EnrollmentStatus.ACTIVE,
                enrolled_at=now,
                triggered_at=now,
                current_step=0,
                next_send_at=due,
                channels=("email", "sms"),
            )
            contacts.append(InsertOne(contact_document(contact)))
            enrollments.append(InsertOne(enrollment_document(enrollment)))
            timers.append(
                DueWork(
                    send_key(enrollment_id, 0),
                    SEND_KIND,
                    due,
                    {"enrollment_id": enrollment_id, "step": 0},
                )
            )
            due_of[f"{enrollment_id}.0"] = due
        await db["contacts"].bulk_write(contacts, ordered=False)
        await db["enrollments"].bulk_write(enrollments, ordered=False)
        await MongoDueWork(db).schedule(timers)
    await client.close()
    return due_of


def _arrived(mail: MailSink, sms: FakeTwilio) -> list[tuple[str | None, str]]:
    """(our message id, arrival time) of everything at the sinks."""
    found: list[tuple[str | None, str]] = []
    for m in mail.messages:
        header = m.header("Message-ID") or ""
        found.append((header.strip("<>").split("@")[0] or None, m.received_at))
    found += [(_message_id_of_sms(s.status_callback), s.created_at) for s in sms.messages]
    return found


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(url: str, args: argparse.Namespace) -> dict[str, Any]:
    with running_sinks() as (mail, sms):
        sms.send_callbacks = False  # nobody listens for delivery reports here
        ceiling = await sinks_ceiling(mail, sms, messages=2000, concurrency=8, runs=3)
        database = f"nurture_bench_{uuid.uuid4().hex[:8]}"
        seeding_started = time.perf_counter()
        # Due times start after seeding is surely done (seeding runs ~5-15k documents/s).
        lead_time = 10 + args.steps * 3 / 8000
        first_due = utc_now() + timedelta(seconds=lead_time)
        due_of = await seed(url, database, args.steps, first_due, args.rate)
        seeded_in = time.perf_counter() - seeding_started
        replicas = [
            replica(url, database, (mail, sms), name=f"r{n}", batch=args.batch)
            for n in range(args.replicas)
        ]
        tasks = [asyncio.create_task(r.runner.run()) for r in replicas]
        window = args.steps / args.rate
        deadline = (
            time.monotonic() + (first_due - utc_now()).total_seconds() + window + args.deadline
        )
        started_sending = None
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            count = len(mail.messages) + len(sms.messages)
            if count and started_sending is None:
                started_sending = time.perf_counter()
            if count >= args.steps:
                break
        await asyncio.gather(*(r.runner.stop() for r in replicas))
        await asyncio.gather(*tasks)
        for r in replicas:
            await r.close()
        arrived = _arrived(mail, sms)
        duplicates = duplicate_sends(mail, sms)
        drift = sorted(
            (datetime.fromisoformat(at) - due_of[mid]).total_seconds()
            for mid, at in arrived
            if mid in due_of
        )
        times = sorted(datetime.fromisoformat(at) for _, at in arrived)
        span = (times[-1] - times[0]).total_seconds() if len(times) > 1 else 1e-9
        sends_per_s = len(arrived) / span
        # Steps fall due at --rate/s: the loop cannot send faster than they fall due; the
        # ratio says how much of the sinks' raw capacity that rate (and drift) used.
        raw = min(ceiling.smtp_messages_per_s, ceiling.sms_posts_per_s)
        client = connect(url, app_name="nurture-bench-cleanup")
        await client.drop_database(database)
        await client.close()
        return {
            "steps": args.steps,
            "due_rate_per_s": args.rate,
            "replicas": args.replicas,
            "batch": args.batch,
            "seeded_in_s": round(seeded_in, 1),
            "arrived": len(arrived),
            "emails": duplicates["emails"],
            "texts": duplicates["texts"],
            "duplicates": duplicates["email_duplicates"] + duplicates["text_duplicates"],
            "sends_per_s": round(sends_per_s, 1),
            "ceiling_smtp_per_s": round(ceiling.smtp_messages_per_s, 1),
            "ceiling_sms_per_s": round(ceiling.sms_posts_per_s, 1),
            "ratio_to_ceiling": round(sends_per_s / raw, 3),
            "drift_p50_s": round(_quantile(drift, 0.5), 3) if drift else None,
            "drift_p99_s": round(_quantile(drift, 0.99), 3) if drift else None,
            "drift_max_s": round(drift[-1], 3) if drift else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=250.0, help="steps falling due per second")
    parser.add_argument("--replicas", type=int, default=2, choices=[1, 2, 3])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds past the last due")
    parser.add_argument("--storage", choices=["disk", "memory"], default="disk")
    args = parser.parse_args()
    if not 0 < args.steps <= 100_000:
        raise SystemExit("--steps: 1 to 100,000")
    data_dir = Path(tempfile.mkdtemp(prefix="leadflow-bench-nurture-"))
    infra = LocalInfra(
        data_dir=data_dir,
        kafka_port=free_port(),
        mongo_port=free_port(),
        s3_port=free_port(),
        persistent=args.storage == "disk",
        start_kafka=False,
    )
    infra.start()
    try:
        print(f"SecantusDB on {infra.mongo_url} ({args.storage})", flush=True)
        result = asyncio.run(bench(infra.mongo_url, args))
        print(result)
    finally:
        infra.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
