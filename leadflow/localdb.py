"""The local MongoDB-wire server (SecantusDB) as `leadflow up` runs it.

`python -m leadflow.localdb --transaction-lifetime S [secantus options…]` is SecantusDB's own
command line plus one option it lacks: how long a transaction may sit idle before the server
aborts it (MongoDB's `transactionLifetimeLimitSeconds`, 60 s by default, as in SecantusDB's
server class, which takes it as an argument but has no flag for it).

It matters when a replica is killed inside a transaction (SIGKILL, OOM): until the server
aborts that transaction, it holds its documents (the outbox sequence, counters), and every
other replica's transactions on them fail with write conflicts until `TRANSACTION_TIMEOUT_S`
(15 s). With 60 s the service stalls for a minute; `LocalInfra` sets 20 s, a little above the
client's own limit, so no transaction a live replica still runs is ever aborted.

It also mends how SecantusDB 0.7.0b3 looks for idle transactions to abort: before every
transactional statement it takes each open transaction's lock, under the registry's own
lock, so a statement of one transaction waits until the statement another transaction is
running has finished, and every other statement waits behind it: concurrent transactions
(two replicas, four services) ran one statement at a time. A transaction whose lock is
held is running a statement, so it is not idle: `_skip_busy_when_reaping` passes over it
rather than waiting. What is reaped, and when, is otherwise the same.
"""

from __future__ import annotations

import argparse
import functools
import sys

from secantus import cli
from secantus.server import SecantusDBServer
from secantus.transactions import TransactionRegistry, TxnState


def _skip_busy_when_reaping(self: TransactionRegistry) -> int:
    """`TransactionRegistry._prune_locked`, passing over a transaction that is running a
    statement (its lock held elsewhere) instead of waiting for it."""
    cutoff = self._time() - self._lifetime
    reaped = 0
    for txn in list(self._txns.values()):
        if not txn.mutex.acquire(blocking=False):
            continue
        try:
            if txn.state is TxnState.IN_PROGRESS and txn.last_use < cutoff:
                self._rollback_quietly(txn)
                txn.state = TxnState.ABORTED
                reaped += 1
        finally:
            txn.mutex.release()
    return reaped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="leadflow.localdb", add_help=False)
    parser.add_argument("--transaction-lifetime", type=float, default=60.0)
    ours, theirs = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if ours.transaction_lifetime <= 0:
        parser.error("--transaction-lifetime must be positive")
    # SecantusDB's command line builds its server from its own options; it is given the
    # same class with the lifetime bound, and everything else stays its own.
    cli.SecantusDBServer = functools.partial(
        SecantusDBServer, transaction_lifetime_seconds=ours.transaction_lifetime
    )
    TransactionRegistry._prune_locked = _skip_busy_when_reaping
    status: int = cli.main(theirs)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
