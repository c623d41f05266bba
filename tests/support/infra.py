"""Where the tests' Kafka and MongoDB come from.

`local`: Tansu and SecantusDB as child processes (this machine and CI have no Docker).
`containers`: Apache Kafka and MongoDB in testcontainers, when a Docker engine answers.
Every integration test runs once per kind; the containers kind skips, with the reason,
where there is no Docker engine.
"""

from __future__ import annotations

import contextlib
import tempfile
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
    from testcontainers.kafka import KafkaContainer  # noqa: PLC0415
    from testcontainers.mongodb import MongoDbContainer  # noqa: PLC0415

    with (
        KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as kafka,
        MongoDbContainer("mongo:8.0").with_command("--replSet rs0 --bind_ip_all") as mongo,
    ):
        mongo.exec(
            "mongosh --quiet --eval "
            '\'rs.initiate({_id:"rs0",members:[{_id:0,host:"localhost:27017"}]})\''
        )
        url = f"{mongo.get_connection_url()}/?directConnection=true"
        yield Infra("containers", kafka.get_bootstrap_server(), url)
