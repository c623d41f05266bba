"""Persistence of CSV imports, in intake's database.

- `imports`: one document per import, `_id` = import id: its options, how many data rows
  were committed (`rows_done`, what a resumed import skips), the counts, and who is
  running it (`owner` until `owner_until`: one runner per import across replicas).
- `import_errors`: one document per problem of a rejected row (line, field, reason),
  written in the same transaction as the progress that includes the row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pymongo import ASCENDING, ReplaceOne, ReturnDocument

from leadflow.chassis.store import Collection as MongoCollection
from leadflow.chassis.store import (
    Database,
    Document,
    DuplicateKeyError,
    EventLedger,
    Session,
)
from services.intake.imports.rules import RowProblem


class ImportBusy(Exception):  # noqa: N818 - names the conflict
    """Another runner holds this import (a second upload of it is still going)."""


@dataclass(frozen=True, slots=True)
class ChunkProgress:
    rows_done: int
    """Data rows of the file handled so far, this chunk included."""
    last_line: int
    created: int
    merged: int
    rejected: int
    duplicates: int = 0
    problems: Sequence[RowProblem] = ()


class ImportStore(Protocol):
    async def ensure_indexes(self) -> None: ...

    async def claim(
        self, import_id: str, token: str, start: Mapping[str, Any], now: datetime, lease: timedelta
    ) -> Document:
        """Take the import (creating it with `start` when new); its document. Raises
        ImportBusy while another runner holds it."""
        ...

    async def record_chunk(
        self, import_id: str, token: str, chunk: ChunkProgress, now: datetime, lease: timedelta
    ) -> None:
        """Add a committed chunk's counts and problems; raises ImportBusy when the import
        was taken over meanwhile (nothing recorded)."""
        ...

    async def complete(self, import_id: str, token: str, now: datetime) -> Document: ...

    async def let_go(self, import_id: str, token: str) -> None: ...

    async def get(self, import_id: str) -> Document | None: ...

    def problems(self, import_id: str) -> AsyncIterator[Document]: ...


class MongoImportStore:
    def __init__(self, database: Database, ledger: EventLedger) -> None:
        self._imports: MongoCollection = database["imports"]
        self._errors: MongoCollection = database["import_errors"]
        self._ledger = ledger

    async def ensure_indexes(self) -> None:
        await self._errors.create_index([("import_id", ASCENDING), ("line", ASCENDING)])

    async def claim(
        self, import_id: str, token: str, start: Mapping[str, Any], now: datetime, lease: timedelta
    ) -> Document:
        try:
            doc = await self._imports.find_one_and_update(
                {
                    "_id": import_id,
                    "$or": [{"owner": None}, {"owner": token}, {"owner_until": {"$lte": now}}],
                },
                {
                    "$set": {"owner": token, "owner_until": now + lease, "updated_at": now},
                    "$setOnInsert": {
                        **start,
                        "status": "running",
                        "rows_done": 0,
                        "last_line": 1,
                        "created": 0,
                        "merged": 0,
                        "duplicates": 0,
                        "rejected": 0,
                        "started_at": now,
                    },
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError as error:
            raise ImportBusy(import_id) from error
        if doc is None:
            raise ImportBusy(import_id)
        return doc

    async def record_chunk(
        self, import_id: str, token: str, chunk: ChunkProgress, now: datetime, lease: timedelta
    ) -> None:
        async def work(session: Session) -> tuple[None, list[Any]]:
            result = await self._imports.update_one(
                {"_id": import_id, "owner": token, "rows_done": {"$lt": chunk.rows_done}},
                {
                    "$set": {
                        "rows_done": chunk.rows_done,
                        "last_line": chunk.last_line,
                        "owner_until": now + lease,
                        "updated_at": now,
                    },
                    "$inc": {
                        "created": chunk.created,
                        "merged": chunk.merged,
                        "duplicates": chunk.duplicates,
                        "rejected": chunk.rejected,
                    },
                },
                session=session,
            )
            if result.matched_count != 1:
                raise ImportBusy(import_id)
            if chunk.problems:
                await self._errors.bulk_write(
                    [
                        ReplaceOne(
                            {"_id": error_id},
                            {
                                "import_id": import_id,
                                "line": p.line,
                                "field": p.field,
                                "reason": p.reason,
                            },
                            upsert=True,
                        )
                        for error_id, p in numbered_problems(import_id, chunk.problems)
                    ],
                    ordered=False,
                    session=session,
                )
            return None, []

        await self._ledger.commit(work)

    async def complete(self, import_id: str, token: str, now: datetime) -> Document:
        doc = await self._imports.find_one_and_update(
            {"_id": import_id, "owner": token},
            {"$set": {"status": "done", "owner": None, "finished_at": now, "updated_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise ImportBusy(import_id)
        return doc

    async def let_go(self, import_id: str, token: str) -> None:
        await self._imports.update_one(
            {"_id": import_id, "owner": token}, {"$set": {"owner": None}}
        )

    async def get(self, import_id: str) -> Document | None:
        return await self._imports.find_one({"_id": import_id})

    async def problems(self, import_id: str) -> AsyncIterator[Document]:
        async for doc in self._errors.find({"import_id": import_id}).sort("_id", ASCENDING):
            yield doc


def numbered_problems(
    import_id: str, problems: Sequence[RowProblem]
) -> list[tuple[str, RowProblem]]:
    """Each problem with its id: by line, then its number within the line (a row may have
    several), so the report lists them in file order and a chunk written again replaces
    its own problems."""
    counts: dict[int, int] = {}
    numbered = []
    for problem in problems:
        n = counts.get(problem.line, 0)
        counts[problem.line] = n + 1
        numbered.append((f"{import_id}:{problem.line:010d}:{n:03d}", problem))
    return numbered
