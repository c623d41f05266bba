"""The local MongoDB `leadflow up` starts (leadflow.localdb) aborts a transaction that a
killed process left open once the transaction lifetime has passed, so the documents it
held (the outbox sequence, counters) are writable again: 20 s under `leadflow up`, 2 s here;
and it runs concurrent transactions' statements at once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from leadflow.localinfra import LOCAL_TRANSACTION_LIFETIME_S, LocalInfra, free_port

pytestmark = pytest.mark.integration

LIFETIME_S = 2.0

# A replica's transaction caught by SIGKILL between its write and its commit.
HOLDER = """
import sys
import threading
from pymongo import MongoClient
client = MongoClient(sys.argv[1])
session = client.start_session()
session.start_transaction()
client.demo.sequences.update_one({"_id": "outbox"}, {"$inc": {"seq": 1}}, session=session)
print("holding", flush=True)
sys.stdin.read()
"""


def started_mongo(data_dir: Path, **options: Any) -> LocalInfra:
    """The local MongoDB alone, as `leadflow up` starts it (in memory)."""
    infra = LocalInfra(
        data_dir=data_dir,
        kafka_port=0,
        mongo_port=free_port(),
        s3_port=0,
        persistent=False,
        start_kafka=False,
        **options,
    )
    infra.start()
    return infra


def next_sequence(client: MongoClient[dict[str, Any]]) -> None:
    with client.start_session() as session, session.start_transaction():
        client.demo.sequences.update_one({"_id": "outbox"}, {"$inc": {"seq": 1}}, session=session)


def test_a_killed_process_transaction_stops_holding_its_documents_after_the_lifetime(
    tmp_path: Path,
) -> None:
    assert 15.0 < LOCAL_TRANSACTION_LIFETIME_S < 60.0  # above TRANSACTION_TIMEOUT_S
    infra = started_mongo(tmp_path, transaction_lifetime_s=LIFETIME_S)
    client: MongoClient[dict[str, Any]] = MongoClient(infra.mongo_url)
    try:
        client.demo.sequences.insert_one({"_id": "outbox", "seq": 0})
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, infra.mongo_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        holder.kill()
        holder.wait()
        killed_at = time.monotonic()

        # Right after the kill, the killed transaction still holds the document.
        with pytest.raises(OperationFailure) as conflict:
            next_sequence(client)
        assert conflict.value.has_error_label("TransientTransactionError")

        # Once the lifetime has passed the server has aborted it, and the write commits.
        while True:
            try:
                next_sequence(client)
                break
            except OperationFailure as error:
                assert error.has_error_label("TransientTransactionError")
                assert time.monotonic() - killed_at < LIFETIME_S + 10, "still held"
                time.sleep(0.2)
        freed_after = time.monotonic() - killed_at
        assert freed_after >= LIFETIME_S * 0.5
        # The killed process's increment never landed; ours did, once.
        assert client.demo.sequences.find_one({"_id": "outbox"}) == {"_id": "outbox", "seq": 1}
    finally:
        client.close()
        infra.stop()


def test_a_transaction_does_not_wait_for_the_statement_another_one_is_running(
    tmp_path: Path,
) -> None:
    """Two replicas' transactions at once: a short statement of one is not held up until
    a long statement of the other has finished (SecantusDB alone holds it up)."""
    infra = started_mongo(tmp_path)
    client: MongoClient[dict[str, Any]] = MongoClient(infra.mongo_url)
    try:
        ids = [f"lead-{i:05d}" for i in range(1500)]
        client.demo.facts.insert_many([{"_id": i} for i in ids])
        finished: list[str] = []
        started = threading.Event()

        def long_statement() -> None:
            with client.start_session() as session, session.start_transaction():
                client.demo.facts.find_one({"_id": ids[0]}, session=session)
                started.set()
                # About a second on this server, in one statement: its `$in` costs the
                # square of the list.
                facts = client.demo.facts
                assert facts.count_documents({"_id": {"$in": ids}}, session=session) == 1500
            finished.append("long")

        other = threading.Thread(target=long_statement)
        other.start()
        assert started.wait(10)
        time.sleep(0.1)  # the long statement under way
        with client.start_session() as session, session.start_transaction():
            client.demo.other.insert_one({"short": True}, session=session)
        finished.append("short")
        other.join(30)
        assert finished == ["short", "long"]
    finally:
        client.close()
        infra.stop()
