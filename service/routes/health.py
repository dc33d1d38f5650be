"""Liveness and readiness probes."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.dependencies import BatcherDep
from service.schemas import HealthResponse

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=HealthResponse, summary="The process is up")
async def live() -> HealthResponse:
    return HealthResponse(status="live")


@router.get(
    "/ready",
    response_model=HealthResponse,
    summary="The model is loaded and warmed up, and inference is running",
    responses={503: {"model": HealthResponse}},
)
async def ready(batcher: BatcherDep) -> HealthResponse | JSONResponse:
    # The lifespan loads and warms the model before the server accepts connections, so
    # only a stopped batcher (shutdown) makes this fail.
    if not batcher.running:
        return JSONResponse({"status": "not ready"}, 503)
    return HealthResponse(status="ready")
