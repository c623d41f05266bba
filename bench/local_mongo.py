"""A SecantusDB of its own for a benchmark run (no broker), removed afterwards."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from leadflow.localinfra import LocalInfra, free_port


@contextlib.contextmanager
def local_mongo(name: str, storage: str) -> Iterator[LocalInfra]:
    """SecantusDB on 127.0.0.1 (on disk unless `storage == "memory"`) while the block
    runs; stopped and its data deleted after."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"leadflow-bench-{name}-"))
    infra = LocalInfra(
        data_dir=data_dir,
        kafka_port=free_port(),
        mongo_port=free_port(),
        s3_port=free_port(),
        persistent=storage == "disk",
        start_kafka=False,
    )
    infra.start()
    try:
        yield infra
    finally:
        infra.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def run_on_local_mongo(
    name: str,
    args: argparse.Namespace,
    bench: Callable[[str, argparse.Namespace], Coroutine[Any, Any, None]],
) -> None:
    """Run `bench(mongo_url, args)` against a `local_mongo` of `args.storage`. The
    server's process id is `args.mongo_pid` (for `cpu_seconds`)."""
    with local_mongo(name, args.storage) as infra:
        args.mongo_pid = infra.mongo.pid if infra.mongo else None
        print(f"SecantusDB on {infra.mongo_url} ({args.storage})", flush=True)
        asyncio.run(bench(infra.mongo_url, args))


def cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) process `pid` has used so far."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
