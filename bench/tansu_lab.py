"""Helpers shared by the Tansu benches: start Tansu on an S3 server, count what it costs.

Not a bench itself; `tansu_crash.py` and `s3_servers.py` import it. Every process listens
on 127.0.0.1 only and is stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from leadflow.localinfra import free_port, port_open, tansu_binary

REPO = Path(__file__).resolve().parents[1]
S3RVER = REPO / ".leadflow" / "tools" / "node_modules" / ".bin" / "s3rver"
LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_open(port):
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port} after {timeout_s}s")
        time.sleep(0.05)


@dataclass
class Proc:
    """A child process we started, with its log file."""

    name: str
    args: Sequence[str]
    log_path: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                list(self.args),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        wait_for_port(self.port, self.process, timeout_s)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        wait_until_closed(self.port)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        wait_until_closed(self.port)


def wait_until_closed(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.05)


def s3rver(data_dir: Path, log_path: Path, port: int | None = None) -> Proc:
    """s3rver (npm) with the bucket `tansu`; it logs one line per request."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [str(S3RVER), "-a", LOOPBACK, "-p", str(port), "-d", str(data_dir)]
    return Proc("s3rver", [*args, "--configure-bucket", "tansu"], log_path, port)


S3RVER_REQUEST = re.compile(rb"info\S*: \S* (\d{3}) \d+ms")


def s3rver_requests(log_path: Path) -> int:
    """How many HTTP requests s3rver has answered so far (one log line each)."""
    return len(S3RVER_REQUEST.findall(log_path.read_bytes()))


def s3_env(port: int, key: str = "S3RVER", secret: str = "S3RVER") -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT": f"http://{LOOPBACK}:{port}",
        "AWS_ALLOW_HTTP": "true",
    }


def tansu(storage: str, log_path: Path, env: dict[str, str], port: int | None = None) -> Proc:
    port = port or free_port()
    listener = f"tcp://{LOOPBACK}:{port}"
    args = [
        tansu_binary(),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        storage,
    ]
    return Proc("tansu", args, log_path, port, env)


def bucket_objects(bucket_dir: Path) -> list[str]:
    """Object keys in an s3rver bucket directory (s3rver keeps each object as a file)."""
    suffixes = ("._S3rver_object.md5", "._S3rver_object", "._S3rver_metadata.json")
    keys = set()
    for path in bucket_dir.rglob("*"):
        if path.is_file():
            name = str(path.relative_to(bucket_dir))
            for suffix in suffixes:
                if name.endswith(suffix):
                    keys.add(name.removesuffix(suffix))
                    break
    return sorted(keys)


@contextlib.contextmanager
def stopped_at_exit(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


# --- Kafka helpers ------------------------------------------------------------------------


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def watermarks(
    bootstrap: str, topic: str, partitions: int, group: str | None = None
) -> dict[int, tuple[int, int, int | None]]:
    """(earliest, latest, committed offset of `group`) of every partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed: dict[int, int | None] = dict.fromkeys(range(partitions))
        if group is not None:  # first, so that a live group cannot move past `end` meanwhile
            for tp in tps:
                committed[tp.partition] = await consumer.committed(tp)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        return {tp.partition: (begin[tp], end[tp], committed[tp.partition]) for tp in tps}
    finally:
        await consumer.stop()


async def read_everything(
    bootstrap: str, topic: str, partitions: int, *, from_zero: bool, timeout_s: float = 8
) -> dict[int, list[tuple[int, str]]]:
    """Every record a group-less consumer gets per partition: (offset, value).

    `from_zero`: seek to offset 0 explicitly; otherwise `seek_to_beginning` (the broker's
    earliest offset). Reads until `timeout_s` passes with nothing new (bounded).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="none",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    seen: dict[int, list[tuple[int, str]]] = {p: [] for p in range(partitions)}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        if from_zero:
            for tp in tps:
                consumer.seek(tp, 0)
        else:
            await consumer.seek_to_beginning(*tps)
        quiet_since = time.monotonic()
        hard_deadline = time.monotonic() + 30
        while time.monotonic() - quiet_since < timeout_s and time.monotonic() < hard_deadline:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except Exception as error:  # noqa: BLE001 - a bench reports what the client saw
                seen.setdefault(-1, []).append((-1, f"{type(error).__name__}: {error}"))
                await asyncio.sleep(0.5)
                continue
            for tp, records in batch.items():
                if records:
                    quiet_since = time.monotonic()
                for record in records:
                    value = record.value.decode() if record.value else ""
                    seen[tp.partition].append((record.offset, value))
        return seen
    finally:
        await consumer.stop()


def producer(bootstrap: str, **options: object) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **options)
