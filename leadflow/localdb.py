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
"""

from __future__ import annotations

import argparse
import functools
import sys

from secantus import cli
from secantus.server import SecantusDBServer


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
    status: int = cli.main(theirs)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
