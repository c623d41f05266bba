"""`leadflow up`: start Kafka, MongoDB and the four services, supervise them, stop them all.

Every child runs in its own session (so Ctrl-C reaches only this supervisor, which then
stops services first and infrastructure last) and is told by the kernel to die if the
supervisor dies, so no process outlives `up`. A child that dies, a service or a piece of
infrastructure, is started again on the same port and data after a back-off that doubles
with each restart (1 s, 2 s, 4 s ... at most 30 s); Tansu only once its S3 server (SeaweedFS)
answers again. Unless `LEADFLOW_SINKS=false`, a local mail sink and fake SMS provider run
too, nurture sends to them, and a page lists what was "sent".
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import structlog
from aiokafka.errors import KafkaError
from pydantic_settings import BaseSettings

from leadflow.chassis.auth import Role
from leadflow.chassis.kafka import ensure_topics
from leadflow.config import SERVICES, StackSettings
from leadflow.keys import create_key, key_is_valid
from leadflow.localinfra import LOOPBACK, ChildProcess, LocalInfra, port_open

log = structlog.get_logger(__name__)

MAX_RESTART_BACKOFF_S = 30.0


class StopRequested(Exception):  # noqa: N818 - a request, not a failure
    """SIGINT or SIGTERM arrived."""


def service_settings(name: str) -> BaseSettings:
    """The service's own settings, as it will read them from the environment."""
    module = __import__(f"services.{name}.settings", fromlist=["Settings"])
    settings: BaseSettings = module.Settings()
    return settings


def _service_port(name: str) -> int:
    return int(getattr(service_settings(name), "port"))  # noqa: B009


def _local_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


class Step(StrEnum):
    """What the supervisor does about one child on one pass."""

    NOTHING = "nothing"  # alive
    SCHEDULE = "schedule"  # just found dead: restart after the back-off
    WAIT = "wait"  # dead, back-off not over (or what it needs is still down)
    RESTART = "restart"


@dataclass
class Backoff:
    """When a dead child may be started again."""

    restarts: int = 0
    next_restart_at: float = 0.0  # 0: no restart scheduled

    def delay_s(self) -> float:
        return min(2.0**self.restarts, MAX_RESTART_BACKOFF_S)


def next_step(*, alive: bool, backoff: Backoff, now: float, needs_down: bool = False) -> Step:
    """The decision for one child; `needs_down`: something it needs (Tansu's S3) is down."""
    if alive:
        return Step.NOTHING
    if backoff.next_restart_at == 0.0:
        return Step.SCHEDULE
    if now < backoff.next_restart_at or needs_down:
        return Step.WAIT
    return Step.RESTART


@dataclass
class ServiceProcess:
    name: str
    port: int
    child: ChildProcess
    backoff: Backoff = field(default_factory=Backoff)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class StackReady:
    services: dict[str, str]
    admin_key: str
    kafka_bootstrap: str
    mongo_url: str
    kafka_storage: str
    started_in_s: float
    sinks_page: str | None = None
    """The page listing the emails and texts "sent" (None without the local sinks)."""


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.infra = LocalInfra(
            data_dir=self.data_dir,
            kafka_port=settings.kafka_port,
            mongo_port=settings.mongo_port,
            s3_port=settings.s3_port,
            persistent=settings.persistent,
            start_kafka=settings.kafka_bootstrap is None,
            start_mongo=settings.mongo_url is None,
            start_sinks=settings.sinks,
            smtp_sink_port=settings.mail_sink_port,
            sinks_http_port=settings.sinks_http_port,
            sinks_inbound_url=f"{_local_url(_service_port('nurture'))}/v1/sms/inbound",
        )
        self.kafka_bootstrap = settings.kafka_bootstrap or self.infra.kafka_bootstrap
        self.mongo_url = settings.effective_mongo_url()
        self.services: list[ServiceProcess] = []
        self.infra_backoff: dict[str, Backoff] = {}
        self.ready: StackReady | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> StackReady:
        started = time.monotonic()
        self._check_ports_free()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.infra.start(timeout_s=self.settings.startup_timeout_s)
        asyncio.run(self._prepare_kafka())
        admin_key = asyncio.run(self._admin_key())
        for name in SERVICES:
            self._start_service(name)
        self._wait_until_ready(started + self.settings.startup_timeout_s)
        ready = StackReady(
            services={s.name: s.url for s in self.services},
            admin_key=admin_key,
            kafka_bootstrap=self.kafka_bootstrap,
            mongo_url=self.mongo_url,
            kafka_storage=self.infra.kafka_storage
            if self.settings.kafka_bootstrap is None
            else "external",
            started_in_s=time.monotonic() - started,
            sinks_page=f"{self.infra.sinks_url}/" if self.settings.sinks else None,
        )
        self.ready = ready
        self._write_state(ready)
        return ready

    def _check_ports_free(self) -> None:
        """Say which port is taken and how to move it, before starting anything."""
        wanted = {f"LEADFLOW_{name.upper()}_PORT": _service_port(name) for name in SERVICES}
        if self.infra.start_kafka:
            wanted["LEADFLOW_KAFKA_PORT"] = self.settings.kafka_port
            if self.settings.persistent:
                wanted["LEADFLOW_S3_PORT"] = self.settings.s3_port
        if self.infra.start_mongo:
            wanted["LEADFLOW_MONGO_PORT"] = self.settings.mongo_port
        if self.infra.start_sinks:
            wanted["LEADFLOW_MAIL_SINK_PORT"] = self.settings.mail_sink_port
            wanted["LEADFLOW_SINKS_HTTP_PORT"] = self.settings.sinks_http_port
        taken = [f"{port} ({variable})" for variable, port in wanted.items() if port_open(port)]
        if taken:
            raise RuntimeError(
                "ports already in use: "
                + ", ".join(taken)
                + "; stop what uses them (another `leadflow up`?) or set those variables"
            )

    async def _prepare_kafka(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                await ensure_topics(self.kafka_bootstrap, self.settings.topic_partitions)
            except (KafkaError, OSError) as error:
                if time.monotonic() > deadline:
                    raise
                log.info("waiting for kafka", error=repr(error))
                await asyncio.sleep(0.5)
            else:
                return

    async def _admin_key(self) -> str:
        """The bootstrap admin key: made on the first `up`, reused while it is valid."""
        key_file = self.data_dir / "admin.key"
        if key_file.exists():
            key = key_file.read_text().strip()
            if await key_is_valid(self.mongo_url, self.settings.identity_database, key):
                return key
        issued = await create_key(
            self.mongo_url, self.settings.identity_database, Role.ADMIN, "bootstrap admin"
        )
        key_file.write_text(issued.key + "\n")
        key_file.chmod(0o600)
        return issued.key

    def _start_service(self, name: str) -> None:
        prefix = f"LEADFLOW_{name.upper()}_"
        env = {
            f"{prefix}KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            f"{prefix}MONGO_URL": self.mongo_url,
            f"{prefix}IDENTITY_DATABASE": self.settings.identity_database,
            f"{prefix}TOPIC_PARTITIONS": str(self.settings.topic_partitions),
        }
        if name == "nurture" and self.infra.start_sinks:
            env.update(self._nurture_sink_env())
        if name == "assignment" and self.infra.start_sinks:
            env.update(self._assignment_sink_env())
        port = _service_port(name)
        child = ChildProcess(
            name,
            [sys.executable, "-m", "leadflow", "service", name],
            self.data_dir / "logs" / f"{name}.log",
            port=port,
            env=env,
        )
        child.start()
        self.services.append(ServiceProcess(name, port, child))

    def _nurture_sink_env(self) -> dict[str, str]:
        """Point nurture's SMTP and Twilio at the local sinks, and its links and webhooks at
        itself, unless the environment already says otherwise."""
        from leadflow.sinks import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN  # noqa: PLC0415

        wanted = {
            "SMTP_HOST": LOOPBACK,
            "SMTP_PORT": str(self.settings.mail_sink_port),
            "SMTP_STARTTLS": "false",
            "TWILIO_BASE_URL": self.infra.sinks_url,
            "TWILIO_ACCOUNT_SID": DEV_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEV_AUTH_TOKEN,
            "PUBLIC_URL": _local_url(_service_port("nurture")),
        }
        return _unless_set("LEADFLOW_NURTURE_", wanted)

    def _assignment_sink_env(self) -> dict[str, str]:
        """Send reps' notification emails to the local mail sink, unless told otherwise."""
        wanted = {"SMTP_HOST": LOOPBACK, "SMTP_PORT": str(self.settings.mail_sink_port)}
        return _unless_set("LEADFLOW_ASSIGNMENT_", wanted)

    def _wait_until_ready(self, deadline: float) -> None:
        pending = {s.name: s for s in self.services}
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for name, service in list(pending.items()):
                    if not service.child.alive():
                        raise RuntimeError(
                            f"{name} exited during start-up; see {service.child.log_path}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{service.url}/readyz").status_code == 200:
                            del pending[name]
                if pending and time.monotonic() > deadline:
                    raise TimeoutError(f"not ready in time: {', '.join(sorted(pending))}")
                time.sleep(0.2)

    def _write_state(self, ready: StackReady) -> None:
        state: dict[str, Any] = {
            "supervisor_pid": os.getpid(),
            "services": {
                s.name: {"url": s.url, "docs": f"{s.url}/docs", "pid": s.child.pid}
                for s in self.services
            },
            "infra": {c.name: c.pid for c in self.infra.children},
            "admin_key_file": str(self.data_dir / "admin.key"),
            "kafka_bootstrap": ready.kafka_bootstrap,
            "mongo_url": ready.mongo_url,
            "kafka_storage": ready.kafka_storage,
            "started_in_s": round(ready.started_in_s, 2),
            "sinks_page": ready.sinks_page,
        }
        (self.data_dir / "stack.json").write_text(json.dumps(state, indent=2))

    def all_pids(self) -> list[int]:
        children = [s.child for s in self.services] + self.infra.children
        return [c.pid for c in children if c.pid is not None]

    def supervise_once(self, now: float) -> None:
        """Restart whatever died, infrastructure first, each after its back-off."""
        restarted = False
        for child in list(self.infra.children):
            backoff = self.infra_backoff.setdefault(child.name, Backoff())
            needs_down = any(not needed.alive() for needed in self.infra.needs(child))
            step = next_step(alive=child.alive(), backoff=backoff, now=now, needs_down=needs_down)
            if self._act(step, child, backoff, now, kind="infrastructure"):
                restarted = True
                if child is self.infra.kafka:
                    if self.infra.kafka_storage == "memory":
                        log.warning("kafka restarted with its log in memory: its records are gone")
                    self._recreate_topics()
        for service in self.services:
            step = next_step(alive=service.child.alive(), backoff=service.backoff, now=now)
            restarted |= self._act(step, service.child, service.backoff, now, kind="service")
        if restarted and self.ready is not None:
            self._write_state(self.ready)  # the new pids

    def _act(
        self, step: Step, child: ChildProcess, backoff: Backoff, now: float, kind: str
    ) -> bool:
        """Carry out one step; True when the child was started again."""
        if step is Step.SCHEDULE:
            code = child.process.returncode if child.process else None
            backoff.next_restart_at = now + backoff.delay_s()
            log.warning(
                f"{kind} exited; restarting",
                name=child.name,
                exit_code=code,
                in_s=backoff.delay_s(),
                restarts=backoff.restarts,
            )
            return False
        if step is not Step.RESTART:
            return False
        backoff.restarts += 1
        backoff.next_restart_at = 0.0
        child.start()
        log.warning(f"{kind} restarted", name=child.name, pid=child.pid, port=child.port)
        if kind == "infrastructure":
            try:
                child.wait_until_listening(self.settings.startup_timeout_s)
            except (RuntimeError, TimeoutError) as error:
                # Dead again: the next pass schedules another try, later.
                log.warning("infrastructure did not come back", name=child.name, error=str(error))
        return True

    def _recreate_topics(self) -> None:
        """A memory-mode Tansu comes back empty: make the topics again, with their partitions
        (on SeaweedFS they are still there, and this only checks)."""
        try:
            asyncio.run(self._prepare_kafka())
        except (KafkaError, OSError) as error:
            log.exception("could not recreate topics after restarting kafka", error=repr(error))

    def stop(self) -> None:
        for service in reversed(self.services):
            service.child.stop(timeout_s=20)
        self.infra.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "stack.json").unlink()


@contextlib.contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    """One `up` per data directory: a second one would fight over ports and files."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "up.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise RuntimeError(f"another `leadflow up` is using {data_dir}") from error
        yield


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    def request_stop(signum: int, _: FrameType | None) -> None:
        # Later signals are ignored so that a second Ctrl-C cannot cut the orderly stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise StopRequested(signal.Signals(signum).name)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _unless_set(prefix: str, wanted: dict[str, str]) -> dict[str, str]:
    """The settings in `wanted` under `prefix`, except those the environment already sets."""
    return {
        f"{prefix}{key}": value
        for key, value in wanted.items()
        if f"{prefix}{key}" not in os.environ
    }
