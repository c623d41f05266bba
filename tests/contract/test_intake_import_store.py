"""The CSV import store's contract, on MongoDB and in memory: one runner per import,
progress that only moves forward, problems in file order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from services.intake.imports.rules import RowProblem
from services.intake.imports.store import ChunkProgress, ImportBusy, ImportStore, MongoImportStore
from tests.contract.conftest import NOW, STORE_KINDS, mongo_parts
from tests.fakes.intake_imports import InMemoryImportStore

LEASE = timedelta(minutes=2)
START = {"filename": "leads.csv", "encoding": "cp949", "source": "expo", "columns": {}}


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ImportStore]:
    if request.param == "memory":
        yield InMemoryImportStore()
        return
    async with mongo_parts(request) as parts:
        mongo = MongoImportStore(parts.database, parts.ledger)
        await mongo.ensure_indexes()
        yield mongo


def chunk(rows_done: int, *problems: RowProblem, created: int = 0) -> ChunkProgress:
    return ChunkProgress(
        rows_done=rows_done,
        last_line=rows_done + 1,
        created=created,
        merged=1,
        rejected=len({p.line for p in problems}),
        duplicates=2,
        problems=problems,
    )


async def test_a_new_import_starts_at_its_first_row(store: ImportStore) -> None:
    doc = await store.claim("imp", "t1", START, NOW, LEASE)
    assert doc["status"] == "running"
    assert (doc["rows_done"], doc["created"], doc["rejected"]) == (0, 0, 0)
    assert doc["encoding"] == "cp949"
    assert (await store.get("imp")) is not None
    assert await store.get("other") is None


async def test_an_import_held_by_one_runner_is_refused_to_another_until_its_hold_lapses(
    store: ImportStore,
) -> None:
    await store.claim("imp", "t1", START, NOW, LEASE)
    with pytest.raises(ImportBusy):
        await store.claim("imp", "t2", START, NOW + timedelta(seconds=30), LEASE)
    again = await store.claim("imp", "t1", START, NOW + timedelta(seconds=30), LEASE)
    assert again["status"] == "running"
    taken = await store.claim("imp", "t2", START, NOW + LEASE + timedelta(minutes=1), LEASE)
    assert taken["status"] == "running"


async def test_letting_go_frees_the_import_at_once(store: ImportStore) -> None:
    await store.claim("imp", "t1", START, NOW, LEASE)
    await store.let_go("imp", "t2")  # not its holder: changes nothing
    with pytest.raises(ImportBusy):
        await store.claim("imp", "t2", START, NOW, LEASE)
    await store.let_go("imp", "t1")
    assert (await store.claim("imp", "t2", START, NOW, LEASE))["status"] == "running"


async def test_chunks_add_their_counts_and_problems_in_file_order(store: ImportStore) -> None:
    await store.claim("imp", "t1", START, NOW, LEASE)
    await store.record_chunk(
        "imp",
        "t1",
        chunk(500, RowProblem(12, "phone", "bad"), RowProblem(3, "email", "bad"), created=400),
        NOW,
        LEASE,
    )
    await store.record_chunk(
        "imp",
        "t1",
        chunk(
            1000,
            RowProblem(700, "phone", "a"),
            RowProblem(700, "Company size", "b"),
            created=300,
        ),
        NOW,
        LEASE,
    )
    doc = await store.get("imp")
    assert doc is not None
    assert (doc["rows_done"], doc["last_line"]) == (1000, 1001)
    assert (doc["created"], doc["merged"], doc["duplicates"], doc["rejected"]) == (700, 2, 4, 3)
    problems = [(p["line"], p["field"], p["reason"]) async for p in store.problems("imp")]
    assert problems == [
        (3, "email", "bad"),
        (12, "phone", "bad"),
        (700, "phone", "a"),
        (700, "Company size", "b"),
    ]


async def test_progress_by_a_runner_that_lost_the_import_is_not_recorded(
    store: ImportStore,
) -> None:
    await store.claim("imp", "t1", START, NOW, LEASE)
    await store.claim("imp", "t2", START, NOW + LEASE, LEASE)  # t1's hold lapsed
    with pytest.raises(ImportBusy):
        await store.record_chunk(
            "imp", "t1", chunk(500, RowProblem(2, "phone", "x")), NOW + LEASE, LEASE
        )
    await store.record_chunk("imp", "t2", chunk(500, created=1), NOW + LEASE, LEASE)
    with pytest.raises(ImportBusy):  # the same rows twice: not counted twice
        await store.record_chunk("imp", "t2", chunk(500, created=1), NOW + LEASE, LEASE)
    doc = await store.get("imp")
    assert doc is not None
    assert (doc["rows_done"], doc["created"]) == (500, 1)
    assert [p async for p in store.problems("imp")] == []


async def test_a_completed_import_says_so_and_is_free(store: ImportStore) -> None:
    await store.claim("imp", "t1", START, NOW, LEASE)
    with pytest.raises(ImportBusy):
        await store.complete("imp", "t2", NOW)
    done = await store.complete("imp", "t1", NOW + timedelta(seconds=5))
    assert done["status"] == "done"
    assert done["finished_at"] == NOW + timedelta(seconds=5)
    assert (await store.claim("imp", "t2", START, NOW, LEASE))["status"] == "done"


async def test_problems_belong_to_their_import(store: ImportStore) -> None:
    for import_id in ("a", "b"):
        await store.claim(import_id, "t", START, NOW, LEASE)
        await store.record_chunk(
            import_id, "t", chunk(10, RowProblem(5, "phone", import_id)), NOW, LEASE
        )
    assert [p["reason"] async for p in store.problems("a")] == ["a"]
