"""Liveness and readiness probes."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.dependencies import DrainDep, RepositoryDep
from service.schemas import HealthResponse

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=HealthResponse, summary="The process is up")
async def live() -> HealthResponse:
    return HealthResponse(status="live")


@router.get(
    "/ready",
    response_model=HealthResponse,
    summary="At least one model version is loaded, self-tested and taking requests",
    responses={503: {"model": HealthResponse}},
)
async def ready(repository: RepositoryDep, drain: DrainDep) -> HealthResponse | JSONResponse:
    # Never "ready without a model": a repository with nothing servable yet, or everything
    # unloaded by model control, answers 503 so that no traffic is sent here; and neither
    # while draining after SIGTERM.
    if not repository.ready or drain.draining:
        return JSONResponse({"status": "not ready"}, 503)
    return HealthResponse(status="ready")
