"""What routes get injected: the objects the lifespan put on ``app.state``.

The getters are ``async`` because FastAPI runs plain ``def`` dependencies in its thread pool,
a thread hop per request for what is an attribute read.
"""

from typing import Annotated

from fastapi import Depends, Request

from service.decode_budget import DecodeBudget
from service.drain import Drain
from service.metrics import Metrics
from service.models.repository import ModelRepository
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_repository(request: Request) -> ModelRepository:
    repository: ModelRepository = request.app.state.repository
    return repository


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


async def get_decode_budget(request: Request) -> DecodeBudget:
    budget: DecodeBudget = request.app.state.decode_budget
    return budget


SettingsDep = Annotated[Settings, Depends(get_settings)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DrainDep = Annotated[Drain, Depends(get_drain)]
DecodeBudgetDep = Annotated[DecodeBudget, Depends(get_decode_budget)]
