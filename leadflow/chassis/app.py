"""The composition root every service shares: one FastAPI app, one lifespan.

`ServiceChassis` owns the process-wide resources of a service (MongoDB client, Kafka
broker, outbox relay, API-key authenticator) and builds the FastAPI app whose lifespan
starts and stops them. Each service's `create_app(settings)` makes a chassis, adds its own
store, routes and subscribers, and calls `build_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from faststream.specification import AsyncAPI
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from leadflow.chassis.auth import Authenticator
from leadflow.chassis.consumer import BatchPipeline, HandleBatch
from leadflow.chassis.http import add_outage_handler, add_validation_handler
from leadflow.chassis.kafka import KafkaRuntime
from leadflow.chassis.lease import Lease
from leadflow.chassis.outbox import OUTBOX_BACKLOG, OutboxRelay
from leadflow.chassis.store import (
    ApiKeyStore,
    EventLedger,
    LeaseStore,
    PyMongoError,
    connect,
    ping,
)
from leadflow.chassis.tasks import cancel_and_wait
from shared.events import utc_now
from shared.logging import configure_logging
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)

HTTP_REQUESTS = Counter(
    "leadflow_http_requests_total", "HTTP requests served", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "leadflow_http_request_seconds", "HTTP request latency", ["service", "method", "route"]
)

KAFKA_STOP_TIMEOUT_S = 20.0
HANDLED_MARGIN = timedelta(days=1)


class ServiceChassis:
    def __init__(
        self,
        service: str,
        settings: ServiceSettings,
        *,
        clock: Callable[[], datetime] = utc_now,
        ready_while_kafka_down: bool | None = None,
    ) -> None:
        """`ready_while_kafka_down`: whether this replica keeps taking traffic while Kafka
        is unreachable (its outbox keeps what it accepts). By default, a service that
        consumes nothing does and a consuming one does not."""
        self.service = service
        self._ready_while_kafka_down = ready_while_kafka_down
        self.settings = settings
        self.clock = clock
        self.mongo = connect(settings.mongo_url, app_name=f"leadflow-{service}")
        self.database = self.mongo[settings.database or f"leadflow_{service}"]
        self.kafka = KafkaRuntime(service, settings)
        self.ledger = EventLedger(
            self.mongo,
            self.database,
            # Longer than the topics keep events: a replay can only bring back known ids.
            handled_retention=timedelta(hours=settings.topic_retention_hours) + HANDLED_MARGIN,
            transaction_timeout_s=settings.transaction_timeout_s,
            clock=clock,
            on_commit=self._on_commit,
        )
        self.leases = LeaseStore(self.database)
        self.relay = OutboxRelay(
            service,
            self.ledger,
            self.kafka,
            Lease(self.leases, "outbox-relay", ttl_s=settings.outbox_lease_s, clock=clock),
            poll_interval_s=settings.outbox_poll_interval_s,
            batch_size=settings.outbox_batch_size,
            audit_interval_s=settings.outbox_audit_interval_s,
            clock=clock,
        )
        self.authenticator = Authenticator(
            ApiKeyStore(self.mongo[settings.identity_database]),
            ttl_s=settings.api_key_cache_ttl_s,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = time.monotonic()

    def _on_commit(self) -> None:
        self.relay.nudge()

    def consume(
        self, topics: Sequence[str], events: Any, handle: HandleBatch, *, title: str
    ) -> BatchPipeline:
        """Feed batches of the events on `topics` to `handle` (see `leadflow.chassis.consumer`)."""
        return self.kafka.consume(
            topics,
            events,
            handle,
            title=title,
            pipeline_options={
                "dependencies_up": lambda: ping(self.mongo),
                "handled_retention": self.ledger.handled_retention,
                "clock": self.clock,
            },
        )

    def asyncapi(self, version: str) -> AsyncAPI:
        return AsyncAPI(
            self.kafka.broker,
            title=f"leadflow {self.service}",
            version=version,
            description=f"Events the {self.service} service consumes and publishes.",
        )

    async def readiness(self) -> tuple[bool, dict[str, bool]]:
        """Whether to send this replica traffic, and each check's state.

        A service that is ready while Kafka is down (intake: it still accepts leads, which
        wait in its outbox) needs only MongoDB once Kafka was connected or a grace period
        has passed.
        """
        checks = {"mongodb": await ping(self.mongo)}
        checks.update(await self.kafka.ready())
        ready_while_kafka_down = (
            not self.kafka.consumes
            if self._ready_while_kafka_down is None
            else self._ready_while_kafka_down
        )
        if not ready_while_kafka_down:
            needed = checks
        else:
            # Ready once Kafka is connected (so the first lead is not kept waiting), or
            # after a grace period: from then on Kafka being down does not stop intake.
            connected_or_late = self.kafka.connected.is_set() or (
                time.monotonic() - self._started_at > self.settings.kafka_startup_grace_s
            )
            needed = {"mongodb": checks["mongodb"], "kafka_connected": connected_or_late}
        return all(needed.values()), checks

    @contextlib.asynccontextmanager
    async def lifespan(
        self,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[None]:
        self._started_at = time.monotonic()
        await self.ledger.ensure_indexes()
        await startup()
        # HTTP serves at once (intake accepts leads while Kafka is down); the broker
        # connects in the background and the relay starts publishing when it is up.
        self._tasks = [
            asyncio.create_task(self.kafka.connect(), name=f"{self.service}-kafka-connect"),
            asyncio.create_task(self.relay.run(self.kafka.connected), name=f"{self.service}-relay"),
        ]
        log.info("service started", port=self.settings.port)
        try:
            yield
        finally:
            if shutdown is not None:
                await shutdown()  # the service's own work first, while its parts still run
            await cancel_and_wait(self._tasks)
            with contextlib.suppress(PyMongoError):  # otherwise it lapses within its ttl
                await self.relay.stop()
            started = time.perf_counter()
            try:
                # In-flight events get the broker's graceful time; a broker that does not
                # answer must not hold the process (uncommitted events are redelivered).
                await asyncio.wait_for(self.kafka.close(), timeout=KAFKA_STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("kafka client did not stop in time", timeout_s=KAFKA_STOP_TIMEOUT_S)
            await self.mongo.close()
            log.info("service stopped", kafka_stop_s=round(time.perf_counter() - started, 2))

    def build_app(
        self,
        *,
        title: str,
        description: str,
        version: str,
        routers: Sequence[APIRouter],
        startup: Callable[[], Awaitable[None]],
        store: object,
        shutdown: Callable[[], Awaitable[None]] | None = None,
        **state: object,
    ) -> FastAPI:
        """The service's app. Routes reach `store`, the settings and any extra `state`
        (e.g. a clock) through `from_state(...)`."""
        configure_logging(self.service, level=self.settings.log_level, json=self.settings.log_json)

        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            async with self.lifespan(startup, shutdown):
                yield

        app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)
        add_outage_handler(app)
        add_validation_handler(app)
        app.state.chassis = self
        app.state.authenticator = self.authenticator
        app.state.settings = self.settings
        app.state.clock = self.clock
        app.state.store = store
        for name, value in state.items():
            setattr(app.state, name, value)
        app.include_router(self._operations_router(version))
        for router in routers:
            app.include_router(router)
        self._add_metrics_middleware(app)
        return app

    def _operations_router(self, version: str) -> APIRouter:
        router = APIRouter(tags=["operations"])
        spec = self.asyncapi(version)

        @router.get("/healthz", summary="The process is alive")
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.service}

        @router.get(
            "/readyz",
            summary="MongoDB and Kafka are reachable and consumers have joined their group",
            responses={503: {"description": "not ready; the body says which check failed"}},
        )
        async def readyz() -> JSONResponse:
            ready, checks = await self.readiness()
            return JSONResponse(
                {"status": "ready" if ready else "not ready", "checks": checks},
                status_code=200 if ready else 503,
            )

        @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
        async def metrics() -> Response:
            with contextlib.suppress(PyMongoError):  # the gauge keeps its last value
                OUTBOX_BACKLOG.labels(self.service).set(await self.ledger.backlog())
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        @router.get("/asyncapi.json", summary="AsyncAPI document of this service's events")
        async def asyncapi() -> Any:
            return spec.to_specification().to_jsonable()

        return router

    def _add_metrics_middleware(self, app: FastAPI) -> None:
        service = self.service

        @app.middleware("http")
        async def record_metrics(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            started = time.perf_counter()
            response = await call_next(request)
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            HTTP_REQUESTS.labels(service, request.method, path, str(response.status_code)).inc()
            HTTP_LATENCY.labels(service, request.method, path).observe(
                time.perf_counter() - started
            )
            return response
