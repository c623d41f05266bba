"""The client side of the CSV import (`leadflow import FILE`): stream a file to a running
intake's `POST /v1/imports`, and fetch the error report.

The import id is derived from the file's bytes and the options, so running the same
command again after an interruption resumes the same import (rows already committed are
skipped by the server) instead of starting another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

READ_BYTES = 256 * 1024


class UploadFailedError(Exception):
    """The server refused the file or could not be reached; `resumable`: sending the same
    file again continues the import."""

    def __init__(self, message: str, *, resumable: bool) -> None:
        super().__init__(message)
        self.resumable = resumable


@dataclass(frozen=True, slots=True)
class UploadOptions:
    url: str
    """intake's base URL, e.g. http://127.0.0.1:8001"""
    api_key: str
    encoding: str = "auto"
    mapping: Mapping[str, str] | None = None
    source: str = "import"
    campaign: str | None = None
    default_region: str | None = None
    import_id: str | None = None

    def params(self, path: Path, import_id: str) -> dict[str, str]:
        params = {
            "import_id": import_id,
            "encoding": self.encoding,
            "source": self.source,
            "filename": path.name,
        }
        if self.mapping:
            params["mapping"] = json.dumps(dict(self.mapping), ensure_ascii=False)
        if self.campaign:
            params["campaign"] = self.campaign
        if self.default_region:
            params["default_region"] = self.default_region
        return params


def file_import_id(path: Path, options: UploadOptions) -> str:
    """The same file with the same options is the same import (read once, in pieces)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(READ_BYTES):
            digest.update(piece)
    described = [options.encoding, dict(options.mapping or {}), options.source, options.campaign]
    digest.update(json.dumps(described, sort_keys=True, ensure_ascii=False).encode())
    return f"file-{digest.hexdigest()[:32]}"


def _pieces(path: Path, on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    with path.open("rb") as file:
        while piece := file.read(READ_BYTES):
            on_bytes(len(piece))
            yield piece


def upload_file(
    path: Path,
    options: UploadOptions,
    *,
    on_bytes: Callable[[int], None] = lambda _: None,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Stream `path` to the import endpoint; the server's summary. The server reads as it
    imports, so the bytes sent track the rows imported (within its socket buffers)."""
    import_id = options.import_id or file_import_id(path, options)
    try:
        with httpx.Client(base_url=options.url, timeout=httpx.Timeout(timeout_s)) as client:
            response = client.post(
                "/v1/imports",
                params=options.params(path, import_id),
                content=_pieces(path, on_bytes),
                headers={"X-API-Key": options.api_key, "content-type": "text/csv"},
            )
    except httpx.HTTPError as error:
        raise UploadFailedError(
            f"the upload of import {import_id} stopped: {error!r}", resumable=True
        ) from error
    if response.status_code != httpx.codes.OK:
        raise UploadFailedError(
            f"intake answered {response.status_code}: {response.text[:2000]}",
            resumable=response.status_code in {409, 503, 413} or response.status_code >= 500,
        )
    summary: dict[str, Any] = response.json()
    return summary


def download_errors(options: UploadOptions, import_id: str, destination: Path) -> int:
    """Write the import's error report (CSV) to `destination`; how many rows it lists."""
    rows = 0
    with (
        httpx.Client(base_url=options.url, timeout=60.0) as client,
        client.stream(
            "GET", f"/v1/imports/{import_id}/errors", headers={"X-API-Key": options.api_key}
        ) as response,
    ):
        if response.status_code != httpx.codes.OK:
            raise UploadFailedError(
                f"error report: intake answered {response.status_code}", resumable=False
            )
        with destination.open("wb") as out:
            for piece in response.iter_bytes():
                rows += piece.count(b"\n")
                out.write(piece)
    return max(rows - 1, 0)
