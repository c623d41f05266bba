"""Contract tests: each service's store Protocol, run against the MongoDB store (on a real
MongoDB-wire server) and against its in-memory twin in tests/fakes, with the same asserts.

A test module defines a `store` fixture with `params=STORE_KINDS`; `mongo_parts` gives the
Mongo variant a fresh database and a real `EventLedger` (the `parts` fixture, for modules
that test the Mongo store only).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from leadflow.chassis.store import Database, Document, EventLedger, connect

STORE_KINDS = [
    pytest.param("memory", marks=pytest.mark.unit),
    pytest.param("mongo", marks=pytest.mark.integration),
]

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def contract_mongo_url() -> Iterator[str]:
    """A MongoDB-wire server for the contract tests (SecantusDB, in memory, on loopback)."""
    from secantus import SecantusDBServer  # noqa: PLC0415 - only the Mongo variant needs it

    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=":memory:")
    server.start()
    try:
        yield f"{server.uri.rstrip('/')}/?directConnection=true"
    finally:
        server.stop()


@dataclass
class MongoParts:
    client: AsyncMongoClient[Document]
    database: Database
    ledger: EventLedger


@contextlib.asynccontextmanager
async def mongo_parts(request: pytest.FixtureRequest) -> AsyncIterator[MongoParts]:
    """A fresh database and a real ledger on the contract tests' server, dropped after."""
    url: str = request.getfixturevalue("contract_mongo_url")
    client = connect(url, app_name="leadflow-contract-tests")
    database = client[f"contract_{uuid.uuid4().hex[:10]}"]
    ledger = EventLedger(client, database, handled_retention=timedelta(days=8), clock=lambda: NOW)
    await ledger.ensure_indexes()
    try:
        yield MongoParts(client, database, ledger)
    finally:
        await client.drop_database(database.name)
        await client.close()


@pytest.fixture
async def parts(request: pytest.FixtureRequest) -> AsyncIterator[MongoParts]:
    """`mongo_parts` as a fixture, for the modules that test a Mongo store only."""
    async with mongo_parts(request) as made:
        yield made
