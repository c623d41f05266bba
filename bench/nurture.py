"""Nurture's send loop: enrollment steps falling due, sent to the local SMTP and SMS sinks by
two scheduler replicas, each in its own process; sends/s against the sinks' own raw ceiling
in the same run, send-time drift (arrival at the sink - due time) p50/p99, and duplicates
counted at the sinks.

    .venv/bin/python bench/nurture.py --steps 5000 --rate 250
    .venv/bin/python bench/nurture.py --steps 100000 --rate 250 --deadline 120
    .venv/bin/python bench/nurture.py --steps 5000 --rate 250 --profile /tmp/nurture-prof

What runs (all on 127.0.0.1), as `leadflow up` and two nurture replicas would run it:
- SecantusDB (on disk, or in memory with `--storage memory`) and the sinks
  (`python -m leadflow.sinks`: MailSink over SMTP, FakeTwilio over HTTP), each a child
  process started by `LocalInfra`, as `leadflow up` starts them;
- two replica processes, each with its own MongoDB client, `MongoNurtureStore`,
  `SendDueSteps` (the real SMTP and Twilio senders) and `DueWorkRunner`;
- this process: seeds, measures the sinks' ceiling, watches the sinks' arrival count and the
  load average, and reads what arrived from the sinks (`GET /sink/arrivals`) at the end.

The steps: `--steps` leads, each enrolled in a one-step sequence (half email, half SMS), their
steps due evenly at `--rate` per second, starting once seeding is done. Seeding writes the
contacts, enrollments and timers in bulk through the store's own document functions and
`MongoDueWork.schedule` (as consumed events would, but batched) and is not timed as sending.
Caps, quiet hours and the global rate are set out of the way: this measures the loop, not the
policy. The sinks send no status callbacks (nothing listens for them here).

Ceiling: `bench/nurture_sinks.py`'s plain aiosmtplib sends/s and plain httpx posts/s to the
same sinks child, best of three, in the same run. Every wait is bounded: the run ends
`--deadline` seconds after the last step's due time whatever arrived, and replicas that do not
stop within a grace period are terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.synchronize import Event as StopEvent
from pathlib import Path
from typing import Any

import httpx
import structlog
from nurture_sinks import arrivals_at, sinks_ceiling_at  # the ceiling, as 9A measures it
from procstat import cpu_seconds
from pymongo import InsertOne, monitoring

from leadflow.chassis.config_cache import VersionedCache
from leadflow.chassis.duework import DueWork, DueWorkRunner
from leadflow.chassis.store import EventLedger, connect
from leadflow.localinfra import LOOPBACK, LocalInfra, free_port
from leadflow.sinks import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN
from services.nurture.channels.email import (
    EmailIdentity,
    SmtpConfig,
    SmtpEmailSender,
)
from services.nurture.channels.sms import TwilioConfig, TwilioSmsSender
from services.nurture.channels.store import MongoChannelStore
from services.nurture.channels.tokens import LinkBuilder, TokenSigner
from services.nurture.channels.usecases import ChannelFeedback
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
from services.nurture.sending import (
    EmailSender,
    SendDueSteps,
    Senders,
    SendSettings,
    SmsSender,
    message_id_of,
)
from services.nurture.settings import Settings as NurtureSettings
from services.nurture.store import MongoNurtureStore, contact_document, enrollment_document
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
SEED_CHUNK = 2000
STOP_GRACE_S = 30.0


# --- a replica (its own process) -----------------------------------------------------------


@dataclass(frozen=True)
class ReplicaConfig:
    name: str
    mongo_url: str
    database: str
    smtp_port: int
    sinks_url: str
    batch: int
    concurrency: int
    smtp_connections: int
    in_flight: int
    lookahead_s: float
    profile_to: str | None = None


class _PhaseTimes:
    """Sums the phase times the send loop logs per batch (`due steps handled`); other log
    lines at warning or above go to stderr."""

    def __init__(self) -> None:
        self.batches = 0
        self.steps = 0
        self.seconds: dict[str, float] = defaultdict(float)
        self.largest_batch = 0

    def __call__(self, _: Any, level: str, event: MutableMapping[str, Any]) -> Any:
        if event.get("event") == "due steps handled":
            self.batches += 1
            self.steps += int(event["count"])
            self.largest_batch = max(self.largest_batch, int(event["count"]))
            for key, value in event.items():
                if key.endswith("_s"):
                    self.seconds[key] += float(value)
        elif level in ("warning", "error", "critical"):
            print(f"[{event.pop('event', '')}] {event}", file=sys.stderr, flush=True)
        raise structlog.DropEvent


class _Commands(monitoring.CommandListener):
    """Counts the replica's database requests per command and collection, with their round
    trip times (the server's queueing included): what a step costs the database."""

    def __init__(self) -> None:
        self._started: dict[int, tuple[str, float]] = {}
        self.calls: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        target = event.command.get(name)
        what = f"{name} {target}" if isinstance(target, str) else name
        self._started[event.request_id] = (what, time.perf_counter())

    def _ended(
        self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent
    ) -> None:
        what, began = self._started.pop(event.request_id, ("?", time.perf_counter()))
        self.calls[what] += 1
        self.seconds[what] += time.perf_counter() - began

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._ended(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._ended(event)

    def report(self, top: int = 14) -> dict[str, str]:
        busiest = sorted(self.seconds, key=self.seconds.__getitem__, reverse=True)[:top]
        return {w: f"{self.calls[w]} x, {self.seconds[w]:.1f} s" for w in busiest}


class _Timed:
    """A sender that counts its calls and their wall time (in flight, queueing included)."""

    def __init__(self, sender: EmailSender | SmsSender) -> None:
        self._sender = sender
        self.calls = 0
        self.seconds = 0.0
        self.slowest = 0.0

    async def send(self, outbound: Any) -> str:
        started = time.perf_counter()
        try:
            return await self._sender.send(outbound)
        finally:
            took = time.perf_counter() - started
            self.calls += 1
            self.seconds += took
            self.slowest = max(self.slowest, took)

    def report(self) -> dict[str, float]:
        mean_ms = 1000 * self.seconds / self.calls if self.calls else 0.0
        return {
            "calls": self.calls,
            "mean_ms": round(mean_ms, 1),
            "max_ms": round(1000 * self.slowest),
        }


def replica_process(config: ReplicaConfig, ready: Any, stop: StopEvent, results: Any) -> None:
    """The body of one replica process: run until `stop`, then put its phase times."""
    phases = _PhaseTimes()
    structlog.configure(processors=[structlog.processors.add_log_level, phases])
    profiler = cProfile.Profile() if config.profile_to else None
    if profiler is not None:
        profiler.enable()
    commands = _Commands()
    timed = asyncio.run(_run_replica(config, ready, stop, commands))
    if profiler is not None and config.profile_to:
        profiler.disable()
        profiler.dump_stats(config.profile_to)
    results.put(
        {
            "replica": config.name,
            "batches": phases.batches,
            "steps": phases.steps,
            "largest_batch": phases.largest_batch,
            **{k: round(v, 1) for k, v in sorted(phases.seconds.items())},
            **{channel: sender.report() for channel, sender in timed.items()},
            "requests": commands.report(),
        }
    )


async def _run_replica(
    config: ReplicaConfig, ready: Any, stop: StopEvent, commands: _Commands
) -> dict[str, _Timed]:
    """As `services/nurture/app.py` wires the send loop: the channels' store checks opt-outs
    and remembers SMS recipients, the SMTP and Twilio senders point at the sinks."""
    monitoring.register(commands)  # for the clients this process creates from now on
    client = connect(config.mongo_url, app_name=f"nurture-bench-{config.name}")
    db = client[config.database]
    ledger = EventLedger(client, db, handled_retention=timedelta(days=8), clock=utc_now)
    store = MongoNurtureStore(db, ledger)
    cache: VersionedCache[SequenceCatalog] = VersionedCache(
        store.sequences_version, store.sequence_catalog
    )
    links = LinkBuilder("http://127.0.0.1:9", TokenSigner("bench-secret"))
    email = SmtpEmailSender(
        SmtpConfig(
            host=LOOPBACK,
            port=config.smtp_port,
            start_tls=False,
            connections=config.smtp_connections,
        ),
        EmailIdentity(sender="Bench <bench@leadflow.example>", message_id_domain=DOMAIN),
        links,
        clock=utc_now,
    )
    text = TwilioSmsSender(
        TwilioConfig(
            base_url=config.sinks_url,
            account_sid=DEV_ACCOUNT_SID,
            auth_token=DEV_AUTH_TOKEN,
            from_number="+15005550006",
        ),
        links,
    )
    timed = {"email": _Timed(email), "sms": _Timed(text)}
    channels = MongoChannelStore(db, ledger)
    await channels.ensure_indexes()
    send = SendDueSteps(
        store,
        Sequences(store, cache, clock=utc_now),
        Senders(email=timed["email"], sms=timed["sms"]),
        SendSettings(
            policy=SendPolicy(
                max_lateness=timedelta(hours=1),
                quiet_hours=None,
                caps={"email": FrequencyCap(1000, 1000), "sms": FrequencyCap(1000, 1000)},
            ),
            default_timezone="UTC",
            rate_per_second={"email": 100_000, "sms": 100_000},
            concurrency=config.concurrency,
        ),
        clock=utc_now,
        opt_outs=channels,
        feedback=ChannelFeedback(channels, clock=utc_now),
    )
    runner = DueWorkRunner(
        store.due,
        kinds={SEND_KIND},
        fire=send,
        clock=utc_now,
        batch_size=config.batch,
        lease_s=60,
        idle_poll_s=0.25,
        in_flight=config.in_flight,
        lookahead_s=config.lookahead_s,
    )
    await client.admin.command("ping")
    task = asyncio.create_task(runner.run())
    ready.put(config.name)
    await asyncio.to_thread(stop.wait)
    await runner.stop(grace_s=STOP_GRACE_S / 2)
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await email.close()
    await text.close()
    await client.close()
    return timed


# --- seeding ---------------------------------------------------------------------------------


async def seed(
    url: str, database: str, steps: int, due_at: Callable[[int], datetime]
) -> dict[str, datetime]:
    """Contacts, enrollments and timers for `steps` leads, `SEED_CHUNK` at a time, each
    collection one bulk insert per chunk; each message id's due time."""
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
    for start in range(0, steps, SEED_CHUNK):
        contacts, enrollments, timers = [], [], []
        for i in range(start, min(steps, start + SEED_CHUNK)):
            channel = "email" if i % 2 == 0 else "sms"
            lead_id = f"bench-{i:06}"
            due = due_at(i)
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
            payload = {"enrollment_id": enrollment_id, "step": 0}
            timers.append(DueWork(send_key(enrollment_id, 0), SEND_KIND, due, payload))
            due_of[message_id_of(enrollment_id, 0)] = due
        await db["contacts"].bulk_write(contacts, ordered=False)
        await db["enrollments"].bulk_write(enrollments, ordered=False)
        await store.due.schedule(timers)
    await client.close()
    return due_of


# --- the run ---------------------------------------------------------------------------------


_STARTED = time.monotonic()


def _say(what: str) -> None:
    print(f"[{time.monotonic() - _STARTED:7.1f} s] {what}", flush=True)


@dataclass
class _Watch:
    """The load average and each process's CPU seconds while the steps fall due."""

    pids: dict[str, int | None]
    loads: list[float] = field(default_factory=list)
    cpu_before: dict[str, float] = field(default_factory=dict)
    cpu_after: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0

    def sample(self) -> None:
        self.loads.append(os.getloadavg()[0])
        if not self.cpu_before:
            self.cpu_before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
            self.started = time.monotonic()
        self.cpu_after = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.seconds = time.monotonic() - self.started

    def report(self) -> dict[str, Any]:
        loads = self.loads or [0.0]
        return {
            "load_1m_min_mean_max": [
                round(min(loads), 2),
                round(sum(loads) / len(loads), 2),
                round(max(loads), 2),
            ],
            "cpu_s_while_sending": {
                name: round(self.cpu_after.get(name, 0.0) - self.cpu_before.get(name, 0.0), 1)
                for name in self.pids
            },
            "cpu_watched_for_s": round(self.seconds, 1),
        }


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _per_s(arrivals: Sequence[tuple[str | None, str]]) -> float:
    """Arrivals per second from the first to the last."""
    times = [datetime.fromisoformat(at) for _, at in arrivals]
    span = (max(times) - min(times)).total_seconds() if len(times) > 1 else 0.0
    return len(times) / span if span > 0 else 0.0


async def _count_at_sinks(client: httpx.AsyncClient) -> int:
    counts = (await client.get("/sink/arrivals", params={"count": 1})).json()
    return int(counts["mail"]) + int(counts["sms"])


def _start_replicas(
    configs: Sequence[ReplicaConfig],
) -> tuple[list[multiprocessing.process.BaseProcess], StopEvent, Any]:
    spawn = multiprocessing.get_context("spawn")
    ready, results, stop = spawn.Queue(), spawn.Queue(), spawn.Event()
    processes: list[multiprocessing.process.BaseProcess] = [
        spawn.Process(
            target=replica_process, args=(c, ready, stop, results), name=f"nurture-{c.name}"
        )
        for c in configs
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + 60
    for _ in processes:
        ready.get(timeout=max(1.0, deadline - time.monotonic()))
    return processes, stop, results


def _stop_replicas(
    processes: Sequence[multiprocessing.process.BaseProcess], stop: StopEvent, results: Any
) -> list[dict[str, Any]]:
    stop.set()
    reports = []
    deadline = time.monotonic() + STOP_GRACE_S
    for _ in processes:
        try:
            reports.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
        except Exception:  # noqa: BLE001 - queue.Empty: the replica is reported missing
            break
    for process in processes:
        process.join(timeout=max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            print(f"{process.name} did not stop; terminating it", flush=True)
            process.terminate()
            process.join(timeout=5)
    return reports


async def bench(infra: LocalInfra, args: argparse.Namespace) -> dict[str, Any]:
    sinks = httpx.AsyncClient(base_url=infra.sinks_url, timeout=30)
    (await sinks.post("/sink/sms/callbacks", json={"enabled": False})).raise_for_status()
    ceiling = await sinks_ceiling_at(
        LOOPBACK, infra.smtp_sink_port, infra.sinks_url, messages=2000, concurrency=8, runs=3
    )
    _say(f"ceiling: {ceiling}")
    database = f"nurture_bench_{uuid.uuid4().hex[:8]}"
    configs = [
        ReplicaConfig(
            name=f"r{n}",
            mongo_url=infra.mongo_url,
            database=database,
            smtp_port=infra.smtp_sink_port,
            sinks_url=infra.sinks_url,
            batch=args.batch,
            concurrency=args.concurrency,
            smtp_connections=args.smtp_connections,
            in_flight=args.in_flight,
            lookahead_s=args.lookahead,
            profile_to=str(Path(args.profile) / f"replica-r{n}.prof") if args.profile else None,
        )
        for n in range(args.replicas)
    ]
    # Due times start once seeding is surely done; the margin left is reported.
    lead_time_s = 5 + args.steps / args.seed_rate
    first_due = utc_now() + timedelta(seconds=lead_time_s)
    seeding_started = time.perf_counter()
    due_of = await seed(
        infra.mongo_url,
        database,
        args.steps,
        lambda i: first_due + timedelta(seconds=i / args.rate),
    )
    seeded_in = time.perf_counter() - seeding_started
    _say(f"seeded {args.steps} steps in {seeded_in:.1f} s")
    margin_s = (first_due - utc_now()).total_seconds()
    processes, stop, results = _start_replicas(configs)
    watch = _Watch(
        {
            "secantusdb": infra.mongo.pid if infra.mongo else None,
            "sinks": infra.sinks.pid if infra.sinks else None,
            **{c.name: p.pid for c, p in zip(configs, processes, strict=True)},
        }
    )
    replicas_up_margin_s = (first_due - utc_now()).total_seconds()
    last_due = first_due + timedelta(seconds=(args.steps - 1) / args.rate)
    deadline = time.monotonic() + (last_due - utc_now()).total_seconds() + args.deadline
    count = 0
    try:
        while time.monotonic() < deadline and count < args.steps:
            await asyncio.sleep(1.0)
            count = await _count_at_sinks(sinks)
            if utc_now() >= first_due:
                watch.sample()
                if len(watch.loads) % 30 == 1:
                    _say(f"{count} arrived at the sinks, load {watch.loads[-1]:.1f}")
    finally:
        reports = _stop_replicas(processes, stop, results)
    _say(f"replicas stopped; {count} had arrived")
    await asyncio.sleep(0.5)  # anything in flight lands
    arrived = await arrivals_at(infra.sinks_url)
    _say("arrivals read")
    await sinks.aclose()
    everything = arrived.emails + arrived.texts
    drift = sorted(
        (datetime.fromisoformat(at) - due_of[mid]).total_seconds()
        for mid, at in everything
        if mid in due_of
    )
    sends_per_s, email_per_s, sms_per_s = (
        _per_s(everything),
        _per_s(arrived.emails),
        _per_s(arrived.texts),
    )
    dup = arrived.duplicates
    return {
        "steps": args.steps,
        "due_rate_per_s": args.rate,
        "replicas": args.replicas,
        "batch": args.batch,
        "in_flight": args.in_flight,
        "lookahead_s": args.lookahead,
        "storage": args.storage,
        "seeded_in_s": round(seeded_in, 1),
        "seed_margin_s": round(margin_s, 1),
        "replicas_up_margin_s": round(replicas_up_margin_s, 1),
        "arrived": len(everything),
        "emails": dup["emails"],
        "texts": dup["texts"],
        "duplicates": dup["email_duplicates"] + dup["text_duplicates"],
        "sends_per_s": round(sends_per_s, 1),
        "email_per_s": round(email_per_s, 1),
        "sms_per_s": round(sms_per_s, 1),
        "ceiling_smtp_per_s": round(ceiling.smtp_messages_per_s, 1),
        "ceiling_sms_per_s": round(ceiling.sms_posts_per_s, 1),
        "ratio_email": round(email_per_s / ceiling.smtp_messages_per_s, 3),
        "ratio_sms": round(sms_per_s / ceiling.sms_posts_per_s, 3),
        "ratio_to_lower_ceiling": round(
            sends_per_s / min(ceiling.smtp_messages_per_s, ceiling.sms_posts_per_s), 3
        ),
        "drift_p50_s": round(_quantile(drift, 0.5), 3) if drift else None,
        "drift_p99_s": round(_quantile(drift, 0.99), 3) if drift else None,
        "drift_max_s": round(drift[-1], 3) if drift else None,
        **watch.report(),
        "replica_phases_s": reports,
    }


def _profile_summary(directory: str, top: int = 35) -> None:
    import pstats  # noqa: PLC0415 - only with --profile

    files = sorted(str(p) for p in Path(directory).glob("replica-*.prof"))
    if files:
        stats = pstats.Stats(*files)
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=250.0, help="steps falling due per second")
    parser.add_argument("--replicas", type=int, default=2, choices=[1, 2, 3])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=2, help="batches in flight a replica")
    parser.add_argument(
        "--lookahead",
        type=float,
        default=NurtureSettings.model_fields["scheduler_lookahead_s"].default,
        help="seconds before their due time steps are claimed (the service's default)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="sends in flight a replica")
    parser.add_argument("--smtp-connections", type=int, default=8, help="per replica")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds past the last due")
    parser.add_argument("--storage", choices=["disk", "memory"], default="disk")
    parser.add_argument(
        "--seed-rate", type=float, default=600.0, help="steps/s seeding is assumed to reach"
    )
    parser.add_argument("--profile", default=None, help="a directory for each replica's cProfile")
    args = parser.parse_args()
    if not 0 < args.steps <= 100_000:
        raise SystemExit("--steps: 1 to 100,000")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="leadflow-bench-nurture-"))
    infra = LocalInfra(
        data_dir=data_dir,
        kafka_port=free_port(),
        mongo_port=free_port(),
        s3_port=free_port(),
        persistent=args.storage == "disk",
        start_kafka=False,
        start_sinks=True,
        smtp_sink_port=free_port(),
        sinks_http_port=free_port(),
    )
    infra.start()
    try:
        print(
            f"SecantusDB on {infra.mongo_url} ({args.storage}), sinks on {infra.sinks_url}",
            flush=True,
        )
        result = asyncio.run(bench(infra, args))
        print(result, flush=True)
    finally:
        infra.stop()
        _say("infrastructure stopped")
        shutil.rmtree(data_dir, ignore_errors=True)
    if args.profile:
        _profile_summary(args.profile)


if __name__ == "__main__":
    main()
