"""The app factory: settings in, a FastAPI app out, its model loaded once in the lifespan."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.batcher import Batcher
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.model_session import ModelLoadError, ModelSession
from service.routes import health, inference_protocol, metrics, predict, summary, ui
from service.settings import Settings

logger = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app_metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            model = ModelSession(
                settings.model_path,
                settings.device,
                intra_op_threads=settings.onnx_intra_op_threads(),
                inter_op_threads=settings.inter_op_threads,
            )
        except ModelLoadError as exc:
            logger.error("%s", exc)
            raise
        model.warm_up()
        logger.info("model %s loaded from %s on %s", model.model_id, model.path, model.providers)
        app_metrics.model.labels(model.model_id, model.providers[0]).set(1)
        batcher = Batcher(
            model,
            app_metrics,
            max_batch_size=settings.batch_max_size,
            max_delay_s=settings.batch_max_delay_ms / 1000,
            max_queued_images=settings.batch_queue_images,
        )
        batcher.start()
        app.state.model, app.state.batcher = model, batcher
        # What start-up built lives as long as the process: moving it out of the collector's
        # reach keeps full collections, and the latency spikes they cause, short.
        gc.freeze()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="MNIST digit service",
        summary="The classic Keras MNIST convnet on onnxruntime: send digit images, get digits.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics = settings, app_metrics
    install_error_handlers(app)
    for module in (predict, summary, health, metrics, ui, inference_protocol):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app_metrics)
    return app
