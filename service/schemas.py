"""The shapes of what the API takes and gives, for validation and for the OpenAPI docs."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from model_contract import ModelSummary

_SIDE = 28
_Pixel = Annotated[float, Field(ge=0, le=255)]
_Row = Annotated[list[_Pixel], Field(min_length=_SIDE, max_length=_SIDE)]
Image = (
    Annotated[list[_Row], Field(min_length=_SIDE, max_length=_SIDE)]
    | Annotated[list[_Pixel], Field(min_length=_SIDE * _SIDE, max_length=_SIDE * _SIDE)]
)


def _exactly_one_key(schema: dict[str, Any]) -> None:
    schema.pop("required", None)
    schema["oneOf"] = [{"required": ["image"]}, {"required": ["images"]}]


class PredictJSONRequest(BaseModel):
    """Exactly one of ``image`` and ``images``.

    Each image is 28x28 nested lists or a flat list of 784 numbers, white digit on black.
    Scale, judged per image: when every value is an integer and one exceeds 1, the image is
    0-255 grey levels; otherwise the values are floats in [0, 1] (so a 0/1 image is [0, 1]).
    """

    # Only documents the body (the route parses it with orjson): the schema says what the
    # parser takes, one key of the two and nothing else, so that a client generated from it
    # never sends {} or both.
    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one_key)

    image: Image = Field(description="One image.")
    images: list[Image] = Field(description="A batch of images, answered in order.", min_length=1)


class Prediction(BaseModel):
    digit: int = Field(ge=0, le=9)
    confidence: float = Field(description="The probability of `digit`.")
    probabilities: list[float] = Field(description="Softmax over the digits 0-9.")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str = Field(description="The id of the model that answered, from its model card.")
    model_version: str = Field(description="The repository version that answered.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What is wrong with the request and how to fix it.")
    request_id: str | None = Field(description="The request's X-Request-ID, for the logs.")


class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int | None]


class SummaryResponse(BaseModel):
    model: str
    model_version: str = Field(description="The repository version described.")
    summary: ModelSummary
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    model_card: dict[str, Any]
    providers: list[str] = Field(description="onnxruntime execution providers in use, in order.")


class HealthResponse(BaseModel):
    status: str
