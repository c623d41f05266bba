"""Due work: durable timers and scheduled sends, fired once in effect by any number of replicas.

A service keeps its timers in one MongoDB collection (`leadflow.chassis.store.MongoDueWork`).
Each item has a unique key (`"sla:<lead_id>:<n>"`, `"send:<enrollment_id>:<step>"`), so
scheduling is an upsert and scheduling the same firing twice changes nothing. Every replica
runs a `DueWorkRunner` over the kinds it handles:

- **Claim.** The runner claims a batch of due items (earliest first) under a lease: a
  fresh token and a lease expiry written on each item. Other replicas skip leased items.
- **Fire and finish together.** `fire(batch)` does the batch's effects AND calls
  `store.finish(batch, session=s)` in the same transaction. `finish` deletes the items only
  if they still carry this claim's token, else raises `LeaseLost` and the transaction
  aborts. A replica that stalled past its lease therefore cannot commit effects another
  replica has already committed: one firing in effect, however the replicas race.
- **Failure.** If `fire` raises, the batch is split in halves down to the item that fails
  (as the Kafka consumer isolates poison); that item is given back with back-off, and after
  `max_attempts` it is parked with status "dead": kept, visible, never fired again (until it
  is scheduled again under the same key). An unreachable database is not the items' fault:
  they are given back without counting an attempt.
- **Batches in flight.** With `in_flight` above 1 the runner claims the next due batch
  while earlier ones are still firing (waiting on a provider, say), up to that many at
  once, so an item falling due meanwhile does not wait a whole batch cycle. Claims are still
  made one at a time; each batch fires, commits and is isolated on its own.
- **On time.** The runner sleeps until the earliest due item or `idle_poll_s`, whichever is
  first; `wake()` cuts the sleep short when something sooner was scheduled in this process.
  A crash loses nothing: the items stay in the collection and are claimed again once the
  dead replica's lease lapses (`lease_s`), or at once when it was never claimed.
- **Ahead of time.** With `lookahead_s` above 0 the runner claims items that fall due within
  that long, so a `fire` with work to do before an item's effect (reads, decisions) does it
  while the item is not due yet and takes the effect at `due_at`. Such a `fire` must not take
  any item's effect before its `due_at`: it gets items that are not due yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from prometheus_client import Counter, Histogram

from leadflow.chassis.clock import Clock
from leadflow.chassis.tasks import stop_requested

if TYPE_CHECKING:
    from leadflow.chassis.store import Session

log = structlog.get_logger(__name__)

DUE_WORK_FIRED = Counter(
    "leadflow_due_work_fired_total",
    "Due work items by outcome (fired, retried, parked, lease_lost)",
    ["kind", "outcome"],
)
DUE_WORK_LATENESS = Histogram(
    "leadflow_due_work_lateness_seconds",
    "How long after its due time an item was fired",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300, 3600),
)

PENDING = "pending"
DEAD = "dead"
"""Statuses of a stored item: claimable when due (and not under a live lease), or parked."""


@dataclass(frozen=True)
class DueWork:
    key: str
    """Unique per firing: scheduling the same key again replaces the item (idempotent)."""
    kind: str
    due_at: datetime
    """Aware UTC."""
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClaimedWork:
    work: DueWork
    attempts: int
    """Failed attempts so far."""
    token: str
    """This claim's token: `finish` and `release` act only while the item still carries it."""


@dataclass(frozen=True)
class ParkedWork:
    """An item that failed `max_attempts` times: kept with status "dead", never fired again."""

    work: DueWork
    attempts: int
    error: str
    parked_at: datetime


class LeaseLost(Exception):  # noqa: N818 - a state of the world, not a bug
    """`finish` found an item no longer claimed by this token (its lease lapsed and another
    replica claimed it, or it was cancelled or rescheduled): the caller's transaction must
    abort, so its effects are not committed a second time."""

    def __init__(self, keys: Collection[str] = ()) -> None:
        super().__init__(f"no longer claimed by this token: {sorted(keys)}")
        self.keys = frozenset(keys)


class DueWorkStore(Protocol):
    async def ensure_indexes(self) -> None: ...

    async def schedule(self, items: Sequence[DueWork], *, session: Session | None = None) -> None:
        """Insert or replace (same key): pass the caller's transaction session so the timer is
        written atomically with the state change that needs it. Replacing an item that is
        claimed voids that claim (its `finish` raises `LeaseLost`); replacing a parked item
        revives it."""

    async def cancel(self, keys: Collection[str], *, session: Session | None = None) -> None:
        """Remove the items (pending or parked); unknown keys are ignored. A claim on a
        cancelled item is void (its `finish` raises `LeaseLost`)."""

    async def claim(
        self,
        *,
        kinds: Collection[str],
        now: datetime,
        limit: int,
        lease: timedelta,
        token: str,
    ) -> list[ClaimedWork]:
        """Due items (due_at <= now) not under a live lease, earliest first, claimed atomically
        until `now + lease`. Use a fresh token per call. May return a few more than `limit`
        when items earlier than the latest one chosen are scheduled during the claim."""

    async def finish(
        self, claimed: Sequence[ClaimedWork], *, session: Session | None = None
    ) -> None:
        """Delete the items IF still claimed by their token, inside the caller's transaction;
        raises LeaseLost when any was not (the caller's transaction then aborts: no double
        fire). Without a session it runs its own transaction: all or nothing."""

    async def release(
        self, claimed: Sequence[ClaimedWork], *, retry_at: datetime, failed: bool = True
    ) -> None:
        """Give items back after a failure: attempts + 1 (unless `failed` is False: the
        database, not the item, was at fault), due again at retry_at. Items no longer
        claimed by their token are left alone."""

    async def park(self, claimed: Sequence[ClaimedWork], *, error: str, now: datetime) -> None:
        """Give up on items: attempts + 1, status "dead", the error kept; never claimed again.
        Items no longer claimed by their token are left alone."""

    async def parked(self, *, kinds: Collection[str], limit: int = 100) -> list[ParkedWork]:
        """Parked items of `kinds`, earliest parked first."""

    async def next_due(
        self, *, kinds: Collection[str], before: datetime | None = None
    ) -> datetime | None:
        """When the earliest item of `kinds` can next be claimed (its due time, or its
        lease's end); None if there is none — or none before `before`, which lets the store
        look at a narrow window instead of every pending item."""


Fire = Callable[[list[ClaimedWork]], Awaitable[None]]

_PROBES_S = (0.05, 0.25)
"""The look-ahead windows tried before the idle poll's when looking for the next due time."""


class DueWorkRunner:
    """Claims due items of `kinds` and hands them to `fire` in batches, until `stop()`.

    `fire(batch)` must do the effects and `store.finish(batch, session=s)` in one
    transaction, and finish well within `lease_s` (the lease is not renewed).
    """

    def __init__(
        self,
        store: DueWorkStore,
        *,
        kinds: Collection[str],
        fire: Fire,
        clock: Clock,
        batch_size: int = 200,
        lease_s: float = 30.0,
        idle_poll_s: float = 1.0,
        retry_backoff_s: float = 5.0,
        max_attempts: int = 5,
        max_backoff_s: float = 3600.0,
        in_flight: int = 1,
        lookahead_s: float = 0.0,
    ) -> None:
        if not kinds:
            raise ValueError("a runner needs at least one kind")
        if in_flight < 1:
            raise ValueError("a runner fires at least one batch at a time")
        if not 0 <= lookahead_s < lease_s:
            raise ValueError("the look-ahead is at least 0 and shorter than the lease")
        self._store = store
        self._kinds = frozenset(kinds)
        self._fire = fire
        self._clock = clock
        self._batch_size = batch_size
        self._lease = timedelta(seconds=lease_s)
        self._idle_poll_s = idle_poll_s
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_attempts = max_attempts
        self._nudge = asyncio.Event()
        self._stopping = False
        self._running: asyncio.Event | None = None
        self._in_flight = in_flight
        self._lookahead = timedelta(seconds=lookahead_s)
        self._firing: set[asyncio.Task[None]] = set()
        self._fire_failure: Exception | None = None
        """A batch fired in the background hit an outage: the next round pauses for it."""

    async def run(self) -> None:
        """Loop until `stop()`: claim a due batch, fire it, and sleep only when none is due.

        A runner runs once: after `stop()` (even one that came before `run()` began), `run()`
        returns at once."""
        done = self._running = asyncio.Event()
        outage_pause_s = self._idle_poll_s
        try:
            while not self._stopping and not stop_requested():
                # Cleared before the claim, so a wake() during the round is not missed.
                self._nudge.clear()
                try:
                    if await self._claim_and_fire():
                        # More may be due at once; let the rest of the process run first.
                        await asyncio.sleep(0)
                    else:
                        await self._sleep_until_due()
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - the runner outlives any outage
                    log.warning(
                        "due work round failed; items stay stored",
                        kinds=sorted(self._kinds),
                        error=repr(error),
                        retry_in_s=outage_pause_s,
                    )
                    await self._pause(outage_pause_s)
                    # Capped low: once the database is back, overdue timers fire within it.
                    outage_pause_s = min(outage_pause_s * 2, max(self._idle_poll_s, 5.0))
                    continue
                outage_pause_s = self._idle_poll_s
            # Stopping: the batches in hand finish (or fail: their items stay stored) first.
            while self._firing:
                await asyncio.wait(set(self._firing))
        finally:
            for task in self._firing:
                task.cancel()  # only when run() itself was cancelled
            done.set()

    def wake(self) -> None:
        """Something was scheduled sooner than the runner may be sleeping for: re-check now."""
        self._nudge.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop after the batches in hand (if any); returns once `run()` has returned, or after
        `grace_s` if a database call hangs (the caller then cancels the `run()` task: what
        was claimed goes back when its lease lapses)."""
        self._stopping = True
        self._nudge.set()
        if self._running is None:
            return
        try:
            await asyncio.wait_for(self._running.wait(), timeout=grace_s)
        except TimeoutError:
            log.warning("due work runner still busy after stop", kinds=sorted(self._kinds))

    async def run_once(self) -> int:
        """Claim one due batch and fire it; how many items were claimed (0: none due)."""
        batch = await self._claim()
        if batch:
            await self._fire_isolating_failures(batch)
        return len(batch)

    async def _claim(self) -> list[ClaimedWork]:
        return await self._store.claim(
            kinds=self._kinds,
            now=self._clock() + self._lookahead,
            limit=self._batch_size,
            lease=self._lease,
            token=uuid.uuid4().hex,
        )

    async def _claim_and_fire(self) -> int:
        """One round of `run()`: with one batch in flight, `run_once`; with more, wait for a
        free place, claim, and fire the batch in the background."""
        if self._in_flight == 1:
            return await self.run_once()
        await self._settle(self._in_flight - 1)
        if self._stopping:
            return 0
        batch = await self._claim()
        if batch:
            task = asyncio.create_task(self._fire_in_background(batch))
            self._firing.add(task)
            task.add_done_callback(self._firing.discard)
        return len(batch)

    async def _fire_in_background(self, batch: list[ClaimedWork]) -> None:
        try:
            await self._fire_isolating_failures(batch)
        except Exception as error:  # noqa: BLE001 - handed to the loop, which pauses for it
            self._fire_failure = error

    async def _settle(self, at_most: int) -> None:
        """Wait until at most `at_most` batches are still firing; an outage one of them hit
        is raised here, in the loop, which pauses for it."""
        while len(self._firing) > at_most:
            await asyncio.wait(set(self._firing), return_when=asyncio.FIRST_COMPLETED)
        failure, self._fire_failure = self._fire_failure, None
        if failure is not None:
            raise failure

    async def _fire_isolating_failures(self, batch: list[ClaimedWork]) -> None:
        try:
            await self._fire(batch)
        except LeaseLost as lost:
            # Nothing of this batch committed. The lost items are another claim's now; the
            # rest go straight back (not their fault) rather than wait out the lease.
            log.warning("due work lease lost; batch not committed", keys=sorted(lost.keys)[:10])
            self._count(batch, "lease_lost")
            await self._store.release(batch, retry_at=self._clock(), failed=False)
            return
        except _dependency_down():
            # The items are unharmed; if the database is still gone when this release runs,
            # it fails too and the lease lapses instead.
            await self._store.release(
                batch,
                retry_at=self._clock() + timedelta(seconds=self._backoff(0)),
                failed=False,
            )
            raise
        except Exception as error:  # noqa: BLE001 - isolated, retried, parked
            if len(batch) > 1:
                half = len(batch) // 2
                await self._fire_isolating_failures(batch[:half])
                await self._fire_isolating_failures(batch[half:])
            else:
                await self._failed(batch[0], error)
            return
        fired_at = self._clock()
        for claimed in batch:
            DUE_WORK_FIRED.labels(claimed.work.kind, "fired").inc()
            DUE_WORK_LATENESS.labels(claimed.work.kind).observe(
                max(0.0, (fired_at - claimed.work.due_at).total_seconds())
            )

    async def _failed(self, claimed: ClaimedWork, error: Exception) -> None:
        attempts = claimed.attempts + 1
        context = {"key": claimed.work.key, "kind": claimed.work.kind, "attempts": attempts}
        if attempts >= self._max_attempts:
            log.error("due work parked after its last attempt", error=repr(error), **context)
            await self._store.park([claimed], error=repr(error), now=self._clock())
            self._count([claimed], "parked")
            return
        retry_in = self._backoff(claimed.attempts)
        log.warning("due work failed; retrying", error=repr(error), retry_in_s=retry_in, **context)
        await self._store.release([claimed], retry_at=self._clock() + timedelta(seconds=retry_in))
        self._count([claimed], "retried")

    def _backoff(self, attempts: int) -> float:
        return float(min(self._retry_backoff_s * 2**attempts, self._max_backoff_s))

    async def _sleep_until_due(self) -> None:
        # Until the next item is within the look-ahead: "now" is that far on.
        now = self._clock() + self._lookahead
        # Narrow windows first: a store may read every item in the window to find the
        # earliest, and with timers due every few milliseconds the first one answers.
        for horizon_s in (*(h for h in _PROBES_S if h < self._idle_poll_s), self._idle_poll_s):
            next_due = await self._store.next_due(
                kinds=self._kinds, before=now + timedelta(seconds=horizon_s)
            )
            if next_due is not None:
                await self._pause((next_due - now).total_seconds())
                return
        await self._pause(self._idle_poll_s)

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0 or self._stopping or stop_requested():
            return
        with contextlib.suppress(TimeoutError):  # the usual way out: nothing woke us
            await asyncio.wait_for(self._nudge.wait(), timeout=seconds)

    @staticmethod
    def _count(batch: Sequence[ClaimedWork], outcome: str) -> None:
        for claimed in batch:
            DUE_WORK_FIRED.labels(claimed.work.kind, outcome).inc()


def _dependency_down() -> tuple[type[Exception], ...]:
    # Imported here: store.py (the driver's module) imports this one for its types.
    from leadflow.chassis.store import DEPENDENCY_DOWN  # noqa: PLC0415

    return DEPENDENCY_DOWN
