"""Where the tests' Kafka and MongoDB come from.

`local`: Tansu and SecantusDB as child processes (this machine and CI have no Docker).
`containers`: Apache Kafka and MongoDB in testcontainers, when a Docker engine answers.
Every integration test runs once per kind; the containers kind skips, with the reason,
where there is no Docker engine.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from leadflow.localinfra import running


@dataclass(frozen=True)
class Infra:
    kind: str
    kafka_bootstrap: str
    mongo_url: str


def docker_unavailable_reason() -> str | None:
    try:
        import docker  # noqa: PLC0415

        docker.from_env(timeout=3).ping()
    except Exception as error:  # noqa: BLE001 - any failure means: no usable engine
        return f"no Docker engine reachable ({type(error).__name__}); the local kind covers this"
    return None


@contextlib.contextmanager
def local_infra() -> Iterator[Infra]:
    with (
        tempfile.TemporaryDirectory(prefix="leadflow-test-") as data_dir,
        running(Path(data_dir), persistent=False) as infra,
    ):
        yield Infra("local", infra.kafka_bootstrap, infra.mongo_url)


@contextlib.contextmanager
def container_infra() -> Iterator[Infra]:
    """Apache Kafka (KRaft) and a single-node MongoDB replica set, without authentication
    (a replica set with users would need a key file), reached on their mapped ports."""
    from pymongo import MongoClient  # noqa: PLC0415
    from testcontainers.community.kafka import KafkaContainer  # noqa: PLC0415
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415
    from testcontainers.core.waiting_utils import wait_for_logs  # noqa: PLC0415

    mongo = DockerContainer("mongo:8.0").with_command("--replSet rs0 --bind_ip_all")
    with (
        KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as kafka,
        mongo.with_exposed_ports(27017) as running_mongo,
    ):
        wait_for_logs(running_mongo, "Waiting for connections", timeout=60)
        running_mongo.exec(
            [
                "mongosh",
                "--quiet",
                "--eval",
                "rs.initiate({_id: 'rs0', members: [{_id: 0, host: 'localhost:27017'}]})",
            ]
        )
        host = running_mongo.get_container_host_ip()
        port = running_mongo.get_exposed_port(27017)
        url = f"mongodb://{host}:{port}/?directConnection=true"
        client: MongoClient[dict[str, object]] = MongoClient(url)
        try:
            deadline = time.monotonic() + 60
            while not client.admin.command("hello").get("isWritablePrimary"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the MongoDB container never became primary")
                time.sleep(0.5)
        finally:
            client.close()
        yield Infra("containers", kafka.get_bootstrap_server(), url)
