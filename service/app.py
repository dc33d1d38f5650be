"""The app factory: settings in, a FastAPI app out, its model loaded once in the lifespan."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.models.repository import LoadSettings, ModelRepository, scanner
from service.models.session import ModelLoadError
from service.models.worker_state import WorkerState
from service.routes import (
    health,
    inference_protocol,
    metrics,
    model_repository,
    predict,
    summary,
    ui,
)
from service.settings import Settings

logger = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app_metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        repository = ModelRepository(
            scanner(settings.model_repository, settings.model_path),
            settings.policy(),
            LoadSettings(
                device=settings.device,
                intra_op_threads=settings.onnx_intra_op_threads(),
                inter_op_threads=settings.inter_op_threads,
                batch_max_size=settings.batch_max_size,
                batch_max_delay_s=settings.batch_max_delay_ms / 1000,
                batch_queue_images=settings.batch_queue_images,
            ),
            app_metrics,
            WorkerState(settings.worker_state_dir),
            # One file is one version for good: only a repository is worth watching.
            poll_s=settings.repository_poll_s if settings.model_repository else 0.0,
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
        # What start-up built lives as long as the process: moving it out of the collector's
        # reach keeps full collections, and the latency spikes they cause, short.
        gc.freeze()
        try:
            yield
        finally:
            await repository.stop()

    app = FastAPI(
        title="MNIST digit service",
        summary="The classic Keras MNIST convnet on onnxruntime: send digit images, get digits.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics = settings, app_metrics
    install_error_handlers(app)
    for module in (predict, summary, health, metrics, ui, model_repository, inference_protocol):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app_metrics)
    return app
