"""The local servers `leadflow up` starts: on loopback only, side by side, and durable.

Two persistent stacks run at once (the tests start several): each one's SeaweedFS listens
only on 127.0.0.1 and only on ports of its own, and leaves no socket file behind.
Acknowledged Kafka records survive a SIGKILL of the S3 server and one of the broker, each
restarted as `up` restarts it; acknowledged MongoDB inserts survive a SIGKILL of the
database. Without a working SeaweedFS the broker still starts, with its log in memory and
a warning that says so.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import MongoClient

from leadflow.localinfra import ChildProcess, LocalInfra, free_port, running
from tests.support.kafka import read_topic

pytestmark = pytest.mark.integration

_TCP_LISTEN = "0A"


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, from /proc."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != _TCP_LISTEN or inode not in inodes:
                continue
            address_hex, port_hex = local.split(":")
            if len(address_hex) == 8:
                address = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address_hex)[::-1])
            else:
                address = f"ipv6:{address_hex}"
            found.add((address, int(port_hex, 16)))
    return found


def test_two_persistent_stacks_listen_on_loopback_only_each_on_its_own_ports_and_clean_up(
    tmp_path: Path,
) -> None:
    with (
        running(tmp_path / "a", persistent=True) as first,
        running(tmp_path / "b", persistent=True) as second,
    ):
        ports_of: list[set[int]] = []
        for infra in (first, second):
            assert infra.kafka_storage == "seaweedfs"
            assert infra.s3 is not None
            assert infra.s3.pid is not None
            weed_ports = json.loads((infra.data_dir / "kafka" / "weed-ports.json").read_text())
            ours = {infra.s3_port, *weed_ports.values()}
            listening = listening_sockets(infra.s3.pid)
            assert {address for address, _ in listening} == {"127.0.0.1"}, listening
            assert {port for _, port in listening} == ours
            for child in infra.children:
                assert child.pid is not None
                assert {address for address, _ in listening_sockets(child.pid)} == {"127.0.0.1"}
            ports_of.append(ours)
        assert not ports_of[0] & ports_of[1]
    left_behind = [
        path.name
        for port in ports_of[0] | ports_of[1]
        for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")
    ]
    assert left_behind == []


def kill_and_restart(child: ChildProcess) -> None:
    """SIGKILL, then start it again on the same port and data, as `up` does."""
    assert child.process is not None
    os.kill(child.process.pid, signal.SIGKILL)
    child.process.wait(timeout=10)
    child.start()
    child.wait_until_listening(60)


async def produce(bootstrap: str, topic: str, prefix: str, count: int) -> dict[str, str]:
    """Send `count` keyed records with acks=all; each acked value -> "partition:offset"."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=30_000)
    await producer.start()
    try:
        acked = {}
        for n in range(count):
            value = f"{prefix}-{n}"
            meta = await producer.send_and_wait(topic, value.encode(), key=str(n % 7).encode())
            acked[value] = f"{meta.partition}:{meta.offset}"
        return acked
    finally:
        await producer.stop()


async def test_acked_records_survive_a_kill_of_the_s3_server_and_one_of_kafka(
    tmp_path: Path,
) -> None:
    with running(tmp_path, persistent=True) as infra:
        assert infra.kafka_storage == "seaweedfs"
        assert infra.s3 is not None
        assert infra.kafka is not None
        topic = f"durability-{uuid.uuid4().hex[:6]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 3, 1)])
        finally:
            await admin.close()

        acked = await produce(infra.kafka_bootstrap, topic, "before", 40)
        kill_and_restart(infra.s3)  # Tansu stays up meanwhile
        acked |= await produce(infra.kafka_bootstrap, topic, "s3-back", 40)
        kill_and_restart(infra.kafka)
        acked |= await produce(infra.kafka_bootstrap, topic, "kafka-back", 40)

        assert len(set(acked.values())) == len(acked), "an offset was acknowledged twice"
        read = await read_topic(infra.kafka_bootstrap, topic, until=len(acked), timeout_s=60)
        values = {value.decode() for value, _ in read}
        assert sorted(set(acked) - values) == []


def test_acknowledged_inserts_survive_a_kill_of_mongodb(tmp_path: Path) -> None:
    infra = LocalInfra(
        data_dir=tmp_path,
        kafka_port=free_port(),
        mongo_port=free_port(),
        s3_port=free_port(),
        persistent=True,
        start_kafka=False,
    )
    infra.start()
    try:
        assert infra.mongo is not None
        ids = [uuid.uuid4().hex for _ in range(20)]
        client: MongoClient[dict[str, Any]] = MongoClient(infra.mongo_url)
        try:
            for document_id in ids:
                client["durability"]["acked"].insert_one({"_id": document_id})
        finally:
            client.close()
        kill_and_restart(infra.mongo)  # right after the last acknowledgement
        client = MongoClient(infra.mongo_url, serverSelectionTimeoutMS=30_000)
        try:
            documents = client["durability"]["acked"].find({"_id": {"$in": ids}})
            found = {document["_id"] for document in documents}
        finally:
            client.close()
        assert sorted(set(ids) - found) == []
    finally:
        infra.stop()


@pytest.mark.parametrize(
    ("weed", "reason"),
    [(None, "not installed"), ("/bin/false", "did not start")],
    ids=["no-weed", "weed-exits"],
)
def test_without_a_working_seaweedfs_kafka_keeps_its_log_in_memory_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weed: str | None, reason: str
) -> None:
    monkeypatch.setattr("leadflow.localinfra.weed_binary", lambda: weed)
    infra = LocalInfra(
        data_dir=tmp_path,
        kafka_port=free_port(),
        mongo_port=free_port(),
        s3_port=free_port(),
        persistent=True,
        start_mongo=False,
    )
    with structlog.testing.capture_logs() as logs:
        infra.start(timeout_s=30)
    try:
        assert infra.kafka_storage == "memory"
        assert infra.s3 is None
        assert infra.kafka is not None
        assert infra.kafka.alive()
        warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
        assert any(reason in w and "in memory only" in w for w in warnings), warnings
    finally:
        infra.stop()
