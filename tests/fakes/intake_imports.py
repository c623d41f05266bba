"""In-memory CSV import store: the same Protocol as `MongoImportStore`, held to the same
contract tests (tests/contract/test_intake_import_store.py)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from leadflow.chassis.store import Document
from services.intake.imports.store import ChunkProgress, ImportBusy, numbered_problems


class InMemoryImportStore:
    def __init__(self) -> None:
        self.imports: dict[str, Document] = {}
        self.errors: dict[str, Document] = {}

    async def ensure_indexes(self) -> None:
        return None

    async def claim(
        self, import_id: str, token: str, start: Mapping[str, Any], now: datetime, lease: timedelta
    ) -> Document:
        doc = self.imports.get(import_id)
        if doc is None:
            doc = self.imports[import_id] = {
                "_id": import_id,
                **start,
                "status": "running",
                "rows_done": 0,
                "last_line": 1,
                "created": 0,
                "merged": 0,
                "duplicates": 0,
                "rejected": 0,
                "started_at": now,
            }
        elif doc.get("owner") not in (None, token) and doc["owner_until"] > now:
            raise ImportBusy(import_id)
        doc.update(owner=token, owner_until=now + lease, updated_at=now)
        return copy.deepcopy(doc)

    async def record_chunk(
        self, import_id: str, token: str, chunk: ChunkProgress, now: datetime, lease: timedelta
    ) -> None:
        doc = self.imports.get(import_id)
        if doc is None or doc.get("owner") != token or doc["rows_done"] >= chunk.rows_done:
            raise ImportBusy(import_id)
        doc.update(
            rows_done=chunk.rows_done,
            last_line=chunk.last_line,
            owner_until=now + lease,
            updated_at=now,
        )
        for name in ("created", "merged", "duplicates", "rejected"):
            doc[name] += getattr(chunk, name)
        for error_id, problem in numbered_problems(import_id, chunk.problems):
            self.errors[error_id] = {
                "_id": error_id,
                "import_id": import_id,
                "line": problem.line,
                "field": problem.field,
                "reason": problem.reason,
            }

    async def complete(self, import_id: str, token: str, now: datetime) -> Document:
        doc = self.imports.get(import_id)
        if doc is None or doc.get("owner") != token:
            raise ImportBusy(import_id)
        doc.update(status="done", owner=None, finished_at=now, updated_at=now)
        return copy.deepcopy(doc)

    async def let_go(self, import_id: str, token: str) -> None:
        doc = self.imports.get(import_id)
        if doc is not None and doc.get("owner") == token:
            doc["owner"] = None

    async def get(self, import_id: str) -> Document | None:
        doc = self.imports.get(import_id)
        return None if doc is None else copy.deepcopy(doc)

    async def problems(self, import_id: str) -> AsyncIterator[Document]:
        for error_id in sorted(self.errors):
            if self.errors[error_id]["import_id"] == import_id:
                yield copy.deepcopy(self.errors[error_id])
