"""The CSV import flow: stream a file's bytes, cut them into rows, accept the rows in
chunks through intake's batch path, and record progress after each chunk so that the same
import sent again continues where it stopped.

Memory stays bounded whatever the file's size: the bytes are read as they arrive (the
HTTP server stops reading the socket while a chunk is being accepted), and at most one
chunk of rows is held at a time.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from prometheus_client import Counter, Histogram

from leadflow.chassis.clock import Clock
from leadflow.chassis.store import DEPENDENCY_DOWN, Document, PyMongoError
from services.intake.imports.rules import (
    DETECTION_SAMPLE_BYTES,
    ColumnPlan,
    Encoding,
    ImportOptions,
    MappingError,
    RawRecord,
    RecordSplitter,
    RowProblem,
    detect_encoding,
    is_blank,
    map_row,
    parse_records,
    plan_columns,
    problems_of_rejection,
)
from services.intake.imports.store import ChunkProgress, ImportStore
from services.intake.webhooks.submissions import MappedLead, SubmissionResult

log = structlog.get_logger(__name__)

IMPORTED_ROWS = Counter(
    "leadflow_intake_import_rows_total", "CSV rows imported, by outcome", ["outcome"]
)
IMPORT_CHUNK_SECONDS = Histogram(
    "leadflow_intake_import_chunk_seconds",
    "Time to accept one chunk of imported rows and record its progress",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)

MIN_CHUNK_ROWS = 20
SMALL_CHUNK_ATTEMPTS = 3
"""The smallest transaction a slow database is offered before the import gives up (503;
sending it again resumes)."""

Submit = Callable[[Sequence[MappedLead]], Awaitable[list[SubmissionResult]]]


class ImportRefused(ValueError):  # noqa: N818 - names the outcome, like LeadRejected
    """The file cannot be imported at all (empty, no header, a wrong mapping); nothing of
    it was stored. `problems`: (where, why) pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{where}: {why}" for where, why in problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class ImportRequest:
    options: ImportOptions
    encoding: Encoding | None = None
    """None: detect it from the first bytes."""
    mapping: Mapping[str, str] | None = None
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkTiming:
    rows: int
    seconds: float


@dataclass
class ImportRun:
    """What one run of an import did (the stored document holds the totals)."""

    document: Document
    encoding: Encoding
    columns: dict[str, str]
    rows_skipped: int = 0
    """Rows committed by an earlier run of the same import, not sent again."""
    chunks: list[ChunkTiming] = field(default_factory=list)


class RunImport:
    def __init__(
        self,
        store: ImportStore,
        submit: Submit,
        clock: Clock,
        *,
        chunk_rows: int,
        min_chunk_rows: int = MIN_CHUNK_ROWS,
        lease: timedelta = timedelta(minutes=2),
    ) -> None:
        self._store = store
        self._submit = submit
        self._clock = clock
        self._chunk_rows = chunk_rows
        self._min_chunk_rows = min(min_chunk_rows, chunk_rows)
        self._lease = lease

    async def __call__(
        self,
        body: AsyncIterator[bytes],
        request: ImportRequest,
    ) -> ImportRun:
        reader = _TextReader(body, request.encoding)
        plan = await self._header(reader, request.mapping)
        options = request.options
        token = secrets.token_hex(8)
        doc = await self._store.claim(
            options.import_id,
            token,
            {
                "filename": request.filename,
                "encoding": reader.encoding,
                "source": options.source,
                "campaign": options.campaign,
                "columns": plan.describe(),
            },
            self._clock(),
            self._lease,
        )
        run = ImportRun(document=doc, encoding=reader.encoding, columns=plan.describe())
        if doc["status"] == "done":
            await self._store.let_go(options.import_id, token)
            return run
        finished = False
        try:
            job = _Job(
                plan=plan, options=options, token=token, run=run, chunk_rows=self._chunk_rows
            )
            await self._rows(reader, job, int(doc["rows_done"]))
            run.document = await self._store.complete(options.import_id, token, self._clock())
            finished = True
        finally:
            if not finished:
                # Interrupted (client gone, database down): the next run resumes after the
                # last recorded chunk. Letting go now spares it waiting out the lease.
                with contextlib.suppress(PyMongoError):
                    await self._store.let_go(options.import_id, token)
                log.warning(
                    "import interrupted; sending it again resumes it",
                    import_id=options.import_id,
                )
        return run

    async def _header(self, reader: _TextReader, mapping: Mapping[str, str] | None) -> ColumnPlan:
        async for record in reader.records():
            fields = parse_records([record])[0]
            if is_blank(fields):
                continue
            try:
                return plan_columns(fields, mapping)
            except MappingError as error:
                raise ImportRefused(error.problems) from error
        raise ImportRefused([("file", "the file is empty: a header row is needed")])

    async def _rows(self, reader: _TextReader, job: _Job, rows_done: int) -> None:
        row = 0
        chunk: list[RawRecord] = []
        async for record in reader.records():
            row += 1
            if row <= rows_done:
                job.run.rows_skipped += 1
                continue
            chunk.append(record)
            if len(chunk) >= job.chunk_rows:
                await self._commit(chunk, row, job)
                chunk = []
        if chunk:
            await self._commit(chunk, row, job)

    async def _commit(self, records: Sequence[RawRecord], rows_done: int, job: _Job) -> None:
        """Accept a chunk; when the database is too slow to commit it in time (nothing of it
        is then stored), accept it in halves, and keep the smaller size for the rest of the
        run: a busy database gets shorter transactions instead of failing the import."""
        try:
            await self._commit_once(records, rows_done, job)
        except DEPENDENCY_DOWN as error:
            if len(records) <= self._min_chunk_rows:
                # A stall rather than a size problem: a few more tries, then give up.
                await self._retry_small(records, rows_done, job, error)
                return
            half = len(records) // 2
            job.chunk_rows = max(self._min_chunk_rows, min(job.chunk_rows, half))
            log.warning(
                "import chunk not committed in time; accepting it in halves",
                rows=len(records),
                chunk_rows=job.chunk_rows,
                error=repr(error),
            )
            await self._commit(records[:half], rows_done - (len(records) - half), job)
            await self._commit(records[half:], rows_done, job)

    async def _retry_small(
        self, records: Sequence[RawRecord], rows_done: int, job: _Job, error: Exception
    ) -> None:
        for attempt in range(1, SMALL_CHUNK_ATTEMPTS + 1):
            log.warning(
                "import chunk not committed; trying again", attempt=attempt, error=repr(error)
            )
            await asyncio.sleep(attempt)
            try:
                await self._commit_once(records, rows_done, job)
            except DEPENDENCY_DOWN as again:
                if attempt == SMALL_CHUNK_ATTEMPTS:
                    raise
                error = again
            else:
                return

    async def _commit_once(self, records: Sequence[RawRecord], rows_done: int, job: _Job) -> None:
        """Accept one chunk of rows, then record its progress and problems."""
        started = time.perf_counter()
        now = self._clock()
        leads: list[tuple[int, MappedLead]] = []
        problems: list[RowProblem] = []
        rejected = 0
        for record, fields in zip(records, parse_records(records), strict=True):
            if is_blank(fields):
                continue
            mapped = map_row(
                job.plan, fields, line=record.line, options=job.options, received_at=now
            )
            if isinstance(mapped, list):
                problems.extend(mapped)
                rejected += 1
            else:
                leads.append((record.line, mapped))
        results = await self._submit([lead for _, lead in leads]) if leads else []
        created = merged = duplicates = 0
        for (line, _), result in zip(leads, results, strict=True):
            if result.outcome == "created":
                created += 1
            elif result.outcome == "merged":
                merged += 1
            elif result.outcome == "duplicate":
                # Accepted by an earlier run whose progress was not recorded (it stopped
                # between the two): not a second inquiry.
                duplicates += 1
            else:
                rejected += 1
                problems.extend(problems_of_rejection(line, result.reasons))
        await self._store.record_chunk(
            job.options.import_id,
            job.token,
            ChunkProgress(
                rows_done=rows_done,
                last_line=records[-1].line,
                created=created,
                merged=merged,
                duplicates=duplicates,
                rejected=rejected,
                problems=problems,
            ),
            self._clock(),
            self._lease,
        )
        counts = {
            "created": created,
            "merged": merged,
            "duplicate": duplicates,
            "rejected": rejected,
        }
        for outcome, count in counts.items():
            IMPORTED_ROWS.labels(outcome).inc(count)
        seconds = time.perf_counter() - started
        IMPORT_CHUNK_SECONDS.observe(seconds)
        job.run.chunks.append(ChunkTiming(len(records), seconds))


@dataclass(slots=True)
class _Job:
    """One run of one import: what every chunk of it needs."""

    plan: ColumnPlan
    options: ImportOptions
    token: str
    run: ImportRun
    chunk_rows: int
    """Rows per transaction: the setting, halved while the database is too slow for it."""


class _TextReader:
    """Bytes in, CSV records out: the encoding is found from the first bytes (unless
    given), then the rest is decoded as it arrives. Undecodable bytes become U+FFFD, and
    the row holding them is reported rather than the whole file refused."""

    def __init__(self, body: AsyncIterator[bytes], encoding: Encoding | None) -> None:
        self._body = body
        self._given = encoding
        self.encoding: Encoding = encoding or "utf-8"
        self._splitter = RecordSplitter()
        self._buffered: deque[RawRecord] = deque()
        self._started = False
        self._exhausted = False
        self._decoder: codecs.IncrementalDecoder | None = None

    async def records(self) -> AsyncIterator[RawRecord]:
        while True:
            while self._buffered:
                yield self._buffered.popleft()
            if self._exhausted:
                return
            await self._read_more()

    async def _read_more(self) -> None:
        if not self._started:
            self._started = True
            sample = bytearray()
            # Detection looks at the first bytes; a given encoding needs none gathered.
            wanted = DETECTION_SAMPLE_BYTES if self._given is None else 1
            async for piece in self._body:
                sample += piece
                if len(sample) >= wanted:
                    break
            else:
                self._exhausted = True
            if self._given is None:
                self.encoding = detect_encoding(bytes(sample), complete=self._exhausted)
            self._decoder = codecs.getincrementaldecoder(self.encoding)(errors="replace")
            self._take(bytes(sample), final=self._exhausted)
            return
        try:
            piece = await anext(self._body)
        except StopAsyncIteration:
            self._exhausted = True
            self._take(b"", final=True)
            return
        self._take(piece, final=False)

    def _take(self, data: bytes, *, final: bool) -> None:
        assert self._decoder is not None
        text = self._decoder.decode(data, final=final)
        # Windows line ends: the splitter cuts at "\n"; csv drops the "\r".
        self._buffered.extend(self._splitter.feed(text))
        if final:
            self._buffered.extend(self._splitter.finish())


def summary_of(doc: Document) -> dict[str, Any]:
    """The public view of an import document."""
    return {
        "import_id": doc["_id"],
        "status": doc.get("status"),
        "filename": doc.get("filename"),
        "encoding": doc.get("encoding"),
        "columns": doc.get("columns", {}),
        "rows_done": doc.get("rows_done", 0),
        "last_line": doc.get("last_line", 1),
        "created": doc.get("created", 0),
        "merged": doc.get("merged", 0),
        "duplicates": doc.get("duplicates", 0),
        "rejected": doc.get("rejected", 0),
        "started_at": doc.get("started_at"),
        "finished_at": doc.get("finished_at"),
    }
