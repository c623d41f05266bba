"""The import flow on the in-memory store: chunks, progress, resuming, duplicates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import ExecutionTimeout

from services.intake.imports.rules import ImportOptions
from services.intake.imports.store import ChunkProgress
from services.intake.imports.usecases import ImportRefused, ImportRequest, RunImport
from services.intake.webhooks.submissions import (
    MappedLead,
    SubmissionOutcome,
    SubmissionResult,
)
from tests.fakes.intake_imports import InMemoryImportStore

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
CHUNK = 10


class Accepted:
    """Stands in for the intake core's batch accept: an external id is accepted once."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.batches: list[list[str]] = []

    async def __call__(self, leads: Sequence[MappedLead]) -> list[SubmissionResult]:
        self.batches.append([lead.external_id for lead in leads])
        results = []
        for lead in leads:
            outcome: SubmissionOutcome = "duplicate" if lead.external_id in self.seen else "created"
            self.seen.add(lead.external_id)
            results.append(SubmissionResult(outcome, lead_id=lead.external_id))
        return results


class ClientGone(Exception):  # noqa: N818
    pass


def rows(count: int) -> list[bytes]:
    return [b"name,email\n"] + [f"P{n},p{n}@example.com\n".encode() for n in range(count)]


async def body(lines: list[bytes], *, stop_after: int | None = None) -> AsyncIterator[bytes]:
    for n, line in enumerate(lines):
        if stop_after is not None and n >= stop_after:
            raise ClientGone
        yield line


def request(import_id: str = "imp") -> ImportRequest:
    return ImportRequest(options=ImportOptions(import_id=import_id), encoding="utf-8")


def runner(store: InMemoryImportStore, accept: Accepted) -> RunImport:
    return RunImport(store, accept, lambda: NOW, chunk_rows=CHUNK, min_chunk_rows=2)


async def test_rows_are_accepted_in_chunks_and_the_totals_recorded() -> None:
    store, accept = InMemoryImportStore(), Accepted()
    run = await runner(store, accept)(body(rows(25)), request())
    assert [len(b) for b in accept.batches] == [10, 10, 5]
    assert accept.batches[0][0] == "csv:imp:2"  # the file's line 2: the first data row
    assert (run.document["status"], run.document["created"], run.document["rows_done"]) == (
        "done",
        25,
        25,
    )
    assert [c.rows for c in run.chunks] == [10, 10, 5]


async def test_an_interrupted_import_resumes_after_its_last_chunk() -> None:
    store, accept = InMemoryImportStore(), Accepted()
    lines = rows(35)
    with pytest.raises(ClientGone):
        await runner(store, accept)(body(lines, stop_after=27), request())
    stopped = await store.get("imp")
    assert stopped is not None
    assert (stopped["status"], stopped["rows_done"], stopped.get("owner")) == ("running", 20, None)

    run = await runner(store, accept)(body(lines), request())

    assert run.rows_skipped == 20
    submitted = [i for batch in accept.batches for i in batch]
    assert len(submitted) == len(set(submitted)) == 35
    assert (run.document["created"], run.document["duplicates"]) == (35, 0)


class DiesBeforeRecording(InMemoryImportStore):
    """The process dies between a chunk's accept and its progress record, once."""

    def __init__(self, on_chunk: int) -> None:
        super().__init__()
        self.chunks = 0
        self.on_chunk = on_chunk

    async def record_chunk(
        self, import_id: str, token: str, chunk: ChunkProgress, now: datetime, lease: timedelta
    ) -> None:
        self.chunks += 1
        if self.chunks == self.on_chunk:
            raise ClientGone
        await super().record_chunk(import_id, token, chunk, now, lease)


async def test_a_chunk_accepted_but_not_recorded_comes_back_as_duplicates() -> None:
    store, accept = DiesBeforeRecording(on_chunk=2), Accepted()
    with pytest.raises(ClientGone):
        await runner(store, accept)(body(rows(30)), request())

    run = await runner(store, accept)(body(rows(30)), request())

    assert (run.document["created"], run.document["duplicates"]) == (30 - CHUNK, CHUNK)
    assert len(accept.seen) == 30


async def test_a_finished_import_sent_again_sends_nothing() -> None:
    store, accept = InMemoryImportStore(), Accepted()
    await runner(store, accept)(body(rows(12)), request())
    batches = len(accept.batches)
    run = await runner(store, accept)(body(rows(12)), request())
    assert len(accept.batches) == batches
    assert run.document["created"] == 12


async def test_rejected_rows_are_recorded_with_their_lines() -> None:
    store, accept = InMemoryImportStore(), Accepted()
    lines = [b"name,email,phone\n", b"A,a@example.com,\n", b"B,,\n", b"\n", b"C,,\n"]
    run = await runner(store, accept)(body(lines), request())
    assert (run.document["created"], run.document["rejected"]) == (1, 2)
    assert [p["line"] async for p in store.problems("imp")] == [3, 5]


@pytest.mark.parametrize("lines", [[], [b"\n", b"  \n"]])
async def test_a_file_without_a_header_is_refused_and_nothing_is_stored(
    lines: list[bytes],
) -> None:
    store, accept = InMemoryImportStore(), Accepted()
    with pytest.raises(ImportRefused):
        await runner(store, accept)(body(lines), request())
    assert store.imports == {}
    assert accept.batches == []


class SlowDatabase(Accepted):
    """A database that cannot commit more than `most` rows within the time limit."""

    def __init__(self, most: int) -> None:
        super().__init__()
        self.most = most
        self.refused = 0

    async def __call__(self, leads: Sequence[MappedLead]) -> list[SubmissionResult]:
        if len(leads) > self.most:
            self.refused += 1
            raise ExecutionTimeout("operation exceeded time limit")
        return await super().__call__(leads)


async def test_a_database_too_slow_for_a_chunk_gets_smaller_ones() -> None:
    store, accept = InMemoryImportStore(), SlowDatabase(most=3)

    run = await runner(store, accept)(body(rows(25)), request())

    assert (run.document["status"], run.document["created"]) == ("done", 25)
    assert max(len(b) for b in accept.batches) <= 3
    assert len(accept.seen) == 25
    # The first 10 refused, each half of 5 refused and accepted as 2 + 3; the rest of the
    # run keeps chunks of 2.
    assert accept.refused == 3
    assert [len(b) for b in accept.batches][:4] == [2, 3, 2, 3]
    assert {len(b) for b in accept.batches[4:]} <= {1, 2}


async def test_a_database_that_takes_nothing_fails_the_import_which_can_resume() -> None:
    store, accept = InMemoryImportStore(), SlowDatabase(most=0)
    with pytest.raises(ExecutionTimeout):
        await runner(store, accept)(body(rows(25)), request())
    stopped = await store.get("imp")
    assert stopped is not None
    assert (stopped["status"], stopped["rows_done"], stopped.get("owner")) == ("running", 0, None)
