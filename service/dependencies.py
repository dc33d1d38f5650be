"""What routes get injected: the objects the lifespan put on ``app.state``.

The getters are ``async`` because FastAPI runs plain ``def`` dependencies in its thread pool,
a thread hop per request for what is an attribute read.
"""

from typing import Annotated

from fastapi import Depends, Request

from service.batcher import Batcher
from service.metrics import Metrics
from service.model_session import ModelSession
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_model(request: Request) -> ModelSession:
    model: ModelSession = request.app.state.model
    return model


async def get_batcher(request: Request) -> Batcher:
    batcher: Batcher = request.app.state.batcher
    return batcher


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelDep = Annotated[ModelSession, Depends(get_model)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
