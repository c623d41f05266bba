"""Service replicas as real processes (`python -m leadflow service <name>`), as ops would run
them: several per service, one consumer group, one database, on the same broker. Used by
the scale-out and shutdown tests and by the benchmarks."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from leadflow.localinfra import ChildProcess, free_port


@dataclass
class Replica:
    service: str
    index: int
    port: int
    child: ChildProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lease handed over, in-flight work lost in the process."""
        if self.child.process is not None and self.child.alive():
            os.kill(self.child.process.pid, signal.SIGKILL)
            self.child.process.wait(timeout=10)


@dataclass
class ReplicaSet:
    kafka_bootstrap: str
    mongo_url: str
    run_id: str
    logs: Path
    replicas: list[Replica] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self, service: str, count: int, *, launch: bool = True) -> list[Replica]:
        """Add `count` replicas of `service`; started now unless `launch` is False."""
        prefix = f"LEADFLOW_{service.upper()}_"
        started = []
        for index in range(count):
            port = free_port()
            env = {
                f"{prefix}KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                f"{prefix}MONGO_URL": self.mongo_url,
                f"{prefix}DATABASE": f"leadflow_{service}_{self.run_id}",
                f"{prefix}IDENTITY_DATABASE": f"leadflow_identity_{self.run_id}",
                f"{prefix}CONSUMER_GROUP": f"leadflow-{service}-{self.run_id}",
                f"{prefix}PORT": str(port),
                f"{prefix}LOG_LEVEL": "WARNING",
                **self.extra_env,
            }
            child = ChildProcess(
                f"{service}-{index}",
                [sys.executable, "-m", "leadflow", "service", service],
                self.logs / f"{service}-{index}.log",
                port=port,
                env=env,
            )
            if launch:
                child.start()
            replica = Replica(service, index, port, child)
            self.replicas.append(replica)
            started.append(replica)
        return started

    def of(self, service: str) -> list[Replica]:
        return [r for r in self.replicas if r.service == service]

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        pending = [r for r in self.replicas if r.child.process is not None]
        with httpx.Client(timeout=2.0) as client:
            while pending:
                replica = pending[0]
                if not replica.child.alive():
                    raise RuntimeError(f"{replica.child.name} exited; see {replica.child.log_path}")
                try:
                    if client.get(f"{replica.url}/readyz").status_code == 200:
                        pending.pop(0)
                        continue
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready: {[r.child.name for r in pending]}")
                time.sleep(0.2)

    def stop(self) -> None:
        for replica in reversed(self.replicas):
            replica.child.stop(timeout_s=20)

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)
