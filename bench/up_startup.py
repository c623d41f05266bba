"""How long `leadflow up` takes to be ready, on a fresh data directory and on a second start.

    .venv/bin/python bench/up_startup.py [--runs 3] [--repo PATH]

Each run starts `python -m leadflow up` as a person would (free loopback ports, a new
temporary data directory), times it until stack.json appears (every service answers
/readyz), stops it with Ctrl-C, starts it again on the same data and times that too.
`--repo` runs another checkout of leadflow with this interpreter (e.g. an older commit
unpacked with `git archive`), to compare two versions in the same session.

Bounded: each start has a deadline; every stack is stopped by its own pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from leadflow.config import SERVICES
from leadflow.localinfra import free_port

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 180.0


def stack_env(data_dir: Path, repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env |= {
        "LEADFLOW_DATA_DIR": str(data_dir),
        # Only older checkouts read this (s3rver from npm); newer ones ignore it.
        "LEADFLOW_TOOLS_DIR": str(REPO / ".leadflow" / "tools"),
        "LEADFLOW_KAFKA_PORT": str(free_port()),
        "LEADFLOW_MONGO_PORT": str(free_port()),
        "LEADFLOW_S3_PORT": str(free_port()),
        "PYTHONPATH": str(repo),
    }
    env |= {f"LEADFLOW_{s.upper()}_PORT": str(free_port()) for s in SERVICES}
    return env


def start_once(env: dict[str, str], data_dir: Path, repo: Path) -> tuple[float, dict[str, Any]]:
    """Start `up`, wait for stack.json, stop it; the seconds it took and the state."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "leadflow", "up"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state_file = data_dir / "stack.json"
    try:
        while not state_file.exists():
            if process.poll() is not None or time.perf_counter() - started > DEADLINE_S:
                raise SystemExit(f"leadflow up did not come up; logs in {data_dir / 'logs'}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        state: dict[str, Any] = json.loads(state_file.read_text())
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return elapsed, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=REPO)
    args = parser.parse_args()
    repo = args.repo.resolve()
    fresh, again = [], []
    storage = ""
    for run in range(max(1, min(args.runs, 10))):
        work = Path(tempfile.mkdtemp(prefix="leadflow-startup-"))
        data_dir = work / "data"
        env = stack_env(data_dir, repo)
        try:
            seconds, state = start_once(env, data_dir, repo)
            fresh.append(seconds)
            storage = state["kafka_storage"]
            seconds_again, _ = start_once(env, data_dir, repo)
            again.append(seconds_again)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(
            json.dumps(
                {"run": run, "fresh_s": round(seconds, 2), "second_start_s": round(again[-1], 2)}
            ),
            flush=True,
        )
    print(
        f"{repo} (kafka log: {storage}): fresh data dir median {statistics.median(fresh):.1f} s "
        f"{[round(s, 1) for s in fresh]}; second start median {statistics.median(again):.1f} s "
        f"{[round(s, 1) for s in again]}"
    )


if __name__ == "__main__":
    main()
