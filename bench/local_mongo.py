"""A SecantusDB of its own for a benchmark run (no broker), removed afterwards."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from leadflow.localinfra import LocalInfra, free_port


def run_on_local_mongo(
    name: str,
    args: argparse.Namespace,
    bench: Callable[[str, argparse.Namespace], Coroutine[Any, Any, None]],
) -> None:
    """Start SecantusDB on 127.0.0.1 (on disk unless `args.storage == "memory"`), run
    `bench(mongo_url, args)` against it, then stop it and delete its data."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"leadflow-bench-{name}-"))
    infra = LocalInfra(
        data_dir=data_dir,
        kafka_port=free_port(),
        mongo_port=free_port(),
        s3_port=free_port(),
        persistent=args.storage == "disk",
        start_kafka=False,
    )
    infra.start()
    try:
        print(f"SecantusDB on {infra.mongo_url} ({args.storage})", flush=True)
        asyncio.run(bench(infra.mongo_url, args))
    finally:
        infra.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
