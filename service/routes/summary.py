"""GET /summary: the model's layer table, specs, model card and providers."""

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import PlainTextResponse

from service.dependencies import ModelDep
from service.schemas import SummaryResponse
from service.summary_table import render_summary

router = APIRouter(tags=["model"])


@router.get(
    "/summary",
    summary="The model's layers, like Keras' model.summary()",
    response_model=SummaryResponse,
    responses={200: {"content": {"text/plain": {"example": "Layer (type) ..."}}}},
)
async def summary(
    model: ModelDep,
    format: Annotated[
        Literal["json", "text"] | None, Query(description="text: a table like model.summary().")
    ] = None,
    accept: Annotated[str, Header()] = "application/json",
) -> SummaryResponse | PlainTextResponse:
    if format == "text" or (format is None and accept.startswith("text/plain")):
        return PlainTextResponse(render_summary(model.summary, model.model_id))
    return SummaryResponse(
        model=model.model_id,
        summary=model.summary,
        model_card=model.card,
        providers=model.providers,
        **model.io_specs(),
    )
