"""GET /summary: the model's layer table, specs, model card and providers."""

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import PlainTextResponse

from service.dependencies import RepositoryDep
from service.schemas import ErrorResponse, SummaryResponse
from service.summary_table import render_summary

router = APIRouter(tags=["model"])


@router.get(
    "/summary",
    summary="The model's layers, like Keras' model.summary()",
    response_model=SummaryResponse,
    responses={
        200: {"content": {"text/plain": {"example": "Layer (type) ..."}}},
        404: {"model": ErrorResponse, "description": "The version asked for is not ready."},
        503: {"model": ErrorResponse, "description": "No version is ready yet."},
    },
)
async def summary(
    repository: RepositoryDep,
    version: Annotated[
        int | None,
        Query(ge=1, description="The model version; default: the highest ready one."),
    ] = None,
    format: Annotated[
        Literal["json", "text"] | None, Query(description="text: a table like model.summary().")
    ] = None,
    accept: Annotated[str, Header()] = "application/json",
) -> SummaryResponse | PlainTextResponse:
    served = repository.resolve(version)
    model = served.session
    if format == "text" or (format is None and accept.startswith("text/plain")):
        return PlainTextResponse(
            render_summary(model.summary, f"{model.model_id} (version {served.name})")
        )
    return SummaryResponse(
        model=model.model_id,
        model_version=served.name,
        summary=model.summary,
        model_card=model.card,
        providers=model.providers,
        **model.io_specs(),
    )
