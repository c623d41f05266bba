"""HTTP routes of the CSV import: upload (streamed), progress, and the per-row error report."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.http import from_state, unprocessable
from services.intake.imports.rules import ImportOptions, encoding_named
from services.intake.imports.store import ImportBusy, ImportStore, MongoImportStore
from services.intake.imports.usecases import (
    ImportRefused,
    ImportRequest,
    ImportRun,
    RunImport,
    summary_of,
)
from services.intake.settings import Settings
from services.intake.webhooks.submissions import SubmitLeads


@contextlib.asynccontextmanager
async def imports_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the chassis' lifespan: the database is connected, the intake store ready."""
    chassis: ServiceChassis = app.state.chassis
    settings: Settings = app.state.settings
    store = MongoImportStore(chassis.database, chassis.ledger)
    await store.ensure_indexes()
    app.state.import_store = store
    app.state.run_import = RunImport(
        store,
        SubmitLeads(app.state.accept_submissions),
        app.state.clock,
        chunk_rows=settings.import_chunk_rows,
    )
    yield


router = APIRouter(prefix="/v1/imports", tags=["imports"], lifespan=imports_lifespan)

Importer = Annotated[Principal, Depends(require(Role.MANAGER, Role.MARKETING, Role.INGEST))]
StoreDep = Annotated[ImportStore, Depends(from_state("import_store"))]
RunDep = Annotated[RunImport, Depends(from_state("run_import"))]
SettingsDep = Annotated[Settings, Depends(from_state("settings"))]

CSV_TYPES = frozenset(
    {"text/csv", "application/csv", "text/plain", "application/octet-stream", "text/x-csv"}
)
READ_BYTES = 64 * 1024
IMPORT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,80}$"
ImportId = Annotated[str, Query(pattern=IMPORT_ID_PATTERN)]
ImportIdPath = Annotated[str, Path(pattern=IMPORT_ID_PATTERN)]


class ChunkTimes(BaseModel):
    chunks: int
    rows_per_chunk: int
    p50: float
    p99: float


class ImportSummary(BaseModel):
    import_id: str
    status: str | None
    """running (interrupted or still going: send the file again to resume) or done."""
    filename: str | None = None
    encoding: str | None = None
    columns: dict[str, str]
    """Each header and the field it went to ("custom:<label>" or "ignore")."""
    rows_done: int
    last_line: int
    created: int
    merged: int
    duplicates: int = 0
    """Rows an interrupted earlier run had accepted without recording it: not counted twice."""
    rejected: int
    """Rows not imported; `errors_url` lists each with its line number and why."""
    rows_skipped: int = 0
    """Rows an earlier run of this import had committed: not sent again."""
    chunk_ms: ChunkTimes | None = None
    """This run's time per chunk (accept + progress), when it committed any."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    errors_url: str


def _chunk_times(run: ImportRun) -> ChunkTimes | None:
    if not run.chunks:
        return None
    seconds = sorted(c.seconds for c in run.chunks)
    return ChunkTimes(
        chunks=len(seconds),
        rows_per_chunk=max(c.rows for c in run.chunks),
        p50=round(seconds[len(seconds) // 2] * 1000, 1),
        p99=round(seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))] * 1000, 1),
    )


def _summary(
    doc: dict[str, Any], rows_skipped: int = 0, chunk_ms: ChunkTimes | None = None
) -> ImportSummary:
    summary = summary_of(doc)
    return ImportSummary(
        **summary,
        rows_skipped=rows_skipped,
        chunk_ms=chunk_ms,
        errors_url=f"/v1/imports/{summary['import_id']}/errors",
    )


class _FileTooLargeError(Exception):
    """The upload went past `import_max_bytes`."""


async def _limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > limit:
            raise _FileTooLargeError
        if chunk:
            yield chunk


async def _upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(READ_BYTES):
        yield chunk


def _mapping(text: str | None) -> dict[str, str] | None:
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise unprocessable((("query", "mapping"), f"not JSON: {error}")) from error
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise unprocessable(
            (
                ("query", "mapping"),
                'must be a JSON object of header -> field, e.g. {"Tel": "phone"}',
            )
        )
    return value


@router.post(
    "",
    response_model=ImportSummary,
    summary="Import leads from a CSV file (streamed; resumable by import_id)",
    responses={
        409: {"description": "this import is being run by another upload right now"},
        413: {"description": "the file is larger than the import limit"},
        415: {"description": "not text/csv (or multipart/form-data with a `file` part)"},
        422: {"description": "no header, a wrong mapping or an unknown encoding: nothing stored"},
    },
)
async def import_csv(  # noqa: PLR0917 - FastAPI passes each query parameter by name
    request: Request,
    _: Importer,
    run: RunDep,
    settings: SettingsDep,
    import_id: ImportId | None = None,
    encoding: Annotated[str, Query(max_length=20)] = "auto",
    mapping: Annotated[str | None, Query(max_length=20_000)] = None,
    source: Annotated[str, Query(min_length=1, max_length=200)] = "import",
    campaign: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    default_region: Annotated[str | None, Query(pattern=r"^[A-Za-z]{2}$")] = None,
    filename: Annotated[str | None, Query(max_length=300)] = None,
) -> ImportSummary:
    """Send the file as the body (`text/csv`; read as it arrives, never held whole) or as
    the `file` part of a form (with an optional `mapping` part). Rows are accepted in
    chunks through intake's batch path. Send the same file with the same `import_id`
    again after an interruption: rows already committed are skipped."""
    try:
        chosen = None if encoding.strip().lower() == "auto" else encoding_named(encoding)
    except ValueError as error:
        raise unprocessable((("query", "encoding"), str(error))) from error
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.import_max_bytes:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "file larger than the limit")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    mapping_text = mapping
    body: AsyncIterator[bytes]
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=5)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise unprocessable((("body", "file"), "a multipart upload needs a `file` part"))
        part = form.get("mapping")
        if isinstance(part, str):
            mapping_text = part
        filename = filename or upload.filename
        body = _upload_chunks(upload)
    elif content_type in CSV_TYPES or not content_type:
        body = request.stream()
    else:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"'{content_type}' is not a CSV upload: send text/csv or multipart/form-data",
        )
    wanted = ImportRequest(
        options=ImportOptions(
            import_id=import_id or uuid.uuid4().hex,
            source=source,
            campaign=campaign,
            default_region=default_region.upper() if default_region else None,
        ),
        encoding=chosen,
        mapping=_mapping(mapping_text),
        filename=filename,
    )
    try:
        result = await run(_limited(body, settings.import_max_bytes), wanted)
    except ImportRefused as refused:
        raise unprocessable(
            *((("body", where), why) for where, why in refused.problems)
        ) from refused
    except ImportBusy as busy:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"import {busy} is running in another upload; try again when it stops",
        ) from busy
    except _FileTooLargeError as error:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            "file larger than the limit; the rows before it were imported",
        ) from error
    return _summary(result.document, result.rows_skipped, _chunk_times(result))


@router.get(
    "/{import_id}",
    response_model=ImportSummary,
    summary="An import's progress and counts",
    responses={404: {"description": "no such import"}},
)
async def get_import(import_id: ImportIdPath, _: Importer, store: StoreDep) -> ImportSummary:
    doc = await store.get(import_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no import '{import_id}'")
    return _summary(doc)


@router.get(
    "/{import_id}/errors",
    response_class=StreamingResponse,
    summary="The rows an import rejected, as CSV: line, field, reason",
    responses={
        200: {"content": {"text/csv": {}}},
        404: {"description": "no such import"},
    },
)
async def import_errors(import_id: ImportIdPath, _: Importer, store: StoreDep) -> StreamingResponse:
    if await store.get(import_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no import '{import_id}'")

    async def lines() -> AsyncIterator[str]:
        yield _csv_line(["line", "field", "reason"])
        async for doc in store.problems(import_id):
            yield _csv_line([str(doc["line"]), doc["field"], doc["reason"]])

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{import_id}-errors.csv"'},
    )


def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(fields)
    return out.getvalue()
