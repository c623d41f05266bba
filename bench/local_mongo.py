"""A SecantusDB of its own for a benchmark run (no broker), removed afterwards."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    server's process id is `args.mongo_pid` (for `procstat.cpu_seconds`)."""
    with local_mongo(name, args.storage) as infra:
        args.mongo_pid = infra.mongo.pid if infra.mongo else None
        print(f"SecantusDB on {infra.mongo_url} ({args.storage})", flush=True)
        asyncio.run(bench(infra.mongo_url, args))
