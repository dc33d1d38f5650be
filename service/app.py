"""The app factory: settings in, a FastAPI app out, its model loaded once in the lifespan."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.access_log import AccessLog
from service.admission import AdmissionMiddleware, InflightLimit
from service.auth import AuthMiddleware, KeyRing
from service.decode_budget import DecodeBudget
from service.drain import Drain
from service.errors import install_error_handlers
from service.inference_dispatcher import InferenceDispatcher
from service.inference_protocol import fallback_routes, repository_routes
from service.inference_protocol import routes as inference_protocol
from service.metrics import Metrics
from service.middleware import AccessMiddleware, BodyLimitMiddleware
from service.models.repository import LoadSettings, ModelRepository, scanner
from service.models.session import ModelLoadError
from service.models.worker_state import WorkerState
from service.native_memory import tune_allocator
from service.openapi import install_openapi
from service.requests_in_progress import STATE_KEY, RequestsInProgress
from service.routes import docs, health, metrics, predict, summary, ui
from service.settings import Settings
from service.timeouts import BodyTimeoutMiddleware
from service.tracing import Tracing, TracingMiddleware

logger = logging.getLogger("service")


def create_app(settings: Settings | None = None, tracing: Tracing | None = None) -> FastAPI:
    settings = settings or Settings()
    app_metrics = Metrics()
    keys = KeyRing.from_settings(settings)
    drain = Drain(settings.drain_delay_s)
    inflight = InflightLimit(settings.max_inflight_requests, app_metrics)
    access_log = AccessLog(settings.log_format) if settings.access_log else None
    # Off unless the OTEL_* variables ask for traces; ``tracing`` (tests) brings exporters.
    tracing = tracing or Tracing()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # First: the threads that decode and infer start after it, in arenas it bounds.
        tuned = tune_allocator()
        if tuned:
            logger.debug("allocator: %s", ", ".join(tuned))
        tracing.start()
        in_progress = RequestsInProgress()
        repository = ModelRepository(
            scanner(settings.model_repository, settings.model_path),
            settings.policy(),
            LoadSettings(
                device=settings.device,
                tuning=settings.session_tuning(),
                batch_max_size=settings.batch_max_size,
                batch_max_delay_s=settings.batch_max_delay_ms / 1000,
                batch_queue_images=settings.batch_queue_images,
                batch_queue_bulk_images=settings.batch_queue_bulk_images,
                interactive_max_images=settings.interactive_max_images,
                batch_inline_images=settings.batch_inline_images,
            ),
            app_metrics,
            WorkerState(settings.worker_state_dir),
            # One file is one version for good: only a repository is worth watching.
            poll_s=settings.repository_poll_s if settings.model_repository else 0.0,
            request_alone=in_progress.alone,
        )
        await repository.start()
        if settings.model_repository is None and not repository.ready:
            [entry] = repository.index()
            error = ModelLoadError(settings.model_path, entry.reason)
            logger.error("%s", error)
            raise error
        if not repository.ready:
            logger.warning(
                "no version of the model is ready in %s yet: not ready until one is published",
                settings.model_repository,
            )
        app.state.repository = repository
        # Made here, not in create_app: its semaphore belongs to the loop that serves.
        app.state.decode_budget = DecodeBudget(
            settings.image_decode_concurrency(),
            settings.decode_memory_bytes,
            on_refused=app_metrics.rejected.labels("decode_budget").inc,
        )
        grpc_server = await _start_grpc(
            app, settings, repository, keys, drain, app_metrics, tracing, inflight, access_log
        )
        _log_access_control(settings, keys)
        drain.install()
        # What start-up built lives as long as the process: moving it out of the collector's
        # reach keeps full collections, and the latency spikes they cause, short.
        gc.freeze()
        try:
            # uvicorn hands the lifespan state to every connection's protocol, which shows
            # in_progress the server's requests.
            yield {STATE_KEY: in_progress}
        finally:
            drain.uninstall()
            if grpc_server is not None:
                # uvicorn has drained REST by now; gRPC gets as long again for its own calls.
                await grpc_server.stop(grace=settings.drain_timeout_s)
            await repository.stop()
            app.state.decode_budget.close()
            await tracing.shutdown()
            if access_log is not None:
                access_log.flush()  # the last requests' lines, should the loop stop first

    app = FastAPI(
        title="MNIST digit service",
        summary="The classic Keras MNIST convnet on onnxruntime: send digit images, get digits.",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own request spans would be a second server span beside ours, and its
        # metrics and logs a second count beside the access middleware's; off, FastAPI
        # skips the provider lookups it would make on every request to find them.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # Served by routes/docs.py, with their scripts pinned by hash.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings, app.state.metrics = settings, app_metrics
    app.state.drain, app.state.tracing = drain, tracing
    install_error_handlers(app)
    install_openapi(app, inference_protocol.router.prefix)
    for module in (
        docs,
        predict,
        summary,
        health,
        metrics,
        ui,
        repository_routes,
        inference_protocol,
        fallback_routes,
    ):
        app.include_router(module.router)
    # Innermost first: each one added wraps those before it. The dispatcher first, just in
    # front of the router, so that what it serves still goes through all the others.
    app.add_middleware(
        InferenceDispatcher, routes=[*predict.router.routes, *inference_protocol.router.routes]
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    if keys:
        app.add_middleware(AuthMiddleware, keys=keys, settings=settings, metrics=app_metrics)
    # Outside authentication, so an overloaded worker refuses without hashing keys or
    # reading bodies; inside CORS, so browsers can read the 503.
    app.add_middleware(
        AdmissionMiddleware,
        limit=inflight,
        timeout_s=settings.request_timeout_ms / 1000,
        metrics=app_metrics,
    )
    if settings.origins():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.origins(),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "x-api-key", "content-type", "x-request-id"],
            expose_headers=["x-request-id"],
        )
    app.add_middleware(AccessMiddleware, metrics=app_metrics, drain=drain, access_log=access_log)
    # Added last, so outermost: the span also covers what the middleware above answers.
    app.add_middleware(TracingMiddleware, tracing=tracing)
    return app


async def _start_grpc(
    app: FastAPI,
    settings: Settings,
    repository: ModelRepository,
    keys: KeyRing,
    drain: Drain,
    metrics: Metrics,
    tracing: Tracing,
    inflight: InflightLimit,
    access_log: AccessLog | None,
) -> Any:
    """The gRPC server, when MNIST_GRPC_PORT asks for one; None otherwise."""
    if not settings.grpc_port:
        return None
    # Imported only here: without a gRPC port the service needs neither grpcio nor the stubs.
    from service.inference_protocol.grpc_observability import ObservingInterceptor
    from service.inference_protocol.grpc_server import InferenceServicer, start_grpc_server

    servicer = InferenceServicer(
        repository, settings, keys, drain, metrics, inflight, app.version, tracing
    )
    observing = ObservingInterceptor(metrics, tracing, access_log)
    return await start_grpc_server(servicer, settings, observing)


def _log_access_control(settings: Settings, keys: KeyRing) -> None:
    if not keys:
        logger.warning(
            "no API keys are set (MNIST_API_KEYS): anyone who reaches %s:%s may predict%s",
            settings.host,
            settings.port,
            " and load or unload models" if settings.model_control else "",
        )
    elif settings.model_control and not keys.has_admin_keys:
        logger.warning(
            "MNIST_MODEL_CONTROL=1 but no admin key is set (MNIST_ADMIN_API_KEYS): "
            "model load and unload are refused to every key"
        )
